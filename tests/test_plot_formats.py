"""Invariant guarded: `--plot FILE` writes the format FILE's extension names (.png, .svg, .pdf; no
extension: PNG) for `vnodefs locality` and `vmcore experiment seeding`; any other extension is
refused in one line before any work, nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from vmcore.experiment import plot, summarize_runs
from vnodefs.locality import main as locality_main
from vnodefs.trace import OPS, TraceWriter

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "svg": b"<?xml", "pdf": b"%PDF-"}


def _check(path, fmt):
    data = path.read_bytes()
    assert data.startswith(MAGIC[fmt]), data[:20]
    if fmt == "svg":
        assert b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")
    if fmt == "pdf":
        assert data.rstrip().endswith(b"%%EOF")


def _trace(path):
    w = TraceWriter(str(path), flush_interval=0)
    w.start({"cache_mode": "page", "page_size": 4096, "latency": {"model": "none"}})
    for i in range(200):
        w.record(1000 + i * 10**6, 5, 0, ((i * 7) % 40) * 4096, 8192, 8192, 1, 0, w.file_id("/a"), OPS["read"])
    w.close()
    return str(path)


@pytest.mark.parametrize("name,fmt", [("loc.svg", "svg"), ("loc.pdf", "pdf"), ("LOC.PDF", "pdf"), ("loc.png", "png"),
                                      ("loc", "png")])
def test_locality_plot_format_follows_the_extension(tmp_path, name, fmt, capsys):
    out = tmp_path / name
    assert locality_main([_trace(tmp_path / "t.vtrace"), "--plot", str(out)]) == 0
    _check(out, fmt)


def _report():
    def run(mode, wall):
        r = {"mode": mode, "wall_s": wall, "major_faults": 0, "requests": 10, "bytes_read": 4096,
             "device_seek_s": 0.1, "device_rotation_s": 0.1, "device_busy_s": 0.3}
        if mode == "seeded":
            r["prefetch"] = {"used": 5, "wasted": 1, "late": 0}
        return r

    results = {"w": {"floor": [run("floor", 1.0)], "cold": [run("cold", 3.0)], "seeded": [run("seeded", 1.5)]}}
    return {"workloads": results, "summary": summarize_runs(results),
            "config": {"latency": "hdd", "layout": "fiemap", "size": "small", "seed": 1, "cache": "page",
                       "prefetch": "cache", "runs": 1}}


@pytest.mark.parametrize("fmt", ["svg", "pdf", "png"])
def test_experiment_plot_format_follows_the_extension(tmp_path, fmt):
    out = tmp_path / f"exp.{fmt}"
    plot(_report(), str(out))
    _check(out, fmt)


@pytest.mark.parametrize("cmd", [["vnodefs", "locality", "{t}", "--plot", "{d}/x.jpg"],
                                 ["vmcore", "experiment", "seeding", "--plot", "{d}/x.jpg"]])
def test_other_extensions_are_refused_before_any_work(tmp_path, cmd):
    t = _trace(tmp_path / "t.vtrace")
    argv = [a.format(t=t, d=tmp_path) for a in cmd]
    (tmp_path / "tmp").mkdir()
    p = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")}, start_new_session=True)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it started the work instead of refusing: stop it cleanly
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
        pytest.fail("the bad --plot extension was not refused before the work started")
    assert p.returncode == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and ".jpg is not a plot format" in err, err
    assert not (tmp_path / "x.jpg").exists() and os.listdir(tmp_path / "tmp") == []
