#!/usr/bin/env python3
"""Seeded synthetic access traces for vmcore replay, golden counts and benchmarks.

Owns: the trace generators (`loop`, `zipf`, `sequential`, `mixed`, dispatched by `generate`), the
writers (`write_text`, `write_npy`) and `--regen-golden`, the one deliberate way to rewrite
tests/vmcore/golden/policy_misses.json (libCacheSim's "print the results, then freeze them").

A trace here is a 1-D int64 numpy array of page numbers (plus, when written, an optional file
split and write flags). Every generator is a pure function of its arguments and `seed` and uses
only `numpy.random.default_rng(seed).random()` / `.integers()` / `.permutation()`, whose streams
numpy keeps stable, so the golden counts do not move with numpy versions.

Kinds:
  loop        pages 0..footprint-1 in order, over and over (LRU / FIFO's worst case when
              footprint > memory);
  zipf        independent draws from a bounded Zipf(alpha) over `footprint` pages, hot pages
              scattered by a seeded permutation (inverse-CDF sampling, not Generator.zipf);
  sequential  runs of consecutive pages (geometric length, mean `run`) from random starts;
  mixed       a Zipf working set interleaved with sequential scans of a separate, larger range
              (scan pollution).

Usage (the script is also imported by tests and scripts/bench_vmcore.py):
  scripts/make_trace.py zipf --length 100000 --footprint 5000 --seed 1 -o t.txt
  scripts/make_trace.py mixed --files 3 --write-fraction 0.2 -o t.txt      # `file offset [w]` lines
  scripts/make_trace.py loop --length 10000 --footprint 300 -o t.npy       # numpy .npy of pages
  scripts/make_trace.py --regen-golden                                      # rewrite the golden file
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

KINDS = ("loop", "zipf", "sequential", "mixed")
ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "vmcore" / "golden" / "policy_misses.json"


def loop(length: int, footprint: int, seed: int = 0) -> np.ndarray:
    """0, 1, ..., footprint-1, 0, 1, ... (`seed` is unused: a loop is deterministic)."""
    return np.arange(length, dtype=np.int64) % footprint


def zipf(length: int, footprint: int, seed: int = 0, alpha: float = 1.0) -> np.ndarray:
    """`length` draws from P(rank k) ~ 1 / k**alpha over `footprint` pages, ranks scattered."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, footprint + 1, dtype=np.float64) ** alpha
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(length), side="right")
    np.minimum(ranks, footprint - 1, out=ranks)
    page_of_rank = rng.permutation(footprint).astype(np.int64)
    return page_of_rank[ranks]


def sequential(length: int, footprint: int, seed: int = 0, run: int = 64) -> np.ndarray:
    """Runs of consecutive pages (mean length `run`) starting at random pages, wrapping at footprint."""
    rng = np.random.default_rng(seed)
    out = np.empty(length, dtype=np.int64)
    i = 0
    while i < length:
        nruns = max(16, (length - i) // max(run, 1) + 1)
        # geometric lengths from uniform draws (stable stream): ceil(log(u) / log(1 - 1/run))
        u = rng.random(nruns)
        lens = np.maximum(1, np.ceil(np.log1p(-u) / np.log1p(-1.0 / max(run, 2)))).astype(np.int64)
        starts = rng.integers(0, footprint, nruns)
        for s, n in zip(starts.tolist(), lens.tolist()):
            n = min(n, length - i)
            out[i:i + n] = (s + np.arange(n)) % footprint
            i += n
            if i >= length:
                break
    return out


def mixed(length: int, footprint: int, seed: int = 0, alpha: float = 1.0, scan_fraction: float = 0.3,
          run: int = 256) -> np.ndarray:
    """A Zipf working set over pages [0, footprint) interleaved with sequential scans over the
    separate range [footprint, 4 * footprint): about `scan_fraction` of the accesses are scans."""
    rng = np.random.default_rng(seed)
    hot = zipf(length, footprint, seed=seed + 1, alpha=alpha)
    scans = footprint + sequential(length, 3 * footprint, seed=seed + 2, run=run)
    out = np.empty(length, dtype=np.int64)
    i = hi = si = 0
    while i < length:
        # alternate bursts: a Zipf burst then a scan burst, lengths geometric around the mix
        u = rng.random(2)
        hot_len = max(1, int(run * (1 - scan_fraction) / max(scan_fraction, 1e-9) * 2 * u[0]))
        scan_len = max(1, int(run * 2 * u[1]))
        for src, n, is_hot in ((hot, hot_len, True), (scans, scan_len, False)):
            n = min(n, length - i)
            if n <= 0:
                break
            if is_hot:
                out[i:i + n] = src[hi:hi + n]
                hi += n
            else:
                out[i:i + n] = src[si:si + n]
                si += n
            i += n
    return out


_GENERATORS = {"loop": loop, "zipf": zipf, "sequential": sequential, "mixed": mixed}


def generate(kind: str, length: int, footprint: int, seed: int = 0, **kw) -> np.ndarray:
    """The trace of `kind` (one of KINDS) as an int64 array of page numbers."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown trace kind {kind!r} (valid: {', '.join(KINDS)})")
    if length < 0 or footprint < 1:
        raise ValueError("length must be >= 0 and footprint >= 1")
    return _GENERATORS[kind](length, footprint, seed, **kw)


def write_flags(length: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Seeded write flags: each access is a write with probability `fraction`."""
    if fraction <= 0:
        return np.zeros(length, dtype=np.bool_)
    return np.random.default_rng(seed + 7919).random(length) < fraction


def split_files(pages: np.ndarray, nfiles: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the page space into `nfiles` contiguous ranges: (file index, page within that file)."""
    if nfiles <= 1:
        return np.zeros(pages.size, dtype=np.int64), pages
    span = int(pages.max()) // nfiles + 1 if pages.size else 1
    return pages // span, pages % span


def write_text(path: str | Path, pages: np.ndarray, *, nfiles: int = 0, writes: np.ndarray | None = None,
               page_size: int = 4096, header: str = "") -> None:
    """One access per line: `PAGE [w]`, or `fileN OFFSET [w]` (offset in bytes) when nfiles > 0."""
    with open(path, "w") as fh:
        for line in header.splitlines():
            fh.write(f"# {line}\n")
        if nfiles > 0:
            fids, fpages = split_files(pages, nfiles)
            cols = [np.char.add("file", fids.astype(str)), (fpages * page_size).astype(str)]
        else:
            cols = [pages.astype(str)]
        if writes is not None and writes.any():
            cols.append(np.where(writes, "w", "r"))
        lines = cols[0]
        for c in cols[1:]:
            lines = np.char.add(np.char.add(lines, " "), c)
        fh.write("\n".join(lines.tolist()))
        fh.write("\n")


def write_npy(path: str | Path, pages: np.ndarray, *, nfiles: int = 0, writes: np.ndarray | None = None) -> None:
    """A plain int64 array of pages, or a structured array (file, page, write) when files/writes."""
    if nfiles <= 0 and (writes is None or not writes.any()):
        np.save(path, pages.astype(np.int64))
        return
    fids, fpages = split_files(pages, max(nfiles, 1))
    fields = ([("file", np.int64)] if nfiles > 0 else []) + [("page", np.int64), ("write", np.bool_)]
    rec = np.zeros(pages.size, dtype=fields)
    if nfiles > 0:
        rec["file"] = fids
    rec["page"] = fpages
    if writes is not None:
        rec["write"] = writes
    np.save(path, rec)


# ---- golden counts ------------------------------------------------------------------------------------
#: the seeded traces and memory sizes (in pages) the golden file freezes
GOLDEN_TRACES = {
    "loop-300": dict(kind="loop", length=6000, footprint=300, seed=0),
    "zipf-2000": dict(kind="zipf", length=20000, footprint=2000, seed=11, alpha=0.9),
    "sequential-1000": dict(kind="sequential", length=20000, footprint=1000, seed=12, run=32),
    "mixed-500": dict(kind="mixed", length=20000, footprint=500, seed=13),
}
GOLDEN_FRAMES = (16, 64, 250, 299, 300, 512)
#: the sizes (in pages) at which the mach policy's end-to-end misses are frozen (mach needs >= 129)
GOLDEN_MACH_FRAMES = (250, 299, 300, 512)


def golden_trace(name: str) -> np.ndarray:
    spec = dict(GOLDEN_TRACES[name])
    return generate(spec.pop("kind"), spec.pop("length"), spec.pop("footprint"), spec.pop("seed"), **spec)


def compute_golden() -> dict:
    """{"frames": [...], "traces": {name: spec}, "misses": {trace: {policy: [misses per frames]}},
    "mach_frames": [...], "mach_misses": {trace: [misses per mach_frames]}}: the reference policies
    with vmcore.policy.simulate (a plain cache simulator over the policy objects), mach end to end
    through the model's kernel (vmcore.replay)."""
    from vmcore.policy import simulate

    from vmcore.kernel import Kernel
    from vmcore.replay import AccessTrace, replay

    out: dict = {"frames": list(GOLDEN_FRAMES), "traces": GOLDEN_TRACES, "misses": {},
                 "mach_frames": list(GOLDEN_MACH_FRAMES), "mach_misses": {}}
    for name in GOLDEN_TRACES:
        tr = golden_trace(name)
        out["misses"][name] = {pol: [simulate(pol, tr, n) for n in GOLDEN_FRAMES]
                               for pol in ("lru", "fifo", "clock")}
        # the model's own policy, end to end (no simulator exists for it: frozen to notice changes)
        mach = []
        for n in GOLDEN_MACH_FRAMES:
            k = Kernel(memory=n * 4096, page_size=4096, policy="mach")
            mach.append(replay(k, AccessTrace.from_pages(tr)).misses)
            k.close()
        out["mach_misses"][name] = mach
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make_trace.py", description="Write a seeded synthetic access trace "
                                 "(text: one page per line or `file offset [w]`; .npy: numpy array).")
    ap.add_argument("kind", nargs="?", choices=KINDS, help="trace shape")
    ap.add_argument("-o", "--output", help="output path; .npy writes numpy, anything else text (default stdout)")
    ap.add_argument("--length", type=int, default=100_000, help="number of accesses (default 100000)")
    ap.add_argument("--footprint", type=int, default=4096, help="distinct pages in the hot range (default 4096)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--alpha", type=float, default=1.0, help="Zipf exponent for zipf/mixed (default 1.0)")
    ap.add_argument("--run", type=int, default=None, help="mean run length for sequential/mixed")
    ap.add_argument("--files", type=int, default=0, help="split pages over N files: `fileK OFFSET` lines")
    ap.add_argument("--write-fraction", type=float, default=0.0, help="fraction of accesses marked w")
    ap.add_argument("--page-size", type=int, default=4096, help="bytes per page for file offsets")
    ap.add_argument("--regen-golden", action="store_true",
                    help=f"recompute and rewrite {GOLDEN.relative_to(ROOT)} (a deliberate behaviour change)")
    args = ap.parse_args(argv)
    if args.regen_golden:
        data = compute_golden()
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(data, indent=1, sort_keys=True)
        # one line per list of numbers keeps the file readable and its diffs small
        text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
        GOLDEN.write_text(text + "\n")
        print(f"wrote {GOLDEN}", file=sys.stderr)
        return 0
    if args.kind is None:
        ap.error("a trace kind is required (or --regen-golden)")
    kw = {}
    if args.kind in ("zipf", "mixed"):
        kw["alpha"] = args.alpha
    if args.run is not None and args.kind in ("sequential", "mixed"):
        kw["run"] = args.run
    try:
        pages = generate(args.kind, args.length, args.footprint, args.seed, **kw)
    except ValueError as e:
        print(f"make_trace.py: {e}", file=sys.stderr)
        return 2
    writes = write_flags(pages.size, args.write_fraction, args.seed)
    header = (f"make_trace.py {args.kind} length={args.length} footprint={args.footprint} seed={args.seed}"
              + "".join(f" {k}={v}" for k, v in kw.items()))
    if args.output and args.output.endswith(".npy"):
        write_npy(args.output, pages, nfiles=args.files, writes=writes)
    else:
        write_text(args.output or "/dev/stdout", pages, nfiles=args.files, writes=writes,
                   page_size=args.page_size, header=header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
