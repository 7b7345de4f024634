"""Invariant guarded: the summary's counts follow its documented definitions on hand-made traces
with known answers (the device model itself: tests/vnodefs/test_device_model.py)."""

from __future__ import annotations

import pytest

from vnodefs.summary import format_summary, summarize
from vnodefs.trace import OPS, TraceWriter, load


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
