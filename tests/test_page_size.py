"""Invariant guarded: `vnodefs locality --page-size` and `vmcore replay --page-size` accept and
refuse the same values (a power of two from 512 bytes to 1MiB, in bytes or with a unit), each
refusal one line on stderr and exit status 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vnodefs.trace import OPS, TraceWriter


def _trace(path):
    w = TraceWriter(str(path), flush_interval=0)
    w.start({"cache_mode": "direct", "page_size": 4096, "latency": {"model": "none"}})
    for i in range(64):
        w.record(10**9 + i, 5, 0, (i % 16) * 4096, 4096, 4096, 1, 0, w.file_id("/f"), OPS["read"])
    w.close()
    return str(path)


def _run(tmp_path, which, page_size):
    t = _trace(tmp_path / "t.vtrace")
    if which == "locality":
        cmd = [sys.executable, "-m", "vnodefs", "locality", t, "--json", "--page-size", page_size]
    else:
        cmd = [sys.executable, "-m", "vmcore", "replay", t, "--memory", "4MiB", "--policy", "lru", "--json",
               "--page-size", page_size]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("which", ["locality", "replay"])
@pytest.mark.parametrize("value", ["0", "-4096", "1000", "3", "256", "2MiB", "4k2", "lots"])
def test_bad_page_size_is_refused_alike(tmp_path, which, value):
    p = _run(tmp_path, which, value)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == "" and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "power of two" in p.stderr, p.stderr


@pytest.mark.parametrize("which", ["locality", "replay"])
@pytest.mark.parametrize("value,expect", [("512", 512), ("4096", 4096), ("16KiB", 16384), ("1MiB", 1 << 20)])
def test_good_page_size_is_accepted_alike(tmp_path, which, value, expect):
    import json

    p = _run(tmp_path, which, value)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["page_size"] == expect
