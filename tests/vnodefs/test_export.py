"""Invariant guarded: `vnodefs export` round-trips: reading a csv or libcachesim export back gives
exactly the page-split sequence of Trace.expand_pages (times, pids, ops, files, paths, pages); the
libcachesim form has the header and columns libCacheSim's csv reader is told about
(time,obj_id,obj_size; obj_id = file << 40 | page; size = page size); bad input is one line and
exit 2 with no partial output file. Where the libcachesim Python package is installed, its own
csv reader and LRU must reproduce `vnodefs locality`'s miss-ratio curve."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from vnodefs.export import (LIBCACHESIM_HEADER, LIBCACHESIM_OPTIONS, export, main, read_csv,
                            read_libcachesim)
from vnodefs.locality import analyze, mrc_at, page_keys
from vnodefs.trace import OPS, TraceWriter, load

P = 4096
ODD = '/dir/we,ird "name"\twith\u00e9'


def make_trace(path, n=400, seed=3):
    rng = np.random.default_rng(seed)
    w = TraceWriter(str(path), flush_interval=0)
    w.start({"cache_mode": "direct", "page_size": P, "latency": {"model": "none"}})
    files = ["/a", "/b/c", ODD]
    t = 10**12 + 7  # large monotonic start: the exports keep every nanosecond
    for _ in range(n):
        f = files[int(rng.integers(0, 3))]
        op = "read" if rng.random() < 0.8 else "write"
        off = int(rng.integers(0, 300)) * 1000
        ln = int(rng.integers(1, 3 * P))
        w.record(t, 5, 0, off, ln, ln, int(rng.integers(0, 4)), 0, w.file_id(f), OPS[op])
        t += int(rng.integers(0, 3_000_000_000))
    w.record(t, 5, 0, 0, 0, 0, 1, 0, w.file_id("/a"), OPS["fsync"])
    w.close()
    return str(path)


def test_csv_round_trip(tmp_path):
    tr = load(make_trace(tmp_path / "t.vtrace"))
    out = tmp_path / "t.csv"
    with open(out, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        n = export(tr, fh, "csv")
    pages = tr.expand_pages(("read", "write"))
    assert n == pages.size > 400
    back, files = read_csv(str(out))
    assert back.dtype == pages.dtype and np.array_equal(back, pages)
    assert files == {f: tr.files[f] for f in np.unique(pages["file"]).tolist()}
    assert ODD.lstrip("/") in files.values()
    assert out.read_text().splitlines()[0] == "t_ns,pid,op,file,path,page"


def test_libcachesim_round_trip(tmp_path):
    tr = load(make_trace(tmp_path / "t.vtrace"))
    buf = io.StringIO()
    export(tr, buf, "libcachesim", ops=("read",), page_size=2 * P)
    path = tmp_path / "t.lcs.csv"
    path.write_text(buf.getvalue())
    lines = buf.getvalue().splitlines()
    assert lines[0] == LIBCACHESIM_HEADER == "time,obj_id,obj_size"
    assert all(line.count(",") == 2 for line in lines)
    pages = tr.expand_pages(("read",), page_size=2 * P)
    back = read_libcachesim(str(path))
    assert np.array_equal(back["file"], pages["file"].astype(np.int64))
    assert np.array_equal(back["page"], pages["page"])
    assert np.array_equal(back["obj_id"], page_keys(pages))
    assert np.array_equal(back["time_ns"], pages["t_ns"] - pages["t_ns"][0])
    assert (back["obj_size"] == 2 * P).all() and (back["obj_id"] > 0).all()
    assert back["time_ns"][-1] / 1e9 < 2**32  # libCacheSim asserts 32-bit seconds


def test_cli_to_file_and_stdout(tmp_path, capsys):
    trace = make_trace(tmp_path / "t.vtrace")
    out = tmp_path / "o.csv"
    assert main([trace, "--format", "libcachesim", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "time-col=1" in err and "cachesim" in err
    assert main([trace, "--format", "libcachesim"]) == 0
    assert capsys.readouterr().out == out.read_text()
    assert main([trace, "--format", "csv", "--ops", "write", "-o", str(tmp_path / "w.csv")]) == 0
    back, _ = read_csv(str(tmp_path / "w.csv"))
    assert back.size and (back["op"] == OPS["write"]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv", "t.vtrace", "w.csv"]  # no temp files left


def test_help_states_the_libcachesim_command():
    p = subprocess.run([sys.executable, "-m", "vnodefs.export", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    flat = " ".join(p.stdout.split())
    assert " ".join(LIBCACHESIM_OPTIONS.split()) in flat and "--ignore-obj-size 1" in flat


@pytest.mark.parametrize("args,msg", [
    (["x.txt", "--format", "csv"], "not a vnodefs trace"),
    (["missing.vtrace", "--format", "csv"], "does not exist"),
    (["t.vtrace", "--format", "xlsx"], "invalid choice"),
    (["t.vtrace", "--format", "parquet"], "give -o FILE"),
    (["t.vtrace", "--format", "csv", "-o", "nodir/out.csv"], "cannot write"),
    (["t.vtrace", "--format", "csv", "--ops", "nope"], "unknown op"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, msg):
    (tmp_path / "x.txt").write_text("not a trace\n")
    make_trace(tmp_path / "t.vtrace", n=5)
    before = sorted(p.name for p in tmp_path.iterdir())
    p = subprocess.run([sys.executable, "-m", "vnodefs.export", *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and msg in p.stderr, p.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_libcachesim_itself_reproduces_the_mrc(tmp_path):
    """libCacheSim's own csv reader (columns as in the help) and LRU: misses = our MRC, exactly."""
    try:
        import libcachesim as lcs
    except ImportError:  # a test extra (pyproject); CI installs it, so there it must not skip
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but libcachesim (a test extra) is not installed")
        pytest.skip("libcachesim is not installed (pip install -e '.[test]')")
    tr = load(make_trace(tmp_path / "t.vtrace", n=1500))
    path = tmp_path / "t.lcs.csv"
    with open(path, "w") as fh:
        export(tr, fh, "libcachesim")
    rep = analyze(tr)
    n = rep["page_accesses"]
    param = lcs.ReaderInitParam(has_header=True, has_header_set=True, delimiter=",", obj_id_is_num=True,
                                obj_id_is_num_set=True)
    param.time_field, param.obj_id_field, param.obj_size_field = 1, 2, 3
    for c in (1, 8, 64, 256, rep["footprint_pages"]):
        reader = lcs.TraceReader(str(path), lcs.TraceType.CSV_TRACE, param)
        miss_ratio, _ = lcs.LRU(c * P).process_trace(reader)
        assert round(miss_ratio * n) == mrc_at(rep, c), c


def test_csv_quotes_a_path_holding_line_breaks(tmp_path):
    """A path with a newline or a carriage return is one quoted field: every row has six fields and
    reading the file back (csv module, as pandas' reader does) gives the paths exactly."""
    nl = "/line\nbreak"
    cr = "/carriage\rreturn,x"
    w = TraceWriter(str(tmp_path / "n.vtrace"), flush_interval=0)
    w.start({"cache_mode": "direct", "page_size": P, "latency": {"model": "none"}})
    for i, f in enumerate((nl, cr, "/plain", nl)):
        w.record(10**9 + i, 5, 0, i * P, P, P, 1, 0, w.file_id(f), OPS["read"])
    w.close()
    out = tmp_path / "n.csv"
    p = subprocess.run([sys.executable, "-m", "vnodefs.export", str(tmp_path / "n.vtrace"), "--format", "csv",
                        "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    import csv

    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["t_ns", "pid", "op", "file", "path", "page"]
    assert [len(r) for r in rows] == [6] * 5
    assert [r[4] for r in rows[1:]] == [nl[1:], cr[1:], "plain", nl[1:]]
    back, files = read_csv(str(out))
    assert back.size == 4 and sorted(files.values()) == sorted({nl[1:], cr[1:], "plain"})
