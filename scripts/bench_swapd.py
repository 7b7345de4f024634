#!/usr/bin/env python3
"""Benchmark: clustered swap I/O through SwapPager versus plain sequential file I/O, side by side.

Measures, in one run and on the same directory, the throughput of
  * pageout: SwapPager.data_return of `--out-pages`-page clusters (default 64 = 256 KiB, XNU's
    VM_SUPER_CLUSTER) from page frames held in one numpy array, as the model's pageout does;
  * pagein:  SwapPager.data_request of `--in-pages`-page clusters (default 16 and 64) into frames;
against plain sequential os.pwrite / os.preadv of the same request sizes to one ordinary file.
Two cache states: `warm` (writes land in the page cache, reads are served from it: the pager's
CPU overhead shows) and `cold` (fdatasync included in the write time; caches of the files dropped
with posix_fadvise(DONTNEED) before reading: the disk shows). Each figure is the median of
`--runs` (>= 5) interleaved runs; the ratio swap / plain is printed (target >= 0.5x).

Usage: .venv/bin/python scripts/bench_swapd.py [--dir DIR] [--size MiB] [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from swapd import SwapPool
from vmcore.pager import PagerResult

PS = 4096


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def drop_cache(fds) -> None:
    for fd in fds:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def plain_write(path: str, size: int, req: int, frames: np.ndarray, sync: bool) -> float:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    buf = memoryview(frames).cast("B")
    nframes_b = len(buf)
    try:
        t0 = time.perf_counter()
        for off in range(0, size, req):
            src = off % nframes_b
            os.pwrite(fd, buf[src:src + req], off)
        if sync:
            os.fdatasync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def plain_read(path: str, size: int, req: int, cold: bool) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        if cold:
            drop_cache([fd])
        dst = [memoryview(bytearray(req))]
        t0 = time.perf_counter()
        for off in range(0, size, req):
            os.preadv(fd, dst, off)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def swap_write(pager, size: int, req_pages: int, pages: list, pool, sync: bool) -> float:
    n = len(pages)
    t0 = time.perf_counter()
    for i, off in enumerate(range(0, size, req_pages * PS)):
        j = (i * req_pages) % n
        res = pager.data_return(off, pages[j:j + req_pages])
        if res.count(PagerResult.OK) != req_pages:
            raise SystemExit(f"pageout failed at {off}: {pager.last_error}")
    if sync:
        for f in pool.space:
            os.fdatasync(f.fd)
    return time.perf_counter() - t0


def swap_read(pager, size: int, req_pages: int, dst_pages: list, pool, cold: bool) -> float:
    if cold:
        drop_cache([f.fd for f in pool.space])
    dst = dst_pages[:req_pages]
    t0 = time.perf_counter()
    for off in range(0, size, req_pages * PS):
        res = pager.data_request(off, dst)
        if res[0] != PagerResult.OK:
            raise SystemExit(f"pagein failed at {off}: {pager.last_error}")
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=".", help="directory to benchmark in (default: .)")
    ap.add_argument("--size", type=int, default=256, help="MiB written and read per run (256)")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure, median (>= 5)")
    ap.add_argument("--out-pages", type=int, default=64, help="pages per pageout (64)")
    ap.add_argument("--in-pages", type=int, nargs="+", default=[16, 64],
                    help="pages per pagein (16 64)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.size < 1:
        ap.error("--runs and --size must be positive")
    if not os.path.isdir(args.dir):
        print(f"bench_swapd: {args.dir} is not a directory", file=sys.stderr)
        return 1
    size = args.size << 20
    work = tempfile.mkdtemp(prefix="bench-swapd-", dir=args.dir)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(4096, PS), dtype=np.uint8)  # 16 MiB of page frames
    pages = [memoryview(frames[i]) for i in range(len(frames))]
    dst_frames = np.zeros((max(args.in_pages), PS), dtype=np.uint8)  # frames pageins fill
    dst_pages = [memoryview(dst_frames[i]) for i in range(len(dst_frames))]
    plain_path = os.path.join(work, "plain")
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        pool = SwapPool(os.path.join(work, "vm"), scale=1.0, status_interval=5.0)
        try:
            for run in range(args.runs):
                for cold in (False, True):
                    state = "cold" if cold else "warm"
                    progress(f"run {run + 1}/{args.runs} {state}")
                    tp = plain_write(plain_path, size, args.out_pages * PS, frames, cold)
                    pager = pool.pager_factory()(size)
                    ts = swap_write(pager, size, args.out_pages, pages, pool, cold)
                    results.setdefault(f"pageout {args.out_pages} pages {state}", []).append(
                        (tp, ts))
                    for req in args.in_pages:
                        tp = plain_read(plain_path, size, req * PS, cold)
                        ts = swap_read(pager, size, req, dst_pages, pool, cold)
                        results.setdefault(f"pagein {req} pages {state}", []).append((tp, ts))
                    # verify a sample of pages outside the timing
                    dst = [memoryview(bytearray(PS))]
                    for k in range(0, size // PS, 997):
                        pager.data_request(k * PS, dst)
                        assert bytes(dst[0]) == bytes(pages[k % len(pages)]), f"page {k} differs"
                    pager.terminate()
            st = pool.status()
        finally:
            pool.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = size / (1 << 20)
    rows = []
    print(f"swapd benchmark: {mib:.0f} MiB per run, median of {args.runs}, directory "
          f"{os.path.abspath(args.dir)}, {len(st['files'])} swap files "
          f"({', '.join(str(f['size'] >> 20) for f in st['files'])} MiB)")
    print(f"{'operation':<26} {'plain MiB/s':>12} {'swap MiB/s':>12} {'ratio':>7}")
    for name, pairs in results.items():
        plain = statistics.median(mib / tp for tp, _ in pairs)
        swap = statistics.median(mib / ts for _, ts in pairs)
        ratio = statistics.median(tp / ts for tp, ts in pairs)
        rows.append(dict(operation=name, plain_mib_s=round(plain, 1), swap_mib_s=round(swap, 1),
                         ratio=round(ratio, 3)))
        print(f"{name:<26} {plain:>12.0f} {swap:>12.0f} {ratio:>6.2f}x")
    print(f"swap I/O calls: {st['writes']} pwritev for {st['pageouts']} pages out, "
          f"{st['reads']} preadv for {st['pageins']} pages in")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(size_mib=mib, runs=args.runs, results=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
