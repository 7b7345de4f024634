"""Mount lifecycle: start a vnodefs daemon, wait until its mount is ready, find it again, unmount it.

Owns: `mount(...) -> Mount` (validate input, spawn the daemon, wait for readiness), `umount(mnt)`
(unmount, wait for the daemon, clean up a mount whose daemon died), `mounted(...)` (a context
manager on a fresh temporary mount point: used by `vnodefs run`, the demo, tests, and the wiring
layer of other packages), `serve(config)` (the daemon body: runs VnodeFUSE in the foreground),
`check_fuse()`, `MountError`, and the per-mount state files.

State: each live mount has `<state dir>/<sha1(mountpoint)[:16]>.json` (daemon pid, its start time,
source, trace, cache mode, log file), written by the daemon once the mount is ready and removed
when it exits cleanly. The state dir is /run/vnodefs (root) or $XDG_RUNTIME_DIR/vnodefs or
$TMPDIR/vnodefs-<uid>. The daemon's stderr goes to `<key>.log` next to it; a start-up failure is
reported from its last line.

Readiness: the daemon watches /proc/self/mountinfo for its mount (fstype fuse.vnodefs), raises the
mount's bdi read_ahead_kb to 1024 when permitted (so sequential reads arrive as 1 MiB requests),
writes the trace header (which records the readahead actually in force), the state file, and then
one JSON line on the ready pipe. `mount()` returns after that line, or fails with the daemon's
last error line (the daemon is killed and nothing stays mounted).

Unmount: `fusermount3 -u` makes libfuse leave its loop; the daemon then flushes and closes the
trace and exits; `umount` waits for that. If the daemon is gone (killed), the dead mount (ENOTCONN)
is removed with `fusermount3 -u -z`. SIGTERM/SIGINT/SIGHUP to the daemon also unmount cleanly
(libfuse's handlers), and the trace is flushed.

Prefetch: a config key `prefetch` = {"playlist": FILE (JSON list of [path, offset, length]),
"page_size"} makes the daemon build a vnodefs.prefetch.PrefetchCache and start it once the mount is
ready (the trace header then has a `prefetch` object); `mount(..., extra=)` / `mounted(..., extra=)`
pass such keys through.

File events: a config key `events` = {"fd": W, "counters_fd": C} (vnodefs.events.open_channel) makes
the daemon report size changes (setsize/removed) on the pipe write end W with the counters page C;
`mount()` passes both fds to the daemon (pass_fds) when `extra` holds such a key. The caller keeps
the reader and closes its copies of W and C after mount() returns.

Caveats: only the user who mounted can use the mount unless `allow_other` (then the host's modes
decide, through default_permissions, and a root daemon gives what a caller creates to the caller;
a non-root daemon owns everything created through it, as with any FUSE mount). A busy mount (open files,
a process's cwd) refuses `umount` with EBUSY, reported in one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from vnodefs.latency import LatencyError, parse_latency

FSTYPE = "fuse.vnodefs"
READAHEAD_KB = 1024
#: libfuse worker threads: up to MAX_THREADS serve concurrent requests (a request delayed by the
#: latency model holds its thread, so concurrent requesters need threads of their own), and all
#: of them stay parked between bursts. Measured on 2 vCPUs: the kernel hands each request to the
#: worker that has waited longest, so with 16 parked workers one process doing random 4 KiB direct
#: reads took 23-25 us per read, and 16-18 us with max_idle_threads=4. But libfuse then ends the
#: surplus workers after each burst, and the Python thread state the dispatcher pins on each
#: worker (fuseops._pin_thread_state) leaks with it (daemon RSS +0.5 MB per burst of 12 readers);
#: freeing those states from another thread crashed libpython 3.11. So no worker ever ends.
#: Measured again on Linux 6.18 (2 vCPUs, load 2-4): after each of 6 bursts of 12 concurrent
#: readers, one reader's random 4 KiB direct reads took 9-12 us with 16 parked workers and
#: 13-17 us with max_idle_threads=4 (daemon RSS 43 MiB vs 59-66 MiB): parking them all is also
#: the faster choice there.
MAX_THREADS = 16
MAX_IDLE_THREADS = MAX_THREADS
MIB = 1 << 20


class MountError(Exception):
    """A mount/umount failure or bad input: str() is one line naming what was wrong."""


# ---- environment checks -------------------------------------------------------------------------

def check_fuse() -> str | None:
    """None if FUSE can be used here, else one line naming what is missing (and the package)."""
    dev = os.environ.get("VNODEFS_FUSE_DEVICE", "/dev/fuse")  # tests point this elsewhere
    if not os.path.exists(dev):
        return f"no FUSE device {dev} (load the fuse kernel module: modprobe fuse; Debian package fuse3)"
    if not os.access(dev, os.R_OK | os.W_OK):
        return f"{dev} is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found (install the Debian package fuse3)"
    if os.environ.get("FUSE_LIBRARY_PATH"):
        if not os.path.exists(os.environ["FUSE_LIBRARY_PATH"]):
            return (f"libfuse3 not found: FUSE_LIBRARY_PATH={os.environ['FUSE_LIBRARY_PATH']} does not exist "
                    "(install the Debian package libfuse3-3)")
    elif ctypes.util.find_library("fuse3") is None:
        return "libfuse3 not found (install the Debian package libfuse3-3)"
    return None


def _unescape_mountinfo(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount_table() -> list[tuple[str, str, str]]:
    """(mount point, fstype, major:minor) of every mount this process sees."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            f = left.split()
            if len(f) < 5:
                continue
            out.append((_unescape_mountinfo(f[4]), right.split()[0] if right else "", f[2]))
    return out


def find_mount(mountpoint: str) -> tuple[str, str] | None:
    """(fstype, major:minor) of the top mount at `mountpoint`, or None."""
    mp = os.path.realpath(mountpoint) if os.path.exists(mountpoint) else os.path.abspath(mountpoint)
    found = None
    for point, fstype, dev in mount_table():
        if point == mp:
            found = (fstype, dev)
    return found


def _is_dead_mount(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


# ---- state files --------------------------------------------------------------------------------

def state_dir() -> str:
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        d = "/run/vnodefs"
    elif os.environ.get("XDG_RUNTIME_DIR") and os.access(os.environ["XDG_RUNTIME_DIR"], os.W_OK):
        d = os.path.join(os.environ["XDG_RUNTIME_DIR"], "vnodefs")
    else:
        d = os.path.join(tempfile.gettempdir(), f"vnodefs-{os.getuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def _key(mountpoint: str) -> str:
    return hashlib.sha1(os.path.abspath(mountpoint).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def state_path(mountpoint: str) -> str:
    return os.path.join(state_dir(), _key(mountpoint) + ".json")


def log_path(mountpoint: str) -> str:
    return os.path.join(state_dir(), _key(mountpoint) + ".log")


def read_state(mountpoint: str) -> dict | None:
    try:
        with open(state_path(mountpoint)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ---- input validation ---------------------------------------------------------------------------

def check_metadata_timeout(seconds) -> None:
    """Raise MountError unless `seconds` is None or a number of seconds from 0 to 3600."""
    if seconds is not None and not (0 <= float(seconds) <= 3600):
        raise MountError(f"--metadata-timeout {seconds}: give seconds from 0 to 3600")


def check_allow_other(euid: int | None = None, conf: str = "/etc/fuse.conf") -> None:
    """Raise MountError unless FUSE lets this user (`euid`, default this process's) mount with
    allow_other: root, or anyone when `conf` has the line user_allow_other."""
    if (os.geteuid() if euid is None else euid) == 0:
        return
    try:
        with open(conf) as fh:
            if any(line.split("#")[0].strip() == "user_allow_other" for line in fh):
                return
    except OSError:
        pass
    raise MountError("--allow-other needs root, or the line user_allow_other in /etc/fuse.conf")


def validate(source: str, mountpoint: str, trace: str | None, latency: str | None, cache: str,
             layout: str = "auto", writeback_cache: bool = False) -> None:
    """Raise MountError (one line) for any bad input of `vnodefs mount`; touch nothing."""
    from vnodefs.layout import MODES as LAYOUTS
    from vnodefs.layout import probe_fiemap

    if cache not in ("page", "direct"):
        raise MountError(f"unknown cache mode {cache!r}: use page or direct")
    if writeback_cache and cache != "page":
        raise MountError("--writeback-cache needs --cache page (in direct mode every write goes to vnodefs "
                         "as it is made)")
    try:
        spec = parse_latency(latency)
    except LatencyError as e:
        raise MountError(str(e)) from None
    if layout not in LAYOUTS:
        raise MountError(f"unknown layout {layout!r}: use {', '.join(LAYOUTS)}")
    if not os.path.exists(source):
        raise MountError(f"source {source} does not exist")
    if not os.path.isdir(source):
        raise MountError(f"source {source} is not a directory")
    if spec.active and layout == "fiemap" and probe_fiemap(source) is False:
        raise MountError(f"--layout fiemap: the file system of {source} does not support FIEMAP "
                         f"(use --layout synthetic, or auto to fall back by itself)")
    if find_mount(mountpoint) is not None:
        raise MountError(f"mount point {mountpoint} is already a mount point")
    if not os.path.exists(mountpoint):
        raise MountError(f"mount point {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.listdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not empty")
    src, mnt = os.path.realpath(source), os.path.realpath(mountpoint)
    if mnt == src or mnt.startswith(src.rstrip("/") + "/"):
        raise MountError(f"mount point {mountpoint} lies inside the source {source}")
    if trace is not None:
        tdir = os.path.dirname(os.path.abspath(trace)) or "."
        if os.path.isdir(trace):
            raise MountError(f"trace file {trace} is a directory")
        if not os.path.isdir(tdir):
            raise MountError(f"cannot write trace file {trace}: directory {tdir} does not exist")
        if os.path.realpath(tdir) == mnt or os.path.realpath(tdir).startswith(mnt + "/"):
            raise MountError(f"trace file {trace} must not lie inside the mount point")
        from vnodefs.trace import in_use_message, trace_in_use

        if trace_in_use(trace):
            raise MountError(in_use_message(trace))
        existed = os.path.exists(trace)
        try:
            fd = os.open(trace, os.O_WRONLY | os.O_CREAT, 0o644)
            os.close(fd)
        except OSError as e:
            raise MountError(f"cannot write trace file {trace}: {e.strerror}") from None
        if not existed:
            _remove_quietly(trace)
    why = check_fuse()
    if why:
        raise MountError(why)


# ---- the parent side ----------------------------------------------------------------------------

@dataclass
class Mount:
    """A live mount started by this process (or found through its state file)."""

    source: str
    mountpoint: str
    trace: str | None
    cache: str
    latency: str
    pid: int
    info: dict  # the daemon's ready message (header facts: readahead_kb, bdi, layout, ...)
    proc: subprocess.Popen | None = None

    def umount(self, timeout: float = 30.0) -> None:
        umount(self.mountpoint, timeout=timeout, proc=self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.umount()


def mount(source: str, mountpoint: str, trace: str | None = None, latency: str | None = "none",
          cache: str = "page", read_only: bool = False, timeout: float = 15.0, xattr: bool = False,
          extra: dict | None = None, layout: str = "auto", allow_other: bool = False,
          strict_metadata: bool = False, trace_metadata: bool = False,
          metadata_timeout: float | None = None, writeback_cache: bool = False) -> Mount:
    """Mount SOURCE on MOUNTPOINT through a background vnodefs daemon; return once it is ready.
    `trace=None` means no trace; `latency` the device model, `layout` where its addresses come
    from (vnodefs.layout); `allow_other` lets every user use the mount (the host's modes decide
    what each may do); `strict_metadata` turns the kernel's name and attribute caches off (every
    lookup and getattr reaches vnodefs; changes made in SOURCE behind the mount are seen at once);
    `metadata_timeout` (seconds) sets how long instead (default
    vnodefs.fuseops.METADATA_TIMEOUT); `trace_metadata` also records the metadata requests that reach vnodefs (getattr, readdir,
    opendir, readlink); `writeback_cache` turns on the kernel's writeback cache (page mode:
    vnodefs.fuseops.FsConfig.writeback_cache says what changes). Raises MountError (one line); on
    failure nothing stays mounted."""
    validate(source, mountpoint, trace, latency, cache, layout, writeback_cache)
    check_metadata_timeout(metadata_timeout)
    if allow_other:
        check_allow_other()
    mnt = os.path.realpath(mountpoint)
    config = {"source": os.path.realpath(source), "mountpoint": mnt,
              "trace": os.path.abspath(trace) if trace else None, "cache": cache,
              "latency": latency or "none", "read_only": bool(read_only), "xattr": bool(xattr),
              "layout": layout, "allow_other": bool(allow_other), "strict_metadata": bool(strict_metadata),
              "trace_metadata": bool(trace_metadata), "metadata_timeout": metadata_timeout,
              "writeback_cache": bool(writeback_cache), **(extra or {})}
    logf = log_path(mnt)
    r, w = os.pipe()
    config["ready_fd"] = w
    config["log"] = logf
    passed = [w]
    ev = config.get("events")
    if ev:
        try:
            passed += [int(ev["fd"]), int(ev["counters_fd"])]
        except (KeyError, TypeError, ValueError):
            os.close(r)
            os.close(w)
            raise MountError("config key events must be {\"fd\": N, \"counters_fd\": N}") from None
    try:
        with open(logf, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from vnodefs.mount import daemon_main; "
                                       "sys.exit(daemon_main(sys.argv[1]))", json.dumps(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=tuple(passed),
                start_new_session=True, close_fds=True)
    finally:
        os.close(w)
    try:
        msg = _wait_ready(r, proc, timeout)
    except MountError:
        _abort_start(proc, mnt, config["trace"])
        raise
    finally:
        os.close(r)
    return Mount(source=config["source"], mountpoint=mnt, trace=config["trace"], cache=cache,
                 latency=config["latency"], pid=proc.pid, info=msg, proc=proc)


def _wait_ready(r: int, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise MountError(f"the vnodefs daemon did not become ready within {timeout:.0f} s "
                             f"(log: {log_path(json.loads(proc.args[-1])['mountpoint'])})")
        ready, _, _ = select.select([r], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
    if b"\n" not in data:
        proc.wait(timeout=5)
        mnt = json.loads(proc.args[-1])["mountpoint"]
        raise MountError(_daemon_error(mnt, proc.returncode))
    return json.loads(data.split(b"\n", 1)[0])


def _daemon_error(mnt: str, code) -> str:
    last = ""
    with contextlib.suppress(OSError):
        with open(log_path(mnt), errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
        pref = [ln for ln in lines if ln.startswith("vnodefs:")]
        last = (pref or lines or [""])[-1]
    if last and not last.startswith("vnodefs:"):
        last = f"vnodefs: mount failed: {last}"
    return last[len("vnodefs: "):] if last else f"mount failed: the vnodefs daemon exited with status {code}"


def _abort_start(proc: subprocess.Popen, mnt: str, trace: str | None) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if find_mount(mnt) is not None:
        subprocess.run(["fusermount3", "-u", "-z", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _remove_quietly(state_path(mnt))
    _remove_quietly(log_path(mnt))  # its last line is in the MountError already
    if trace and os.path.exists(trace) and os.path.getsize(trace) == 0:
        _remove_quietly(trace)


def _pid_alive(pid: int, create_time: float | None = None) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def umount(mountpoint: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Unmount a vnodefs mount and wait for its daemon (so the trace is complete); also removes a
    mount whose daemon died. Raises MountError (one line) if it is not a vnodefs mount or is busy."""
    mnt = os.path.realpath(mountpoint) if os.path.exists(mountpoint) or _is_dead_mount(mountpoint) \
        else os.path.abspath(mountpoint)
    state = read_state(mnt)
    m = find_mount(mnt)
    if m is None:
        if state is not None:  # the daemon's mount is gone but its state file stayed
            _remove_quietly(state_path(mnt))
            return
        raise MountError(f"{mountpoint} is not mounted")
    if m[0] != FSTYPE:
        raise MountError(f"{mountpoint} is a {m[0]} mount, not a vnodefs mount")
    pid = state.get("pid") if state else (proc.pid if proc else None)
    ctime = state.get("pid_create_time") if state else None
    alive = pid is not None and _pid_alive(pid, ctime)
    if alive:
        res = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
        if res.returncode != 0:
            msg = (res.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
            if "busy" in msg.lower():
                raise MountError(f"cannot unmount {mountpoint}: it is busy (open files or a process's "
                                 f"working directory inside it)")
            raise MountError(f"cannot unmount {mountpoint}: {msg}")
        deadline = time.monotonic() + timeout
        while _pid_alive(pid, ctime):
            if proc is not None and proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise MountError(f"unmounted {mountpoint}, but its daemon (pid {pid}) did not exit within "
                                 f"{timeout:.0f} s; the trace may be incomplete")
            time.sleep(0.01)
    else:  # the daemon died: remove its dead mount
        res = subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True, text=True)
        if res.returncode != 0 and find_mount(mnt) is not None:
            msg = (res.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
            raise MountError(f"cannot remove the dead mount {mountpoint}: {msg}")
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    _remove_quietly(state_path(mnt))
    if not alive:
        _remove_quietly(log_path(mnt))


@contextlib.contextmanager
def mounted(source: str, trace: str | None = None, latency: str | None = "none", cache: str = "page",
            read_only: bool = False, mountpoint: str | None = None, xattr: bool = False,
            extra: dict | None = None, layout: str = "auto", allow_other: bool = False,
            strict_metadata: bool = False, trace_metadata: bool = False,
            metadata_timeout: float | None = None, writeback_cache: bool = False):
    """Mount SOURCE on a fresh temporary directory (or `mountpoint`), yield the Mount, and always
    unmount and remove the temporary directory afterwards."""
    tmp = None
    if mountpoint is None:
        tmp = mountpoint = tempfile.mkdtemp(prefix="vnodefs-mnt-")
        if allow_other:  # other users must be able to reach the mount point
            os.chmod(tmp, 0o755)
    try:
        m = mount(source, mountpoint, trace=trace, latency=latency, cache=cache, read_only=read_only,
                  xattr=xattr, extra=extra, layout=layout, allow_other=allow_other,
                  strict_metadata=strict_metadata, trace_metadata=trace_metadata,
                  metadata_timeout=metadata_timeout, writeback_cache=writeback_cache)
        try:
            yield m
        finally:
            m.umount()
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.rmdir(tmp)


# ---- the daemon side ----------------------------------------------------------------------------

def _bdi_readahead(dev: str) -> tuple[int | None, int | None]:
    """(default, in force) read_ahead_kb of the bdi `dev`, after trying to raise it to 1024."""
    path = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(path) as fh:
            before = int(fh.read().strip())
    except (OSError, ValueError):
        return None, None
    try:
        with open(path, "w") as fh:
            fh.write(str(READAHEAD_KB))
    except OSError:
        pass
    try:
        with open(path) as fh:
            return before, int(fh.read().strip())
    except (OSError, ValueError):
        return before, None


def _keep_request_buffers() -> None:
    """Stop glibc from mmap/munmap-ing libfuse's 1 MiB request buffers on every request (measured:
    one mmap + munmap + 256 page faults per request otherwise)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 * MIB)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * MIB)  # M_TRIM_THRESHOLD


def serve(config: dict, ready=None) -> int:
    """Run the file system until it is unmounted (the daemon body; also `vnodefs mount
    --foreground`). `ready(msg)` is called once the mount is usable. Returns an exit status."""
    import mfusepy

    from vnodefs.fuseops import FUSE_CAP_WRITEBACK_CACHE, METADATA_TIMEOUT, FsConfig, Passthrough, PassthroughXattr, VnodeFUSE
    from vnodefs.devqueue import Device
    from vnodefs.layout import LayoutError, choose
    from vnodefs.trace import OPS, RECORD_SIZE, VERSION, TraceInUse, TraceWriter

    start_mono, start_unix = time.monotonic_ns(), time.time_ns()
    mnt = config["mountpoint"]
    spec = parse_latency(config.get("latency"))
    fsconf = FsConfig(source=config["source"], cache=config["cache"], read_only=config.get("read_only", False),
                      xattr=bool(config.get("xattr")), latency=spec,
                      metadata_timeout=0.0 if config.get("strict_metadata") else
                      METADATA_TIMEOUT if config.get("metadata_timeout") is None else float(config["metadata_timeout"]),
                      writeback_cache=bool(config.get("writeback_cache")))
    _keep_request_buffers()
    try:
        writer = TraceWriter(config.get("trace"))
    except (TraceInUse, OSError) as e:
        print(f"vnodefs: mount failed: {e}", file=sys.stderr, flush=True)
        return 1
    ops = (PassthroughXattr if fsconf.xattr else Passthrough)(fsconf, writer)
    if config.get("events"):
        from vnodefs.events import EventWriter

        try:
            ops.events = EventWriter.from_config(config["events"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"vnodefs: mount failed: cannot use the file events channel: {e}", file=sys.stderr,
                  flush=True)
            return 1
    device = layout = None
    if spec.active:
        try:
            layout = choose(fsconf.source, config.get("layout") or "auto")
        except LayoutError as e:
            print(f"vnodefs: mount failed: {e}", file=sys.stderr, flush=True)
            return 1
        device = Device(spec, address_span=layout.span)
    pcache = None
    if config.get("prefetch"):  # `vnodefs run --profile APP --prefetch cache`: the playlist file
        from vnodefs.prefetch import PrefetchCache

        pf = config["prefetch"]
        try:
            with open(pf["playlist"]) as fh:
                extents = json.load(fh)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"vnodefs: mount failed: cannot read the prefetch playlist: {e}", file=sys.stderr, flush=True)
            return 1
        pcache = PrefetchCache(fsconf.source, extents, writer, device, layout,
                               page_size=int(pf.get("page_size", os.sysconf("SC_PAGE_SIZE"))),
                               wait_s=float(pf.get("wait_s", 10.0)))
    header = {
        "format": "vnodefs-trace", "version": VERSION, "record_size": RECORD_SIZE, "clock": "CLOCK_MONOTONIC",
        "source": fsconf.source, "mountpoint": mnt, "cache_mode": fsconf.cache,
        "trace_holds": ("page-cache misses (kernel page cache on, libfuse auto_cache)" if not fsconf.writeback_cache
                        else "page-cache read misses, and writes as the kernel's writeback cache flushes them "
                        "(pid 0, at flush time)") if fsconf.cache == "page"
        else "every read and write (direct_io on every open)",
        "latency": spec.describe(), "device": spec.describe(),
        "layout": layout.describe() if layout is not None else {"kind": "none", "note": "no device model"},
        "max_read": fsconf.max_read, "max_write": fsconf.max_write,
        "readahead_kb": None, "page_size": os.sysconf("SC_PAGE_SIZE"),
        "start_monotonic_ns": start_mono, "start_unix_ns": start_unix,
        "start_time": _dt.datetime.fromtimestamp(start_unix / 1e9).astimezone().isoformat(timespec="seconds"),
        "daemon_pid": os.getpid(), "uid": os.getuid(), "hostname": platform.node(),
        "kernel": platform.release(),
        "libfuse": f"{mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor}",
        "writeback_cache": fsconf.writeback_cache, "passthrough": False, "direct_io_allow_mmap": False,
        "read_only": fsconf.read_only, "xattr": fsconf.xattr, "ops": OPS,
        "metadata_timeout_s": fsconf.metadata_timeout, "trace_metadata": bool(config.get("trace_metadata")), "allow_other": bool(config.get("allow_other")),
        "file_events": ops.events is not None,
    }
    stop = threading.Event()
    failed = {}

    def watch():
        try:
            while not stop.is_set():
                m = find_mount(mnt)
                if m is not None and m[0] == FSTYPE:
                    break
                time.sleep(0.005)
            else:
                return
            while not ops.negotiated and not stop.is_set():  # the mount shows before libfuse's INIT ran
                time.sleep(0.002)
            before, now = _bdi_readahead(m[1])
            header.update(bdi=m[1], readahead_kb=now, readahead_kb_default=before, negotiated=ops.negotiated)
            if fsconf.writeback_cache and not ops.negotiated.get("want", 0) & FUSE_CAP_WRITEBACK_CACHE:
                raise MountError("--writeback-cache: this kernel's FUSE does not offer a writeback cache")
            if pcache is not None:
                header["prefetch"] = {"strategy": "cache", "extents": len(pcache.extents),
                                      "bytes": sum(e.length for e in pcache.extents), "op": 10}
            writer.start(header)
            if pcache is not None:
                pcache.start()
            import psutil

            state = {"pid": os.getpid(), "pid_create_time": psutil.Process().create_time(),
                     "mountpoint": mnt, "source": fsconf.source, "trace": config.get("trace"),
                     "cache": fsconf.cache, "latency": config.get("latency"), "log": log_path(mnt),
                     "readahead_kb": now, "bdi": m[1]}
            tmp = state_path(mnt) + ".tmp"
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as fh:
                json.dump(state, fh)
            os.replace(tmp, state_path(mnt))
            msg = {"ready": True, "pid": os.getpid(), "bdi": m[1], "readahead_kb": now,
                   "trace": config.get("trace"), "device": header["device"], "layout": header["layout"]}
            if ready is not None:
                ready(msg)
        except Exception as e:  # report and stop the mount: a half-ready mount is worse than none
            failed["error"] = f"vnodefs: mount failed while getting ready: {e}"
            print(failed["error"], file=sys.stderr, flush=True)
            subprocess.run(["fusermount3", "-u", "-z", mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    watcher = threading.Thread(target=watch, name="vnodefs-ready", daemon=True)
    watcher.start()
    options = dict(foreground=True, fsname=f"vnodefs:{fsconf.source}", subtype="vnodefs",
                   default_permissions=True, max_read=fsconf.max_read, use_ino=True, hard_remove=True,
                   max_threads=MAX_THREADS, max_idle_threads=MAX_IDLE_THREADS)
    if fsconf.read_only:
        options["ro"] = True
    if config.get("allow_other"):
        options["allow_other"] = True
    # the kernel has applied the caller's umask to every mode it sends: apply no second one
    os.umask(0)
    status = 0
    try:
        VnodeFUSE(ops, mnt, device=device, layout=layout, pcache=pcache,
                  trace_metadata=bool(config.get("trace_metadata")), **options)
    except RuntimeError as e:
        if header.get("bdi") is not None:  # it was mounted: libfuse reports a signal-ended loop as 8
            print(f"vnodefs: stopped by a signal (libfuse status {e}); unmounted, trace flushed",
                  file=sys.stderr, flush=True)
        else:
            print(f"vnodefs: mount failed: libfuse returned {e} (see the lines above)", file=sys.stderr,
                  flush=True)
            status = 1
    finally:
        stop.set()
        if pcache is not None:
            pcache.stop()
        if ops.events is not None:
            ops.events.close()
        writer.close()
        st = read_state(mnt)
        if st is not None and st.get("pid") == os.getpid():
            _remove_quietly(state_path(mnt))
        if not failed and status == 0 and "log" in config:
            _remove_quietly(config["log"])  # a clean run leaves no log behind
    return 1 if failed else status


def daemon_main(config_json: str) -> int:
    """Entry point of the background daemon process spawned by mount()."""
    config = json.loads(config_json)
    fd = config.pop("ready_fd")

    def ready(msg):
        os.write(fd, (json.dumps(msg) + "\n").encode())
        os.close(fd)

    for sig in (signal.SIGPIPE,):
        signal.signal(sig, signal.SIG_IGN)
    return serve(config, ready=ready)
