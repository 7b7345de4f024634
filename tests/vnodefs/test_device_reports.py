"""Invariant guarded: `vnodefs trace` and `vnodefs locality` report the device model's figures of a
version-2 trace (seek / rotation / transfer / queueing split of the time blocked, the device's busy
time, device seeks and their distances, the device model and layout from the header) in text and
JSON, keep every key they had before, and say plainly that a version-1 trace (written here byte by
byte in the old 64-byte layout) has no device model: it loads with the device fields absent.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from vnodefs.cli import main as vnodefs_main
from vnodefs.locality import analyze, format_report
from vnodefs.summary import format_summary, summarize
from vnodefs.trace import FLAG_SEEK, MAGIC, OPS, RECORD_DTYPE_V1, RECORD_SIZE_V1, load

from test_devstats import HEADER, KNOWN, MS, MiB, write

#: the keys `vnodefs trace --json` had before the device model (none may go)
OLD_SUMMARY_KEYS = {"trace", "cache_mode", "latency", "readahead_kb", "page_size", "requests", "requests_all",
                    "by_op", "reads", "writes", "bytes_read", "bytes_written", "mean_read_bytes", "pages_read",
                    "distinct_pages_read", "pages_written", "sequential_fraction", "sequential_fraction_read",
                    "time_blocked_s", "latency_delay_s", "errors", "files", "span_s", "by_pid"}
NEW_SUMMARY_KEYS = {"device_model", "layout", "seek_s", "rotation_s", "transfer_s", "queue_s", "device_busy_s"}
OLD_LOCALITY_KEYS = {"trace", "truncated", "cache_mode", "trace_holds", "page_size", "ops", "units", "requests",
                     "bytes", "page_accesses", "footprint_pages", "footprint_bytes", "files", "pids", "span_s",
                     "sequential_fraction", "sequential_requests", "run_length", "seek_distance",
                     "reuse_distance", "mrc", "working_set", "by_pid", "by_file"}


def write_v1(path, header, reqs, files):
    """A version-1 trace in the old layout: magic, version 1, header_len, JSON header padded so the
    records start at a multiple of 64, then 64-byte records (RECORD_DTYPE_V1) and file-table chunks.
    reqs: (start, dur, delay, offset, length, result, pid, file, op, flags)."""
    body = json.dumps(header).encode()
    body += b" " * ((-(16 + len(body))) % RECORD_SIZE_V1)
    out = [MAGIC + struct.pack("<II", 1, len(body)) + body]
    for fid, p in files.items():
        raw = p.encode()
        out.append(struct.pack("<48sIIIBBH", raw, len(raw), 0, fid, 255, 0, 0))
    rec = np.zeros(len(reqs), RECORD_DTYPE_V1)
    for i, (start, dur, delay, off, ln, res, pid, fid, op, flags) in enumerate(reqs):
        rec[i] = (start, dur, delay, off, ln, res, pid, 0, fid, op, flags, 0)
    out.append(rec.tobytes())
    data = b"".join(out)
    assert (len(data) - 16 - len(body)) % 64 == 0 and rec.itemsize == 64
    path.write_bytes(data)
    return str(path)


V1_HEADER = {"format": "vnodefs-trace", "version": 1, "record_size": 64, "cache_mode": "direct",
             "page_size": 4096, "latency": {"model": "hdd", "seek_us": 8000.0, "mbps": 120.0}}


@pytest.fixture
def v1_path(tmp_path):
    return write_v1(tmp_path / "old.vtrace", V1_HEADER, [
        (1000, 9 * MS, 8 * MS, 0, 4096, 4096, 5, 1, OPS["read"], FLAG_SEEK),
        (20 * MS, 1 * MS, 34133, 4096, 4096, 4096, 5, 1, OPS["read"], 0),
        (30 * MS, 500, 0, 0, 0, 0, 5, 1, OPS["release"], 0),
    ], {1: "dir/a.bin"})


def test_v1_trace_loads_with_the_device_fields_absent(v1_path):
    tr = load(v1_path)
    assert tr.files == {1: "dir/a.bin"}
    r = tr.records
    assert r.size == 3 and r["op"].tolist() == [1, 1, 6]
    assert r["offset"].tolist() == [0, 4096, 0] and r["delay_ns"].tolist() == [8 * MS, 34133, 0]
    assert (r["dev_addr"] == -1).all() and (r["dev_prev"] == -1).all()
    for f in ("seek_ns", "rot_ns", "xfer_ns", "dev_segments"):
        assert (r[f] == 0).all()


def test_v1_summary_says_no_device_model(v1_path, capsys):
    s = summarize(load(v1_path))
    assert s["trace_version"] == 1 and s["device_model"] == "none" and s["layout"] == "none"
    assert s["device"] is None
    assert (s["seek_s"], s["rotation_s"], s["transfer_s"], s["queue_s"], s["device_busy_s"]) == (0, 0, 0, 0, 0)
    assert s["requests_with_device"] == 0 and s["device_seeks"] == 0
    assert s["unsplit_delay_s"] == pytest.approx((8 * MS + 34133) / 1e9)  # the delay is not called queueing
    assert s["latency"] == "hdd" and s["latency_delay_s"] == pytest.approx((8 * MS + 34133) / 1e9)
    text = format_summary(s)
    assert "device        none (version-1 trace: no device model, no device addresses)" in text
    assert "no seek/rotation/transfer split in this trace" in text
    assert vnodefs_main(["trace", v1_path]) == 0
    out = capsys.readouterr().out
    assert "version-1 trace: no device model" in out


def test_v1_locality_says_no_device_addresses_in_one_line(v1_path, capsys):
    rep = analyze(load(v1_path))
    assert rep["device"]["available"] is False and rep["device"]["seeks"] == 0
    assert rep["seek_distance"]["requests_with_predecessor"] == 1  # per-file seeks still reported
    lines = [ln for ln in format_report(rep).splitlines() if "device" in ln]
    assert lines == ["  device seeks  none: the trace has no device addresses (version-1 trace)"]
    assert vnodefs_main(["locality", v1_path]) == 0
    assert "device seeks  none: the trace has no device addresses" in capsys.readouterr().out


def test_summary_splits_time_blocked(tmp_path):
    s = summarize(write(tmp_path / "k.vtrace", KNOWN))
    assert OLD_SUMMARY_KEYS | NEW_SUMMARY_KEYS <= set(s)
    assert (s["device_model"], s["layout"], s["trace_version"]) == ("hdd", "fiemap", 2)
    # the split of what processes waited for: reads and writes, not the daemon's prefetch
    assert s["seek_s"] == pytest.approx(13e-3, abs=1e-12)
    assert s["rotation_s"] == pytest.approx(5e-3, abs=1e-12)
    assert s["transfer_s"] == pytest.approx(4e-3, abs=1e-12)
    assert s["queue_s"] == pytest.approx(10e-3, abs=1e-12)
    # it adds up to the modelled latency of the reads and writes (7 ms of fsync delay apart)
    rw_delay = s["seek_s"] + s["rotation_s"] + s["transfer_s"] + s["queue_s"]
    assert rw_delay == pytest.approx(s["latency_delay_s"] - 7e-3, abs=1e-12)
    # the device served the prefetch too
    assert s["device_busy_s"] == pytest.approx(27e-3, abs=1e-12)
    assert s["device_requests"] == 6 and s["device_seeks"] == 4
    assert s["device_seek_distance"]["max"] == 10 * MiB - 100
    text = format_summary(s, title="t")
    assert "  device        hdd, layout fiemap" in text
    assert ("    blocked on  seek 0.013 s, rotation 0.005 s, transfer 0.004 s, queueing 0.010 s "
            "(reads and writes)") in text
    assert "    device busy 0.027 s (53% of its 0.051 s); 4 seeks over 5 requests with a device address" in text
    assert len(text.splitlines()) <= 24


def test_summary_of_a_mask(tmp_path):
    tr = write(tmp_path / "k.vtrace", KNOWN)
    s = summarize(tr, tr.records["start_ns"] < MS // 2)  # the first read only
    assert s["seek_s"] == pytest.approx(6e-3, abs=1e-12) and s["queue_s"] == 0.0
    assert s["device_busy_s"] == pytest.approx(10e-3, abs=1e-12)


def test_trace_cli_text_and_json(tmp_path, capsys):
    path = str(tmp_path / "k.vtrace")
    write(path, KNOWN)
    assert vnodefs_main(["trace", path]) == 0
    out = capsys.readouterr().out
    assert "time blocked" in out and "device        hdd, layout fiemap" in out
    assert "queueing 0.010 s" in out and "device busy 0.027 s" in out
    assert vnodefs_main(["trace", path, "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert OLD_SUMMARY_KEYS | NEW_SUMMARY_KEYS <= set(js)
    assert js["device_model"] == "hdd" and js["layout"] == "fiemap"
    assert js["device_busy_s"] == pytest.approx(0.027)
    assert js["queue_s"] == pytest.approx(0.010)


def test_trace_without_device_keys_says_unknown(tmp_path):
    tr = write(tmp_path / "u.vtrace", KNOWN[:1], header={"cache_mode": "direct", "page_size": 4096})
    s = summarize(tr)
    assert (s["device_model"], s["layout"]) == ("unknown", "unknown")
    assert "device        unknown, layout unknown" in format_summary(s)


def test_locality_reports_device_seeks(tmp_path, capsys):
    path = str(tmp_path / "k.vtrace")
    tr = write(path, KNOWN)
    rep = analyze(tr, ops=("read", "write", "prefetch"))
    assert OLD_LOCALITY_KEYS <= set(rep)
    dv = rep["device"]
    assert dv["available"] and (dv["device_model"], dv["layout"]) == ("hdd", "fiemap")
    assert (dv["requests"], dv["requests_with_device"], dv["seeks"], dv["estimated_addresses"]) == (6, 5, 4, 1)
    assert dv["seek_s"] == pytest.approx(14e-3, abs=1e-12) and dv["rotation_s"] == pytest.approx(6e-3, abs=1e-12)
    sd = dv["seek_distance"]
    assert sd["count"] == 3 and sd["median"] == 2 * MiB - 4096 and sd["max"] == 10 * MiB - 100
    # non-empty log2 byte bins: 1 MiB in [1, 2) MiB, 2 MiB - 4096 too, 10 MiB - 100 in [8, 16) MiB
    assert [(b["lo"], b["count"]) for b in sd["bins"]] == [(1 * MiB, 2), (8 * MiB, 1)]
    # the default ops (read, write) leave the prefetch out
    assert analyze(tr)["device"]["seeks"] == 3
    text = format_report(rep)
    assert "  device seeks  4 of 5 requests with a device address moved the head (hdd, layout fiemap, " \
           "1 addresses estimated)" in text
    assert "    seek time   0.014 s, rotation 0.006 s; distance median 2.0 MiB, p90 8.4 MiB, max 10.0 MiB " \
           "(3 seeks from a known position)" in text
    lines = text.splitlines()
    assert lines.index(next(ln for ln in lines if ln.startswith("  device seeks"))) == \
        lines.index(next(ln for ln in lines if ln.startswith("  seeks "))) + 2  # right after the per-file seeks
    assert vnodefs_main(["locality", path, "--ops", "read,write,prefetch"]) == 0
    assert "device seeks  4 of 5 requests" in capsys.readouterr().out
    assert vnodefs_main(["locality", path, "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert OLD_LOCALITY_KEYS | {"device"} <= set(js) and js["device"]["seeks"] == 3


def test_locality_v2_trace_without_addresses(tmp_path):
    tr = write(tmp_path / "n.vtrace", [dict(start=0, delay=0, op="read")],
               header={**HEADER, "device": {"model": "none"}, "layout": {"kind": "none", "note": ""}})
    lines = [ln for ln in format_report(analyze(tr)).splitlines() if "device" in ln]
    assert lines == ["  device seeks  none: the trace has no device addresses (no device model, or nothing read)"]
