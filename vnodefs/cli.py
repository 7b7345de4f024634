"""`vnodefs` command line: `main(argv) -> int`.

Owns: the argument parsers, help texts and exit statuses of

    vnodefs mount SOURCE MOUNTPOINT [--trace FILE [--force] | --no-trace] [--latency none|hdd|ssd|nvme|SEEK_US:MBPS]
                  [--layout auto|fiemap|synthetic]
                  [--cache page|direct] [--read-only] [--foreground]
    vnodefs umount MOUNTPOINT
    vnodefs run SOURCE [mount options] [--json FILE] -- COMMAND [ARGS...]
    vnodefs run --profile APP [--var DIR] [--prefetch cache|read|fadvise|off] [--record]
                [--min-count N] [--window S] [--prefetch-max MiB] [--prefetch-gap PAGES|auto]
                [--no-drop-cache] SOURCE [mount options] -- COMMAND ...   (vnodefs.seeding)
    vnodefs demo [--size MiB] [--keep DIR] [--seed N]
    vnodefs trace TRACE [--json]          (alias: vnodefs summary)
    vnodefs resident PATH... [--no-recurse] [--json]   (vnodefs.resident: page-cache residency)

Exit statuses: 0 success; 2 bad input or a failed mount/unmount (one line on stderr, nothing left
mounted); `run` exits with COMMAND's status (128+N for signal N, 127 if it cannot be started);
130 interrupted. Messages and summaries go to stderr, JSON to stdout (`trace --json`) or a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vnodefs.latency import HELP as LATENCY_HELP

PROG = "vnodefs"

CACHE_HELP = ("page: the kernel page cache is on (libfuse auto_cache), so the trace holds page-cache "
              "misses only, and shared writable mmap works; direct: direct_io on every open, so every "
              "read and write reaches vnodefs with the program's own offset and size (the trace holds "
              "every access), but this kernel/libfuse refuse shared mmap (ENODEV): use page for that")


def _mib_arg(s: str) -> float:
    """A size in MiB: a bare number is MiB (as before); with a unit it is the size grammar of every
    command (vmcore.types.parse_size: 512KiB, 1.5GiB, ...)."""
    from vmcore.errors import InvalidArgument
    from vmcore.types import parse_size

    try:
        v = float(s)
    except ValueError:
        try:
            v = parse_size(s) / (1 << 20)
        except InvalidArgument as e:
            raise argparse.ArgumentTypeError(e.args[0]) from None
    return v  # the range is the command's to check


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", metavar="FILE", help="write the request trace to FILE (default: "
                   "./vnodefs-<name>-<time>.vtrace in the current directory)")
    p.add_argument("--no-trace", action="store_true", help="record nothing (for overhead measurements)")
    p.add_argument("--force", action="store_true", help="overwrite the --trace FILE if it exists (without "
                   "--force an existing trace is refused; a trace a live mount is writing is refused always; "
                   "a default name never overwrites: it gets a -2, -3, ... suffix)")
    p.add_argument("--latency", default="none", metavar="MODEL", help=LATENCY_HELP)
    p.add_argument("--layout", default="auto", choices=("auto", "fiemap", "synthetic"),
                   help="where the device model finds a file's bytes: fiemap (the host file's real "
                   "extents, FS_IOC_FIEMAP), synthetic (the files of SOURCE end to end in inode order), "
                   "auto (default: fiemap where the host file system supports it, else synthetic)")
    p.add_argument("--cache", default="page", choices=("page", "direct"), help=CACHE_HELP)
    p.add_argument("--read-only", action="store_true", help="mount read-only")
    p.add_argument("--strict-metadata", action="store_true", help="no kernel caching of names, missing "
                   "names and attributes: every lookup and getattr reaches vnodefs, and a change made "
                   "in SOURCE behind the mount is seen at once (by default the kernel answers them "
                   "from its cache for up to 1 s; changes made through the mount are always seen at once)")
    p.add_argument("--metadata-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long the kernel may answer lookups and attributes from its cache "
                   "(default 1; 0 is --strict-metadata): the bound on how stale a change made in SOURCE "
                   "behind the mount may look")
    p.add_argument("--trace-metadata", action="store_true", help="also record the metadata requests that "
                   "reach vnodefs (getattr: lookups and stats; readdir, opendir, readlink), to study a "
                   "launch's metadata I/O; with the kernel's caches on only their misses arrive (add "
                   "--strict-metadata for all of them)")
    p.add_argument("--writeback-cache", action="store_true", help="page mode: let the kernel cache writes and "
                   "send them later as whole pages (write(2) returns at memory speed; fsync and close still "
                   "wait for the host file). The trace then holds writes as they are flushed, with pid 0, "
                   "not as the program made them; the trace header says writeback_cache: true. The kernel "
                   "then keeps each file's size and mtime itself: a change made in SOURCE behind the mount, "
                   "or through another hard-link name, is not seen while it holds the file")
    p.add_argument("--allow-other", action="store_true", help="let every user use the mount (FUSE allow_other; "
                   "needs root or user_allow_other in /etc/fuse.conf): the host's modes decide what each "
                   "may do, and what a caller creates is the caller's, as on the host")
    p.add_argument("--xattr", action="store_true", help="serve extended attributes too (off by default: "
                   "the kernel then asks for security.capability before every write, one extra request each)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="vnodefs: a traced FUSE passthrough over a host directory (the vnode "
                "pager of the Mach VM model): every read, write, truncate, fsync, open and release that "
                "reaches it is recorded with pid, file, offset, length, duration and result.")
    from vnodefs import __version__

    p.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    m = sub.add_parser("mount", help="mount SOURCE on MOUNTPOINT (returns once the mount is ready)",
                       description="Mount the host directory SOURCE on MOUNTPOINT through vnodefs. Returns "
                       "once the mount is ready; the file system runs in a background daemon until "
                       "`vnodefs umount MOUNTPOINT`. Prints where the trace goes. Sparse files pass through: "
                       "fallocate (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE), lseek SEEK_DATA/SEEK_HOLE and "
                       "copy_file_range are served by the host file; COLLAPSE_RANGE / INSERT_RANGE fail "
                       "with EOPNOTSUPP on every FUSE mount (Linux's FUSE module refuses them).")
    m.add_argument("source", metavar="SOURCE")
    m.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_mount_options(m)
    m.add_argument("--foreground", action="store_true", help="run the file system in this process until "
                   "it is unmounted (Ctrl-C unmounts)")

    u = sub.add_parser("umount", help="flush the trace, unmount, wait for the daemon",
                       description="Unmount a vnodefs mount: the daemon flushes and closes the trace and "
                       "exits; also removes a mount whose daemon died.")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")

    r = sub.add_parser("run", help="run COMMAND against a fresh mount of SOURCE and summarize its I/O",
                       usage="vnodefs run SOURCE [options] [--json FILE] -- COMMAND [ARGS...]",
                       description="Mount SOURCE on a fresh temporary mount point, run COMMAND (every "
                       "'{mnt}' in its arguments is replaced by the mount point, and VNODEFS_MNT is set), "
                       "unmount, print a one-screen summary (requests, bytes, pages, sequential fraction, "
                       "time blocked) on stderr, and exit with COMMAND's exit status.")
    r.add_argument("source", metavar="SOURCE")
    _add_mount_options(r)
    r.add_argument("--json", metavar="FILE", help="also write the summary as JSON to FILE, or to stdout "
                   "if FILE is - (the text summary is on stderr either way; keys include wall_s, "
                   "exit_status, requests, bytes_read, pages_read, major_faults, trace)")
    r.add_argument("--quiet", action="store_true", help="do not print the summary")
    g = r.add_argument_group("launch profiles (record a real program's launch, seed the next ones)")
    g.add_argument("--profile", metavar="APP", help="use the launch profile APP of the command's executable "
                   "(path + inode + mtime): the first run records the pages the command's process tree read "
                   "through the mount into VAR/vm/app_profile/<uid>/APP.aprof; later runs prefetch them, then "
                   "report blocking requests, major faults and prefetch used/wasted/late pages. Every such run "
                   "is cold: fresh mount, host cache of SOURCE dropped (posix_fadvise DONTNEED)")
    g.add_argument("--var", default="var", metavar="DIR", help="the VAR directory of the profile tree (default: var)")
    g.add_argument("--prefetch", choices=("cache", "read", "fadvise", "off"), default=None,
                   help="how a seeded run prefetches: cache (default; BootCache-style: the daemon reads the "
                   "profile's extents, sorted by device address across all files and coalesced, 16 requests in "
                   "flight, into a private cache from mount time and serves the command's reads from it; a read "
                   "of an extent not fetched yet fetches it at once; works in direct mode too), read (a helper reads the extents "
                   "through the mount so they land in the kernel page cache; page mode), fadvise "
                   "(posix_fadvise WILLNEED + readahead(2) on the mount's files; page mode), off (a cold run "
                   "that keeps the profile)")
    g.add_argument("--record", action="store_true", help="also record a seeded run and merge it into the profile "
                   "(a seeded run records nothing otherwise)")
    g.add_argument("--min-count", type=int, default=1, metavar="N", help="with --record: keep pages touched in at "
                   "least N of the merged launches (default 1)")
    g.add_argument("--window", type=float, default=None, metavar="S", help="launch window: record the pages read "
                   "in the first S seconds of the command (default: the whole run)")
    g.add_argument("--prefetch-max", type=_mib_arg, default=None, metavar="SIZE", help="cap the prefetch (and "
                   "the daemon's cache) at SIZE: MiB, or with a unit as in 512KiB, 1GiB (default: the whole profile)")
    g.add_argument("--prefetch-gap", default="auto", metavar="PAGES", help="bridge holes of up to PAGES pages "
                   "between profiled pages (read through rather than seek over); auto (default) = the pages "
                   "the latency model transfers in one seek time (hdd 234, ssd 12, none 0)")
    g.add_argument("--no-drop-cache", action="store_true", help="do not drop the host's page cache of SOURCE "
                   "before the run (then the run is not cold on the host)")

    d = sub.add_parser("demo", help="generate data, mount it, read it three ways, print the locality summary",
                       description="Generate a seeded data directory, mount it through vnodefs (direct "
                       "mode, so the trace holds every access), read it sequentially, read it randomly, "
                       "map a file and touch its pages (page mode if direct mode refuses shared mmap), "
                       "unmount, and print the locality summary of each phase. Cleans up everything "
                       "unless --keep is given.")
    d.add_argument("--size", type=_mib_arg, default=32, metavar="SIZE", help="total data size: MiB, or with a "
                   "unit as in 512KiB, 1GiB (default 32 MiB)")
    d.add_argument("--keep", metavar="DIR", help="keep the data and traces in DIR (created if missing)")
    d.add_argument("--seed", type=int, default=1, help="random seed of the data and access pattern (default 1)")
    d.add_argument("--latency", default="none", metavar="MODEL", help=LATENCY_HELP)
    d.add_argument("--json", metavar="FILE", help="also write the per-phase summaries as JSON to FILE, or to "
                   "stdout if FILE is - (the table then goes to stderr)")

    for name in ("trace", "summary"):
        t = sub.add_parser(name, help="print the summary of a trace file" + (" (alias of trace)" if name == "summary" else ""),
                           description="Print the one-screen summary of a vnodefs trace. Definitions: "
                           "requests = read + write requests; pages = pages spanned by reads; sequential = "
                           "fraction of requests that start where the previous one on the same file ended; "
                           "time blocked = summed durations of data requests (including modelled latency), "
                           "its modelled part split into seek, rotation, transfer (the device model's "
                           "service time) and queueing (delay minus service); device busy = the time at "
                           "least one read, write or prefetch was in service on the device (the union of "
                           "their service intervals); device and layout = the device model and the file "
                           "layout the trace was taken under ('none' for a version-1 trace); "
                           "pid 0 is the kernel. JSON keys include time_blocked_s, seek_s, rotation_s, "
                           "transfer_s, queue_s, device_busy_s, device_model, layout.")
        t.add_argument("trace", metavar="TRACE")
        t.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    from vnodefs.export import add_export_parser
    from vnodefs.locality import add_locality_parser
    from vnodefs.resident import add_resident_parser

    add_locality_parser(sub)
    add_export_parser(sub)
    add_resident_parser(sub)
    return p


def write_json(path: str, obj, indent: int = 2) -> None:
    """`obj` as JSON to the file `path`, or to stdout when `path` is "-"."""
    if path == "-":
        json.dump(obj, sys.stdout, indent=indent)
        sys.stdout.write("\n")
        sys.stdout.flush()
        return
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")


def _err(cmd: str, msg: str) -> int:
    print(f"vnodefs {cmd}: {msg}", file=sys.stderr)
    return 2


def _trace_arg(args, kind: str) -> tuple[str | None, str | None]:
    from vnodefs.run import default_trace_path

    if args.no_trace:
        if args.trace:
            raise ValueError("--trace and --no-trace exclude each other")
        return None, None
    if args.trace:
        from vnodefs.trace import in_use_message, trace_in_use

        path = os.path.abspath(args.trace)
        if trace_in_use(path):
            raise ValueError(in_use_message(args.trace))
        if os.path.isfile(path) and os.path.getsize(path) > 0 and not args.force:
            raise ValueError(f"trace file {args.trace} exists; give --force to overwrite it, or another --trace")
        return path, None
    if args.force:
        raise ValueError("--force needs --trace FILE (a default trace name never overwrites)")
    return default_trace_path(kind)


def cmd_mount(args) -> int:
    from vnodefs.mount import MountError, check_allow_other, check_metadata_timeout, mount, serve, validate

    try:
        trace, note = _trace_arg(args, os.path.basename(os.path.abspath(args.mountpoint)) or "mount")
    except ValueError as e:
        return _err("mount", str(e))
    if note:
        print(f"vnodefs mount: {note}", file=sys.stderr)
    try:
        validate(args.source, args.mountpoint, trace, args.latency, args.cache, args.layout, args.writeback_cache)
        if args.foreground:
            config = {"source": os.path.realpath(args.source), "mountpoint": os.path.realpath(args.mountpoint),
                      "trace": trace, "cache": args.cache, "latency": args.latency, "read_only": args.read_only,
                      "xattr": args.xattr, "layout": args.layout, "allow_other": args.allow_other,
                      "strict_metadata": args.strict_metadata, "trace_metadata": args.trace_metadata,
                      "metadata_timeout": args.metadata_timeout, "writeback_cache": args.writeback_cache}
            if args.allow_other:
                check_allow_other()
            check_metadata_timeout(args.metadata_timeout)

            def ready(msg):
                print(f"vnodefs: mounted {args.source} on {args.mountpoint} (foreground; Ctrl-C or "
                      f"`vnodefs umount` to stop); trace: {trace or 'none'}", file=sys.stderr, flush=True)

            return serve(config, ready=ready)
        m = mount(args.source, args.mountpoint, trace=trace, latency=args.latency, cache=args.cache,
                  read_only=args.read_only, xattr=args.xattr, layout=args.layout, allow_other=args.allow_other,
                  strict_metadata=args.strict_metadata, trace_metadata=args.trace_metadata,
                  metadata_timeout=args.metadata_timeout, writeback_cache=args.writeback_cache)
    except MountError as e:
        return _err("mount", str(e))
    ra = m.info.get("readahead_kb")
    lay = (m.info.get("layout") or {}).get("kind", "none")
    print(f"vnodefs: mounted {m.source} on {m.mountpoint} (daemon pid {m.pid}, cache {m.cache}, device "
          f"{m.latency}, layout {lay}, readahead {ra} KiB)", file=sys.stderr)
    print(f"vnodefs: trace: {trace or 'none (--no-trace)'}", file=sys.stderr)
    return 0


def cmd_umount(args) -> int:
    from vnodefs.mount import MountError, read_state, umount

    st = read_state(os.path.realpath(args.mountpoint)) if os.path.exists(args.mountpoint) else None
    try:
        umount(args.mountpoint)
    except MountError as e:
        return _err("umount", str(e))
    if st and st.get("trace"):
        print(f"vnodefs: unmounted {args.mountpoint}; trace: {st['trace']}", file=sys.stderr)
    else:
        print(f"vnodefs: unmounted {args.mountpoint}", file=sys.stderr)
    return 0


def cmd_run(args, command: list[str]) -> int:
    from vnodefs.mount import MountError
    from vnodefs.run import CommandNotFound, run_command
    from vnodefs.summary import format_summary

    try:
        trace, note = _trace_arg(args, "run")
    except ValueError as e:
        return _err("run", str(e))
    if note:
        print(f"vnodefs run: {note}", file=sys.stderr)
    if args.json and args.json != "-":
        jdir = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(jdir) or not os.access(jdir, os.W_OK) or os.path.isdir(args.json):
            return _err("run", f"cannot write JSON file {args.json}")
    if args.profile is None:
        for opt, val in (("--prefetch", args.prefetch), ("--record", args.record or None),
                         ("--window", args.window), ("--prefetch-max", args.prefetch_max),
                         ("--no-drop-cache", args.no_drop_cache or None)):
            if val is not None:
                return _err("run", f"{opt} needs --profile APP")
    else:
        return _cmd_run_profile(args, command, trace)
    try:
        status, summary = run_command(args.source, command, trace, latency=args.latency, cache=args.cache,
                                      read_only=args.read_only, xattr=args.xattr, layout=args.layout,
                                      allow_other=args.allow_other, strict_metadata=args.strict_metadata,
                                      trace_metadata=args.trace_metadata, metadata_timeout=args.metadata_timeout,
                                      writeback_cache=args.writeback_cache)
    except CommandNotFound as e:
        print(f"vnodefs run: {e}", file=sys.stderr)
        return 127
    except MountError as e:
        return _err("run", str(e))
    if not args.quiet:
        text = format_summary(summary, title=f"vnodefs run: {' '.join(command)}: exit status {status}, "
                              f"{summary['wall_s']:.3f} s, {summary['major_faults']} major faults") \
            if trace else f"vnodefs run: exit status {status}, {summary['wall_s']:.3f} s (no trace)"
        print(text, file=sys.stderr)
        if trace:
            print(f"  trace         {trace}", file=sys.stderr)
    if args.json:
        write_json(args.json, summary)
    return status


def _cmd_run_profile(args, command: list[str], trace: str | None) -> int:
    from vnodefs.mount import MountError
    from vnodefs.run import CommandNotFound
    from vnodefs.seeding import DEFAULT_STRATEGY, format_report, run_seeded

    try:
        status, summary = run_seeded(args.source, command, args.profile, trace, var=args.var,
                                     strategy=args.prefetch or DEFAULT_STRATEGY, record=args.record, window=args.window,
                                     min_count=args.min_count, latency=args.latency, cache=args.cache,
                                     read_only=args.read_only, xattr=args.xattr, allow_other=args.allow_other,
                                     strict_metadata=args.strict_metadata, trace_metadata=args.trace_metadata,
                                     metadata_timeout=args.metadata_timeout, writeback_cache=args.writeback_cache,
                                     prefetch_max_mib=args.prefetch_max, gap=args.prefetch_gap,
                                     drop_cache=not args.no_drop_cache, layout=args.layout,
                                     log=lambda m: print(m, file=sys.stderr, flush=True))
    except CommandNotFound as e:
        print(f"vnodefs run: {e}", file=sys.stderr)
        return 127
    except MountError as e:
        return _err("run", str(e))
    if not args.quiet:
        print(format_report(summary), file=sys.stderr)
    if args.json:
        write_json(args.json, summary)
    return status


def cmd_trace(args) -> int:
    import warnings

    from vnodefs.summary import format_summary, summarize
    from vnodefs.trace import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tr = load(args.trace)
        except FileNotFoundError:
            return _err(args.cmd, f"trace file {args.trace} does not exist")
        except ValueError as e:
            return _err(args.cmd, str(e))
        except OSError as e:
            return _err(args.cmd, f"cannot read {args.trace}: {e.strerror}")
    for w in caught:
        print(f"vnodefs {args.cmd}: warning: {w.message}", file=sys.stderr)
    s = summarize(tr)
    if args.json:
        json.dump(s, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_summary(s, title=f"vnodefs trace {args.trace}: {len(tr.files)} files, "
                             f"{tr.records.size} records"))
    return 0


def cmd_demo(args) -> int:
    from vnodefs.demo import DemoError, run_demo

    try:
        return run_demo(size_mib=args.size, keep=args.keep, seed=args.seed, latency=args.latency,
                        json_path=args.json)
    except DemoError as e:
        return _err("demo", str(e))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv and argv[0] == "run" and "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    parser = build_parser()
    if argv and argv[0] == "run" and not command:
        args, extra = parser.parse_known_args(argv)
        if extra:
            if extra[0].startswith("-"):
                parser.parse_args(argv)  # an unknown option: argparse's own one-line error
            return _err("run", f"unexpected arguments {' '.join(extra)!r}: put the command after --, "
                        f"e.g. vnodefs run {args.source} -- {' '.join(extra)}")
    else:
        args = parser.parse_args(argv)
    if args.cmd is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        if args.cmd == "mount":
            return cmd_mount(args)
        if args.cmd == "umount":
            return cmd_umount(args)
        if args.cmd == "run":
            if not command:
                return _err("run", "no command given: put it after --, e.g. vnodefs run SRC -- cat {mnt}/file")
            return cmd_run(args, command)
        if args.cmd in ("trace", "summary"):
            return cmd_trace(args)
        if args.cmd in ("locality", "export", "resident"):
            return args.func(args)
        if args.cmd == "demo":
            return cmd_demo(args)
    except KeyboardInterrupt:
        print("vnodefs: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
