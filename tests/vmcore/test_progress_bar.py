"""Invariant guarded: the progress bars of `vmcore replay --progress` and `vmcore experiment` are
drawn by tqdm (a declared dependency), not by hand: the replay bar has tqdm's layout (scaled counts,
rate, ETA as MM:SS), the experiment's run lines a 20-wide bar and `done/total`."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from vmcore.experiment import Progress as RunProgress

ROOT = Path(__file__).resolve().parents[2]


def test_tqdm_is_a_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"tqdm\b", d) for d in deps)


def test_replay_bar_is_tqdm_layout(tmp_path):
    trace = tmp_path / "loop.txt"
    trace.write_text("\n".join(str(i % 300) for i in range(3000)) + "\n")
    r = subprocess.run([sys.executable, "-m", "vmcore", "replay", str(trace), "--memory", str(299 * 4096), "--policy",
                        "lru", "--json", "--progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    last = r.stderr.split("\r")[-1]
    assert re.search(r"vmcore replay 100\.0% \[#{24}\] 3\.00k/3\.00k accesses \S+accesses/s ETA 00:00", last), last
    assert r.stderr.endswith("\n")


def test_experiment_run_lines():
    buf = io.StringIO()
    p = RunProgress(4, stream=buf)
    for i in range(4):
        p.run_done(f"run {i}")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4
    assert re.search(r"\[#{5}\.{15}\]  1/4 run 0$", lines[0]), lines[0]
    assert re.search(r"\[#{20}\]  4/4 run 3$", lines[3]), lines[3]
    quiet = io.StringIO()
    q = RunProgress(2, stream=quiet, quiet=True)
    q.run_done("x")
    assert quiet.getvalue() == ""
