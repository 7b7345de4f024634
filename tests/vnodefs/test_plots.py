"""Invariant guarded: `vnodefs locality --plot FILE.png` writes one non-empty, valid PNG (signature,
IHDR of a sensible size, IEND), also for a trace with no data requests; importing vnodefs.locality
does not import matplotlib (the command starts fast)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import pytest

from vnodefs.locality import analyze, main
from vnodefs.plots import plot_locality
from vnodefs.trace import OPS, TraceWriter, load

P = 4096


def make_trace(path, n=300):
    w = TraceWriter(str(path), flush_interval=0)
    w.start({"cache_mode": "page", "page_size": P, "latency": {"model": "none"}})
    for i in range(n):
        f = "/a" if i % 3 else "/b"
        w.record(1000 + i * 10**6, 5, 0, ((i * 7) % 40) * P, 2 * P, 2 * P, 1 + i % 2, 0, w.file_id(f), OPS["read"])
    w.close()
    return str(path)


def check_png(path):
    data = open(path, "rb").read()
    assert len(data) > 10_000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 500
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])  # IHDR CRC
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"  # an empty IEND chunk closes the file


def test_cli_plot_writes_a_valid_png(tmp_path, capsys):
    trace = make_trace(tmp_path / "t.vtrace")
    png = tmp_path / "loc.png"
    assert main([trace, "--plot", str(png)]) == 0
    assert "plot written" in capsys.readouterr().err
    check_png(png)


def test_plot_of_a_trace_without_data_requests(tmp_path):
    path = tmp_path / "e.vtrace"
    w = TraceWriter(str(path), flush_interval=0)
    w.start({"cache_mode": "direct", "page_size": P})
    w.record(1000, 5, 0, 0, 0, 0, 1, 0, w.file_id("/a"), OPS["open"])
    w.close()
    tr = load(path)
    png = tmp_path / "e.png"
    plot_locality(analyze(tr), tr, str(png))
    check_png(png)


def test_plot_subsamples_large_traces(tmp_path):
    tr = load(make_trace(tmp_path / "t.vtrace", n=2000))
    png = tmp_path / "s.png"
    plot_locality(analyze(tr), tr, str(png), max_points=500)
    check_png(png)


@pytest.mark.parametrize("mod", ["vnodefs.locality", "vnodefs.export", "vnodefs.plots"])
def test_importing_does_not_load_matplotlib(mod):
    code = f"import sys, {mod}; print('matplotlib' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr
