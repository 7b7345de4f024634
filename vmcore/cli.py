"""`vmcore` command line: the wiring layer's entry point (subcommands `replay` and `experiment`;
`scenario`, from vmcore.scenario, plugs into the same subparsers).

Owns: `main(argv) -> int`, the argument parsers, the text / JSON output of `vmcore replay`, the
progress bar, and reading vnodefs binary traces (this module may import vnodefs; vmcore.replay,
a model module, may not).

    vmcore replay TRACE --memory SIZE [--policy mach|lru|fifo|clock] [--page-size N] [--json]
                  [--swap DIR] [--progress | --no-progress] [--ops read,write] [--pid PID]
    vmcore experiment seeding [--workload NAME ...] [--runs K] [--latency MODEL] [--json FILE]
                  [--plot FILE] [--size small|default|large] [--work DIR] [--seed N] [--keep]
                  (vmcore.experiment: parser, run loop and output live there)

TRACE is a text trace (`PAGE [r|w]` or `FILE OFFSET [r|w]` per line, `#` comments), a numpy .npy
trace, or a vnodefs trace file (told apart by content). Output: vm_stat-style lines, or with --json
one JSON object with the vm_stat counters plus `accesses`, `misses` (zero fills + hard faults),
`policy`, `memory`, `page_size`, `trace` and a few more.

Exit status: 0 success; 2 bad input (unknown policy, bad size, memory below the kernel's reserve,
missing or malformed trace: one line on stderr naming what was wrong, no traceback); 1 a VM error
during the replay (e.g. KERN_RESOURCE_SHORTAGE); 130 interrupted.
Caveats: the progress bar (rich, through vmcore.report) goes to stderr, at most 5 updates a second,
only when stderr is a TTY unless --progress.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from vmcore.errors import InvalidArgument, VMError
from vmcore.report import ProgressBar

PROG = "vmcore"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`vmcore replay: error: ... (see --help)`), exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _kernel_class():
    """`vmcore.Kernel` (the wiring subclass in vmcore.lab) when it exists, else the model's Kernel."""
    try:
        import vmcore.lab  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "vmcore.lab":
            raise
        from vmcore.kernel import Kernel
        return Kernel
    from vmcore import Kernel
    return Kernel


# ---- progress -----------------------------------------------------------------------------------------

#: the replay's progress bar on stderr: vmcore.report's rich bar, `label  42.0% [##########......]
#: 420k/1.00M accesses 1.20Maccesses/s ETA 0:00:03`
Progress = ProgressBar


def _si(x: float) -> str:
    for unit, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= d:
            return f"{x / d:.1f}{unit}"
    return f"{x:.0f}"


# ---- trace loading (text / npy in vmcore.replay, vnodefs traces here) -----------------------------------

def _vnodefs_trace_module():
    try:
        from vnodefs import trace as vtrace
    except ImportError:
        return None
    return vtrace if hasattr(vtrace, "load") else None


def _is_vnodefs_trace(head: bytes) -> bool:
    vtrace = _vnodefs_trace_module()
    return vtrace is not None and head.startswith(vtrace.MAGIC)


def load_trace(path: str, page_size: int, ops: tuple[str, ...] = ("read", "write"), pid: int | None = None):
    """An AccessTrace from a text, .npy or vnodefs trace file."""
    from vmcore.replay import AccessTrace, TraceError, load, read_trace_bytes

    head = read_trace_bytes(path, 64)
    if not _is_vnodefs_trace(head):
        if pid is not None:
            raise TraceError(f"--pid applies to vnodefs traces only; {path} is a text or numpy trace")
        return load(path, page_size)
    return _load_vnodefs(path, page_size, ops, pid, AccessTrace, TraceError)


def _load_vnodefs(path, page_size, ops, pid, AccessTrace, TraceError):
    """Expand a vnodefs trace's read/write requests into page accesses (vnodefs.trace.Trace
    .expand_pages, at the replay's page size: the byte ranges are exact, so any page size works)."""
    import warnings

    import numpy as np

    vtrace = _vnodefs_trace_module()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tr = vtrace.load(path)
        except ValueError as e:  # not a trace, or a damaged one: the message names the file once
            msg = str(e)
            raise TraceError(f"cannot read vnodefs trace {msg}" if msg.startswith(path + ":")
                             else f"cannot read vnodefs trace {path}: {msg}") from None
        except OSError as e:
            raise TraceError(f"cannot read vnodefs trace {path}: {e}") from None
    for w in caught:  # e.g. a trace cut short by a crash: say so in one line, replay what is there
        print(f"{PROG} replay: warning: {str(w.message).splitlines()[0]}", file=sys.stderr)
    try:
        pages = tr.expand_pages(ops=tuple(ops), page_size=page_size)
    except ValueError as e:  # an unknown op name
        raise TraceError(f"{path}: {e}") from None
    if pid is not None:
        pages = pages[pages["pid"] == pid]
    is_write = pages["op"] == vtrace.OPS["write"]
    fids = pages["file"].astype(np.int64)
    if fids.size:
        uniq, dense = np.unique(fids, return_inverse=True)
    else:
        uniq, dense = np.zeros(0, np.int64), fids
    files = tr.files or {}
    names = [files.get(int(u), f"file{int(u)}") for u in uniq]
    # two ids for one path (a file renamed or re-created under the mount) stay separate regions
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            names[i] = f"{n}#{int(uniq[i])}"
        seen.add(names[i])
    return AccessTrace(dense, pages["page"], is_write, names or [""], path)


# ---- vmcore replay ----------------------------------------------------------------------------------

def _add_replay(sub) -> None:
    p = sub.add_parser(
        "replay", help="replay a page-access trace through one task and print the counters",
        description="Replay an access trace through one task of a fresh kernel and print vm_stat-style "
                    "counters. TRACE is a text trace (one 'PAGE [r|w]' or 'FILE OFFSET [r|w]' per line, "
                    "'#' comments), a numpy .npy trace, or a vnodefs trace file.",
        epilog="Example: vmcore replay trace.txt --memory 16MiB --policy lru --json")
    p.add_argument("trace", metavar="TRACE", help="trace file (text, .npy or vnodefs)")
    p.add_argument("--memory", required=True, metavar="SIZE",
                   help="physical memory of the kernel, e.g. 16MiB, 512KiB, 1GiB or bytes (units B, K/KiB, "
                        "M/MiB, G/GiB, T/TiB, P/PiB, E/EiB, all binary); refused unless its page frames "
                        "fit in this machine's available memory")
    p.add_argument("--policy", default="mach", metavar="POLICY",
                   help="replacement policy: mach (default: active/inactive queues), lru, fifo or clock")
    p.add_argument("--page-size", default="4096", metavar="N",
                   help="page size: a power of two from 512 to 1MiB, in bytes or e.g. 16KiB (default 4096); "
                        "vnodefs locality --page-size takes the same values")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    p.add_argument("--swap", metavar="DIR", default=None,
                   help="back anonymous memory with a swapd pool of real sparse swap files in DIR "
                        "(default: the in-memory pager). DIR's parent must exist; DIR is created if missing. "
                        "At the end the swap files are removed, and so is DIR if this command created it; "
                        "an existing DIR keeps only its empty .swapd.lock (swapd/FORMAT.md)")
    p.add_argument("--ops", default="read,write", metavar="OPS",
                   help="vnodefs traces: which request kinds to replay (default read,write)")
    p.add_argument("--pid", type=int, default=None, help="vnodefs traces: only this process's requests")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show the progress bar even when stderr is not a terminal")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")
    p.add_argument("--chunk", type=int, default=1 << 16, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_replay)


def _counter_lines(result) -> list[str]:
    try:
        from vmcore.stats import VM_STAT_KEYS
    except ImportError:  # pragma: no cover - the model's stats module names the standard ten
        VM_STAT_KEYS = ()
    c = result.counters
    keys = [k for k in VM_STAT_KEYS if k in c] + [k for k in c if k not in VM_STAT_KEYS]
    out = []
    for k in keys:
        label = f'"{k}":' if k == "Translation faults" else f"{k}:"
        out.append(f"{label:<25s} {c[k]:10d}.")
    return out


def _remove_swap_dir(path: str) -> None:
    """Remove a swap directory this command created, once its pool is closed: the lock file and the
    directory, only if nothing else was put there."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    if set(names) <= {".swapd.lock"}:
        for name in names:
            try:
                os.unlink(os.path.join(path, name))
            except OSError:
                return
        try:
            os.rmdir(path)
        except OSError:
            pass


def cmd_replay(args) -> int:
    from vmcore.policy import POLICIES
    from vmcore.replay import replay
    from vmcore.types import parse_page_size, parse_size

    name = f"{PROG} replay"
    policy = args.policy.strip().lower()
    if policy not in POLICIES:
        raise InvalidArgument(f"unknown replacement policy {args.policy!r} (valid: {', '.join(POLICIES)})")
    memory = parse_size(args.memory, "memory")
    if memory <= 0:
        raise InvalidArgument(f"memory {args.memory!r} must be positive")
    args.page_size = parse_page_size(args.page_size)
    if args.chunk < 1:
        raise InvalidArgument(f"--chunk {args.chunk} must be >= 1")
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    if not ops:
        raise InvalidArgument("--ops names no request kind (e.g. read,write)")
    from vmcore.lab import check_memory_fits

    check_memory_fits(args.memory, args.page_size)  # before a frame or a swap file exists
    Kernel = _kernel_class()
    extra = {}
    made_swap_dir = False
    if args.swap is not None:
        swap = os.path.abspath(args.swap)
        parent = os.path.dirname(swap)
        if not os.path.isdir(parent):
            raise InvalidArgument(f"--swap {args.swap}: the directory {parent} does not exist (create it, or "
                                  f"give a DIR whose parent exists)")
        made_swap_dir = not os.path.lexists(swap)
        extra["swap"] = args.swap
    try:
        kernel = Kernel(memory=memory, page_size=args.page_size, policy=policy, **extra)
    except BaseException:
        if made_swap_dir:
            _remove_swap_dir(args.swap)
        raise
    try:
        trace = load_trace(args.trace, args.page_size, ops, args.pid)
        if len(trace) == 0:
            raise InvalidArgument(f"trace {args.trace} holds no accesses")
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        bar = Progress(name, enabled=show and len(trace) > 0)
        try:
            result = replay(kernel, trace, chunk=args.chunk, progress=bar)
        finally:
            bar.close()
    finally:
        close = getattr(kernel, "close", None)
        if callable(close):
            close()
        if made_swap_dir:
            _remove_swap_dir(args.swap)
    if args.json:
        out = {"trace": args.trace, "policy": policy, "memory": memory, "page_size": args.page_size,
               "memory_pages": memory // args.page_size, "files": len(trace.names), "swap": args.swap}
        out.update(result.as_dict())
        print(json.dumps(out))
    else:
        print(f"Replay of {args.trace}: {result.accesses} accesses, {result.misses} misses "
              f"({100 * result.misses / max(result.accesses, 1):.2f}%), footprint {result.footprint} pages "
              f"in {len(trace.names)} file(s)")
        print(f"Policy {policy}, memory {args.memory} ({memory // args.page_size} pages of {args.page_size} "
              f"bytes), {result.wall_s:.3f} s ({_si(result.accesses / max(result.wall_s, 1e-9))} accesses/s)")
        print(f"Mach Virtual Memory Statistics: (page size of {args.page_size} bytes)")
        for line in _counter_lines(result):
            print(line)
    return 0


# ---- vmcore experiment (vmcore.experiment) ---------------------------------------------------------------

def _add_experiment(sub) -> None:
    from vmcore.experiment import add_experiment_parser

    add_experiment_parser(sub)


# ---- main ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from vmcore import __version__

    parser = _Parser(prog=PROG, description="vmcore: a runnable model of the Mach / Mac OS X VM system.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_replay(sub)
    from vmcore.scenario import add_scenario_parser

    add_scenario_parser(sub)
    _add_experiment(sub)
    from vmcore.experiment_sweep import add_sweep_parser

    add_sweep_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported in one line
        return e.code if isinstance(e.code, int) else 2
    if getattr(args, "func", None) is None:  # no command: usage on stderr, as for a usage error
        parser.print_help(sys.stderr)
        return 2
    prog = f"{PROG} {args.command}"
    try:
        return args.func(args)
    except InvalidArgument as e:  # bad input, including TraceError
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except VMError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
