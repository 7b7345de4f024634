"""Locality of a vnodefs trace: sequentiality, runs, seeks, LRU stack distances, the miss-ratio
curve, Denning's working set, per-process and per-file breakdowns.

Owns: `analyze(trace, ...) -> dict` (every metric as JSON-able data with stated units),
`format_report(report) -> str` (one screen with small text histograms), the building blocks
`page_keys`, `split_keys`, `stack_distances`, `miss_counts`, `mrc_steps`, `working_set`,
`run_lengths`, `seek_distances`, and the `vnodefs locality` command (`add_locality_parser`,
`run_locality`, `main`; `python -m vnodefs.locality TRACE ...` runs it). Pure numpy over a loaded
trace (vnodefs.trace.load): no FUSE. Plots live in vnodefs.plots, export in vnodefs.export.

Definitions (also in `vnodefs locality --help`):
  access          one page touched by one request: the page-split trace of `Trace.expand_pages`
                  (a request of n bytes at offset o touches pages o // P .. (o + n - 1) // P).
  key             the 64-bit page identity `file << 40 | page` (FILE_SHIFT = 40: pages below 2**40,
                  i.e. offsets below 4 PiB at P = 4096; file ids below 2**23).
  sequential      a request whose offset is the end of the previous selected request on the same
                  file (vnodefs.summary.sequential_flags; the first request on a file is not).
  run             a maximal chain of requests on one file each continuing the previous one; its
                  length in pages is the pages its bytes span.
  seek distance   for a request with a predecessor on its file: (offset - end of that predecessor)
                  / P, in pages, signed (+ forward); 0 exactly = sequential.
  device seek     a request that moved the modelled device's head (FLAG_SEEK with a device address,
                  dev_addr >= 0); its distance is |dev_addr - dev_prev| in bytes on the device, and
                  its seek time seek_ns (+ rot_ns, the rotational latency, on an HDD). Where the
                  per-file seek distance says how a program jumps within its files, this says how
                  far the device head travelled (files laid out apart, fragments, other files'
                  requests in between). vnodefs.devstats computes it; a trace without device
                  addresses (version 1, or no device model) reports none.
  stack distance  for an access to key k whose previous access was at position p: the number of
                  distinct OTHER keys accessed strictly between p and now (Mattson's LRU stack
                  distance, 0-based); a first access is cold (infinite distance, stored as -1).
                  An LRU cache of C pages hits exactly the accesses with distance < C, so
                  misses(C) = cold + #{distance >= C}, for every C at once (the MRC).
  W(t, tau)       Denning's working-set size: distinct pages referenced in the window (t - tau, t],
                  t and tau in request time (the records' start_ns).

Stack-distance algorithm (O(n log n), vectorised; 1 M accesses in well under a second here):
  prev[i] (the previous access of the same key) comes from one stable argsort of the keys. The
  distinct keys between p = prev[i] and i are the positions j in (p, i) whose key is not accessed
  again before i; the ones that ARE are exactly the reuse pairs (p', i') nested inside (p, i).
  So distance(i) = (i - p - 1) - #{reuse pairs (p', i') : p' > p and i' < i}. With the pairs in
  i order, the second term is, for each pair, the number of earlier pairs with a larger p: a
  per-element inversion count, computed by a wavelet-style pass over the bits of p (most
  significant first): at each bit, within each group of equal higher bits (kept in i order by a
  stable partition), every element with a 0 bit counts the elements with a 1 bit before it (a
  cumsum). log2(n) levels of O(n) numpy work: O(n log n). This replaces the textbook
  Fenwick-tree-over-last-access-positions loop, which is the same count done online one access
  at a time (O(n log n) too, but a Python loop: ~10 s per million accesses).
  W(t, tau) at a sample time T counts the accesses j in the window whose key's next access is
  after the window (the last access of each distinct key): O(window) numpy per sample.

Invariants: stack distances equal an LRU simulation's (tests compare with an OrderedDict LRU);
misses(C) is non-increasing in C and reaches `cold` at C = footprint; every number in the JSON
names its unit in `units` or in its key.

Caveats: a `page`-mode trace holds page-cache misses only (the report says so): its MRC is that
of the miss stream behind the kernel's cache, not the program's. Requests are ordered by start
time (load sorts them); concurrent requests overlap in time but count in that order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings

import numpy as np

from vmcore.report import render_table
from vnodefs.devstats import DEVICE_OPS, device_breakdown, device_info, seek_distances_bytes
from vnodefs.summary import _size, sequential_flags
from vnodefs.trace import OPS, Trace, load

FILE_SHIFT = 40
PAGE_MASK = (1 << FILE_SHIFT) - 1
DEFAULT_OPS = ("read", "write")
WS_SAMPLES = 200

UNITS = {
    "requests": "requests (records of the selected ops)",
    "bytes": "bytes moved by the selected requests (result for reads/writes)",
    "page_accesses": "pages touched, counted once per request (the page-split trace)",
    "footprint_pages": "distinct (file, page) keys",
    "footprint_bytes": "footprint_pages * page_size",
    "span_s": "seconds from the first to the last selected request's start",
    "sequential_fraction": "fraction of requests continuing the previous one on their file",
    "run_length": "pages spanned by a run (bins [lo, hi) in pages)",
    "seek_distance": "pages, signed (+ forward), (offset - previous end on the file) / page_size",
    "device": "device seeks: requests that moved the device head; seek_distance in bytes on the device "
              "|dev_addr - dev_prev| (non-empty bins [lo, hi) in bytes); seek_s, rotation_s in seconds",
    "reuse_distance": "LRU stack distance: distinct other pages between two accesses to a page "
                      "(bins [lo, hi) in pages); cold = first accesses",
    "mrc": "misses of an LRU cache of cache_pages pages over the page accesses (cold included); "
           "a step function: misses(C) = misses at the largest listed cache_pages <= C",
    "working_set": "W(t, tau) in pages: distinct pages referenced in (t - tau, t]; t_s and taus_s in "
                   "seconds of request time from the first request",
}


# ---- building blocks ------------------------------------------------------------------------

def page_keys(pages: np.ndarray) -> np.ndarray:
    """The 64-bit key `file << 40 | page` of each row of an expand_pages array (or any array with
    `file` and `page` fields). ValueError if a page or file id does not fit."""
    page = pages["page"].astype(np.int64)
    file = pages["file"].astype(np.int64)
    if page.size and (int(page.min()) < 0 or int(page.max()) > PAGE_MASK or int(file.max()) >= 1 << 23):
        raise ValueError("page number or file id too large for a 64-bit key (file << 40 | page)")
    return (file << FILE_SHIFT) | page


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(file, page) of 64-bit keys."""
    keys = np.asarray(keys, dtype=np.int64)
    return keys >> FILE_SHIFT, keys & PAGE_MASK


def _prev_next(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """prev[i] / nxt[i]: index of the previous / next access of keys[i]'s key (-1 / n if none)."""
    n = keys.size
    prev = np.full(n, -1, np.int64)
    nxt = np.full(n, n, np.int64)
    if n < 2:
        return prev, nxt
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    same = sk[1:] == sk[:-1]
    a, b = order[:-1][same], order[1:][same]
    prev[b] = a
    nxt[a] = b
    return prev, nxt


def _count_greater_before(x: np.ndarray) -> np.ndarray:
    """For each k: #{l < k : x[l] > x[k]}, x distinct non-negative ints (see the module docstring:
    one pass per bit of max(x), each a few O(n) numpy operations)."""
    m = x.size
    if m < 2:
        return np.zeros(m, np.int64)
    it = np.int32 if m < 2**31 - 1 and int(x.max()) < 2**31 - 1 else np.int64
    v = np.asarray(x, dtype=it).copy()
    acc = np.zeros(m, it)  # counts, in the current (partitioned) order
    pos = np.arange(m, dtype=it)
    start = np.empty(m, bool)  # group starts (runs of equal higher bits)
    last = np.empty(m, bool)   # group ends
    start[0] = last[-1] = True
    for d in range(int(v.max()).bit_length() - 1, -1, -1):
        bit = (v >> d) & 1
        prefix = v >> (d + 1)
        np.not_equal(prefix[1:], prefix[:-1], out=start[1:])
        last[:-1] = start[1:]
        gstart = np.maximum.accumulate(np.where(start, pos, 0))
        gend = np.minimum.accumulate(np.where(last, pos, m)[::-1])[::-1]
        c1 = np.cumsum(bit, dtype=it)
        c1 -= bit  # ones strictly before, over the whole array
        ones_before = c1 - c1[gstart]  # ... within the group (= in original order)
        zero = bit == 0
        acc += np.where(zero, ones_before, 0)
        zeros_in = (gend - gstart + 1) - (c1[gend] + bit[gend] - c1[gstart])
        newpos = np.where(zero, pos - ones_before, gstart + zeros_in + ones_before)  # stable partition
        nv = np.empty_like(v)
        nv[newpos] = v
        na = np.empty_like(acc)
        na[newpos] = acc
        v, acc = nv, na
    out = np.empty(m, np.int64)
    out[np.argsort(x, kind="stable")] = acc  # v ends sorted by value: acc is in sorted-x order
    return out


def stack_distances(keys: np.ndarray) -> np.ndarray:
    """LRU stack distance of every access (int64; -1 = cold, i.e. first access of its key).
    See the module docstring for the O(n log n) method."""
    keys = np.asarray(keys)
    prev, _ = _prev_next(keys)
    dist = np.full(keys.size, -1, np.int64)
    reuse = np.flatnonzero(prev >= 0)
    if reuse.size:
        p = prev[reuse]
        dist[reuse] = (reuse - p - 1) - _count_greater_before(p)
    return dist


def reuse_histogram(dist: np.ndarray) -> np.ndarray:
    """hist[d] = number of accesses with stack distance d (cold accesses excluded)."""
    d = dist[dist >= 0]
    return np.bincount(d) if d.size else np.zeros(0, np.int64)


def miss_counts(dist: np.ndarray, cache_pages) -> np.ndarray:
    """misses(C) of an LRU cache of C pages for each C in `cache_pages` (cold misses included)."""
    c = np.asarray(cache_pages, dtype=np.int64)
    cold = int((dist < 0).sum())
    d = np.sort(dist[dist >= 0])
    return cold + (d.size - np.searchsorted(d, c, side="left"))


def mrc_steps(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact MRC as a step function: (cache_pages, misses) at C = 0 and at every C where the
    miss count drops (C = d + 1 for each distance d that occurs). misses(C) for any C is the
    value at the largest listed cache size <= C."""
    hist = reuse_histogram(dist)
    total = int(dist.size)
    ds = np.flatnonzero(hist)
    sizes = np.concatenate([[0], ds + 1]).astype(np.int64)
    misses = total - np.concatenate([[0], np.cumsum(hist[ds])]).astype(np.int64)
    return sizes, misses


def working_set(t_ns: np.ndarray, keys: np.ndarray, tau_ns: float, at_ns, nxt: np.ndarray | None = None) -> np.ndarray:
    """W(T, tau) for each T in `at_ns`: distinct keys among accesses with T - tau < t <= T.
    `t_ns` must be non-decreasing (request order)."""
    t = np.asarray(t_ns, dtype=np.int64)
    if nxt is None:
        _, nxt = _prev_next(np.asarray(keys))
    at = np.asarray(at_ns, dtype=np.float64)
    hi = np.searchsorted(t, at, side="right")
    lo = np.searchsorted(t, at - tau_ns, side="right")
    return np.array([int(np.count_nonzero(nxt[a:b] >= b)) for a, b in zip(lo.tolist(), hi.tolist())],
                    dtype=np.int64)


def _file_order(recs: np.ndarray) -> np.ndarray:
    return np.lexsort((np.arange(recs.size), recs["file"]))


def _ends(recs: np.ndarray) -> np.ndarray:
    n = np.minimum(np.maximum(recs["result"], 0), recs["length"])
    rw = np.isin(recs["op"], np.array([OPS["read"], OPS["write"]], np.uint8))
    n = np.where(rw, n, np.maximum(recs["length"], 0))
    return recs["offset"] + n


def run_lengths(recs: np.ndarray, page_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(pages, requests) of every run (maximal chain of requests on one file each continuing the
    previous one), runs that moved no byte left out. `recs` in request order."""
    if recs.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    seq = sequential_flags(recs)
    order = _file_order(recs)
    rs, sq = recs[order], seq[order]
    starts = np.flatnonzero(~sq)
    first_off = rs["offset"][starts]
    end = np.maximum.reduceat(_ends(rs), starts)
    nreq = np.diff(np.append(starts, rs.size))
    keep = end > first_off
    pages = (end - 1) // page_size - first_off // page_size + 1
    return pages[keep].astype(np.int64), nreq[keep].astype(np.int64)


def seek_distances(recs: np.ndarray, page_size: int) -> np.ndarray:
    """Signed seek distance in pages (float) of every request that has a predecessor on its
    file: (offset - end of the previous request on that file) / page_size. 0 = sequential."""
    if recs.size < 2:
        return np.zeros(0)
    order = _file_order(recs)
    rs = recs[order]
    same = rs["file"][1:] == rs["file"][:-1]
    d = (rs["offset"][1:] - _ends(rs)[:-1])[same]
    return d.astype(np.float64) / page_size


# ---- binning ----------------------------------------------------------------------------------

def log2_bins(values: np.ndarray, start: int = 0) -> list[dict]:
    """Bins [0,1), [1,2), [2,4), [4,8), ... (start=0) or [1,2), [2,4), ... (start=1) of
    non-negative ints, up to the largest value: [{"lo", "hi", "count"}]."""
    v = np.asarray(values, dtype=np.int64)
    if v.size == 0:
        return []
    top = int(v.max())
    edges = ([0] if start == 0 else []) + [1 << k for k in range(0, max(top, 1).bit_length() + 1)]
    counts = np.histogram(v, bins=np.array(edges + [edges[-1] * 2]))[0] if len(edges) else []
    out = [{"lo": lo, "hi": hi, "count": int(c)} for lo, hi, c in zip(edges, edges[1:] + [edges[-1] * 2], counts)]
    while out and out[-1]["count"] == 0:
        out.pop()
    return out


def signed_log2_bins(pages: np.ndarray) -> list[dict]:
    """Bins of signed distances in pages by sign and magnitude: {"sign": "0"} holds exactly 0
    (sequential); {"sign": "+" or "-", "abs_lo", "abs_hi"} holds distances whose magnitude is in
    [abs_lo, abs_hi) pages, with [0, 1) meaning a non-zero sub-page seek, then [1,2), [2,4), ...
    Only non-empty bins are listed, from the most backward to the most forward."""
    d = np.asarray(pages, dtype=np.float64)
    out = []
    if d.size == 0:
        return out
    a = np.abs(d)
    k = np.where(a >= 1, np.floor(np.log2(np.maximum(a, 1))).astype(np.int64) + 1, 0)  # 0: sub-page
    code = np.sign(d).astype(np.int64) * (k + 1)  # 0 exact; +-1 sub-page; +-(k+1): [2^(k-1), 2^k)
    codes, counts = np.unique(code, return_counts=True)
    for c, n in zip(codes.tolist(), counts.tolist()):
        if c == 0:
            out.append({"sign": "0", "abs_lo": 0, "abs_hi": 0, "count": n})
            continue
        kk = abs(c) - 1
        lo, hi = (0, 1) if kk == 0 else (1 << (kk - 1), 1 << kk)
        out.append({"sign": "+" if c > 0 else "-", "abs_lo": lo, "abs_hi": hi, "count": n})
    return out


# ---- the analysis -----------------------------------------------------------------------------

def _nice(x: float) -> float:
    if x <= 0:
        return 0.0
    e = math.floor(math.log10(x))
    m = x / 10 ** e
    return (1 if m < 2 else 2 if m < 5 else 5) * 10 ** e


def default_taus(span_s: float) -> list[float]:
    """A few window lengths for W(t, tau): 1%, 10% and 50% of the span, rounded to 1/2/5 x 10^k s."""
    if span_s <= 0:
        return [1e-3]
    return sorted({_nice(span_s * f) for f in (0.01, 0.1, 0.5)})


def _select(trace: Trace, ops) -> np.ndarray:
    return trace.records[trace.op_mask(ops)]


def _stats(recs: np.ndarray, pages: np.ndarray, dist: np.ndarray, ps: int) -> dict:
    seq = sequential_flags(recs)
    runs, _ = run_lengths(recs, ps)
    reused = dist[dist >= 0]
    return {
        "requests": int(recs.size),
        "bytes": int((_ends(recs) - recs["offset"]).clip(min=0).sum()),
        "page_accesses": int(pages.size),
        "footprint_pages": int((dist < 0).sum()),
        "sequential_fraction": float(seq.mean()) if seq.size else 0.0,
        "runs": int(runs.size),
        "mean_run_pages": float(runs.mean()) if runs.size else 0.0,
        "cold_misses": int((dist < 0).sum()),
        "reuses": int(reused.size),
        "median_reuse_distance": float(np.median(reused)) if reused.size else None,
    }


def _breakdown(trace: Trace, recs: np.ndarray, pages: np.ndarray, keys: np.ndarray, by: str, ps: int) -> list[dict]:
    """Per-pid or per-file stats; stack distances within each group's own sub-trace (one call).
    Records and pages are sorted by group once and sliced, so many groups stay cheap."""
    field = "pid" if by == "pid" else "file"
    ro = np.argsort(recs[field], kind="stable")
    po = np.argsort(pages[field], kind="stable")
    rs, pg = recs[ro], pages[po]
    groups = np.unique(rs[field])
    if pg.size:
        # the groups' own sub-traces, one after the other: a reuse interval then never spans another
        # group's accesses. Keys are made group-private (a page read by two pids is two keys).
        gk = keys[po]
        if by == "pid":
            _, krank = np.unique(gk, return_inverse=True)
            _, grank = np.unique(pg[field], return_inverse=True)
            gk = grank.astype(np.int64) * (int(krank.max()) + 1) + krank
        dist = stack_distances(gk)
    else:
        dist = np.zeros(0, np.int64)
    rb = np.searchsorted(rs[field], groups, side="left").tolist() + [rs.size]
    pb = np.searchsorted(pg[field], groups, side="left").tolist() + [pg.size]
    out = []
    for i, g in enumerate(groups.tolist()):
        st = _stats(rs[rb[i]:rb[i + 1]], pg[pb[i]:pb[i + 1]], dist[pb[i]:pb[i + 1]], ps)
        if by == "pid":
            st = {"pid": int(g), "label": "kernel" if g == 0 else f"pid {g}", **st}
        else:
            st = {"file": int(g), "path": trace.files.get(int(g), f"<file {g}>"), **st}
        out.append(st)
    out.sort(key=lambda s: (-s["page_accesses"], -s["requests"]))
    return out


def _device_section(trace: Trace, recs: np.ndarray) -> dict:
    """The `device` section of the report: device seeks of the selected requests that reach the
    device (reads, writes, prefetches), their distances on the device and their seek time."""
    info = device_info(trace)
    b = device_breakdown(recs)
    d = seek_distances_bytes(recs, np.isin(recs["op"], np.asarray(DEVICE_OPS, dtype=np.uint8)))
    return {
        "units": "counts; seek_s, rotation_s, service_s in seconds; seek_distance in bytes on the device",
        "available": b["requests_with_device"] > 0,
        "trace_version": info["trace_version"],
        "device_model": info["device_model"],
        "layout": info["layout"],
        "requests": b["requests"],
        "requests_with_device": b["requests_with_device"],
        "estimated_addresses": b["estimated_addresses"],
        "seeks": b["seeks"],
        "seek_s": b["seek_s"],
        "rotation_s": b["rotation_s"],
        "service_s": b["service_s"],
        "seek_distance": {**b["seek_distance"], "bins": [x for x in log2_bins(d, start=0) if x["count"]]},
    }


def analyze(trace: Trace, ops=DEFAULT_OPS, page_size: int | None = None, taus_s=None,
            ws_samples: int = WS_SAMPLES, progress=None) -> dict:
    """Every locality metric of `trace` (requests of the ops `ops`) as a JSON-able dict (see
    UNITS and the module docstring). `page_size` defaults to the trace's. `progress(msg)` is
    called before each expensive stage."""
    say = progress or (lambda msg: None)
    if isinstance(ops, str):
        ops = tuple(o for o in ops.split(",") if o)
    ops = tuple(ops)
    ps = int(page_size or trace.page_size)
    if ps <= 0:
        raise ValueError(f"page size must be positive, not {ps}")
    recs = _select(trace, ops)
    say(f"{recs.size} requests: splitting into pages")
    pages = trace.expand_pages(ops, page_size=ps)
    keys = page_keys(pages)
    say(f"{pages.size} page accesses: LRU stack distances")
    _, nxt = _prev_next(keys)
    dist = stack_distances(keys)
    cold = int((dist < 0).sum())
    reused = dist[dist >= 0]

    t0 = int(recs["start_ns"].min()) if recs.size else 0
    span_s = (int(recs["start_ns"].max()) - t0) / 1e9 if recs.size else 0.0
    seq = sequential_flags(recs)
    runs, run_reqs = run_lengths(recs, ps)
    seeks = seek_distances(recs, ps)

    sizes, misses = mrc_steps(dist)
    n = int(pages.size)

    say("working-set curves")
    taus = [float(x) for x in (taus_s if taus_s else default_taus(span_s))]
    if n:
        uniq_t = np.unique(pages["t_ns"])
        k = int(min(ws_samples, uniq_t.size))
        at = np.linspace(int(pages["t_ns"][0]), int(pages["t_ns"][-1]), k) if k > 1 else uniq_t[:1].astype(float)
        w = [working_set(pages["t_ns"], keys, tau * 1e9, at, nxt=nxt) for tau in taus]
        t_s = ((at - t0) / 1e9).tolist()
    else:
        w, t_s = [np.zeros(0, np.int64) for _ in taus], []

    say("device seeks")
    device = _device_section(trace, recs)

    say("per-process and per-file breakdowns")
    rep = {
        "trace": trace.path,
        "truncated": bool(trace.truncated),
        "cache_mode": trace.header.get("cache_mode"),
        "trace_holds": "page-cache misses only" if trace.header.get("cache_mode") == "page" else "every access",
        "page_size": ps,
        "ops": list(ops),
        "units": UNITS,
        "requests": int(recs.size),
        "bytes": int((_ends(recs) - recs["offset"]).clip(min=0).sum()),
        "page_accesses": n,
        "footprint_pages": cold,
        "footprint_bytes": cold * ps,
        "files": int(np.unique(recs["file"]).size),
        "pids": int(np.unique(recs["pid"]).size),
        "span_s": span_s,
        "sequential_fraction": float(seq.mean()) if seq.size else 0.0,
        "sequential_requests": int(seq.sum()),
        "run_length": {
            "units": "pages",
            "runs": int(runs.size),
            "mean_pages": float(runs.mean()) if runs.size else 0.0,
            "median_pages": float(np.median(runs)) if runs.size else 0.0,
            "max_pages": int(runs.max()) if runs.size else 0,
            "mean_requests": float(run_reqs.mean()) if run_reqs.size else 0.0,
            "bins": log2_bins(runs, start=1),
        },
        "seek_distance": {
            "units": "pages, signed (+ forward)",
            "requests_with_predecessor": int(seeks.size),
            "first_on_file": int(recs.size - seeks.size),
            "sequential": int((seeks == 0).sum()),
            "forward": int((seeks > 0).sum()),
            "backward": int((seeks < 0).sum()),
            "median_abs_nonzero_pages": float(np.median(np.abs(seeks[seeks != 0]))) if (seeks != 0).any() else 0.0,
            "bins": signed_log2_bins(seeks),
        },
        "device": device,
        "reuse_distance": {
            "units": "pages (distinct other pages between two accesses to a page)",
            "accesses": n,
            "cold": cold,
            "reuses": int(reused.size),
            "mean": float(reused.mean()) if reused.size else None,
            "median": float(np.median(reused)) if reused.size else None,
            "max": int(reused.max()) if reused.size else None,
            "bins": log2_bins(reused, start=0),
        },
        "mrc": {
            "units": "cache_pages: LRU cache size in pages; misses: page accesses that miss; "
                     "miss_ratio = misses / accesses; step function (value at the largest listed size <= C)",
            "accesses": n,
            "cold_misses": cold,
            "cache_pages": sizes.tolist(),
            "misses": misses.tolist(),
            "miss_ratio": (misses / n).tolist() if n else [],
        },
        "working_set": {
            "units": "pages; t_s and taus_s in seconds of request time since the first request",
            "taus_s": taus,
            "t_s": t_s,
            "w_pages": [x.tolist() for x in w],
            "mean_pages": [float(x.mean()) if x.size else 0.0 for x in w],
            "max_pages": [int(x.max()) if x.size else 0 for x in w],
        },
        "by_pid": _breakdown(trace, recs, pages, keys, "pid", ps),
        "by_file": _breakdown(trace, recs, pages, keys, "file", ps),
    }
    return rep


# ---- human output -----------------------------------------------------------------------------

def _bar(x: float, width: int = 24) -> str:
    n = x * width
    full = int(n)
    return "#" * full + ("+" if n - full >= 0.5 and full < width else "")


def _rng(lo, hi) -> str:
    if hi - lo <= 1:
        return f"{lo}"
    return f"{lo}-{hi - 1}"


def mrc_at(rep: dict, c: int) -> int:
    """misses(C) from a report's step MRC."""
    sizes = rep["mrc"]["cache_pages"]
    i = int(np.searchsorted(np.asarray(sizes), c, side="right")) - 1
    return rep["mrc"]["misses"][max(i, 0)] if sizes else 0


_SEEK_GROUPS = ((0, 1, "<1"), (1, 8, "1-7"), (8, 64, "8-63"), (64, 512, "64-511"), (512, 4096, "512-4095"),
                (4096, 1 << 62, ">=4096"))


def _coarse_seeks(bins: list[dict]) -> list[str]:
    """The signed seek bins merged into magnitude groups of 8x, backward far .. forward far."""
    out = []
    for sign in ("-", "0", "+"):
        if sign == "0":
            n = sum(b["count"] for b in bins if b["sign"] == "0")
            out.append(f"0:{n}")
            continue
        groups = _SEEK_GROUPS[::-1] if sign == "-" else _SEEK_GROUPS
        for lo, hi, label in groups:
            n = sum(b["count"] for b in bins if b["sign"] == sign and lo <= b["abs_lo"] < hi)
            if n:
                out.append(f"{sign}{label}:{n}")
    return out


def _device_report(rep: dict) -> list[str]:
    """The device-seek lines of format_report (one line when the trace has no device addresses)."""
    dv = rep.get("device")
    if not dv or not dv["available"]:
        why = "version-1 trace" if dv and dv.get("trace_version") == 1 else "no device model, or nothing read"
        return [f"  device seeks  none: the trace has no device addresses ({why})"]
    sd = dv["seek_distance"]
    est = f", {dv['estimated_addresses']} addresses estimated" if dv["estimated_addresses"] else ""
    out = [f"  device seeks  {dv['seeks']} of {dv['requests_with_device']} requests with a device address "
           f"moved the head ({dv['device_model']}, layout {dv['layout']}{est})",
           f"    seek time   {dv['seek_s']:.3f} s, rotation {dv['rotation_s']:.3f} s"]
    if sd["count"]:
        out[-1] += (f"; distance median {_size(sd['median'])}, p90 {_size(sd['p90'])}, max {_size(sd['max'])} "
                    f"({sd['count']} seeks from a known position)")
    return out


def format_report(rep: dict, by: str | None = None, max_rows: int = 12, top: int = 5) -> str:
    L = []
    n = rep["page_accesses"]
    L.append(f"vnodefs locality {rep['trace']}: cache {rep['cache_mode']} (trace holds {rep['trace_holds']}), "
             f"page {rep['page_size']} B, ops {','.join(rep['ops'])}")
    if rep["truncated"]:
        L.append("  (trace cut short: analysed up to its last whole record)")
    L.append(f"  requests      {rep['requests']} ({_size(rep['bytes'])}) over {rep['span_s']:.3f} s, "
             f"{rep['files']} files, {rep['pids']} processes")
    L.append(f"  pages         {n} accesses, footprint {rep['footprint_pages']} pages "
             f"({_size(rep['footprint_bytes'])})")
    rl = rep["run_length"]
    L.append(f"  sequential    {100 * rep['sequential_fraction']:.1f}% of requests continue the previous one "
             f"on their file; {rl['runs']} runs, mean {rl['mean_pages']:.1f} pages, max {rl['max_pages']}")
    rd = rep["reuse_distance"]
    if rd["reuses"]:
        L.append(f"  reuse         {rd['reuses']} re-accesses, stack distance median {rd['median']:.0f}, "
                 f"mean {rd['mean']:.1f}, max {rd['max']} pages; {rd['cold']} cold")
    else:
        L.append(f"  reuse         no page accessed twice; {rd['cold']} cold")
    # reuse-distance histogram beside the MRC at C = 2^k
    if n:
        hist = []
        bins = rd["bins"]
        cs = [1 << k for k in range(0, max(rep["footprint_pages"], 1).bit_length() + 1)]
        rows = max(len(bins), len(cs))
        step = max(1, math.ceil(rows / max_rows))
        grouped = [bins[i:i + step] for i in range(0, len(bins), step)]
        peak = max([sum(b["count"] for b in g) for g in grouped] or [1]) or 1
        for i in range(0, rows, step):
            left = ("", "", "")
            if i < len(bins):
                grp = bins[i:i + step]
                cnt = sum(b["count"] for b in grp)
                left = (_rng(grp[0]['lo'], grp[-1]['hi']), cnt, _bar(cnt / peak))
            right = ("", "", "")
            if i < len(cs):
                c = cs[min(i + step - 1, len(cs) - 1)] if step > 1 else cs[i]
                mr = mrc_at(rep, c) / n
                right = (c, f"{100 * mr:.1f}%", _bar(mr, 16))
            hist.append(left + right)
        hist.append(("cold", rd["cold"], f"(cold misses; the MRC floor is {100 * rd['cold'] / n:.1f}%)", "", "", ""))
        L.append(render_table(("stack distance", "accesses", "", "LRU pages", "miss ratio", ""), hist,
                              right=(0, 1, 3, 4), indent="  "))
    sd = rep["seek_distance"]
    if sd["requests_with_predecessor"]:
        parts = _coarse_seeks(sd["bins"])
        L.append(f"  seeks         {sd['sequential']} sequential, {sd['forward']} forward, {sd['backward']} "
                 f"backward, {sd['first_on_file']} first on file; median |seek| "
                 f"{sd['median_abs_nonzero_pages']:.0f} pages")
        L.append("    " + "  ".join(parts))
    L.extend(_device_report(rep))
    if rl["bins"]:
        L.append("  run pages     " + "  ".join(f"{_rng(b['lo'], b['hi'])}:{b['count']}" for b in rl["bins"][:14]))
    ws = rep["working_set"]
    for tau, mean, mx in zip(ws["taus_s"], ws["mean_pages"], ws["max_pages"]):
        L.append(f"  {'W(t, ' + f'{tau:g}' + ' s)':<13} mean {mean:.0f} pages, max {mx} pages "
                 f"({_size(mx * rep['page_size'])}) over {len(ws['t_s'])} sample times")
    for key in ("pid", "file"):
        rows = rep[f"by_{key}"]
        if by is not None and by != key:
            continue
        k = len(rows) if by == key else top
        if by == key or len(rows) > 0:
            table = []
            for r in rows[:k]:
                mr = r["median_reuse_distance"]
                table.append(("", r["label"] if key == "pid" else r["path"], r["requests"], r["page_accesses"],
                              r["footprint_pages"], f"{100 * r['sequential_fraction']:.1f}%",
                              "-" if mr is None else f"{mr:.0f}"))
            L.append(render_table((f"by {key}:", "label" if key == "pid" else "path", "requests", "pages",
                                   "footprint", "seq", "med.reuse"), table, right=range(2, 7), indent="  "))
        if len(rows) > k:
            L.append(f"         ... and {len(rows) - k} more (--by {key} lists all)")
    return "\n".join(L)


# ---- command line -----------------------------------------------------------------------------

DESCRIPTION = ("Analyse the locality of a vnodefs trace: requests, bytes, footprint (distinct pages), "
               "sequential fraction (requests that continue the previous one on the same file), run "
               "lengths and seek distances (pages), device seeks (requests that moved the modelled device's "
               "head: their count, distance |dev_addr - dev_prev| in bytes on the device and seek time; "
               "none for a trace without device addresses), LRU stack (reuse) distances and the miss-ratio curve "
               "they imply (misses(C) = cold misses + accesses with stack distance >= C, for every LRU cache "
               "size C in pages), Denning's working-set size W(t, tau) (distinct pages referenced in "
               "(t - tau, t]), and per-process / per-file breakdowns. The page-split trace counts one access "
               "per page a request touches. A page-mode trace holds page-cache misses only. Exit status 2 "
               "for a file that is not a trace or bad options.")


def _ops_arg(s: str) -> tuple[str, ...]:
    ops = tuple(o.strip() for o in s.split(",") if o.strip())
    bad = [o for o in ops if o not in OPS]
    if not ops or bad:
        raise argparse.ArgumentTypeError(f"unknown op {', '.join(bad) or repr(s)}; known: {', '.join(OPS)}")
    return ops


def _page_size_arg(s: str) -> int:
    from vmcore.errors import InvalidArgument
    from vmcore.types import parse_page_size

    try:
        return parse_page_size(s)
    except InvalidArgument as e:
        raise argparse.ArgumentTypeError(e.args[0]) from None


def _taus_arg(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tau takes seconds separated by commas, not {s!r}") from None
    if not v or any(not (x > 0) for x in v):
        raise argparse.ArgumentTypeError(f"--tau takes positive seconds separated by commas, not {s!r}")
    return v


def add_common_trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", metavar="TRACE", help="a vnodefs trace file (.vtrace)")
    p.add_argument("--ops", type=_ops_arg, default=DEFAULT_OPS, metavar="OP[,OP...]",
                   help=f"which requests to analyse (default read,write; known: {', '.join(OPS)})")
    p.add_argument("--page-size", type=_page_size_arg, default=None, metavar="N",
                   help="page size for the page split: a power of two from 512 to 1MiB, in bytes or e.g. "
                   "16KiB, as vmcore replay --page-size (default: the trace's page_size)")


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_trace_options(p)
    p.add_argument("--by", choices=("pid", "file"), help="list every process (pid) or every file with its "
                   "own requests, pages, footprint, sequential fraction and median reuse distance (computed "
                   "within its own sub-trace); default: the top 5 of each")
    p.add_argument("--json", action="store_true", help="print every metric as JSON on stdout (units in "
                   "'units' and in each section)")
    p.add_argument("--plot", metavar="FILE", help="also write one figure to FILE, PNG, SVG or PDF by its "
                   "extension (.png, .svg, .pdf; none: PNG): MRC, reuse-distance histogram, "
                   "W(t, tau), seek-distance histogram, run lengths, offset over time per file")
    p.add_argument("--tau", type=_taus_arg, default=None, metavar="S[,S...]",
                   help="working-set window lengths in seconds (default: 1%%, 10%% and 50%% of the trace's span)")
    from vnodefs.stream import add_stream_options

    add_stream_options(p)
    p.set_defaults(func=run_locality)
    return p


def add_locality_parser(subparsers) -> argparse.ArgumentParser:
    """Add `locality` to an argparse subparsers object (vnodefs.cli); dispatch with run_locality."""
    p = subparsers.add_parser("locality", help="locality of a trace: sequentiality, reuse distances, "
                              "miss-ratio curve, working set (text, --json, --plot)",
                              description=DESCRIPTION)
    return _configure(p)


def load_for_command(cmd: str, path: str, opener=load):
    """opener(path) (default load) for a command: (trace, None) or (None, exit status) after one
    clear line on stderr; warnings (a truncated trace) are printed as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tr = opener(path)
        except FileNotFoundError:
            print(f"vnodefs {cmd}: trace file {path} does not exist", file=sys.stderr)
            return None, 2
        except ValueError as e:
            print(f"vnodefs {cmd}: {e}", file=sys.stderr)
            return None, 2
        except OSError as e:
            print(f"vnodefs {cmd}: cannot read {path}: {e.strerror}", file=sys.stderr)
            return None, 2
    for w in caught:
        print(f"vnodefs {cmd}: warning: {w.message}", file=sys.stderr)
    return tr, None


def run_locality(args) -> int:
    """Run `vnodefs locality` for parsed args; returns the exit status."""
    import os

    from vnodefs.stream import run_locality_stream, wants_stream

    if wants_stream(args):
        return run_locality_stream(args)
    if args.plot:
        from vnodefs.plots import plot_format

        try:
            plot_format(args.plot)
        except ValueError as e:
            print(f"vnodefs locality: {e}", file=sys.stderr)
            return 2
        d = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(d) or not os.access(d, os.W_OK) or os.path.isdir(args.plot):
            print(f"vnodefs locality: cannot write plot file {args.plot}", file=sys.stderr)
            return 2
    tr, status = load_for_command("locality", args.trace)
    if tr is None:
        return status
    big = tr.records.size > 200_000

    def progress(msg):
        if big:
            print(f"vnodefs locality: {msg}", file=sys.stderr, flush=True)

    try:
        rep = analyze(tr, ops=args.ops, page_size=args.page_size, taus_s=args.tau, progress=progress)
    except ValueError as e:
        print(f"vnodefs locality: {args.trace}: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(rep, by=args.by))
    if args.plot:
        from vnodefs.plots import plot_locality

        progress("plotting")
        plot_locality(rep, tr, args.plot, ops=args.ops, page_size=args.page_size)
        print(f"vnodefs locality: plot written to {args.plot}", file=sys.stderr)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    p = _configure(_Parser(prog="vnodefs locality", description=DESCRIPTION))
    args = p.parse_args(argv)
    try:
        return run_locality(args)
    except KeyboardInterrupt:
        print("vnodefs locality: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
