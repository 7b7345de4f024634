"""Invariant guarded: the progress bars and the report tables of the three tools are drawn by rich (a
declared dependency) through vmcore.report, not by hand. The replay bar goes to stderr only, shows
the percent and the done/total counts and redraws in place (`\\r` and plain text off a terminal,
rich's live display on one); the experiment's run lines carry a 20-wide bar and `done/total`; a
report table is a rich Table whose text has no ANSI codes and no box-drawing characters when piped,
keeps its header names and is never wrapped at 80 columns."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from vmcore.experiment import Progress as RunProgress

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_rich_is_a_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"rich\b", d) for d in deps)


def test_replay_bar_on_a_pipe_is_rich_plain_text(tmp_path):
    trace = tmp_path / "loop.txt"
    trace.write_text("\n".join(str(i % 300) for i in range(3000)) + "\n")
    r = subprocess.run([sys.executable, "-m", "vmcore", "replay", str(trace), "--memory", str(299 * 4096), "--policy",
                        "lru", "--json", "--progress", "--chunk", "500"], capture_output=True, timeout=120)
    out, err = r.stdout.decode(), r.stderr.decode()  # bytes: text mode would turn each \r into \n
    assert r.returncode == 0, err
    assert out.startswith("{") and "\r" not in out and "%" not in out  # the bar is on stderr only
    assert not ANSI.search(err), repr(err)
    frames = err.split("\r")
    assert frames[0] == "" and len(frames) >= 3, repr(err)  # drawn, then redrawn in place
    assert re.match(r"vmcore replay  16\.7% \[#{4}\.{20}\] 500/3\.00k accesses ", frames[1]), frames[1]
    last = frames[-1]
    assert re.match(r"vmcore replay 100\.0% \[#{24}\] 3\.00k/3\.00k accesses \S+accesses/s ETA 0:00:00\n$", last), last


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_is_rich_live_display():
    from vmcore.cli import Progress

    term = _Terminal()
    bar = Progress("vmcore replay", enabled=True, stream=term, interval=0)
    assert bar._progress is None
    for d in range(0, 101, 25):
        bar(d, 100)
        assert type(bar._progress).__module__ == "rich.progress"
    bar.close()
    text = term.getvalue()
    assert "\r\x1b[2K" in text  # rich's live display redraws the line in place
    plain = ANSI.sub("", text)
    assert "100.0%" in plain and "100/100" in plain and plain.endswith("\n")


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


def test_report_table_is_rich_and_plain():
    from rich.table import Table

    from vmcore.experiment_sweep import format_rows
    from vmcore.report import render, table

    long = "/data/" + "deep/" * 30 + "trace.npy"
    rows = [{"trace": long, "memory": 2 << 20, "policy": "mach", "accesses": 20000, "misses": 6780,
             "miss_ratio": 0.339, "error": None},
            {"trace": "x[bold]y", "memory": 8 << 20, "policy": "lru", "error": "TraceError: bad"}]
    t = table(("trace", "memory"), [("a", "1")])
    assert isinstance(t, Table)
    text = format_rows(rows)
    assert text == render(table(("trace", "memory", "policy", "accesses", "misses", "miss ratio", ""),
                                         [(long, "2M", "mach", 20000, 6780, "33.90%", ""),
                                          ("x[bold]y", "8M", "lru", "-", "-", "-", "error: TraceError: bad")],
                                         right=(1, 3, 4, 5)))
    lines = text.splitlines()
    assert lines[0].split() == ["trace", "memory", "policy", "accesses", "misses", "miss", "ratio"]
    assert lines[1].split() == [long, "2M", "mach", "20000", "6780", "33.90%"]  # the path whole, one line
    assert lines[2].split()[:6] == ["x[bold]y", "8M", "lru", "-", "-", "-"]  # markup taken literally
    # numbers right-aligned under their header, columns two spaces apart
    assert lines[1].index("20000") + len("20000") == lines[0].index("accesses") + len("accesses")
    assert lines[1].endswith("33.90%") and lines[0].endswith("miss ratio")
    assert lines[0].startswith("trace" + " " * (len(long) - len("trace") + 2) + "memory")
    assert len(lines) == 3 and text.isascii() and not ANSI.search(text)
    assert all(ln == ln.rstrip() for ln in lines)


def test_swapd_status_table_piped_is_plain(tmp_path):
    """`swapd status` of a directory with a swap file but no live pool: the table through a pipe."""
    (tmp_path / "swapfile0").write_bytes(b"\0" * 8192)
    r = subprocess.run([sys.executable, "-m", "swapd", "status", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    lines = r.stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("FILE"))
    assert lines[head].split() == ["FILE", "SIZE", "ALLOCATED", "MODE"]
    assert lines[head + 1].split()[0] == "swapfile0"
    assert r.stdout.isascii() and not ANSI.search(r.stdout)
    from swapd import status

    assert "render_table" in vars(status)  # drawn by vmcore.report's rich table
