"""Invariant guarded: the latency model charges a seek exactly when a request does not continue the
previous one on its file, plus length / bandwidth; presets have their documented figures; bad
specifications are refused in one line. The summary's counts follow its documented definitions
on hand-made traces with known answers."""

from __future__ import annotations

import pytest

from vnodefs.latency import PRESETS, LatencyError, LatencyModel, parse_latency
from vnodefs.summary import format_summary, summarize
from vnodefs.trace import OPS, TraceWriter, load


def test_presets_have_documented_figures():
    assert PRESETS["ssd"] == (100.0, 500.0)
    assert PRESETS["hdd"] == (8000.0, 120.0)
    assert parse_latency("hdd").describe() == {"model": "hdd", "seek_us": 8000.0, "mbps": 120.0}
    assert parse_latency("none").name == "none" and parse_latency(None).name == "none"
    c = parse_latency("2000:200")
    assert (c.name, c.seek_us, c.mbps) == ("custom", 2000.0, 200.0)


@pytest.mark.parametrize("bad", ["fast", "1:0", "-1:100", "a:b", "", "100:", ":5"])
def test_bad_latency_is_refused(bad):
    with pytest.raises(LatencyError) as ei:
        parse_latency(bad)
    assert "\n" not in str(ei.value)


def test_seek_and_transfer_charges():
    m = LatencyModel(parse_latency("1000:100"))  # 1 ms seek, 100 MB/s = 10 ns/byte
    assert m.charge(1, 0, 4096) == (1_000_000 + 40960, True)  # first request on a file seeks
    assert m.charge(1, 4096, 4096) == (40960, False)  # continues: transfer only
    assert m.charge(2, 8192, 100) == (1_000_000 + 1000, True)  # other file: its own head
    assert m.charge(1, 8192, 0) == (0, False)
    assert m.charge(1, 0, 10) == (1_000_000 + 100, True)  # backwards: seek
    off = LatencyModel(parse_latency("none"))
    assert off.charge(1, 0, 10) == (0, True) and off.charge(1, 10, 10) == (0, False)


def _trace(tmp_path, reqs, cache="direct"):
    path = tmp_path / "s.vtrace"
    w = TraceWriter(str(path), flush_interval=0)
    w.start({"cache_mode": cache, "page_size": 4096, "latency": {"model": "ssd"}, "readahead_kb": 128})
    for i, (p, op, off, ln, res, pid, dur) in enumerate(reqs):
        w.record(i * 1000, dur, dur // 2, off, ln, res, pid, 0, w.file_id(p), OPS[op])
    w.close()
    return load(path)


def test_summary_known_answers(tmp_path):
    K = 4096
    tr = _trace(tmp_path, [
        ("/a", "open", 0, 0, 0, 5, 10),
        ("/a", "read", 0, K, K, 5, 100),          # first on a: not sequential
        ("/a", "read", K, 2 * K, 2 * K, 5, 100),  # sequential
        ("/b", "read", 0, K, K, 6, 100),          # first on b
        ("/a", "read", 3 * K, K, K, 5, 100),      # sequential (b in between does not matter)
        ("/a", "read", 0, K, K, 5, 100),          # backwards: not sequential; page 0 again
        ("/b", "write", K, 10, 10, 0, 50),        # sequential on b (b's last read ended at K)
        ("/a", "read", 9 * K, K, -5, 5, 100),     # failed
        ("/a", "release", 0, 0, 0, 0, 10),
    ])
    s = summarize(tr)
    assert s["requests"] == 7 and s["requests_all"] == 9
    assert s["reads"] == 6 and s["writes"] == 1
    assert s["bytes_read"] == 6 * K and s["bytes_written"] == 10
    assert s["pages_read"] == 6 and s["distinct_pages_read"] == 5
    assert s["sequential_fraction"] == pytest.approx(3 / 7)
    assert s["sequential_fraction_read"] == pytest.approx(2 / 6)
    assert s["time_blocked_s"] == pytest.approx(650e-9)
    assert s["latency_delay_s"] == pytest.approx(325e-9)
    assert s["errors"] == 1
    labels = {p["label"]: p for p in s["by_pid"]}
    assert set(labels) == {"kernel", "pid 5", "pid 6"}
    assert labels["kernel"]["bytes_written"] == 10 and labels["kernel"]["requests_all"] == 2
    text = format_summary(s, title="t")
    assert "kernel" in text and "42.9%" in text
    assert len(text.splitlines()) <= 24


def test_device_serves_one_request_at_a_time():
    """Two requests queued back to back: the second waits for the first (one disk, one head)."""
    m = LatencyModel(parse_latency("100000:100"))  # 100 ms seek
    first = m.wait_ns(True, 0)
    second = m.wait_ns(True, 0)
    assert first == pytest.approx(100_000_000, abs=2_000_000)
    assert second == pytest.approx(200_000_000, abs=2_000_000)


def test_idle_device_charges_service_time_only():
    m = LatencyModel(parse_latency("1000:100"))
    assert m.wait_ns(True, 1000) == 1_000_000 + 10_000
    import time
    time.sleep(0.01)  # the device is idle again
    assert m.wait_ns(False, 1000) == 10_000
