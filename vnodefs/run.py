"""`vnodefs run`: run one command against a fresh vnodefs mount and report what reached the disk.

Owns: `run_command(...) -> (exit_status, summary dict)`, `default_trace_path(kind)`.
Called by vnodefs.cli (and usable by the wiring layer of other packages).

Flow: validate -> mount SOURCE on a fresh temporary mount point -> run COMMAND as a child with
`{mnt}` in its arguments replaced by the mount point and VNODEFS_MNT set -> os.wait4 for its
status and rusage (ru_majflt covers the command and every descendant it waited for) -> unmount
(always, even on error or Ctrl-C) -> load the trace and summarize it.

Trace location: `--trace FILE` if given, else `./vnodefs-run-YYYYmmdd-HHMMSS.vtrace` in the current
directory (like perf.data; printed in the summary and in the JSON), or in $TMPDIR when the current
directory is not writable (also printed). `--no-trace` keeps nothing (the summary is then empty).

Exit status: COMMAND's status; 128+N if it died of signal N; 127 if it could not be started.
Caveats: while COMMAND runs, SIGINT is left to the command (it shares the terminal's process group)
and SIGTERM is forwarded to it; the mount is removed afterwards either way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from vnodefs.mount import MountError, mounted, validate
from vnodefs.summary import summarize
from vnodefs.trace import load


class CommandNotFound(MountError):
    """COMMAND could not be started (exit status 127)."""


def default_trace_path(kind: str = "run") -> tuple[str, str | None]:
    """(path, note): ./vnodefs-<kind>-<time>.vtrace, or a $TMPDIR path with a note saying so; a name
    that is taken (two traces in one second) gets a -2, -3, ... suffix, never overwriting a file."""
    stem = f"vnodefs-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    here = os.access(".", os.W_OK)
    d = os.getcwd() if here else tempfile.gettempdir()
    path, n = os.path.join(d, stem + ".vtrace"), 1
    while os.path.lexists(path):
        n += 1
        path = os.path.join(d, f"{stem}-{n}.vtrace")
    return path, (None if here else f"the current directory is not writable; the trace goes to {path}")


def substitute(args: list[str], mnt: str) -> list[str]:
    return [a.replace("{mnt}", mnt) for a in args]


def run_command(source: str, command: list[str], trace: str | None, latency: str = "none",
                cache: str = "page", read_only: bool = False, xattr: bool = False, env: dict | None = None,
                log=lambda msg: None, extra: dict | None = None, on_start=None, after_exit=None,
                command_mask=None, layout: str = "auto", allow_other: bool = False,
                strict_metadata: bool = False, trace_metadata: bool = False,
                metadata_timeout: float | None = None, writeback_cache: bool = False) -> tuple[int, dict]:
    """Run `command` against a fresh mount of `source`; return (exit status, summary dict).
    Raises MountError for bad input or a failed mount (nothing is left mounted).

    Hooks (used by vnodefs.seeding): `extra` is merged into the daemon's config; `on_start(mnt,
    t0_ns)` is called right after COMMAND started, `after_exit(mnt)` after it exited and before the
    unmount; `command_mask(trace) -> bool array` limits the summary to COMMAND's own records.
    The summary also holds `command_start_ns` / `command_end_ns` (CLOCK_MONOTONIC, the trace's clock)."""
    if not command:
        raise MountError("no command given: put it after --, e.g. vnodefs run SRC -- cat {mnt}/file")
    exe = command[0]
    if "{mnt}" not in exe and (shutil.which(exe) is None if os.sep not in exe else not os.path.exists(exe)):
        raise CommandNotFound(f"command not found: {exe}")
    # validate against an empty directory before we mount (mounted() validates again)
    with tempfile.TemporaryDirectory(prefix="vnodefs-check-") as empty:
        validate(source, empty, trace, latency, cache, layout, writeback_cache)
    status = 0
    ru = None
    t0 = t1 = 0.0
    t0_ns = t1_ns = 0
    with mounted(source, trace=trace, latency=latency, cache=cache, read_only=read_only, xattr=xattr,
                 extra=extra, layout=layout, allow_other=allow_other, strict_metadata=strict_metadata,
                 trace_metadata=trace_metadata, metadata_timeout=metadata_timeout,
                 writeback_cache=writeback_cache) as m:
        mnt = m.mountpoint
        argv = substitute(command, mnt)
        child_env = dict(os.environ if env is None else env)
        child_env["VNODEFS_MNT"] = mnt
        exe = argv[0]
        log(f"vnodefs run: {source} mounted on {mnt} (cache {cache}, latency {latency}); running {' '.join(argv)}")
        t0_ns = time.monotonic_ns()
        t0 = t0_ns / 1e9
        try:
            proc = subprocess.Popen(argv, env=child_env)
        except OSError as e:
            raise CommandNotFound(f"cannot run {exe}: {e.strerror}") from None
        if on_start is not None:
            on_start(mnt, t0_ns)
        old_term = signal.signal(signal.SIGTERM, lambda s, f: proc.send_signal(signal.SIGTERM))
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            while True:
                try:
                    _, wstatus, ru = os.wait4(proc.pid, 0)
                    break
                except ChildProcessError:
                    break
                except InterruptedError:
                    continue
        finally:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)
            proc.returncode = 0  # reaped by wait4; keep Popen from waiting again
        t1_ns = time.monotonic_ns()
        t1 = t1_ns / 1e9
        if os.WIFSIGNALED(wstatus):
            status = 128 + os.WTERMSIG(wstatus)
        else:
            status = os.waitstatus_to_exitcode(wstatus)
        if after_exit is not None:
            after_exit(mnt)
    summary = {}
    if trace is not None:
        tr = load(trace)
        summary = summarize(tr, None if command_mask is None else command_mask(tr))
    summary.update({
        "wall_s": t1 - t0,
        "exit_status": status,
        "major_faults": int(ru.ru_majflt) if ru is not None else 0,
        "minor_faults": int(ru.ru_minflt) if ru is not None else 0,
        "user_s": float(ru.ru_utime) if ru is not None else 0.0,
        "system_s": float(ru.ru_stime) if ru is not None else 0.0,
        "command": command,
        "source": os.path.abspath(source),
        "trace": trace,
        "command_start_ns": t0_ns,
        "command_end_ns": t1_ns,
    })
    for key in ("requests", "bytes_read", "pages_read"):
        summary.setdefault(key, 0)
    return status, summary
