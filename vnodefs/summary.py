"""The one-screen summary of a vnodefs trace (or of a slice of one).

Owns: `summarize(trace, mask=None) -> dict` and `format_summary(summary) -> str`. Used by
`vnodefs run`, `vnodefs demo` and `vnodefs trace`. (Full locality analysis, reuse distances and
plots belong to a later `vnodefs locality`; this is the short report.)

Definitions (also in `vnodefs trace --help`):
  requests        read + write requests (the ones that move data; open/release/flush/fsync/truncate
                  are counted apart in `requests_all` and `by_op`)
  bytes_read      bytes returned by successful reads; bytes_written likewise
  pages_read      pages spanned by the reads (a request of n bytes at offset o spans the pages
                  o // P .. (o + n - 1) // P, P = the trace's page size); distinct_pages_read counts
                  each (file, page) once
  sequential      fraction of read/write requests whose offset is the end of the previous read/write
                  on the same file (the first request on a file is not sequential)
  time_blocked_s  sum of the durations of read/write/fsync/truncate/fallocate requests (each includes
                  its modelled latency, latency_delay_s); the time processes waited for the "disk"
  seek_s, rotation_s, transfer_s, queue_s
                  the modelled latency of the reads and writes split by the device model: summed
                  seek_ns, rot_ns, xfer_ns, and queueing = delay_ns - (seek + rot + xfer) clipped
                  at 0 (vnodefs.devstats); delay of requests the trace gives no split for (a
                  version-1 trace) is unsplit_delay_s
  device_busy_s   the length of the union of the service intervals of reads, writes and prefetch
                  reads (the device's busy time; below their summed service on a parallel device)
  device_model, layout
                  the device model and the layout kind the trace was taken under (its header's
                  `device.model` and `layout.kind`; "none" for a version-1 trace, "unknown" when a
                  later header lacks them)
  kernel          pid 0: requests the kernel made on its own (writeback, release)
"""

from __future__ import annotations

import numpy as np

from vnodefs.devstats import device_breakdown, device_info
from vnodefs.trace import OP_NAMES, OPS, Trace

_RW = (OPS["read"], OPS["write"])
_BLOCKING = (OPS["read"], OPS["write"], OPS["fsync"], OPS["truncate"], OPS["fallocate"])


def _pages(r: np.ndarray, ps: int) -> tuple[int, int]:
    """(pages spanned, distinct (file, page)) of successful requests in r."""
    n = np.minimum(np.maximum(r["result"], 0), r["length"])
    ok = n > 0
    r, n = r[ok], n[ok]
    if r.size == 0:
        return 0, 0
    first = r["offset"] // ps
    last = (r["offset"] + n - 1) // ps
    spanned = int((last - first + 1).sum())
    if spanned > 50_000_000:  # too big to enumerate cheaply; report spanned only
        return spanned, -1
    count = last - first + 1
    idx = np.repeat(np.arange(r.size), count)
    within = np.arange(spanned) - np.repeat(np.cumsum(count) - count, count)
    key = (r["file"][idx].astype(np.int64) << 40) | (first[idx] + within)
    return spanned, int(np.unique(key).size)


def sequential_flags(r: np.ndarray) -> np.ndarray:
    """For read/write records r in start order: True where the request continues the previous one on
    the same file."""
    if r.size == 0:
        return np.zeros(0, bool)
    order = np.lexsort((np.arange(r.size), r["file"]))  # by file, then trace order
    rs = r[order]
    end = rs["offset"] + np.maximum(np.minimum(np.maximum(rs["result"], 0), rs["length"]), 0)
    # a failed/short request still moved the head to offset + result
    seq = np.zeros(r.size, bool)
    same = rs["file"][1:] == rs["file"][:-1]
    seq[1:] = same & (rs["offset"][1:] == end[:-1])
    out = np.empty(r.size, bool)
    out[order] = seq
    return out


def summarize(trace: Trace, mask: np.ndarray | None = None) -> dict:
    recs = trace.records if mask is None else trace.records[mask]
    ps = trace.page_size
    op = recs["op"]
    reads = recs[op == OPS["read"]]
    writes = recs[op == OPS["write"]]
    rw = recs[np.isin(op, _RW)]
    seq = sequential_flags(rw)
    blocking = recs[np.isin(op, _BLOCKING)]
    pr, dpr = _pages(reads, ps)
    pw, _ = _pages(writes, ps)
    bytes_read = int(np.maximum(reads["result"], 0).sum())
    bytes_written = int(np.maximum(writes["result"], 0).sum())
    by_op = {OP_NAMES.get(int(c), str(c)): int(n) for c, n in zip(*np.unique(op, return_counts=True))}
    by_pid = []
    for pid in np.unique(recs["pid"]).tolist():
        p = recs[recs["pid"] == pid]
        pr_ = p[p["op"] == OPS["read"]]
        pw_ = p[p["op"] == OPS["write"]]
        pb = p[np.isin(p["op"], _BLOCKING)]
        by_pid.append({
            "pid": int(pid), "label": "kernel" if pid == 0 else f"pid {pid}",
            "requests": int(pr_.size + pw_.size), "requests_all": int(p.size),
            "bytes_read": int(np.maximum(pr_["result"], 0).sum()),
            "bytes_written": int(np.maximum(pw_["result"], 0).sum()),
            "time_blocked_s": float(pb["dur_ns"].sum()) / 1e9,
        })
    errors = int((recs["result"] < 0).sum())
    lat = trace.header.get("latency") or {}
    span = (int(recs["start_ns"].max() + 0) - int(recs["start_ns"].min())) / 1e9 if recs.size else 0.0
    dev = device_breakdown(recs)  # reads, writes, prefetch reads: what the device served
    split = device_breakdown(recs, _RW) if (op == OPS["prefetch"]).any() else dev  # what processes waited
    info = device_info(trace)
    out = {
        "trace": trace.path,
        "cache_mode": trace.header.get("cache_mode"),
        "writeback_cache": bool(trace.header.get("writeback_cache")),
        "latency": lat.get("model", "none"),
        "readahead_kb": trace.header.get("readahead_kb"),
        "page_size": ps,
        "requests": int(rw.size),
        "requests_all": int(recs.size),
        "by_op": by_op,
        "reads": int(reads.size),
        "writes": int(writes.size),
        "bytes_read": bytes_read,
        "bytes_written": bytes_written,
        "mean_read_bytes": (bytes_read / reads.size) if reads.size else 0.0,
        "pages_read": pr,
        "distinct_pages_read": dpr,
        "pages_written": pw,
        "sequential_fraction": float(seq.mean()) if seq.size else 0.0,
        "sequential_fraction_read": float(seq[rw["op"] == OPS["read"]].mean()) if reads.size else 0.0,
        "time_blocked_s": float(blocking["dur_ns"].sum()) / 1e9,
        "latency_delay_s": float(blocking["delay_ns"].sum()) / 1e9,
        "errors": errors,
        "files": int(np.unique(recs["file"]).size) if recs.size else 0,
        "span_s": span,
        "by_pid": by_pid,
        "trace_version": info["trace_version"],
        "device_model": info["device_model"],
        "device": info["device"],
        "layout": info["layout"],
        "layout_note": info["layout_note"],
        "seek_s": split["seek_s"],
        "rotation_s": split["rotation_s"],
        "transfer_s": split["transfer_s"],
        "queue_s": split["queue_s"],
        "unsplit_delay_s": split["unsplit_delay_s"],
        "device_busy_s": dev["busy_s"],
        "device_busy_span_s": dev["busy_span_s"],
        "device_requests": dev["requests"],
        "requests_with_device": dev["requests_with_device"],
        "device_seeks": dev["seeks"],
        "device_seek_distance": dev["seek_distance"],
    }
    return out


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _device_lines(s: dict) -> list[str]:
    """The device-model lines of format_summary (tolerates summaries made before they existed)."""
    model = s.get("device_model", "unknown")
    layout = s.get("layout", "unknown")
    if s.get("trace_version") == 1:
        where = "none (version-1 trace: no device model, no device addresses)"
    else:
        where = f"{model}, layout {layout}"
    out = [f"  device        {where}"]
    split = s.get("seek_s", 0) + s.get("rotation_s", 0) + s.get("transfer_s", 0) + s.get("queue_s", 0)
    if split > 0 or s.get("requests_with_device", 0):
        out.append(f"    blocked on  seek {s['seek_s']:.3f} s, rotation {s['rotation_s']:.3f} s, transfer "
                   f"{s['transfer_s']:.3f} s, queueing {s['queue_s']:.3f} s (reads and writes)")
        span = s.get("device_busy_span_s", 0.0)
        util = f" ({100 * s['device_busy_s'] / span:.0f}% of its {span:.3f} s)" if span > 0 else ""
        out.append(f"    device busy {s['device_busy_s']:.3f} s{util}; {s['device_seeks']} seeks over "
                   f"{s['requests_with_device']} requests with a device address")
    elif s.get("unsplit_delay_s", 0) > 0:
        out.append(f"    blocked on  no seek/rotation/transfer split in this trace "
                   f"({s['unsplit_delay_s']:.3f} s of modelled latency unsplit)")
    return out


def format_summary(s: dict, title: str | None = None, max_pids: int = 6) -> str:
    lines = []
    if title:
        lines.append(title)
    holds = "misses only" if s.get("cache_mode") == "page" else "every access"
    if s.get("writeback_cache"):
        holds = "read misses, and writes as the kernel flushed them, pid 0"
    mode = f"{s.get('cache_mode')}{' + writeback cache' if s.get('writeback_cache') else ''}"
    lines.append(f"  cache {mode} (trace holds {holds}), latency {s.get('latency')}, "
                 f"readahead {s.get('readahead_kb')} KiB, page {s.get('page_size')} B")
    other = s["requests_all"] - s["requests"]
    lines.append(f"  requests      {s['requests']} read/write ({s['reads']} reads, {s['writes']} writes), "
                 f"{other} other, {s['errors']} failed")
    lines.append(f"  bytes         read {_size(s['bytes_read'])} (mean request {_size(s['mean_read_bytes'])}), "
                 f"written {_size(s['bytes_written'])}")
    dp = s["distinct_pages_read"]
    lines.append(f"  pages         read {s['pages_read']} ({dp if dp >= 0 else '?'} distinct), "
                 f"written {s['pages_written']}")
    lines.append(f"  sequential    {100 * s['sequential_fraction']:.1f}% of requests "
                 f"({100 * s['sequential_fraction_read']:.1f}% of reads) continue the previous one on their file")
    lines.append(f"  time blocked  {s['time_blocked_s']:.3f} s in requests "
                 f"({s['latency_delay_s']:.3f} s of it modelled disk latency)")
    lines.extend(_device_lines(s))
    pids = sorted(s["by_pid"], key=lambda p: -p["requests_all"])
    for p in pids[:max_pids]:
        lines.append(f"  {p['label']:>12}  {p['requests']} read/write, {_size(p['bytes_read'])} read, "
                     f"{_size(p['bytes_written'])} written, {p['time_blocked_s']:.3f} s blocked")
    if len(pids) > max_pids:
        lines.append(f"  ... and {len(pids) - max_pids} more processes")
    return "\n".join(lines)
