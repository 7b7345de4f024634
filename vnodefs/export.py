"""Export a vnodefs trace's page-split accesses for standard cache simulators.

Owns: `export(trace, out, fmt, ...)`, the readers that invert it (`read_csv`, `read_libcachesim`),
and the `vnodefs export` command (`add_export_parser`, `run_export`, `main`; `python -m
vnodefs.export TRACE ...` runs it). Pure Python/numpy over a loaded trace: no FUSE.

The rows are `Trace.expand_pages(ops, page_size)`: one row per page a request touched, in request
(start-time) order, the same sequence vnodefs.locality analyses. Two formats:

  csv          header `t_ns,pid,op,file,path,page`: t_ns = the request's CLOCK_MONOTONIC start (ns),
               pid (0 = the kernel), op name (read, write, ...), file id, the file's path relative to
               the mount root (RFC 4180 quoting, UTF-8 with surrogate escapes), page number
               (offset // page_size).
  libcachesim  header `time,obj_id,obj_size`, for libCacheSim's `csv` trace type: time = seconds since
               the first exported access, written exactly as `S.NNNNNNNNN` (libCacheSim parses it with
               atof and keeps whole seconds, its time unit; it must stay below 2**32 s); obj_id = the
               64-bit key `file << 40 | page` (vnodefs.locality.page_keys; decimal, never 0 since file
               ids start at 1); obj_size = the page size in bytes. Run it with:

                 cachesim TRACE.csv csv lru 64,256,1024 --ignore-obj-size 1 \\
                   -t "time-col=1, obj-id-col=2, obj-size-col=3, obj-id-is-num=true, delimiter=,, has-header=true"

               (cache sizes then count objects = pages, and LRU's miss counts are
               `vnodefs locality`'s misses(C); without --ignore-obj-size give sizes in bytes,
               C * page_size).

Invariants: reading an export back (read_csv / read_libcachesim) gives exactly the exported page
sequence (tests check the round trip). The output file is written to a temporary name beside it and
renamed into place only when complete, so a failed export never leaves a partial file.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from itertools import repeat

import numpy as np

from vnodefs.locality import DEFAULT_OPS, add_common_trace_options, load_for_command, page_keys, split_keys
from vnodefs.trace import OP_NAMES, OPS, PAGES_DTYPE, Trace

FORMATS = ("csv", "libcachesim")
#: every --format: the text formats above and parquet (vnodefs.export_parquet, needs a file)
ALL_FORMATS = FORMATS + ("parquet",)
CSV_HEADER = "t_ns,pid,op,file,path,page"
LIBCACHESIM_HEADER = "time,obj_id,obj_size"
LIBCACHESIM_OPTIONS = "time-col=1, obj-id-col=2, obj-size-col=3, obj-id-is-num=true, delimiter=,, has-header=true"
LIBCACHESIM_COMMAND = f'cachesim TRACE.csv csv lru 64,256,1024 --ignore-obj-size 1 -t "{LIBCACHESIM_OPTIONS}"'
CHUNK = 200_000


def _quote(field: str) -> str:
    """One csv field, RFC 4180 quoted when it holds a comma, a double quote, CR or LF (a path may
    hold any of them; csv quotes a line break only when it is in the writer's line terminator)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([field])
    return buf.getvalue()[:-2]


def export(trace: Trace, out, fmt: str = "csv", ops=DEFAULT_OPS, page_size: int | None = None, *,
           header: bool = True, t0_ns: int | None = None) -> int:
    """Write the page-split trace to the text stream `out` in `fmt` ("csv" or "libcachesim");
    returns the number of rows written (header excluded). `header=False` leaves the header line
    out and `t0_ns` sets libcachesim's time origin (default: the first access), so a trace can be
    exported one chunk at a time (export_file)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    ps = int(page_size or trace.page_size)
    pages = trace.expand_pages(ops, page_size=ps)
    if fmt == "csv":
        if header:
            out.write(CSV_HEADER + "\n")
        paths = {f: _quote(trace.files.get(f, "")) for f in np.unique(pages["file"]).tolist()}
        names = {c: OP_NAMES.get(c, str(c)) for c in np.unique(pages["op"]).tolist()}
        for s in range(0, pages.size, CHUNK):
            p = pages[s:s + CHUNK]
            f = p["file"].tolist()
            rows = zip(p["t_ns"].tolist(), p["pid"].tolist(), map(names.__getitem__, p["op"].tolist()), f,
                       map(paths.__getitem__, f), p["page"].tolist())
            out.write("".join(map("%d,%d,%s,%d,%s,%d\n".__mod__, rows)))
    else:
        if header:
            out.write(LIBCACHESIM_HEADER + "\n")
        keys = page_keys(pages)
        t0 = t0_ns if t0_ns is not None else (int(pages["t_ns"][0]) if pages.size else 0)
        for s in range(0, pages.size, CHUNK):
            rel = pages["t_ns"][s:s + CHUNK].astype(np.int64) - t0
            sec, ns = np.divmod(rel, 1_000_000_000)
            rows = zip(sec.tolist(), ns.tolist(), keys[s:s + CHUNK].tolist(), repeat(ps))
            out.write("".join(map("%d.%09d,%d,%d\n".__mod__, rows)))
    return int(pages.size)


def read_csv(path: str) -> tuple[np.ndarray, dict[int, str]]:
    """Read a `csv` export back: (rows as vnodefs.trace.PAGES_DTYPE, file id -> path)."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        r = csv.reader(fh)
        header = next(r, None)
        if header is None or ",".join(header) != CSV_HEADER:
            raise ValueError(f"{path} is not a vnodefs csv export (header must be {CSV_HEADER})")
        rows = list(r)
    out = np.empty(len(rows), dtype=PAGES_DTYPE)
    files: dict[int, str] = {}
    if rows:
        cols = list(zip(*rows))
        out["t_ns"] = np.array(cols[0], dtype=np.int64)
        out["pid"] = np.array(cols[1], dtype=np.int32)
        out["op"] = np.array([OPS[o] for o in cols[2]], dtype=np.uint8)
        out["file"] = np.array(cols[3], dtype=np.uint32)
        out["page"] = np.array(cols[5], dtype=np.int64)
        files = dict(zip(map(int, cols[3]), cols[4]))
    return out, files


def read_libcachesim(path: str) -> dict:
    """Read a `libcachesim` export back: {"time_ns" (since the first access), "obj_id", "obj_size",
    "file", "page"} as numpy arrays."""
    with open(path) as fh:
        header = fh.readline().strip()
        if header != LIBCACHESIM_HEADER:
            raise ValueError(f"{path} is not a vnodefs libcachesim export (header must be {LIBCACHESIM_HEADER})")
        lines = fh.read().splitlines()
    t = np.zeros(len(lines), np.int64)
    ids = np.zeros(len(lines), np.int64)
    size = np.zeros(len(lines), np.int64)
    for i, line in enumerate(lines):
        a, b, c = line.split(",")
        s, ns = a.split(".")
        t[i] = int(s) * 1_000_000_000 + int(ns)
        ids[i] = int(b)
        size[i] = int(c)
    file, page = split_keys(ids)
    return {"time_ns": t, "obj_id": ids, "obj_size": size, "file": file, "page": page}


# ---- command line -----------------------------------------------------------------------------

DESCRIPTION = ("Write the page-split trace (one row per page each request touched, in request order) in a "
               "form standard cache simulators read. --format csv: header t_ns,pid,op,file,path,page. "
               "--format libcachesim: header time,obj_id,obj_size (time = seconds since the first access; "
               "obj_id = file << 40 | page; obj_size = page size in bytes) for libCacheSim's csv reader: "
               f"{LIBCACHESIM_COMMAND} (cache sizes in pages with --ignore-obj-size 1; LRU's misses then "
               "equal `vnodefs locality`'s MRC). Exit status 2 for a file that is not a trace, bad options "
               "or an output file that cannot be written.")


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_trace_options(p)
    p.add_argument("--format", required=True, choices=ALL_FORMATS,
                   help="csv (t_ns,pid,op,file,path,page), libcachesim (time,obj_id,obj_size) or parquet "
                        "(columns t_ns,pid,op,file,path,page,obj_id; needs -o FILE; for pandas, polars, DuckDB)")
    from vnodefs.export_parquet import add_chunk_option

    add_chunk_option(p)
    p.add_argument("-o", "--output", metavar="FILE", default="-",
                   help="write to FILE (written to a temporary name and renamed when complete; default: stdout)")
    p.set_defaults(func=run_export)
    return p


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add `export` to an argparse subparsers object (vnodefs.cli); dispatch with run_export."""
    p = subparsers.add_parser("export", help="write the page-split trace as csv or for libCacheSim",
                              description=DESCRIPTION)
    return _configure(p)


def run_export(args) -> int:
    """Run `vnodefs export` for parsed args; returns the exit status."""
    out_path = None if args.output in (None, "-") else args.output
    if out_path is not None:
        d = os.path.dirname(os.path.abspath(out_path))
        if not os.path.isdir(d) or not os.access(d, os.W_OK) or os.path.isdir(out_path):
            print(f"vnodefs export: cannot write output file {out_path}", file=sys.stderr)
            return 2
    from vnodefs.export_parquet import export_file, open_for_command, run_export_parquet

    if args.format == "parquet":
        return run_export_parquet(args, out_path)
    tr, status = open_for_command("export", args.trace, args.chunk_records)
    if tr is None:
        return status
    try:
        if out_path is None:
            n = export_file(tr, sys.stdout, args.format, ops=args.ops, page_size=args.page_size)
            sys.stdout.flush()
        else:
            tmp = os.path.join(os.path.dirname(os.path.abspath(out_path)),
                               f".{os.path.basename(out_path)}.tmp-{os.getpid()}")
            try:
                with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
                    n = export_file(tr, fh, args.format, ops=args.ops, page_size=args.page_size)
                os.replace(tmp, out_path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    except ValueError as e:
        print(f"vnodefs export: {args.trace}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"vnodefs export: cannot write {out_path or 'stdout'}: {e.strerror}", file=sys.stderr)
        return 2
    where = out_path or "stdout"
    print(f"vnodefs export: {n} page accesses ({args.format}) written to {where}", file=sys.stderr)
    if args.format == "libcachesim":
        print(f"vnodefs export: simulate with: {LIBCACHESIM_COMMAND.replace('TRACE.csv', out_path or 'FILE')}",
              file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    p = _configure(_Parser(prog="vnodefs export", description=DESCRIPTION))
    args = p.parse_args(argv)
    try:
        return run_export(args)
    except KeyboardInterrupt:
        print("vnodefs export: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
