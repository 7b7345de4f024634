"""Invariant guarded: vnodefs.devstats splits the modelled device time exactly as the trace format
defines it (service = seek + rotation + transfer, queueing = delay - service clipped at 0, device
seeks = FLAG_SEEK with a device address, seek distance = |dev_addr - dev_prev| where both are
known), counts only reads, writes and prefetches, and measures the device's busy time as the
length of the union of the service intervals [start + delay - service, start + delay] (overlapping
intervals, as on a parallel flash device, count once). Checked on hand-made traces with known
answers and against a plain-Python reference on a seeded random trace.

Traces are built with vnodefs.trace.TraceWriter (no FUSE).
"""

from __future__ import annotations

import numpy as np
import pytest

from vnodefs.devstats import DEVICE_OPS, busy_ns, device_breakdown, device_info, seek_distances_bytes
from vnodefs.trace import FLAG_ADDR_ESTIMATED, FLAG_SEEK, OPS, RECORD_DTYPE, TraceWriter, load

MS = 1_000_000
MiB = 1 << 20
HEADER = {"cache_mode": "direct", "page_size": 4096, "latency": {"model": "hdd"},
          "device": {"model": "hdd", "rpm": 7200}, "layout": {"kind": "fiemap", "note": "host extents"}}


def write(path, reqs, header=HEADER):
    """reqs: dicts with start, delay, op and optional offset, length, flags, dev_addr, dev_prev,
    seek, rot, xfer, seg, pid, file ("/a")."""
    w = TraceWriter(str(path), flush_interval=0)
    w.start(header)
    for q in reqs:
        ln = q.get("length", 4096)
        w.record(q["start"], q["delay"] + 1000, q["delay"], q.get("offset", 0), ln, ln, q.get("pid", 5), 0,
                 w.file_id(q.get("file", "/a")), OPS[q["op"]], q.get("flags", 0),
                 dev_addr=q.get("dev_addr", -1), dev_prev=q.get("dev_prev", -1), seek_ns=q.get("seek", 0),
                 rot_ns=q.get("rot", 0), xfer_ns=q.get("xfer", 0), dev_segments=q.get("seg", 0))
    w.close()
    return load(path)


#: a small trace with known answers (times in ms)
KNOWN = [
    # seek + rotation + transfer = 10 ms, no queueing: interval [0, 10]
    dict(start=0, delay=10 * MS, op="read", flags=FLAG_SEEK, dev_addr=1 * MiB, dev_prev=0,
         seek=6 * MS, rot=3 * MS, xfer=1 * MS, seg=1),
    # waited 10 ms behind the first: service 9 ms, interval [11, 20]
    dict(start=1 * MS, delay=19 * MS, op="read", offset=8192, flags=FLAG_SEEK | FLAG_ADDR_ESTIMATED,
         dev_addr=3 * MiB, dev_prev=1 * MiB + 4096, seek=6 * MS, rot=2 * MS, xfer=1 * MS, seg=2),
    # continues on the device: no seek flag, transfer only: [30, 32]
    dict(start=30 * MS, delay=2 * MS, op="write", dev_addr=3 * MiB + 4096, dev_prev=3 * MiB + 4096,
         xfer=2 * MS, seg=1),
    # the daemon's prefetch: a long seek back, [40, 45]
    dict(start=40 * MS, delay=5 * MS, op="prefetch", flags=FLAG_SEEK, dev_addr=100, dev_prev=10 * MiB,
         seek=1 * MS, rot=1 * MS, xfer=3 * MS, seg=1, pid=99),
    # served from the prefetch cache: nothing reached the device
    dict(start=46 * MS, delay=0, op="read", flags=2),
    # a seek from an unknown head position: counted as a seek, no distance; [50, 51]
    dict(start=50 * MS, delay=1 * MS, op="read", flags=FLAG_SEEK, dev_addr=5 * MiB, dev_prev=-1,
         seek=1 * MS, seg=1),
    # not device requests: never counted
    dict(start=60 * MS, delay=7 * MS, op="fsync", seek=7 * MS, dev_addr=0, flags=FLAG_SEEK),
    dict(start=70 * MS, delay=0, op="open"),
]


def test_breakdown_known_answers(tmp_path):
    tr = write(tmp_path / "k.vtrace", KNOWN)
    b = device_breakdown(tr.records)
    assert b["requests"] == 6
    assert b["requests_with_device"] == 5
    assert b["estimated_addresses"] == 1
    assert b["segments"] == 6
    assert b["seeks"] == 4
    assert b["seek_s"] == pytest.approx(14e-3, abs=1e-12)
    assert b["rotation_s"] == pytest.approx(6e-3, abs=1e-12)
    assert b["transfer_s"] == pytest.approx(7e-3, abs=1e-12)
    assert b["service_s"] == pytest.approx(27e-3, abs=1e-12)
    assert b["queue_s"] == pytest.approx(10e-3, abs=1e-12)
    assert b["delay_s"] == pytest.approx(37e-3, abs=1e-12)
    assert b["unsplit_delay_s"] == 0.0
    assert b["busy_s"] == pytest.approx(27e-3, abs=1e-12)  # no two intervals overlap
    assert b["busy_span_s"] == pytest.approx(51e-3, abs=1e-12)
    dists = sorted([1 * MiB, 2 * MiB - 4096, 10 * MiB - 100])
    sd = b["seek_distance"]
    assert sd["count"] == 3 and sd["units"] == "bytes"
    assert sd["max"] == 10 * MiB - 100
    assert sd["median"] == 2 * MiB - 4096
    assert sd["mean"] == pytest.approx(sum(dists) / 3)
    assert sd["p90"] == pytest.approx(dists[1] + 0.8 * (dists[2] - dists[1]))
    assert sorted(seek_distances_bytes(tr.records[np.isin(tr.records["op"], DEVICE_OPS)]).tolist()) == dists


def test_ops_argument_selects(tmp_path):
    tr = write(tmp_path / "k.vtrace", KNOWN)
    rw = device_breakdown(tr.records, (OPS["read"], OPS["write"]))
    assert rw["requests"] == 5 and rw["seeks"] == 3
    assert rw["seek_s"] == pytest.approx(13e-3, abs=1e-12)
    assert rw["seek_distance"]["count"] == 2


def test_queueing_clips_at_zero(tmp_path):
    # a delay shorter than the service split (rounding in the model): queueing 0, never negative
    tr = write(tmp_path / "q.vtrace", [
        dict(start=0, delay=5 * MS, op="read", dev_addr=0, seek=4 * MS, xfer=2 * MS),
        dict(start=10 * MS, delay=9 * MS, op="read", dev_addr=4096, xfer=2 * MS),
    ])
    b = device_breakdown(tr.records)
    assert b["queue_s"] == pytest.approx(7e-3, abs=1e-12)
    assert b["service_s"] == pytest.approx(8e-3, abs=1e-12)


def test_busy_time_is_the_union_of_overlapping_intervals():
    # intervals [end - service, end], given out of order
    iv = [(5, 15), (0, 10), (15, 20), (32, 35), (30, 40), (55, 58), (50, 60), (100, 100)]
    end = np.array([e for _, e in iv])
    svc = np.array([e - s for s, e in iv])
    busy, span = busy_ns(end, svc)
    # [0, 20] (overlap, then touching) + [30, 40] (contains one) + [50, 60] (contains one); the
    # empty interval at 100 is no service at all
    assert busy == 20 + 10 + 10
    assert span == 60
    assert busy_ns(np.zeros(0), np.zeros(0)) == (0, 0)


def test_busy_time_on_a_parallel_device(tmp_path):
    """Four 100 us flash reads served at once: busy 100 us, though the summed service is 400 us."""
    us = 1000
    reqs = [dict(start=0, delay=100 * us, op="read", dev_addr=i * MiB, dev_prev=-1, flags=FLAG_SEEK,
                 seek=60 * us, xfer=40 * us, seg=1) for i in range(4)]
    reqs.append(dict(start=50 * us, delay=130 * us, op="read", dev_addr=9 * MiB, seek=60 * us, xfer=40 * us))
    tr = write(tmp_path / "p.vtrace", reqs, header={**HEADER, "device": {"model": "nvme"}})
    b = device_breakdown(tr.records)
    assert b["service_s"] == pytest.approx(500e-6, abs=1e-12)
    assert b["busy_s"] == pytest.approx(180e-6, abs=1e-12)  # [0, 100] and [80, 180]
    assert b["queue_s"] == pytest.approx(30e-6, abs=1e-12)
    assert b["seek_distance"]["count"] == 0 and b["seek_distance"]["median"] is None


def _reference(recs):
    """The definitions, one record at a time."""
    out = dict(seek=0, rot=0, xfer=0, queue=0, seeks=0, dev=0, dists=[], covered=set())
    for r in recs:
        if int(r["op"]) not in DEVICE_OPS:
            continue
        svc = int(r["seek_ns"]) + int(r["rot_ns"]) + int(r["xfer_ns"])
        out["seek"] += int(r["seek_ns"])
        out["rot"] += int(r["rot_ns"])
        out["xfer"] += int(r["xfer_ns"])
        if r["dev_addr"] >= 0 or svc > 0:
            out["queue"] += max(0, int(r["delay_ns"]) - svc)
        if r["dev_addr"] >= 0:
            out["dev"] += 1
            if r["flags"] & FLAG_SEEK:
                out["seeks"] += 1
                if r["dev_prev"] >= 0:
                    out["dists"].append(abs(int(r["dev_addr"]) - int(r["dev_prev"])))
        end = int(r["start_ns"]) + int(r["delay_ns"])
        out["covered"].update(range(end - svc, end))  # unit time steps
    return out


def test_matches_a_plain_reference_on_a_seeded_random_trace():
    rng = np.random.default_rng(7)
    n = 3000
    r = np.zeros(n, RECORD_DTYPE)
    r["op"] = rng.choice([1, 2, 10, 4, 5], n)
    r["start_ns"] = np.sort(rng.integers(0, 20_000, n))
    r["seek_ns"] = rng.integers(0, 30, n) * rng.integers(0, 2, n)
    r["rot_ns"] = rng.integers(0, 10, n)
    r["xfer_ns"] = rng.integers(0, 20, n)
    r["delay_ns"] = r["seek_ns"] + r["rot_ns"] + r["xfer_ns"] + rng.integers(-5, 40, n).clip(min=0)
    r["dev_addr"] = np.where(rng.random(n) < 0.8, rng.integers(0, 1 << 30, n), -1)
    r["dev_prev"] = np.where(rng.random(n) < 0.9, rng.integers(0, 1 << 30, n), -1)
    r["flags"] = rng.integers(0, 32, n)
    ref = _reference(r)
    b = device_breakdown(r)
    assert round(b["seek_s"] * 1e9) == ref["seek"]
    assert round(b["rotation_s"] * 1e9) == ref["rot"]
    assert round(b["transfer_s"] * 1e9) == ref["xfer"]
    assert round(b["queue_s"] * 1e9) == ref["queue"]
    assert b["requests_with_device"] == ref["dev"] and b["seeks"] == ref["seeks"]
    assert round(b["busy_s"] * 1e9) == len(ref["covered"])
    d = np.array(ref["dists"])
    sd = b["seek_distance"]
    assert sd["count"] == d.size and sd["max"] == d.max()
    assert sd["median"] == pytest.approx(float(np.median(d)))
    assert sd["p90"] == pytest.approx(float(np.percentile(d, 90)))


def test_device_info_from_the_header(tmp_path):
    tr = write(tmp_path / "h.vtrace", KNOWN[:1])
    info = device_info(tr)
    assert info == {"trace_version": 2, "device_model": "hdd", "device": {"model": "hdd", "rpm": 7200},
                    "layout": "fiemap", "layout_note": "host extents"}
    bare = write(tmp_path / "b.vtrace", KNOWN[:1], header={"cache_mode": "direct", "page_size": 4096})
    info = device_info(bare)
    assert (info["device_model"], info["layout"], info["device"]) == ("unknown", "unknown", None)
