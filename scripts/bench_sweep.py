#!/usr/bin/env python3
"""Benchmark: one 48-cell `vmcore sweep` (3 traces x 4 memory sizes x 4 policies) run three ways,
side by side: --jobs 1 (this process, one cell after the other), --jobs 2 (a local pool of 2
processes) and --scheduler local --jobs 2 (a Dask LocalCluster of 2 worker processes). The three
run in rounds (the order rotated each round, so none always runs first on a machine whose load
drifts); each is shown as the median (and range) of its rounds: the command's wall time, start-up
included, the speed-ups of the medians, and the cells' own time (the sum of the rows' wall_s,
which is where a slower worker shows). Each round also times the Dask start-up apart, in a
process of its own: `import distributed` and starting the same LocalCluster (local_cluster(2)),
then closing it; the LocalCluster run less that start-up is printed as an estimate beside the
real figure. Also checks that every cell's counters are identical on every path, and that the
lru / fifo / clock miss counts equal `vmcore replay --json`'s for the same cell (run in this
process through vmcore.cli.main).

    scripts/bench_sweep.py                 # about a minute on an idle 2-core machine (3 rounds)
    scripts/bench_sweep.py --length 5000 --repeat 1   # a quick run

Traces: seeded scripts/make_trace.py zipf, loop and mixed arrays (.npy) in a temporary directory
(removed at the end). Not a test: the times depend on the machine and on what else runs on it
(the load average at the start and at the end are printed).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import make_trace  # noqa: E402

MEMORY = "2MiB,4MiB,8MiB,16MiB"
POLICIES = "mach,lru,fifo,clock"


def run(args: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "vmcore", "sweep", *args, "--json", "--no-progress"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"bench_sweep: vmcore sweep {' '.join(args)} failed:\n{p.stderr}")
    return wall, json.loads(p.stdout)


#: run in a fresh process: the Dask start-up that `--scheduler local --jobs 2` pays before its first cell
STARTUP = """
import json, time
t0 = time.perf_counter()
import vmcore.experiment_sweep as es, vmcore.cli
t1 = time.perf_counter()
import distributed
t2 = time.perf_counter()
with es.local_cluster(2) as cluster:
    t3 = time.perf_counter()
t4 = time.perf_counter()
print(json.dumps({"import": t2 - t1, "start": t3 - t2, "close": t4 - t3}))
"""


def startup() -> dict:
    p = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        sys.exit(f"bench_sweep: timing the Dask start-up failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def counters(rep: dict) -> dict:
    return {(r["trace"], r["memory"], r["policy"]): {k: v for k, v in r.items() if k != "wall_s"}
            for r in rep["cells"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=48000, help="accesses per trace (default 48000)")
    ap.add_argument("--footprint", type=int, default=6000, help="distinct pages per trace (default 6000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of the three runs (default 3); each run shows the median of its rounds")
    a = ap.parse_args(argv)
    load0 = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="bench-sweep-")
    try:
        traces = []
        for kind, seed in (("zipf", 1), ("loop", 2), ("mixed", 3)):
            p = os.path.join(work, f"{kind}.npy")
            make_trace.write_npy(p, make_trace.generate(kind, a.length, a.footprint, seed=seed))
            traces.append(p)
        base = [*traces, "--memory", MEMORY, "--policy", POLICIES]
        paths = (("--jobs 1", ["--jobs", "1"]), ("--jobs 2", ["--jobs", "2"]),
                 ("--scheduler local --jobs 2", ["--scheduler", "local", "--jobs", "2"]))
        walls: dict = {label: [] for label, _ in paths}
        cell_s: dict = {label: [] for label, _ in paths}
        starts: list[dict] = []
        ref = None
        same = True
        for rnd in range(a.repeat):
            # a machine shared with other work changes its load from minute to minute: rotate the
            # order so that no path always runs first (or right after the slowest)
            for label, extra in paths[rnd % 3:] + paths[:rnd % 3]:
                wall, rep = run([*base, *extra])
                walls[label].append(wall)
                cell_s[label].append(sum(r["wall_s"] for r in rep["cells"] if not r.get("error")))
                if ref is None:
                    ref = counters(rep)
                same = same and counters(rep) == ref
                print(f"bench_sweep: round {rnd + 1}, {label}: {wall:.2f} s (cells {cell_s[label][-1]:.2f} s), "
                      f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)
            starts.append(startup())
            print(f"bench_sweep: round {rnd + 1}, Dask start-up: " +
                  ", ".join(f"{k} {v:.2f} s" for k, v in starts[-1].items()), file=sys.stderr)
        # lru / fifo / clock against vmcore replay, cell by cell
        from vmcore.cli import main as vmcore_main

        mismatches = checked = 0
        for (trace, memory, policy), row in ref.items():
            if policy == "mach":
                continue
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                vmcore_main(["replay", trace, "--memory", str(memory), "--policy", policy, "--json"])
            checked += 1
            mismatches += json.loads(buf.getvalue())["misses"] != row["misses"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ncells = len(ref)
    t1 = statistics.median(walls["--jobs 1"])
    t2 = statistics.median(walls["--jobs 2"])
    print(f"{ncells}-cell sweep (3 traces x 4 memory sizes x 4 policies, {a.length} accesses per trace), "
          f"{os.cpu_count()} cores, median of {a.repeat} rounds, load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print(f"{'run':<30} {'wall s':>7} {'range':>13} {'vs --jobs 1':>12} {'vs --jobs 2':>12} {'cells s':>8}")
    for label, ws in walls.items():
        w = statistics.median(ws)
        print(f"{label:<30} {w:>7.2f} {f'{min(ws):.2f}-{max(ws):.2f}':>13} {t1 / w:>11.2f}x {t2 / w:>11.2f}x "
              f"{statistics.median(cell_s[label]):>8.2f}")
    imp, st, cl = (statistics.median([x[k] for x in starts]) for k in ("import", "start", "close"))
    dask_wall = statistics.median(walls["--scheduler local --jobs 2"])
    print(f"Dask start-up, timed apart: import distributed {imp:.2f} s, LocalCluster of 2 workers {st:.2f} s, "
          f"close {cl:.2f} s; --scheduler local less these: {dask_wall - imp - st - cl:.2f} s "
          f"({t2 / (dask_wall - imp - st - cl):.2f}x vs --jobs 2, an estimate)")
    print(f"every cell's counters identical on all three paths: {'yes' if same else 'NO'}")
    print(f"lru/fifo/clock misses equal vmcore replay's: {checked - mismatches} of {checked} cells")
    return 0 if same and not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
