"""Invariant guarded: an interrupted `vmcore experiment seeding` keeps the runs it finished: exit
130, the table of what completed on stdout, a partial --json with "interrupted": true and those
runs; and the JSON of a run whose work dir was removed points at no file in it (trace paths null),
while nothing stays mounted and no temp dir is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time


def _paths(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _paths(v)
    elif isinstance(x, list):
        for v in x:
            yield from _paths(v)
    elif isinstance(x, str) and x.startswith("/"):
        yield x


def test_interrupt_keeps_finished_runs(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out_json = tmp_path / "exp.json"
    env = dict(os.environ, TMPDIR=str(tmpdir))
    p = subprocess.Popen([sys.executable, "-m", "vmcore", "experiment", "seeding", "--size", "small",
                          "--workload", "sqlite", "--runs", "3", "--json", str(out_json)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    seen = ""
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:  # wait until two runs have finished
            line = p.stderr.readline()
            seen += line
            if re.search(r"\]\s+2/\d+ ", line) or not line:
                break
        time.sleep(0.5)
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert re.search(r"\]\s+2/\d+ ", seen), seen[-2000:]
    assert p.returncode == 130, err[-2000:]
    assert "interrupted after" in err
    rep = json.loads(out_json.read_text())
    assert rep["interrupted"] is True
    w = rep["workloads"]["sqlite"]
    done = len(w.get("floor", [])) + len(w["cold"]) + len(w["seeded"])
    assert 2 <= done < 9
    assert w["floor"][0]["wall_s"] > 0 and w["cold"][0]["wall_s"] > 0
    assert any("interrupted" in n for n in rep["notes"])
    # the table of what completed
    assert "sqlite" in out and "floor" in out and "cold" in out
    # the temp work dir is gone, and the JSON points into no directory that no longer exists
    assert os.listdir(tmpdir) == []
    assert w["cold"][0].get("trace") is None
    for path in _paths(rep):
        assert os.path.exists(path) or not path.startswith(str(tmpdir)), path
    with open("/proc/mounts") as fh:
        assert str(tmp_path) not in fh.read()
