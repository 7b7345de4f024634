"""Prefetching a launch profile's pages through vnodefs (after BootCache and Android's iorap).

Owns the three prefetch strategies of `vnodefs run --profile` and the host-side helpers they need:

  * `PrefetchCache` (strategy `cache`, BootCache-style; runs INSIDE the vnodefs daemon): a sorted
    playlist of extents (path, offset, length) is read from the host files by one thread, in
    playlist order, paying the latency model's cost per extent (one seek unless it continues the
    previous request on that file, plus length / bandwidth), into a private in-daemon cache. The
    FUSE dispatcher (vnodefs.fuseops) asks `serve()` first for every read: a request whose pages
    are all cached is copied from the cache with no modelled latency (flag FLAG_PF_HIT); a
    request touching an extent still in flight waits for it (FLAG_PF_WAIT, at most `wait_s`);
    a request with some pages cached and others not reads the host file and is charged the
    latency of the missing pages only (FLAG_PF_PARTIAL). Every extent read is one trace record
    with op OP_PREFETCH (10), pid = the daemon. Cached pages are KEPT after they are served (as
    BootCache keeps them: a page the kernel dropped and asks for again is still a hit) until
    unmount; the cache is bounded by the playlist, which the caller caps (`--prefetch-max`).
    Any write, truncate or fallocate on a file (or an O_TRUNC open) drops that file's pages.
  * `HostPrefetcher` (strategies `read` and `fadvise`, page cache mode; runs in the `vnodefs run`
    process, alongside the command): opens the files through the MOUNT and either reads each
    extent (1 MiB preads: the pages land in the kernel's FUSE page cache) or calls
    posix_fadvise(WILLNEED) + readahead(2) on it; then measures which pages landed with
    mincore(2) over a read-only shared mmap of each file (ctypes; Python has no mincore).
  * `plan_extents`, `auto_gap`: the playlist from a Profile (sorted, coalesced, holes shorter
    than a seek's worth of transfer bridged), `drop_host_cache(source)`: posix_fadvise(DONTNEED)
    on every file of SOURCE (so "cold" runs are cold; scoped to SOURCE, no root needed for
    files one can open), `mincore_pages`.

Trace additions (docs/vnodefs-trace-format.md, compatible with version-1 readers): op 10 =
prefetch read by the daemon; read flag bits 1 (served entirely from the prefetch cache),
2 (waited for an in-flight prefetch extent), 3 (partly served from the prefetch cache).

Caveats: the prefetch thread and the command's own reads share the mount's one modelled device
(vnodefs.latency queues them), as they would share one disk. The cache trusts that the host files do not change under it except through the mount.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time

from vnodefs.devqueue import NOTHING as _NOTHING
from vnodefs.trace import OPS

#: trace op code of a prefetch read made by the daemon
OP_PREFETCH = OPS["prefetch"]
#: read flag bits (bit 0 is trace.FLAG_SEEK)
FLAG_PF_HIT = 2
FLAG_PF_WAIT = 4
FLAG_PF_PARTIAL = 8

STRATEGIES = ("cache", "read", "fadvise", "off")
#: requests a prefetcher keeps in flight at once (as ureadahead fires its whole list at once and
#: lets the elevator order it); 16 = the mount's FUSE worker threads
PREFETCH_DEPTH = 16
MIB = 1 << 20
_QUEUED, _INFLIGHT, _DONE = 0, 1, 2


def auto_gap(seek_us: float, mbps: float, page_size: int = 4096) -> int:
    """Largest hole (pages) worth reading through rather than seeking over: a hole costs
    hole/bandwidth to read and a seek to skip; 0 for a model with no seek cost."""
    if seek_us <= 0 or mbps <= 0:
        return 0
    return max(0, int(seek_us * mbps / page_size))  # seek_us * 1e-6 s * mbps * 1e6 B/s / page


def plan_extents(pages_by_file: dict, source: str, page_size: int, max_gap: int = 0,
                 max_bytes: int | None = None, max_request_pages: int = 256) -> tuple[list, dict]:
    """The playlist: [(path, offset, length)] sorted by path then offset, coalesced runs of profiled
    pages (holes <= max_gap pages bridged, i.e. read through; a long run is cut into contiguous
    requests of max_request_pages, so only the gaps between runs cost a seek; like
    vmcore.workingset.coalesce, whose bridged mode instead restarts each request at a profiled page), clipped to the files' current sizes, files missing
    from SOURCE skipped, cut at max_bytes. Returns (extents, info)."""
    import numpy as np

    info = {"files_missing": 0, "pages_past_eof": 0, "cut_bytes": 0}
    live = {}
    for path, pages in pages_by_file.items():
        try:
            size = os.stat(os.path.join(source, path)).st_size
        except OSError:
            info["files_missing"] += 1
            continue
        npages = -(-size // page_size)
        keep = pages[pages < npages]
        info["pages_past_eof"] += int(pages.size - keep.size)
        if keep.size:
            live[path] = (keep, size)
    out = []
    total = 0
    runs = []
    for path in sorted(live):  # runs of profiled pages, holes <= max_gap bridged, cut into contiguous
        pages = np.unique(np.asarray(live[path][0], dtype=np.int64))  # requests (no seek between them)
        breaks = np.flatnonzero(np.diff(pages) > max_gap + 1) + 1
        for lo_i, hi_i in zip(np.concatenate(([0], breaks)).tolist(), np.concatenate((breaks, [pages.size])).tolist()):
            lo, hi = int(pages[lo_i]), int(pages[hi_i - 1]) + 1
            while lo < hi:
                n = min(max_request_pages, hi - lo)
                runs.append((path, lo, n))
                lo += n
    for path, first, n in runs:
        size = live[path][1]
        off = first * page_size
        ln = min(n * page_size, size - off)
        if ln <= 0:
            continue
        if max_bytes is not None and total + ln > max_bytes:
            info["cut_bytes"] += ln
            continue
        out.append((path, off, ln))
        total += ln
    info["bytes"] = total
    info["extents"] = len(out)
    return out, info


def order_by_device(extents, source: str, layout, max_request: int = 256 * 4096) -> tuple[list, dict]:
    """The playlist in device order, as BootCache's playlist and ureadahead on a rotational disk
    read it: every extent cut where its bytes change device extent (vnodefs.layout), the pieces of
    all files sorted by device address, and neighbours of one file that continue each other both
    in the file and on the device merged back (up to `max_request` bytes). Holes drop out (they
    cost no I/O). Returns (extents [(path, offset, length)], info)."""
    pieces = []
    info = {"order": "device", "layout": layout.kind, "unmapped": 0}
    by_path: dict[str, list] = {}
    for path, off, ln in extents:
        by_path.setdefault(path, []).append((off, ln))
    for path, exts in by_path.items():
        try:
            fd = os.open(os.path.join(source, path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            info["unmapped"] += len(exts)
            continue
        try:
            st = os.fstat(fd)
            for off, ln in exts:
                for foff, addr, n in layout.pieces(fd, off, ln, st):
                    pieces.append((addr, path, foff, n))
        except OSError:
            info["unmapped"] += len(exts)
        finally:
            os.close(fd)
    pieces.sort()
    out: list = []
    last = None  # (path, file end, device end) of out[-1]
    for addr, path, foff, n in pieces:
        if last is not None and last == (path, foff, addr) and out[-1][2] + n <= max_request:
            p, o, m = out[-1]
            out[-1] = (p, o, m + n)
        else:
            out.append((path, foff, n))
        last = (path, foff + n, addr + n)
    info["extents"] = len(out)
    info["bytes"] = sum(e[2] for e in out)
    return out, info


def extent_pages(extents, page_size: int) -> dict:
    """{path: set of page numbers} covered by the extents."""
    out: dict[str, set] = {}
    for path, off, ln in extents:
        out.setdefault(path, set()).update(range(off // page_size, (off + ln - 1) // page_size + 1))
    return out


# ---- host page cache ----------------------------------------------------------------------------

def drop_host_cache(source: str) -> dict:
    """posix_fadvise(DONTNEED) on every regular file under SOURCE (the host's cached pages of
    them are dropped unless mapped or dirty). Returns {"files", "failed", "method", "note"}."""
    files = failed = 0
    first_err = None
    for root, _dirs, names in os.walk(source):
        for name in names:
            p = os.path.join(root, name)
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as e:
                failed += 1
                first_err = first_err or f"{p}: {e.strerror}"
                continue
            try:
                if os.path.isfile(p):
                    os.fdatasync(fd) if os.access(p, os.W_OK) else None
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    files += 1
            except OSError as e:
                failed += 1
                first_err = first_err or f"{p}: {e.strerror}"
            finally:
                os.close(fd)
    note = None if not failed else f"could not drop the host cache of {failed} file(s) ({first_err})"
    return {"files": files, "failed": failed, "method": "posix_fadvise(DONTNEED) on every file of SOURCE",
            "note": note}


_libc = None


def _lib():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                             ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
        lib.readahead.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_size_t]
        lib.readahead.restype = ctypes.c_ssize_t
        _libc = lib
    return _libc


def mincore_pages(fd: int, size: int, page_size: int) -> "bytearray":
    """Residency of every page of the open file `fd` (size bytes): one byte per page, bit 0 set when
    the page is in the page cache. Uses mmap(PROT_READ, MAP_SHARED) + mincore(2) via ctypes."""
    n = -(-size // page_size)
    if n == 0:
        return bytearray()
    lib = _lib()
    length = n * page_size
    addr = lib.mmap(None, length, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
    if addr is None or addr == ctypes.c_void_p(-1).value:
        e = ctypes.get_errno()
        raise OSError(e, f"mmap for mincore: {os.strerror(e)}")
    try:
        vec = (ctypes.c_ubyte * n)()
        if lib.mincore(addr, length, vec) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mincore: {os.strerror(e)}")
        return bytearray(vec)
    finally:
        lib.munmap(addr, length)


# ---- strategy `cache`: the in-daemon prefetch cache ---------------------------------------------

class _Extent:
    __slots__ = ("fid", "path", "offset", "length", "state", "event", "data")

    def __init__(self, fid, path, offset, length):
        self.fid, self.path, self.offset, self.length = fid, path, offset, length
        self.state = _QUEUED
        self.event = threading.Event()
        self.data = b""


class PrefetchCache:
    """The daemon's private prefetch cache (see the module docstring). Built by vnodefs.mount.serve
    from the config's playlist, started once the mount is ready, consulted by the dispatcher."""

    def __init__(self, source: str, extents, trace, device, layout, page_size: int = 4096, wait_s: float = 10.0,
                 depth: int | None = None):
        self.root = os.path.realpath(source)
        self.depth = PREFETCH_DEPTH if depth is None else int(depth)
        self.trace = trace
        self.device, self.layout = device, layout
        self.ps = page_size
        self.wait_s = wait_s
        self.pid, self.uid = os.getpid(), os.getuid()
        self.extents: list[_Extent] = []
        self.pages: dict[tuple[int, int], _Extent] = {}
        self.by_fid: dict[int, list] = {}
        for path, off, ln in extents:
            fid = trace.file_id("/" + path)
            e = _Extent(fid, path, int(off), int(ln))
            self.extents.append(e)
            keys = [(fid, p) for p in range(e.offset // page_size, (e.offset + e.length - 1) // page_size + 1)]
            for k in keys:
                self.pages.setdefault(k, e)
            self.by_fid.setdefault(fid, []).extend(keys)
        self._stop = threading.Event()
        self._claim = threading.Lock()  # the prefetcher and demand reads claim queued extents under it
        self._thread: threading.Thread | None = None
        self.done = threading.Event()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vnodefs-prefetch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for e in self.extents:  # nobody may wait for an extent that will never come
            e.event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        """Read the playlist with `depth` requests in flight (threads taking extents in playlist
        order), so the device's elevator sweeps it in address order."""
        fds: dict[str, int] = {}
        lock = threading.Lock()
        nxt = iter(self.extents)

        def worker():
            while not self._stop.is_set():
                with lock:
                    e = next(nxt, None)
                if e is None:
                    return
                if not self._take(e):  # a demand read took it over, or it was invalidated
                    continue
                with lock:
                    fd = fds.get(e.path)
                    if fd is None:
                        try:
                            fd = fds[e.path] = os.open(os.path.join(self.root, e.path), os.O_RDONLY | os.O_CLOEXEC)
                        except OSError:
                            fd = fds[e.path] = -1
                if fd < 0:
                    e.state = _DONE
                    e.event.set()
                    continue
                self._fetch(e, fd, self.pid, self.uid, OP_PREFETCH)

        try:
            workers = [threading.Thread(target=worker, name=f"vnodefs-prefetch-{k}", daemon=True)
                       for k in range(max(1, self.depth) - 1)]
            for t in workers:
                t.start()
            worker()
            for t in workers:
                t.join()
        finally:
            for fd in fds.values():
                if fd >= 0:
                    os.close(fd)
            self.done.set()

    def _fetch(self, e: "_Extent", fd: int, pid: int, uid: int, op: int) -> None:
        """Read extent `e` from the host file into the cache through the device (one trace record
        of op `op`); the caller has taken it (`_take`)."""
        from vnodefs.trace import FLAG_ADDR_ESTIMATED, FLAG_SEEK

        t0 = time.monotonic_ns()
        sv, est = _NOTHING, False
        if self.device is not None:
            try:
                segs, est = self.layout.segments(fd, e.offset, e.length)
            except OSError:
                segs = []
            sv = self.device.submit(segs)
        try:
            data = os.pread(fd, e.length, e.offset)
            result = len(data)
        except OSError as err:
            data, result = b"", -(err.errno or 5)
        if e.state == _INFLIGHT:  # not invalidated meanwhile
            e.data = data
            e.state = _DONE
        e.event.set()
        flags = (FLAG_SEEK if sv.seeked else 0) | (FLAG_ADDR_ESTIMATED if est and sv.segments else 0)
        self.trace.record(t0, time.monotonic_ns() - t0, sv.delay_ns, e.offset, e.length, result, pid, uid,
                          e.fid, op, flags, sv.dev_addr, sv.dev_prev, sv.seek_ns, sv.rot_ns, sv.xfer_ns,
                          sv.segments)

    def _take(self, e: "_Extent") -> bool:
        """Claim a queued extent for fetching (the prefetcher or a demand read: exactly one wins)."""
        with self._claim:
            if e.state != _QUEUED:
                return False
            e.state = _INFLIGHT
            return True

    def invalidate(self, fid: int) -> None:
        """A write/truncate on file `fid`: its cached pages are no longer the file's."""
        keys = self.by_fid.pop(fid, None)
        if not keys:
            return
        for k in keys:
            e = self.pages.pop(k, None)
            if e is not None:
                e.data = b""
                e.state = _DONE

    def serve(self, fid: int, fd: int, buf, size: int, offset: int):
        """(result, delay_ns, flags, vnodefs.devqueue.Served) for a read the cache is involved in, or
        None when no page of it is in the playlist (the dispatcher then reads as usual). A read
        that needs an extent the prefetcher has not started yet fetches that extent itself (one
        device request, recorded as a prefetch record with the daemon's pid), so no byte is read
        from the device twice."""
        if size <= 0:
            return None
        ps = self.ps
        first, last = offset // ps, (offset + size - 1) // ps
        get = self.pages.get
        exts = [get((fid, p)) for p in range(first, last + 1)]
        if not any(exts):
            return None
        flags = 0
        seen = set()
        for e in exts:
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            if e.state == _QUEUED and self._take(e):  # not started: this read fetches it now, once
                self._fetch(e, fd, self.pid, self.uid, OP_PREFETCH)
                continue
            if e.state == _INFLIGHT:
                flags |= FLAG_PF_WAIT
                e.event.wait(self.wait_s)
        missing = [first + i for i, e in enumerate(exts) if e is None or e.state != _DONE or not e.data]
        view = memoryview((ctypes.c_char * size).from_address(ctypes.addressof(buf.contents))).cast("B")
        if not missing:
            end = offset + size
            pos = offset
            for i, e in enumerate(exts):
                if pos >= end:
                    break
                pend = min(end, (first + i + 1) * ps)
                a = pos - e.offset
                chunk = e.data[a:a + (pend - pos)]
                view[pos - offset:pos - offset + len(chunk)] = chunk
                pos += len(chunk)
                if pos < pend:
                    break  # the cached data ends here (end of file)
            return pos - offset, 0, flags | FLAG_PF_HIT, _NOTHING
        # partly cached: read the request from the host, charge the missing pages only
        sv = _NOTHING
        if self.device is not None:
            moff = max(offset, missing[0] * ps)
            mlen = min(offset + size, (missing[-1] + 1) * ps) - moff
            try:
                segs, _est = self.layout.segments(fd, moff, mlen)
            except OSError:
                segs = []
            sv = self.device.submit(segs)
        got = os.preadv(fd, [view], offset)
        while 0 < got < size:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                break
            got += n
        if len(missing) < len(exts):
            flags |= FLAG_PF_PARTIAL
        return got, sv.delay_ns, flags, sv


# ---- strategies `read` and `fadvise`: prefetch through the mount, from the run process ----------

class HostPrefetcher(threading.Thread):
    """Prefetch the playlist through the mount (`read`: 1 MiB preads; `fadvise`: WILLNEED +
    readahead(2)), then measure which playlist pages are resident (mincore). Results: `tid` (the
    thread id FUSE sees as the requester), `log` [(path, offset, length, t0_ns, t1_ns)],
    `landed` {path: set(pages)}, `errors`, `t_start_ns`, `t_end_ns`."""

    def __init__(self, mnt: str, extents, strategy: str, page_size: int = 4096, settle_s: float = 2.0,
                 depth: int | None = None):
        super().__init__(name=f"vnodefs-prefetch-{strategy}", daemon=True)
        #: requests kept in flight at once (threads): a deep queue lets the device's elevator
        #: sweep the playlist in address order with the command's own reads slotted in
        self.depth = PREFETCH_DEPTH if depth is None else int(depth)
        #: every thread id the prefetch reads come from (FUSE sees them as the requester)
        self.tids: set = set()
        if strategy not in ("read", "fadvise"):
            raise ValueError(f"HostPrefetcher strategy {strategy!r}: use read or fadvise")
        self.mnt, self.extents, self.strategy, self.ps = mnt, list(extents), strategy, page_size
        self.settle_s = settle_s
        self.tid = None
        self.log: list = []
        self.landed: dict[str, set] = {}
        self.errors: list[str] = []
        self.t_start_ns = self.t_end_ns = 0
        self.ready = threading.Event()

    def run(self) -> None:
        self.tid = threading.get_native_id()
        self.t_start_ns = time.monotonic_ns()
        fds: dict[str, int] = {}
        lock = threading.Lock()
        nxt = iter(range(len(self.extents)))
        lib = _lib()

        def fd_of(path):
            with lock:
                fd = fds.get(path)
                if fd is None:
                    try:
                        fd = fds[path] = os.open(os.path.join(self.mnt, path), os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as e:
                        self.errors.append(f"{path}: {e.strerror}")
                        fd = fds[path] = -1
                return fd

        def worker():
            with lock:
                self.tids.add(threading.get_native_id())
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                path, off, ln = self.extents[i]
                fd = fd_of(path)
                if fd < 0:
                    continue
                t0 = time.monotonic_ns()
                try:
                    if self.strategy == "read":
                        pos = off
                        while pos < off + ln:
                            n = len(os.pread(fd, min(MIB, off + ln - pos), pos))
                            if n == 0:
                                break
                            pos += n
                    else:
                        os.posix_fadvise(fd, off, ln, os.POSIX_FADV_WILLNEED)
                        lib.readahead(fd, off, ln)
                except OSError as e:
                    self.errors.append(f"{path}: {e.strerror}")
                self.log.append((path, off, ln, t0, time.monotonic_ns()))

        try:
            workers = [threading.Thread(target=worker, name=f"vnodefs-prefetch-{self.strategy}-{k}", daemon=True)
                       for k in range(max(1, self.depth) - 1)]
            for t in workers:
                t.start()
            self.tids.add(self.tid)
            self.ready.set()
            worker()
            for t in workers:
                t.join()
            self.t_end_ns = time.monotonic_ns()
            self._measure(fds)
        finally:
            self.ready.set()
            for fd in fds.values():
                if fd >= 0:
                    os.close(fd)

    def _measure(self, fds) -> None:
        want = extent_pages(self.extents, self.ps)
        deadline = time.monotonic() + (self.settle_s if self.strategy == "fadvise" else 0.0)
        prev = -1
        while True:
            landed = {}
            for path, pages in want.items():
                fd = fds.get(path, -1)
                if fd < 0:
                    continue
                try:
                    vec = mincore_pages(fd, os.fstat(fd).st_size, self.ps)
                except OSError as e:
                    self.errors.append(f"{path}: {e.strerror}")
                    continue
                landed[path] = {p for p in pages if p < len(vec) and vec[p] & 1}
            total = sum(len(v) for v in landed.values())
            self.landed = landed
            if total == prev or time.monotonic() >= deadline:  # fadvise is asynchronous: let it settle
                break
            prev = total
            time.sleep(0.05)


@contextlib.contextmanager
def playlist_file(extents, directory: str | None = None):
    """A temporary JSON file holding the playlist (too big for the daemon's argv config)."""
    import json
    import tempfile

    fd, path = tempfile.mkstemp(prefix="vnodefs-playlist-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump([list(e) for e in extents], fh)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
