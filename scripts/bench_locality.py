#!/usr/bin/env python3
"""Benchmark: exact vs SHARDS-sampled miss-ratio curves of large vnodefs traces, side by side.

Writes seeded synthetic vnodefs traces (the trace format's own encoders: vnodefs.trace.encode_header,
path_records, RECORD_DTYPE; written chunk by chunk, so even a billion accesses need little memory)
of a mixed workload: requests of 1-31 pages whose first page is drawn from a Zipf(0.9) over the
footprint (hot extents scattered by a seeded permutation), over 8 files. Then runs the
`vnodefs locality` command itself in child processes and prints, for each, wall time, peak RSS
(the child's own ru_maxrss) and the mean / max absolute error of its miss ratio against the exact
curve (vnodefs.stream.mrc_error: 100 evenly spaced cache sizes up to the footprint).

    scripts/bench_locality.py                       # 10 M accesses: exact vs --sample 0.01, 0.1,
                                                    # --sample-size 16384; then 100 M with --sample 0.01
    scripts/bench_locality.py --small 1000000 --big 0      # a quick run
    scripts/bench_locality.py --billion             # also 1 000 M accesses with --sample 0.01 (~6 GB file)
    scripts/bench_locality.py --dir /var/tmp        # where the traces go (removed at the end unless --keep)

Not a test: numbers depend on the machine. The figures in README.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vnodefs.stream import mrc_error  # noqa: E402
from vnodefs.trace import OPS, RECORD_DTYPE, encode_header, path_records  # noqa: E402

P = 4096
FILES = 8


def write_trace(path: str, accesses: int, footprint: int, seed: int = 1, chunk: int = 1 << 20) -> int:
    """A synthetic trace of about `accesses` page accesses; returns the exact number written."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, footprint + 1, dtype=np.float64) ** -0.9
    cdf = np.cumsum(ranks)
    cdf /= cdf[-1]
    perm = rng.permutation(footprint).astype(np.int64)
    per_file = -(-footprint // FILES)
    written = 0
    t = 1_000_000
    with open(path, "wb") as fh:
        fh.write(encode_header({"cache_mode": "direct", "page_size": P, "latency": {"model": "none"},
                                "synthetic": "scripts/bench_locality.py"}))
        for f in range(1, FILES + 1):
            fh.write(path_records(f, f"data/file{f}.bin"))
        while written < accesses:
            n = int(min(chunk, max(1, (accesses - written) // 16 + 1)))
            start = perm[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), footprint - 1)]
            length = rng.integers(1, 32, n)
            rec = np.zeros(n, RECORD_DTYPE)
            rec["start_ns"] = t + 1000 * np.arange(n, dtype=np.int64)
            t += 1000 * n
            rec["dur_ns"] = 500
            rec["file"] = 1 + start % FILES
            page = (start // FILES) % max(per_file - 32, 1)
            rec["offset"] = page * P
            rec["length"] = length * P
            rec["result"] = length * P
            rec["pid"] = 100
            rec["op"] = OPS["read"]
            rec["dev_addr"] = -1
            rec["dev_prev"] = -1
            rec.tofile(fh)
            written += int(length.sum())
    return written


def run(args: list[str]) -> tuple[float, float, dict | None, str]:
    """Run `python -m vnodefs locality ARGS --json` in a child: (seconds, peak RSS MiB, report, stderr)."""
    t0 = time.perf_counter()
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    p = subprocess.Popen([sys.executable, "-m", "vnodefs", "locality", *args, "--json"], stdout=out, stderr=err,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    out.seek(0)
    err.seek(0)
    text = err.read().decode(errors="replace")
    rep = json.loads(out.read()) if p.returncode == 0 else None
    out.close()
    err.close()
    return wall, ru.ru_maxrss / 1024, rep, text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=10_000_000, help="accesses of the trace compared with the exact curve")
    ap.add_argument("--big", type=int, default=100_000_000, help="accesses of the sampled-only trace (0: skip)")
    ap.add_argument("--billion", action="store_true", help="also a 1 000 000 000-access trace with --sample 0.01")
    ap.add_argument("--footprint", type=int, default=2_000_000, help="distinct start pages of the workload")
    ap.add_argument("--dir", default=None, help="directory for the traces (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the traces")
    a = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-locality-", dir=a.dir)
    rows = []
    try:
        small = os.path.join(work, "small.vtrace")
        t0 = time.perf_counter()
        n = write_trace(small, a.small, a.footprint, seed=1)
        print(f"wrote {small}: {n} accesses, {os.path.getsize(small) / 2**20:.0f} MiB in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        wall, rss, exact, err = run([small])
        if exact is None:
            print(err, file=sys.stderr)
            return 1
        rows.append(("exact (in memory)", n, wall, rss, None, exact["footprint_pages"], "-"))
        for label, extra in (("--stream (exact, chunked)", ["--stream"]),
                             ("--sample 0.1", ["--sample", "0.1"]),
                             ("--sample 0.01", ["--sample", "0.01"]),
                             ("--sample-size 16384", ["--sample-size", "16384"])):
            wall, rss, rep, err = run([small, *extra])
            if rep is None:
                print(err, file=sys.stderr)
                return 1
            rows.append((label, n, wall, rss, mrc_error(rep, exact), rep["footprint_pages"],
                         rep["sampling"]["sampled_keys"]))
        del exact
        big_runs = [(a.big, "big")] if a.big else []
        if a.billion:
            big_runs.append((1_000_000_000, "billion"))
        for size, name in big_runs:
            path = os.path.join(work, f"{name}.vtrace")
            t0 = time.perf_counter()
            n = write_trace(path, size, a.footprint * 5, seed=2)
            print(f"wrote {path}: {n} accesses, {os.path.getsize(path) / 2**20:.0f} MiB in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
            wall, rss, rep, err = run([path, "--sample", "0.01"])
            if rep is None:
                print(err, file=sys.stderr)
                return 1
            rows.append(("--sample 0.01", n, wall, rss, None, rep["footprint_pages"], rep["sampling"]["sampled_keys"]))
            os.unlink(path)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"traces kept in {work}", file=sys.stderr)
    exact_wall = rows[0][2]
    print(f"{'run':<28} {'accesses':>13} {'wall s':>8} {'vs exact':>9} {'peak RSS':>10} {'MAE':>8} {'max err':>8} "
          f"{'footprint':>11} {'sampled keys':>12}")
    for label, n, wall, rss, err, fp, keys in rows:
        ratio = f"{exact_wall / wall:.1f}x" if n == rows[0][1] else "-"
        mae = f"{err['mean_absolute_error']:.4f}" if err else "-"
        mx = f"{err['max_absolute_error']:.4f}" if err else "-"
        print(f"{label:<28} {n:>13} {wall:>8.1f} {ratio:>9} {rss:>7.0f} MiB {mae:>8} {mx:>8} {fp:>11} {keys!s:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
