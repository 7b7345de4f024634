"""Where the modelled device spent its time: the seek / rotation / transfer / queueing split of a
trace's requests, the device's busy time, and its head movements (seek distances on the device).

Owns: `device_breakdown(records, ops=DEVICE_OPS) -> dict`, `seek_distances_bytes(records, mask)`,
`busy_ns(end_ns, service_ns)` (the length of a union of intervals), `device_info(trace)` (which
device model and layout a trace was taken under, from its header) and `trace_version(trace)`.
Used by vnodefs.summary (`vnodefs trace`) and vnodefs.locality (`vnodefs locality`). Pure numpy
over RECORD_DTYPE records (vnodefs.trace.load): vectorised, no Python loop per record (about
0.3 s per million records here; only the needed columns are copied).

Definitions (per request record; docs/vnodefs-trace-format.md is the specification):
  service      seek_ns + rot_ns + xfer_ns: the time the device worked on the request
  queueing     delay_ns - service, clipped at 0: the time the request waited behind others
  end          start_ns + delay_ns: when the device finished it (approximately: the dispatcher
               sleeps the delay right after the request arrives)
  busy time    the length of the union of the intervals [end - service, end]: the time at least
               one request was in service. For one head serving one request at a time this is the
               summed service; for a flash device serving requests in parallel it is less.
  device seek  a request with FLAG_SEEK set and a device address (dev_addr >= 0): the head moved
  seek distance  |dev_addr - dev_prev| in bytes, for device seeks whose previous head position is
               known (dev_prev >= 0)

Caveats:
  * A request without a service split (no device address and seek_ns = rot_ns = xfer_ns = 0, i.e.
    a version-1 trace or a trace taken without a device model) has an unknown split: its delay is
    counted in `unsplit_delay_s`, not as queueing. Under the `none` model delays are 0 anyway.
  * Percentiles are numpy's default (linear interpolation between order statistics).
"""

from __future__ import annotations

import struct

import numpy as np

from vnodefs.trace import FLAG_ADDR_ESTIMATED, FLAG_SEEK, MAGIC, OPS, Trace

#: the requests that reach the device: read, write, and the daemon's prefetch reads
DEVICE_OPS = (OPS["read"], OPS["write"], OPS["prefetch"])

UNITS = {
    "seek_s": "seconds, summed seek_ns (HDD seek; access latency on flash)",
    "rotation_s": "seconds, summed rot_ns (rotational latency, HDD only)",
    "transfer_s": "seconds, summed xfer_ns",
    "service_s": "seconds, summed seek + rotation + transfer",
    "queue_s": "seconds, summed max(0, delay_ns - service) over requests with a service split",
    "unsplit_delay_s": "seconds, summed delay_ns of requests without a service split (unknown split)",
    "delay_s": "seconds, summed delay_ns (everything the latency model slept)",
    "busy_s": "seconds, length of the union of the service intervals [end - service, end], "
              "end = start_ns + delay_ns",
    "busy_span_s": "seconds from the first service interval's start to the last one's end",
    "seek_distance": "bytes on the device, |dev_addr - dev_prev|, over device seeks with dev_prev >= 0",
}


def _field(records: np.ndarray, name: str, fill: int, mask: np.ndarray | None = None) -> np.ndarray:
    """records[name][mask] as int64 (one column copied, not the 96-byte records), or `fill`
    everywhere if the dtype lacks the field (raw version-1 records)."""
    if records.dtype.names and name in records.dtype.names:
        col = records[name]
        return (col if mask is None else col[mask]).astype(np.int64)
    return np.full(records.size if mask is None else int(np.count_nonzero(mask)), fill, np.int64)


def _ops_mask(records: np.ndarray, ops) -> np.ndarray | None:
    """Boolean mask of the records whose op is in `ops`; None when that is every record."""
    m = np.isin(records["op"], np.asarray(ops, dtype=np.uint8))
    return None if m.all() else m


def busy_ns(end_ns: np.ndarray, service_ns: np.ndarray) -> tuple[int, int]:
    """(length of the union of the intervals [end - service, end] with service > 0, span from the
    earliest start to the latest end), in ns. One sort and one running maximum: intervals sorted
    by start merge while a start is not past the largest end so far."""
    end = np.asarray(end_ns, dtype=np.int64)
    svc = np.asarray(service_ns, dtype=np.int64)
    keep = svc > 0
    end, svc = end[keep], svc[keep]
    if end.size == 0:
        return 0, 0
    start = end - svc
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)  # the largest end among intervals starting so far
    first = np.concatenate(([0], np.flatnonzero(start[1:] > reach[:-1]) + 1))  # a gap before it
    last = np.concatenate((first[1:] - 1, [end.size - 1]))
    busy = int((reach[last] - start[first]).sum())
    return busy, int(reach[-1] - start[0])


def seek_distances_bytes(records: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """|dev_addr - dev_prev| (int64 bytes) of every device seek (FLAG_SEEK set, dev_addr >= 0)
    whose previous head position is known (dev_prev >= 0), in record order, over the records
    selected by `mask` (default: all of them as given; select the ops first)."""
    addr = _field(records, "dev_addr", -1, mask)
    prev = _field(records, "dev_prev", -1, mask)
    flags = records["flags"] if mask is None else records["flags"][mask]
    moved = (flags & FLAG_SEEK) != 0
    ok = moved & (addr >= 0) & (prev >= 0)
    return np.abs(addr[ok] - prev[ok])


def distance_stats(d: np.ndarray) -> dict:
    """count / mean / median / p90 / max of distances in bytes (None for an empty array)."""
    if d.size == 0:
        return {"units": "bytes", "count": 0, "mean": None, "median": None, "p90": None, "max": None}
    f = d.astype(np.float64)
    return {"units": "bytes", "count": int(d.size), "mean": float(f.mean()), "median": float(np.median(f)),
            "p90": float(np.percentile(f, 90)), "max": int(d.max())}


def device_breakdown(records: np.ndarray, ops=DEVICE_OPS) -> dict:
    """The device-time breakdown of the records whose op is in `ops` (codes; default read, write,
    prefetch), as a JSON-able dict (seconds, counts, bytes; see UNITS and the module docstring):

        requests, requests_with_device, estimated_addresses, segments, seeks,
        seek_s, rotation_s, transfer_s, service_s, queue_s, unsplit_delay_s, delay_s,
        busy_s, busy_span_s, seek_distance {units, count, mean, median, p90, max}

    `records` may be in any order (RECORD_DTYPE; raw version-1 records read as absent fields)."""
    m = _ops_mask(records, ops)
    seek = _field(records, "seek_ns", 0, m)
    rot = _field(records, "rot_ns", 0, m)
    xfer = _field(records, "xfer_ns", 0, m)
    addr = _field(records, "dev_addr", -1, m)
    delay = _field(records, "delay_ns", 0, m)
    start = _field(records, "start_ns", 0, m)
    flags = records["flags"] if m is None else records["flags"][m]
    service = seek + rot + xfer
    has_dev = addr >= 0
    split = has_dev | (service > 0)
    queue = np.where(split, np.maximum(delay - service, 0), 0)
    busy, span = busy_ns(start + delay, service)
    return {
        "units": UNITS,
        "requests": int(seek.size),
        "requests_with_device": int(has_dev.sum()),
        "estimated_addresses": int((has_dev & ((flags & FLAG_ADDR_ESTIMATED) != 0)).sum()),
        "segments": int(_field(records, "dev_segments", 0, m).sum()),
        "seeks": int((has_dev & ((flags & FLAG_SEEK) != 0)).sum()),
        "seek_s": int(seek.sum()) / 1e9,
        "rotation_s": int(rot.sum()) / 1e9,
        "transfer_s": int(xfer.sum()) / 1e9,
        "service_s": int(service.sum()) / 1e9,
        "queue_s": int(queue.sum()) / 1e9,
        "unsplit_delay_s": int(delay[~split].sum()) / 1e9,
        "delay_s": int(delay.sum()) / 1e9,
        "busy_s": busy / 1e9,
        "busy_span_s": span / 1e9,
        "seek_distance": distance_stats(seek_distances_bytes(records, m)),
    }


def trace_version(trace: Trace) -> int | None:
    """The format version in the trace file's prefix (None if the file cannot be read)."""
    try:
        with open(trace.path, "rb") as fh:
            prefix = fh.read(16)
    except OSError:
        return None
    if len(prefix) < 16 or prefix[:8] != MAGIC:
        return None
    return struct.unpack("<I", prefix[8:12])[0]


def device_info(trace: Trace) -> dict:
    """Which device model and layout `trace` was taken under, from its header:
    {"trace_version", "device_model", "device" (the header's object or None), "layout" (kind),
    "layout_note"}. A version-1 trace has device model and layout "none"; a later trace whose
    header lacks the keys says "unknown"."""
    version = trace_version(trace)
    h = trace.header
    dev = h.get("device") if isinstance(h.get("device"), dict) else None
    lay = h.get("layout") if isinstance(h.get("layout"), dict) else None
    absent = "none" if version == 1 else "unknown"
    return {
        "trace_version": version,
        "device_model": str(dev.get("model", "unknown")) if dev else absent,
        "device": dev,
        "layout": str(lay.get("kind", "unknown")) if lay and version != 1 else absent,
        "layout_note": (lay.get("note") if lay else None) if version != 1 else
                       "version-1 trace: no device model, no device addresses",
    }
