"""Streaming (chunked) reading of vnodefs traces and sampled miss-ratio curves (SHARDS).

Owns: `iter_chunks(path, ...)` (a trace read in chunks of records, in
start-time order, with its file table), `chunk_keys` (the page keys of a chunk of records, the
same sequence as `Trace.expand_pages` + `locality.page_keys`), `spatial_hash` / `sample_mask`
(the SHARDS key filter), `StackStream` (LRU stack distances computed chunk by chunk, state bounded
by the number of distinct keys it tracks), `analyze_stream(path, ...) -> dict` (the MRC and reuse
histogram of a trace of any length, exact or sampled), `format_stream_report`, `mrc_error` (mean /
max absolute error of a miss-ratio curve against another).

Chunked reading: the records are read `chunk_records` at a time into a chunk-sized numpy array
(np.fromfile; a memory map would keep every page it read in the resident set). The
writer stores records in completion order and `load` sorts them by start time; the stream sorts
within a reorder window instead: the records read so far are emitted in start order up to the
smallest start time of the newest chunk, the rest are held back for the next round. A request
that started before that (a request longer than a whole chunk of others) is analysed where it
arrives and counted in `streaming.late_records`; with none late, the sequence is exactly
`load`'s. Memory: one chunk of records and its page keys, plus the state below.

Chunked stack distances (StackStream): the state is the LRU stack itself, the distinct keys seen
so far in recency order (depth = position). For a chunk, an access whose previous access is in
the chunk gets its distance from the in-memory algorithm (locality.stack_distances) on the chunk
alone. The first access in the chunk of a key that is in the stack at depth D has distance
D + #{keys first accessed earlier in the chunk that were deeper than D, or new}: those now sit
above it. That count is one `_count_greater_before` over the depths of the chunk's first
accesses (new keys ranked below every depth). Then the chunk's keys move to the top in order of
their last access. So the distances equal the in-memory ones exactly, for any chunk size; the
state costs 8 bytes per tracked key and one sort of it per chunk.

SHARDS (Waldspurger et al., FAST '15): a key is sampled when its spatial hash (splitmix64 of the
key; its top 24 bits, T out of P = 2**24) is below the threshold T: rate R = T / P. Every access
to a sampled key is kept, so the sampled stream's stack distances are about R times the real
ones: a sampled distance d counts at cache size d / R. Fixed rate (`rate`): the histogram is
normalised by the expected sampled accesses N * R, and the difference between that and the
accesses actually sampled is added at distance 0 (SHARDS_adj: it corrects for a few very hot
keys falling in or out of the sample). Fixed size (`sample_size` = S): the threshold starts at P
(rate 1) and whenever more than S keys are tracked it drops to the hash of the (S+1)-th
smallest, evicting the keys at or above it from the stack, and every count so far is scaled by
R_new / R_old (so the counts are those of a sample at the final rate R, normalised and adjusted
by N * R as above); checked after every S sampled accesses, so at most about 2 S
keys are ever tracked, whatever the trace's length. The reported counts are scaled back
(misses(C) = miss ratio estimate * accesses; footprint = tracked cold accesses / R).

Error (measured, tests/vnodefs/test_stream.py and scripts/bench_locality.py): on seeded zipf,
loop and mixed traces the mean absolute error of the miss ratio over 100 evenly spaced cache
sizes is <= 0.02 with >= 1,000 sampled keys, at fixed rate or fixed size (measured 0.001 to
0.014 at 1,000 to 7,000 keys); it shrinks as the sample grows.

Caveats: only the MRC, the reuse histogram and the totals are computed this way (no runs,
seeks, working set or breakdowns: those need the in-memory analysis, vnodefs.locality.analyze).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings

import numpy as np

from vnodefs.locality import (DEFAULT_OPS, FILE_SHIFT, PAGE_MASK, UNITS, _count_greater_before, _ends,
                              _prev_next, log2_bins, stack_distances)
from vnodefs.summary import _size
from vnodefs.trace import (OP_PATH, OPS, PATH_DTYPE, RECORD_DTYPE, RECORD_DTYPE_V1, RECORD_SIZE,
                           RECORD_SIZE_V1, _PREFIX, Trace, _file_table, check_records, read_header,
                           upgrade_v1)

#: records read per chunk (96 bytes each: 24 MiB of records)
CHUNK_RECORDS = 1 << 18
#: the hash space of the sampling threshold: rate = T / HASH_SPACE
HASH_BITS = 24
HASH_SPACE = 1 << HASH_BITS
#: the error the report states for a sampled curve (mean absolute error of the miss ratio)
ERROR_NOTE = ("an estimate: mean absolute error of the miss ratio <= 0.02 with >= 1,000 sampled keys "
              "(measured 0.001-0.014 on seeded zipf, loop and mixed traces); it shrinks as the sample grows")


# ---- chunked reading --------------------------------------------------------------------------

class TraceStream:
    """An open trace read in chunks: `header`, `version`, `records` (total records, path chunks
    included), `truncated`, `files` (grows as chunks are read), `late_records`, `chunks`."""

    def __init__(self, path: str | os.PathLike, chunk_records: int = CHUNK_RECORDS):
        path = os.fspath(path)
        if chunk_records < 1:
            raise ValueError(f"chunk size must be at least 1 record, not {chunk_records}")
        self.path = path
        self.header, start = read_header(path)
        with open(path, "rb") as fh:
            self.version = _PREFIX.unpack(fh.read(_PREFIX.size))[1]
        self.rsize = RECORD_SIZE if self.version >= 2 else RECORD_SIZE_V1
        size = os.path.getsize(path)
        self.records, tail = divmod(size - start, self.rsize)
        self.truncated = tail != 0
        self.tail_bytes = tail
        if self.version < 2:
            self.header = dict(self.header)
            self.header.setdefault("layout", {"kind": "none", "note": "version-1 trace: no device addresses"})
        self._start = start
        self.chunk_records = int(chunk_records)
        self.page_size = int(self.header.get("page_size", 4096))
        self.files: dict[int, str] = {}
        self._path_chunks: list[np.ndarray] = []
        self.late_records = 0
        self.chunks = 0
        self.read_records = 0

    def _raw(self):
        """The records, `chunk_records` at a time, read into one chunk-sized array each (not a
        memory map: the pages of a map that was read stay in the process's resident set)."""
        if self.records == 0:
            return
        dt = RECORD_DTYPE if self.version >= 2 else RECORD_DTYPE_V1
        with open(self.path, "rb") as fh:
            fh.seek(self._start)
            left = self.records
            while left > 0:
                raw = np.fromfile(fh, dtype=dt, count=min(self.chunk_records, left))
                if raw.size == 0:  # the file shrank under us
                    return
                raw = raw if self.version >= 2 else upgrade_v1(raw)
                # the one validation every reader gets (a damaged trace is refused, naming its record)
                check_records(raw, self.path, self._start, self.rsize, self.version, self.header,
                              first_index=self.records - left)
                left -= raw.size
                yield raw

    def __iter__(self):
        """Chunks of request records (RECORD_DTYPE) in start-time order (see the module docstring)."""
        carry = np.zeros(0, RECORD_DTYPE)
        last_t = None
        limit = 4 * self.chunk_records
        raws = self._raw()
        pending = next(raws, None)
        done = 0
        while pending is not None:
            nxt = next(raws, None)
            is_path = pending["op"] == OP_PATH
            if is_path.any():
                self._path_chunks.append(np.array(pending[is_path]))
                self.files = _file_table(np.concatenate(self._path_chunks).view(PATH_DTYPE))
                reqs = pending[~is_path]
            else:
                reqs = pending
            buf = np.concatenate([carry, reqs]) if carry.size else reqs
            st = buf["start_ns"]
            if st.size > 1 and not bool((st[1:] >= st[:-1]).all()):
                buf = buf[np.argsort(st, kind="stable")]
                st = buf["start_ns"]
            if nxt is None or buf.size > limit:
                cut = buf.size
            else:
                nst = nxt["start_ns"][nxt["op"] != OP_PATH]
                cut = int(np.searchsorted(st, int(nst.min()), side="left")) if nst.size else buf.size
            out = buf[:cut]
            carry = np.array(buf[cut:]) if cut < buf.size else carry[:0]
            done += pending.size
            self.read_records = done
            if out.size:
                if last_t is not None:
                    self.late_records += int(np.count_nonzero(out["start_ns"] < last_t))
                last_t = int(out["start_ns"][-1]) if last_t is None else max(last_t, int(out["start_ns"][-1]))
                self.chunks += 1
                yield out
            pending = nxt

    def trace_of(self, recs: np.ndarray) -> Trace:
        """A Trace object over one chunk of records (for Trace.expand_pages and friends)."""
        return Trace(records=recs, files=self.files, header=self.header, path=self.path,
                     truncated=self.truncated, page_size=self.page_size)


def iter_chunks(path, chunk_records: int = CHUNK_RECORDS):
    """(TraceStream, iterator of request-record chunks in start order)."""
    ts = TraceStream(path, chunk_records)
    return ts, iter(ts)


def chunk_keys(recs: np.ndarray, ops=DEFAULT_OPS, page_size: int = 4096) -> np.ndarray:
    """The 64-bit page keys (file << 40 | page) of the accesses of a chunk of records, in order:
    exactly page_keys(Trace.expand_pages(ops, page_size)) without building the page rows."""
    codes = np.array([OPS[o] for o in ops], dtype=np.uint8)
    mask = np.isin(recs["op"], codes)
    r = recs if mask.all() else recs[mask]
    n = np.where(r["result"] >= 0, r["length"], 0).astype(np.int64)
    rw = np.isin(r["op"], np.array([OPS["read"], OPS["write"]], dtype=np.uint8))
    n = np.where(rw & (r["result"] >= 0), np.minimum(r["result"], r["length"]), n)
    keep = n > 0
    if not keep.all():
        r, n = r[keep], n[keep]
    if not r.size:
        return np.zeros(0, np.int64)
    ps = int(page_size)
    first = r["offset"] // ps
    last = (r["offset"] + n - 1) // ps
    count = (last - first + 1).astype(np.int64)
    file = r["file"].astype(np.int64)
    if int(first.min()) < 0 or int(last.max()) > PAGE_MASK or int(file.max()) >= 1 << 23:
        raise ValueError("page number or file id too large for a 64-bit key (file << 40 | page)")
    base = (file << FILE_SHIFT) | first
    total = int(count.sum())
    starts = np.cumsum(count) - count
    keys = np.repeat(base - starts, count)
    keys += np.arange(total, dtype=np.int64)
    return keys


# ---- spatial hashing ----------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_G = np.uint64(0x9E3779B97F4A7C15)


def spatial_hash(keys: np.ndarray) -> np.ndarray:
    """splitmix64 of each key's 64 bits, top HASH_BITS bits: a uniform value in [0, HASH_SPACE)
    that depends on the key only (every access to a key gets the same value)."""
    z = np.asarray(keys, dtype=np.int64).astype(np.uint64)  # a copy: worked on in place
    tmp = np.empty_like(z)
    with np.errstate(over="ignore"):
        z += _G
        for shift, mul in ((30, _M1), (27, _M2)):
            np.right_shift(z, np.uint64(shift), out=tmp)
            z ^= tmp
            z *= mul
        np.right_shift(z, np.uint64(31), out=tmp)
        z ^= tmp
    z >>= np.uint64(64 - HASH_BITS)
    return z.view(np.int64)


def rate_threshold(rate: float) -> int:
    """The threshold T for a sampling rate (T / HASH_SPACE, at least 1)."""
    return max(1, min(HASH_SPACE, int(round(rate * HASH_SPACE))))


# ---- chunked stack distances -------------------------------------------------------------------

class StackStream:
    """LRU stack distances of a key stream fed in chunks (see the module docstring): `feed(keys)`
    returns the distances of that chunk's accesses (-1 cold), equal to stack_distances over the
    concatenation of every chunk fed so far. `stack` holds the distinct keys, most recent first."""

    def __init__(self):
        self.stack = np.zeros(0, np.int64)

    def feed(self, c: np.ndarray) -> np.ndarray:
        c = np.asarray(c, dtype=np.int64)
        m = c.size
        if m == 0:
            return np.zeros(0, np.int64)
        prev, nxt = _prev_next(c)
        dist = stack_distances(c)  # in-chunk reuses exact; first accesses in the chunk -1
        first = np.flatnonzero(prev < 0)
        S = self.stack
        if S.size:
            order = np.argsort(S, kind="stable")
            sk = S[order]
            fk = c[first]
            pos = np.searchsorted(sk, fk)
            posc = np.minimum(pos, S.size - 1)
            found = sk[posc] == fk
            depth = np.where(found, order[posc], S.size + np.arange(first.size))
            above = _count_greater_before(depth)
            dist[first[found]] = depth[found] + above[found]
        top = c[np.flatnonzero(nxt == m)][::-1]
        rest = S[~np.isin(S, top)] if S.size else S
        self.stack = np.concatenate([top, rest])
        return dist

    def evict(self, keep: np.ndarray) -> None:
        """Drop the stack's keys where `keep` (a mask over `stack`) is False."""
        self.stack = self.stack[keep]


# ---- the streamed analysis ----------------------------------------------------------------------

def _weighted_median(hist: np.ndarray) -> float | None:
    """np.median of the values i repeated hist[i] times (integer counts), from the histogram."""
    total = float(hist.sum())
    if total <= 0:
        return None
    cum = np.cumsum(hist)
    lo = int(np.searchsorted(cum, math.floor((total - 1) / 2), side="right"))
    hi = int(np.searchsorted(cum, math.floor(total / 2), side="right"))
    return (lo + hi) / 2


def _hist_bins(hist: np.ndarray) -> list[dict]:
    """locality.log2_bins of the values i weighted by hist[i] (counts rounded to integers)."""
    if not hist.size or hist.sum() <= 0:
        return []
    top = int(np.flatnonzero(hist > 0)[-1]) if (hist > 0).any() else 0
    edges = [0] + [1 << k for k in range(0, max(top, 1).bit_length() + 1)]
    cum = np.concatenate([[0.0], np.cumsum(hist)])
    out = []
    for lo, hi in zip(edges, edges[1:] + [edges[-1] * 2]):
        a, b = min(lo, hist.size), min(hi, hist.size)
        out.append({"lo": lo, "hi": hi, "count": int(round(cum[b] - cum[a]))})
    while out and out[-1]["count"] == 0:
        out.pop()
    return out


def analyze_stream(path, ops=DEFAULT_OPS, page_size: int | None = None, rate: float | None = None,
                   sample_size: int | None = None, chunk_records: int = CHUNK_RECORDS, progress=None) -> dict:
    """The MRC, reuse histogram and totals of the trace at `path`, read in chunks (memory bounded
    by one chunk plus the tracked keys). rate=None and sample_size=None: exact (every key
    tracked; equals vnodefs.locality.analyze's MRC and reuse histogram). `rate` in (0, 1]: SHARDS
    at that fixed rate; `sample_size` S: SHARDS tracking at most about S keys. `progress(done,
    total)` is called after every chunk with records read so far."""
    if isinstance(ops, str):
        ops = tuple(o for o in ops.split(",") if o)
    ops = tuple(ops)
    for o in ops:
        if o not in OPS:
            raise ValueError(f"unknown op {o!r}; known: {', '.join(OPS)}")
    if rate is not None and sample_size is not None:
        raise ValueError("give a sampling rate or a sample size, not both")
    if rate is not None and not (0 < rate <= 1):
        raise ValueError(f"sampling rate must be in (0, 1], not {rate}")
    if sample_size is not None and sample_size < 1:
        raise ValueError(f"sample size must be at least 1 key, not {sample_size}")
    ts = TraceStream(path, chunk_records)
    if ts.truncated:
        warnings.warn(f"{ts.path}: trace is truncated (a crash?): reading {ts.records} whole records, "
                      f"dropped a partial record of {ts.tail_bytes} bytes", RuntimeWarning, stacklevel=2)
    ps = int(page_size or ts.page_size)
    if ps <= 0:
        raise ValueError(f"page size must be positive, not {ps}")
    mode = "exact" if rate is None and sample_size is None else ("fixed-rate" if rate is not None else "fixed-size")
    T = rate_threshold(rate) if rate is not None else HASH_SPACE
    stack = StackStream()
    hist = np.zeros(0, np.float64)  # weight per scaled distance bucket
    cold_w = 0.0
    sampled_accesses = 0
    n = 0
    requests = 0
    nbytes = 0
    t_first = t_last = None
    files: set[int] = set()
    pids: set[int] = set()
    peak_keys = 0
    codes = np.array([OPS[o] for o in ops], dtype=np.uint8)
    sub = max(int(sample_size), 1024) if sample_size is not None else None

    def account(keys: np.ndarray) -> None:
        nonlocal hist, cold_w, peak_keys
        d = stack.feed(keys)
        r = T / HASH_SPACE
        cold_w += float(np.count_nonzero(d < 0))
        reused = d[d >= 0]
        if reused.size:
            b = np.floor(reused / r).astype(np.int64) if T < HASH_SPACE else reused
            bc = np.bincount(b).astype(np.float64)
            if bc.size > hist.size:
                hist = np.concatenate([hist, np.zeros(bc.size - hist.size)])
            hist[:bc.size] += bc
        peak_keys = max(peak_keys, stack.stack.size)

    def shrink() -> None:
        nonlocal T, hist, cold_w
        if sample_size is None or stack.stack.size <= sample_size:
            return
        hv = spatial_hash(stack.stack)
        new_t = int(np.partition(hv, sample_size)[sample_size])
        if new_t >= T:
            return
        stack.evict(hv < new_t)
        f = new_t / T
        hist *= f
        cold_w *= f
        T = new_t

    for recs in ts:
        mask = np.isin(recs["op"], codes)
        sel = recs if mask.all() else recs[mask]
        requests += int(sel.size)
        if sel.size:
            nbytes += int((_ends(sel) - sel["offset"]).clip(min=0).sum())
            t0c, t1c = int(sel["start_ns"].min()), int(sel["start_ns"].max())
            t_first = t0c if t_first is None else min(t_first, t0c)
            t_last = t1c if t_last is None else max(t_last, t1c)
            files.update(np.unique(sel["file"]).tolist())
            pids.update(np.unique(sel["pid"]).tolist())
        keys = chunk_keys(sel, ops, ps)
        n += int(keys.size)
        if T < HASH_SPACE or sample_size is not None:
            keys = keys[spatial_hash(keys) < T] if T < HASH_SPACE else keys
            if sub is None:
                sampled_accesses += int(keys.size)
                account(keys)
            else:
                for s in range(0, keys.size, sub):
                    part = keys[s:s + sub]
                    if T < HASH_SPACE:
                        part = part[spatial_hash(part) < T]  # the threshold may have dropped
                    sampled_accesses += int(part.size)
                    account(part)
                    shrink()
        else:
            sampled_accesses += int(keys.size)
            account(keys)
        if progress is not None:
            progress(ts.read_records, ts.records)

    R = T / HASH_SPACE
    if mode != "exact":
        norm = n * R
        adj = norm - (cold_w + float(hist.sum()))
        if n and hist.size == 0:
            hist = np.zeros(1)
        if hist.size:
            hist[0] += adj
    else:
        norm = float(n)
    exact = mode == "exact"
    if exact:
        hist_i = np.rint(hist).astype(np.int64)
        ds = np.flatnonzero(hist_i)
        sizes = np.concatenate([[0], ds + 1]).astype(np.int64)
        misses = n - np.concatenate([[0], np.cumsum(hist_i[ds])]).astype(np.int64)
        ratio = (misses / n).tolist() if n else []
        misses_l = misses.tolist()
        cold = int(round(cold_w))
        footprint = cold
    else:
        pos = np.flatnonzero(hist != 0)
        sizes = np.concatenate([[0], pos + 1]).astype(np.int64)
        mr = np.ones(sizes.size) if norm <= 0 else 1.0 - np.concatenate([[0.0], np.cumsum(hist[pos])]) / norm
        mr = np.clip(mr, 0.0, 1.0)
        mr = np.minimum.accumulate(mr)  # the adjustment may make a step go up: keep the curve monotone
        ratio = mr.tolist()
        misses_l = [int(round(x * n)) for x in ratio]
        footprint = int(round(cold_w / R)) if R > 0 else 0
        cold = int(round(cold_w / norm * n)) if norm > 0 else 0
    reuse_w = hist.clip(min=0) if hist.size else hist
    rsum = float(reuse_w.sum())
    scale = (n - cold) / rsum if rsum > 0 and not exact else 1.0
    span_s = (t_last - t_first) / 1e9 if t_first is not None else 0.0
    nz = np.flatnonzero(reuse_w > 0)
    rep = {
        "trace": ts.path,
        "truncated": bool(ts.truncated),
        "cache_mode": ts.header.get("cache_mode"),
        "trace_holds": "page-cache misses only" if ts.header.get("cache_mode") == "page" else "every access",
        "page_size": ps,
        "ops": list(ops),
        "units": {k: UNITS[k] for k in ("requests", "bytes", "page_accesses", "footprint_pages",
                                         "footprint_bytes", "span_s", "reuse_distance", "mrc")},
        "requests": requests,
        "bytes": nbytes,
        "page_accesses": n,
        "footprint_pages": footprint,
        "footprint_bytes": footprint * ps,
        "files": len(files),
        "pids": len(pids),
        "span_s": span_s,
        "reuse_distance": {
            "units": "pages (distinct other pages between two accesses to a page)",
            "accesses": n,
            "cold": cold,
            "reuses": n - cold,
            "mean": (float((np.arange(reuse_w.size) * reuse_w).sum() / rsum) if rsum > 0 else None),
            "median": _weighted_median(np.rint(reuse_w) if exact else reuse_w),
            "max": int(nz[-1]) if nz.size else None,
            "bins": ([{**b, "count": int(round(b["count"] * scale))} for b in _hist_bins(reuse_w)]),
        },
        "mrc": {
            "units": UNITS["mrc"].split(";")[0] + "; miss_ratio = misses / accesses; step function "
                     "(value at the largest listed size <= C)" + ("" if exact else "; an estimate (sampled)"),
            "accesses": n,
            "cold_misses": cold,
            "cache_pages": sizes.tolist(),
            "misses": misses_l,
            "miss_ratio": ratio,
            "estimate": not exact,
        },
        "sampling": {
            "method": "none (exact)" if exact else "SHARDS spatial hash sampling",
            "mode": mode,
            "rate": float(rate) if mode == "fixed-rate" else (None if exact else 1.0),
            "final_rate": R,
            "sample_size": sample_size,
            "sampled_keys": int(stack.stack.size),
            "sampled_accesses": sampled_accesses,
            "estimate": not exact,
            "error_bound": None if exact else ERROR_NOTE,
        },
        "streaming": {
            "chunk_records": ts.chunk_records,
            "chunks": ts.chunks,
            "records": ts.records,
            "late_records": ts.late_records,
            "peak_tracked_keys": peak_keys,
        },
    }
    return rep


def mrc_value(rep: dict, c) -> np.ndarray:
    """The miss ratio of a report's step MRC at cache sizes `c` (pages)."""
    sizes = np.asarray(rep["mrc"]["cache_pages"], dtype=np.float64)
    ratio = np.asarray(rep["mrc"]["miss_ratio"], dtype=np.float64)
    if not sizes.size:
        return np.zeros(np.size(c))
    i = np.searchsorted(sizes, np.asarray(c, dtype=np.float64), side="right") - 1
    return ratio[np.maximum(i, 0)]


def mrc_error(est: dict, exact: dict, points: int = 100) -> dict:
    """Mean and max absolute difference of two reports' miss ratios at `points` cache sizes evenly
    spaced from footprint / points to the exact footprint (the SHARDS paper's measure)."""
    fp = max(int(exact["footprint_pages"]), 1)
    c = np.unique(np.linspace(fp / points, fp, points).round().astype(np.int64).clip(min=1))
    d = np.abs(mrc_value(est, c) - mrc_value(exact, c))
    return {"mean_absolute_error": float(d.mean()), "max_absolute_error": float(d.max()), "points": int(c.size)}


def format_stream_report(rep: dict) -> str:
    """One screen: totals, the sampling line, the MRC at C = 2^k pages beside the reuse histogram."""
    from vnodefs.locality import _bar

    L = []
    n = rep["page_accesses"]
    sm = rep["sampling"]
    L.append(f"vnodefs locality {rep['trace']}: cache {rep['cache_mode']} (trace holds {rep['trace_holds']}), "
             f"page {rep['page_size']} B, ops {','.join(rep['ops'])}, read in chunks "
             f"({rep['streaming']['chunks']} of up to {rep['streaming']['chunk_records']} records)")
    if rep["truncated"]:
        L.append("  (trace cut short: analysed up to its last whole record)")
    if rep["streaming"]["late_records"]:
        L.append(f"  ({rep['streaming']['late_records']} requests started long before their neighbours "
                 "ended and were analysed where they were written)")
    est = "~" if sm["estimate"] else ""
    L.append(f"  requests      {rep['requests']} ({_size(rep['bytes'])}) over {rep['span_s']:.3f} s, "
             f"{rep['files']} files, {rep['pids']} processes")
    L.append(f"  pages         {n} accesses, footprint {est}{rep['footprint_pages']} pages "
             f"({est}{_size(rep['footprint_bytes'])})")
    if sm["estimate"]:
        how = (f"rate {sm['rate']:g}" if sm["mode"] == "fixed-rate"
               else f"fixed size {sm['sample_size']} keys, final rate {sm['final_rate']:.3g}")
        L.append(f"  sampling      SHARDS spatial hash sampling, {how}: {sm['sampled_keys']} sampled keys, "
                 f"{sm['sampled_accesses']} sampled accesses; the curve below is {ERROR_NOTE}")
    else:
        L.append("  sampling      none: the exact curve")
    rd = rep["reuse_distance"]
    if rd["reuses"] > 0 and rd["median"] is not None:
        L.append(f"  reuse         {est}{rd['reuses']} re-accesses, stack distance median {est}{rd['median']:.0f}, "
                 f"max {est}{rd['max']} pages; {est}{rd['cold']} cold")
    if n:
        from vmcore.report import render_table

        fp = max(rep["footprint_pages"], 1)
        curve = []
        for k in range(0, fp.bit_length() + 1):
            c = 1 << k
            mr = float(mrc_value(rep, [c])[0])
            curve.append((c, f"{100 * mr:.1f}%", _bar(mr, 32)))
        curve.append(("cold", f"{100 * rd['cold'] / n:.1f}%", "(the MRC floor)"))
        L.append(render_table(("LRU pages", "miss ratio", ""), curve, right=(0, 1), indent="  "))
    L.append("  (runs, seeks, working set and breakdowns: run without --sample / --sample-size / --stream)")
    return "\n".join(L)


class StreamProgress:
    """`vnodefs locality: 42% of 1000000 records read` on stderr, at most every `interval` s, for
    traces of more than `min_records` records."""

    def __init__(self, prog: str, total: int, min_records: int = 200_000, interval: float = 2.0, stream=None):
        self.prog, self.enabled, self.interval = prog, total > min_records, interval
        self.stream = stream if stream is not None else sys.stderr
        self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write(f"{self.prog}: {100 * done / max(total, 1):.0f}% of {total} records read\n")
        self.stream.flush()


# ---- `vnodefs locality --sample / --sample-size / --stream` --------------------------------------

def _rate_arg(s: str) -> float:
    import argparse

    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sample takes a rate in (0, 1], e.g. 0.01, not {s!r}") from None
    if not (0 < v <= 1):
        raise argparse.ArgumentTypeError(f"--sample takes a rate in (0, 1], e.g. 0.01, not {s!r}")
    if v < 1 / HASH_SPACE:
        raise argparse.ArgumentTypeError(f"--sample rate {s} is below the smallest rate, 1/{HASH_SPACE}")
    return v


def _positive_int(what: str):
    import argparse

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} takes a positive integer, not {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{what} takes a positive integer, not {s!r}")
        return v

    return parse


def add_stream_options(p) -> None:
    """--sample, --sample-size, --stream, --chunk-records for `vnodefs locality`."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sample", type=_rate_arg, default=None, metavar="RATE",
                   help="estimate the MRC and reuse histogram by SHARDS spatial hash sampling at this rate "
                        "(e.g. 0.01: the pages whose hash falls in 1%% of the hash space, every access to them), "
                        "counts scaled back; reads the trace in chunks, so any length fits. Error: mean "
                        "absolute error of the miss ratio <= 0.02 with >= 1,000 sampled keys")
    g.add_argument("--sample-size", type=_positive_int("--sample-size"), default=None, metavar="N",
                   help="SHARDS with a fixed sample: track at most about N keys (the rate starts at 1 and drops "
                        "as more keys are seen), so memory stays bounded whatever the trace's length")
    g.add_argument("--stream", action="store_true",
                   help="the exact MRC and reuse histogram, reading the trace in chunks (memory: one chunk plus "
                        "8 bytes per distinct page) instead of loading it whole")
    p.add_argument("--chunk-records", type=_positive_int("--chunk-records"), default=CHUNK_RECORDS, metavar="N",
                   help=f"with --sample, --sample-size or --stream: records read per chunk (default {CHUNK_RECORDS})")


def wants_stream(args) -> bool:
    return bool(getattr(args, "sample", None) or getattr(args, "sample_size", None) or getattr(args, "stream", False))


def run_locality_stream(args) -> int:
    """`vnodefs locality` with --sample, --sample-size or --stream: the chunked analysis."""
    import json

    prog = "vnodefs locality"
    for opt, val in (("--plot", args.plot), ("--by", args.by), ("--tau", args.tau)):
        if val:
            print(f"{prog}: {opt} needs the in-memory analysis; drop --sample / --sample-size / --stream",
                  file=sys.stderr)
            return 2
    try:
        total = TraceStream(args.trace).records
    except FileNotFoundError:
        print(f"{prog}: trace file {args.trace} does not exist", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: cannot read {args.trace}: {e.strerror}", file=sys.stderr)
        return 2
    bar = StreamProgress(prog, total)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rep = analyze_stream(args.trace, ops=args.ops, page_size=args.page_size, rate=args.sample,
                                 sample_size=args.sample_size, chunk_records=args.chunk_records, progress=bar)
        except ValueError as e:
            print(f"{prog}: {args.trace}: {e}", file=sys.stderr)
            return 2
    for w in caught:
        print(f"{prog}: warning: {w.message}", file=sys.stderr)
    if args.json:
        json.dump(rep, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_stream_report(rep))
    return 0
