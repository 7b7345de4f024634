"""Invariant guarded: `vmcore sweep` gives every cell exactly the counters `vmcore replay --json`
gives it (lru, fifo, clock and mach), whether the cells run in this process, on a local pool of
2 processes or on a real Dask LocalCluster of 2 worker processes; a worker killed mid-sweep (pool
or Dask) loses no cell and changes no number; a failing cell is an error row beside the others
(exit 1); --out (csv, parquet) resumes, skipping the cells already there; --plot writes a PNG;
bad input is one line, exit 2.

Traces: seeded scripts/make_trace.py arrays (.npy) and a vnodefs trace written by TraceWriter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmcore.experiment_sweep import CHUNK_MAX, Cell, _chunks, cells_for, read_results, run_cell, sweep

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import make_trace  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
POLICIES = ("mach", "lru", "fifo", "clock")
MEMS = (1 << 20, 2 << 20)  # 256 and 512 pages: above the kernel's reserve, below the footprints


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "wall_s"}


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    out = []
    for kind, seed in (("zipf", 1), ("mixed", 2)):
        p = d / f"{kind}.npy"
        make_trace.write_npy(p, make_trace.generate(kind, 4000, 900, seed=seed))
        out.append(str(p))
    from vnodefs.trace import OPS, TraceWriter

    v = d / "real.vtrace"
    w = TraceWriter(str(v), flush_interval=0)
    w.start({"cache_mode": "direct", "page_size": 4096})
    rng = np.random.default_rng(3)
    fids = [w.file_id("/a"), w.file_id("/b")]
    for i in range(1500):
        w.record(1000 + i, 5, 0, int(rng.integers(0, 700)) * 4096, 8192, 8192, 9, 0, fids[i % 2],
                 OPS["read" if i % 5 else "write"])
    w.close()
    out.append(str(v))
    return out


@pytest.fixture(scope="module")
def serial(traces):
    cells = cells_for(traces, MEMS, POLICIES)
    rows = {c: strip(r) for c, r in sweep(cells, jobs=1)}
    assert len(rows) == len(cells) == 24 and not any(r["error"] for r in rows.values())
    return cells, rows


def test_cells_equal_vmcore_replay_json(traces, capsys):
    from vmcore.cli import main

    for trace in (traces[0], traces[2]):
        for policy in ("lru", "fifo", "clock", "mach"):
            assert main(["replay", trace, "--memory", "1MiB", "--policy", policy, "--json"]) == 0
            ref = json.loads(capsys.readouterr().out)
            row = run_cell(Cell(trace, 1 << 20, policy))
            for k, v in ref.items():
                if k not in ("wall_s", "trace", "swap", "memory", "policy", "page_size"):
                    assert row[k] == v, (trace, policy, k)
            assert row["misses"] == ref["misses"] and row["accesses"] == ref["accesses"]
    # and the console command itself, once
    p = subprocess.run([sys.executable, "-m", "vmcore", "replay", traces[1], "--memory", "2MiB", "--policy", "clock",
                        "--json"], capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode == 0, p.stderr
    assert run_cell(Cell(traces[1], 2 << 20, "clock"))["misses"] == json.loads(p.stdout)["misses"]


@pytest.mark.parametrize("n,slots", [(0, 2), (1, 2), (5, 2), (48, 2), (48, 0), (1000, 8), (7, 1)])
def test_dask_tasks_take_every_cell_once_in_order_and_end_in_single_cells(n, slots):
    cells = list(range(n))
    chunks = _chunks(cells, slots)
    assert [c for ch in chunks for c in ch] == cells
    assert all(1 <= len(ch) <= CHUNK_MAX for ch in chunks)
    assert [len(ch) for ch in chunks] == sorted((len(ch) for ch in chunks), reverse=True)
    # the tail: the last 2 x slots cells (at least) run one to a task
    tail = min(n, 2 * max(1, slots))
    assert all(len(ch) == 1 for ch in chunks[len(chunks) - tail:])
    if n == 48 and slots == 2:
        assert len(chunks) == 18


def test_local_pool_gives_the_serial_numbers(serial):
    cells, ref = serial
    got = {c: strip(r) for c, r in sweep(cells, jobs=2)}
    assert got == ref


def test_dask_local_cluster_gives_the_serial_numbers(serial, tmp_path):
    import dask
    from distributed import LocalCluster

    cells, ref = serial
    with dask.config.set({"temporary-directory": str(tmp_path)}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         local_directory=str(tmp_path)) as cluster:
        got = {c: strip(r) for c, r in sweep(cells, scheduler=cluster.scheduler_address)}
    assert got == ref


def _dask_worker_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]


def test_a_killed_dask_worker_loses_no_cell(serial, tmp_path):
    import dask
    from distributed import LocalCluster

    cells, ref = serial
    with dask.config.set({"temporary-directory": str(tmp_path)}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                         local_directory=str(tmp_path)) as cluster:
        pids = _dask_worker_pids()
        assert len(pids) == 2
        got = {}
        for i, (c, r) in enumerate(sweep(cells, scheduler=cluster.scheduler_address, retries=2)):
            got[c] = strip(r)
            if i == 0:
                os.kill(pids[0], signal.SIGKILL)  # the other worker and the restarted one finish the sweep
    assert got == ref


def test_cli_scheduler_local_gives_the_serial_numbers(serial, traces):
    cells, ref = serial
    p = subprocess.run([sys.executable, "-m", "vmcore", "sweep", *traces, "--memory", "1MiB,2MiB", "--policy",
                        ",".join(POLICIES), "--scheduler", "local", "--jobs", "2", "--json"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["where"] == "Dask LocalCluster" and rep["ran"] == 24
    got = {Cell(r["trace"], r["memory"], r["policy"]): strip(r) for r in rep["cells"]}
    assert got == ref


def test_a_killed_pool_worker_loses_no_cell(serial):
    import psutil

    cells, ref = serial
    got = {}
    killed = False
    me = psutil.Process()

    def pool_workers():
        """Forked workers (our children, our command line) or forkserver ones (its children)."""
        out = []
        for k in me.children(recursive=True):
            cl = k.cmdline()
            if (k.ppid() == me.pid and cl == me.cmdline()) or \
                    (k.ppid() != me.pid and "forkserver" in " ".join(cl)):
                out.append(k.pid)
        return out

    for c, r in sweep(cells, jobs=2, retries=2):
        got[c] = strip(r)
        if not killed:
            workers = pool_workers()
            assert workers
            os.kill(workers[0], signal.SIGKILL)
            killed = True
    assert got == ref


def test_failing_cell_is_reported_and_the_others_kept(traces, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n2\nthis is not a trace line\n")
    out = tmp_path / "r.csv"
    p = subprocess.run([sys.executable, "-m", "vmcore", "sweep", traces[0], str(bad), "--memory", "1MiB",
                        "--policy", "lru,fifo", "--jobs", "2", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 1, p.stderr
    rep = json.loads(p.stdout)
    assert rep["failed"] == 2 and len(rep["cells"]) == 4
    errs = [r for r in rep["cells"] if r["error"]]
    assert {r["trace"] for r in errs} == {str(bad)} and all("malformed trace line" in r["error"] for r in errs)
    good = [r for r in rep["cells"] if not r["error"]]
    assert {r["policy"] for r in good} == {"lru", "fifo"} and all(r["misses"] > 0 for r in good)
    assert "failed" in p.stderr and "Traceback" not in p.stderr
    assert len(read_results(str(out))) == 4


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_out_file_resumes(traces, tmp_path, ext):
    out = tmp_path / f"r.{ext}"
    base = [sys.executable, "-m", "vmcore", "sweep", traces[0], traces[2], "--policy", "lru,clock", "--jobs", "1",
            "--out", str(out), "--json"]
    p = subprocess.run([*base, "--memory", "1MiB"], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stdout)
    assert first["ran"] == 4 and first["skipped"] == 0
    p = subprocess.run([*base, "--memory", "1MiB,2MiB"], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stderr
    second = json.loads(p.stdout)
    assert second["ran"] == 4 and second["skipped"] == 4 and "4 of 8 cells already in" in p.stderr
    rows = read_results(str(out))
    assert len(rows) == 8
    old = {(r["trace"], r["memory"], r["policy"]): r["misses"] for r in first["cells"]}
    for r in second["cells"]:
        if (r["trace"], r["memory"], r["policy"]) in old:
            assert r["misses"] == old[(r["trace"], r["memory"], r["policy"])]
    by = {(r["trace"], r["memory"], r["policy"]): r for r in rows}
    for r in second["cells"]:
        assert by[(r["trace"], r["memory"], r["policy"])]["Hard faults"] == r["Hard faults"]


def test_text_table_and_plot(traces, tmp_path):
    png = tmp_path / "mrc.png"
    p = subprocess.run([sys.executable, "-m", "vmcore", "sweep", *traces[:2], "--memory", "1MiB,2MiB",
                        "--policy", "lru,mach", "--jobs", "1", "--plot", str(png)],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stderr
    assert "8 cells (2 traces x 2 memory sizes x 2 policies)" in p.stdout
    assert len([ln for ln in p.stdout.splitlines() if "%" in ln]) == 8
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, msg", [
    (["--memory", "1MiB", "--policy", "lru,nope"], "unknown replacement policy"),
    (["--memory", "lots"], "is not a size"),
    (["--memory", "1MiB", "--jobs", "0"], "positive integer"),
    (["--memory", "1MiB", "--out", "r.txt"], "give a .csv or .parquet file"),
    (["--memory", "1MiB", "--out", "nodir/r.csv"], "cannot write results file"),
    (["--memory", "1MiB", "--scheduler", "nowhere"], "is not an address"),
    (["--memory", "4KiB"], "memory"),
])
def test_bad_input_one_line_exit_2(traces, tmp_path, args, msg):
    p = subprocess.run([sys.executable, "-m", "vmcore", "sweep", traces[0], *args], capture_output=True,
                       text=True, timeout=60, env=ENV, cwd=tmp_path)
    assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_missing_trace_and_unreachable_scheduler(tmp_path, traces):
    p = subprocess.run([sys.executable, "-m", "vmcore", "sweep", str(tmp_path / "none.npy"), "--memory", "1MiB"],
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert p.returncode == 2 and "does not exist" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = subprocess.run([sys.executable, "-m", "vmcore", "sweep", traces[0], "--memory", "1MiB", "--scheduler",
                        "tcp://127.0.0.1:9"], capture_output=True, text=True, timeout=120, env=ENV)
    assert p.returncode == 2 and "cannot reach the Dask scheduler" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
