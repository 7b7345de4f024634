"""`vmcore sweep`: many (trace x memory size x policy) replays, on a local process pool or a Dask cluster.

Owns: `Cell` (one replay to run), `cells_for(traces, memories, policies, ...)`, `run_cell(cell) ->
dict` (one replay through exactly the path `vmcore replay` takes: vmcore.cli.load_trace, the
wiring Kernel, vmcore.replay.replay; the row holds the replay's vm_stat counters and
`accesses`, `misses`, `miss_ratio`, `footprint`, `wall_s`, like `vmcore replay --json`),
`sweep(cells, jobs, scheduler, ...)` (runs them, yielding rows as they finish), the results
files (`read_results`, `write_results`: csv or parquet), `plot_sweep`, and the command
(`add_sweep_parser`, `cmd_sweep`).

    vmcore sweep TRACE... --memory 16MiB,64MiB,256MiB --policy mach,lru,fifo,clock [--jobs N]
                 [--scheduler ADDRESS] [--out results.parquet|.csv] [--plot mrc.png] [--json]

Where the cells run:
  * default: `--jobs N` worker processes of a concurrent.futures.ProcessPoolExecutor (N = the
    machine's cores); `--jobs 1` runs them one after the other in this process;
  * `--scheduler ADDRESS` (tcp://host:8786): the Dask distributed cluster at ADDRESS (started with
    `dask scheduler` and `dask worker ADDRESS`, or by dask-jobqueue on a batch system); every
    worker must be able to import vmcore and read the trace files at the paths given;
  * `--scheduler local`: a dask.distributed LocalCluster of --jobs worker processes (one thread
    each; forked from this process where fork exists, so they start in a fraction of a second),
    started for the sweep and closed after it.
Cells are submitted longest first (smallest memory, largest trace file), so the last ones to
finish are short.
Dask does the scheduling, the retries of a killed worker's cells (its `allowed-failures`, and
`--retries` per task), and the data movement; this module only cuts the cells into tasks (up to
four cells each, single cells at the end: _chunks) and collects rows.
On the local pool a worker that dies (BrokenProcessPool) makes its unfinished cells run again in
a fresh pool, up to `--retries` times.

Rows: one per cell, keyed by (trace, memory, policy, page_size, ops, pid); a cell that fails
(a VM error such as KERN_RESOURCE_SHORTAGE, a worker lost too often) gets a row with `error` set
and the others are unaffected. With --out, the file is rewritten (to a temporary name, renamed)
as rows arrive, at most every 2 s and at the end; a rerun with the same --out skips the cells
that already have a row without an error (resumable).

Invariants: a cell's counters do not depend on where it ran (tests compare the serial run, the
local pool and a Dask LocalCluster, and `vmcore replay --json`, counter by counter); `wall_s` is
the only timing field and the only one that differs between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache

PROG = "vmcore sweep"
#: the columns that identify a cell (rows with the same key are the same cell)
KEY = ("trace", "memory", "policy", "page_size", "ops", "pid")
#: the leading columns of a row; the vm_stat counters follow
LEAD = KEY + ("memory_pages", "accesses", "misses", "miss_ratio", "footprint", "files", "wall_s", "error")


@dataclass(frozen=True)
class Cell:
    """One replay: `trace` (a path as given), `memory` bytes, `policy`, `page_size`, `ops`, `pid`."""

    trace: str
    memory: int
    policy: str
    page_size: int = 4096
    ops: str = "read,write"
    pid: int | None = None

    def key(self) -> tuple:
        return (os.path.abspath(self.trace), int(self.memory), self.policy, int(self.page_size), self.ops,
                None if self.pid is None else int(self.pid))


def cells_for(traces, memories, policies, page_size: int = 4096, ops: str = "read,write", pid=None) -> list[Cell]:
    """Every (trace x memory x policy) cell, traces outermost."""
    return [Cell(t, int(m), p, page_size, ops, pid) for t in traces for m in memories for p in policies]


@lru_cache(maxsize=8)
def _trace(path: str, mtime_ns: int, page_size: int, ops: str, pid):
    from vmcore.cli import load_trace

    return load_trace(path, page_size, tuple(o for o in ops.split(",") if o), pid)


def run_cell(cell: Cell) -> dict:
    """Replay one cell exactly as `vmcore replay TRACE --memory M --policy P --json` does and return
    its row (the JSON object's counters and totals plus the key columns). Raises what the replay
    raises (InvalidArgument, VMError); the trace of a worker is loaded once per (file, page size,
    ops, pid) and kept for its next cells."""
    from vmcore.cli import _kernel_class
    from vmcore.errors import InvalidArgument
    from vmcore.replay import replay

    try:
        st = os.stat(cell.trace)
    except OSError as e:
        raise InvalidArgument(f"trace file {cell.trace}: {e.strerror}") from None
    trace = _trace(os.path.abspath(cell.trace), st.st_mtime_ns, int(cell.page_size), cell.ops, cell.pid)
    if len(trace) == 0:
        raise InvalidArgument(f"trace {cell.trace} holds no accesses")
    kernel = _kernel_class()(memory=int(cell.memory), page_size=int(cell.page_size), policy=cell.policy)
    try:
        result = replay(kernel, trace)
    finally:
        close = getattr(kernel, "close", None)
        if callable(close):
            close()
    row = {**asdict(cell), "memory_pages": int(cell.memory) // int(cell.page_size), "files": len(trace.names),
           "error": None}
    row.update(result.as_dict())
    return row


def _safe_cell(cell: Cell) -> dict:
    """run_cell, with an exception turned into an error row (for the pools)."""
    try:
        return run_cell(cell)
    except Exception as e:  # noqa: BLE001 - one failing cell must not lose the others
        return error_row(cell, f"{type(e).__name__}: {e}")


def error_row(cell: Cell, message: str) -> dict:
    return {**asdict(cell), "memory_pages": int(cell.memory) // int(cell.page_size), "error": message}


# ---- running --------------------------------------------------------------------------------------

def _run_serial(cells):
    for c in cells:
        yield c, _safe_cell(c)


def _run_pool(cells, jobs: int, retries: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    import threading

    # fork is the cheapest start (the workers inherit vmcore imported), but only safe while this
    # process runs no other thread (a Dask client's loop, say): else forkserver / the default
    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        ctx = mp.get_context("fork")
    else:
        ctx = mp.get_context("forkserver") if "forkserver" in methods else None
    todo = list(cells)
    tries = {c: 0 for c in todo}
    while todo:
        again = []
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            futs = {ex.submit(_safe_cell, c): c for c in todo}
            for f in as_completed(futs):
                c = futs[f]
                try:
                    row = f.result()
                except BrokenProcessPool:
                    tries[c] += 1
                    if tries[c] > retries:
                        yield c, error_row(c, f"worker process died (tried {tries[c]} times)")
                    else:
                        again.append(c)
                    continue
                yield c, row
        todo = again


#: dask config for the LocalCluster of `--scheduler local`. A Dask worker runs a cell in a thread
#: beside its event loop, and a replay is Python all the way, so every time the loop wakes it must
#: take the GIL from the cell: with dask's defaults the loop thread of a busy worker waited for the
#: GIL 150 to 3000 times a second (its voluntary context switches), which made each cell 5-15%
#: slower than in a pool process, and more when other programs kept the cores busy (the thread
#: handed the GIL must first be given a core). What wakes it: the statistical
#: profiler (a sample every 10 ms; a third of a replay's speed on its own), the loop-health tick
#: (every 20 ms), the memory monitor (every 100 ms; spilling, pausing and the nanny's restart of a
#: worker past its limit still work, a second late at most) and the system monitor (every 500 ms:
#: CPU, memory, network and disk counters for the dashboard, which this cluster does not start).
#: With these, 10-20 a second remain (heartbeats; more as cells finish and new ones arrive) and a
#: cell runs as fast as in a pool process. A cluster at an ADDRESS is configured by whoever started it.
LOCAL_CLUSTER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "10s",
}


@contextmanager
def local_cluster(jobs: int):
    """A dask.distributed LocalCluster of `jobs` worker processes (one thread each, configured by
    LOCAL_CLUSTER_CONFIG, forked from this process where fork exists), its scratch space in a
    temporary directory; closed and the directory removed on the way out."""
    import multiprocessing as mp
    import shutil
    import tempfile

    import dask
    from distributed import LocalCluster

    conf = dict(LOCAL_CLUSTER_CONFIG)
    # workers forked from this process start in a fraction of a second with vmcore imported
    # (spawned ones take seconds); where fork is missing, dask's default
    if "fork" in mp.get_all_start_methods():
        conf["distributed.worker.multiprocessing-method"] = "fork"
    # the cluster's scratch space (dask's default is a dask-scratch-space dir left in /tmp)
    scratch = tempfile.mkdtemp(prefix="vmcore-sweep-dask-")
    conf["temporary-directory"] = scratch
    try:
        with dask.config.set(conf):
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None,
                                   local_directory=scratch)
        try:
            yield cluster
        finally:
            cluster.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_dask(cells, address: str, jobs: int, retries: int):
    if address == "local":
        with local_cluster(jobs) as cluster:
            yield from _run_on(cells, cluster, retries)
    else:
        yield from _run_on(cells, address, retries)


#: the most cells one Dask task runs (see _chunks)
CHUNK_MAX = 4


def _chunks(cells, slots: int, most: int = CHUNK_MAX) -> list[tuple[Cell, ...]]:
    """The cells (in submit order) cut into the tasks to submit to a Dask cluster of `slots` worker
    threads: guided self-scheduling, each task taking half of what is left per slot (at most
    `most` cells, at least one), so the first tasks are big and the last ones single cells that
    fill the tail. Dask costs about 6 ms of CPU per task between the client, the scheduler and
    the worker (measured on 2 cores), against 0.1-0.2 s for a replay of 48000 accesses; taking cells
    up to four at a time makes a 48-cell sweep on 2 workers 18 tasks, and a lost worker costs at
    most four cells' work."""
    cells = tuple(cells)
    out, i, slots = [], 0, max(1, int(slots))
    while i < len(cells):
        n = max(1, min(most, (len(cells) - i) // (2 * slots)))
        out.append(cells[i:i + n])
        i += n
    return out


def _safe_cells(cells) -> list[dict]:
    """_safe_cell for each of a Dask task's cells, in order."""
    return [_safe_cell(c) for c in cells]


def _run_on(cells, address, retries: int):
    """Run the cells on the Dask cluster at `address` (or a cluster object), yielding (cell, row),
    a task of up to CHUNK_MAX cells at a time (_chunks)."""
    from distributed import Client, as_completed

    client = Client(address, timeout=5) if isinstance(address, str) else Client(address)
    try:
        slots = sum(w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values())
        chunks = _chunks(cells, slots)
        futs = {client.submit(_safe_cells, chunk, pure=False, retries=retries): chunk for chunk in chunks}
        tries = dict.fromkeys(chunks, 0)
        pending = as_completed(list(futs))
        for f in pending:
            chunk = futs.pop(f)
            try:
                rows = f.result()
            except Exception as e:  # noqa: BLE001 - KilledWorker after too many lost workers, a lost connection
                # a cell's own errors come back as rows (_safe_cell): this is the cluster's, so try again
                tries[chunk] += 1
                if tries[chunk] <= retries:
                    nf = client.submit(_safe_cells, chunk, pure=False, retries=retries)
                    futs[nf] = chunk
                    pending.add(nf)
                    continue
                rows = [error_row(c, f"{type(e).__name__}: {e}") for c in chunk]
            yield from zip(chunk, rows)
    finally:
        client.close()


def _longest_first(cells) -> list[Cell]:
    """The cells in the order to submit them: the likely longest first (the smallest memory: most
    misses; the largest trace file), so no long cell is left alone at the end of a sweep."""
    def size(c: Cell) -> int:
        try:
            return os.path.getsize(c.trace)
        except OSError:
            return 0

    return sorted(cells, key=lambda c: (c.memory, -size(c)))


def sweep(cells, jobs: int = 1, scheduler: str | None = None, retries: int = 1):
    """Run `cells`; yields (cell, row) as each finishes (any order). jobs=1 without a scheduler:
    in this process; jobs>1: a process pool; scheduler: Dask (an address, or "local")."""
    cells = _longest_first(cells)
    if not cells:
        return
    if scheduler:
        yield from _run_dask(cells, scheduler, jobs, retries)
    elif jobs <= 1:
        yield from _run_serial(cells)
    else:
        yield from _run_pool(cells, jobs, retries)


# ---- results files --------------------------------------------------------------------------------

def _columns(rows) -> list[str]:
    extra = []
    for r in rows:
        for k in r:
            if k not in LEAD and k not in extra:
                extra.append(k)
    return list(LEAD) + extra


def _fmt_kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"--out {path}: give a .csv or .parquet file")


def write_results(path: str, rows: list[dict]) -> None:
    """Write rows to `path` (.csv or .parquet), atomically (temporary name, then rename)."""
    kind = _fmt_kind(path)
    cols = _columns(rows)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        if kind == "csv":
            import csv

            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols)
                for r in rows:
                    w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            data = {c: [r.get(c) for r in rows] for c in cols}
            types = {"trace": pa.string(), "policy": pa.string(), "ops": pa.string(), "error": pa.string(),
                     "miss_ratio": pa.float64(), "wall_s": pa.float64()}
            arrays = [pa.array(data[c], type=types.get(c, pa.int64())) for c in cols]
            pq.write_table(pa.Table.from_arrays(arrays, names=cols), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_results(path: str) -> list[dict]:
    """The rows of a results file written by write_results ([] if it does not exist)."""
    if not os.path.exists(path):
        return []
    kind = _fmt_kind(path)
    if kind == "csv":
        import csv

        rows = []
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                out = {}
                for k, v in r.items():
                    if k is None:
                        continue
                    if v == "" or v is None:
                        out[k] = None
                    elif k in ("trace", "policy", "ops", "error"):
                        out[k] = v
                    elif k in ("miss_ratio", "wall_s"):
                        out[k] = float(v)
                    else:
                        try:
                            out[k] = int(v)
                        except ValueError:
                            out[k] = v
                rows.append(out)
        return rows
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return t.to_pylist()


def row_key(r: dict) -> tuple:
    pid = r.get("pid")
    return (os.path.abspath(str(r["trace"])), int(r["memory"]), str(r["policy"]), int(r["page_size"]),
            str(r["ops"]), None if pid is None else int(pid))


# ---- plot -----------------------------------------------------------------------------------------

def plot_sweep(rows: list[dict], path: str) -> None:
    """One panel per trace: miss ratio against memory (MiB, log scale), one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if not r.get("error")]
    traces = sorted({r["trace"] for r in ok})
    n = max(len(traces), 1)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, tr in zip(axes[0], traces):
        for pol in sorted({r["policy"] for r in ok if r["trace"] == tr}):
            pts = sorted((r["memory"], r["miss_ratio"]) for r in ok if r["trace"] == tr and r["policy"] == pol)
            ax.plot([m / 2**20 for m, _ in pts], [y for _, y in pts], marker="o", label=pol)
        ax.set_xscale("log")
        ax.set_xlabel("memory (MiB)")
        ax.set_ylabel("miss ratio")
        ax.set_ylim(bottom=0)
        ax.set_title(os.path.basename(tr), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------------

DESCRIPTION = ("Replay every cell of TRACE... x --memory x --policy through the same path as `vmcore replay` "
               "and print one row per cell (accesses, misses, miss ratio; --json or --out for every "
               "vm_stat counter). Cells run on a local process pool of --jobs workers, or on a Dask "
               "distributed cluster with --scheduler (ADDRESS of a `dask scheduler`, or 'local' for a "
               "LocalCluster of --jobs workers). With --out, cells already in the file are skipped "
               "(resumable); a failing cell is reported in its row without losing the others. Exit "
               "status 0 when every cell succeeded, 1 when some failed, 2 for bad input.")


def _csv_list(what: str):
    def parse(s: str) -> list[str]:
        v = [x.strip() for x in s.split(",") if x.strip()]
        if not v:
            raise argparse.ArgumentTypeError(f"{what} takes a comma-separated list, not {s!r}")
        return v

    return parse


def _int_option(what: str, least: int):
    """An argparse type: an integer of at least `least` for option `what`."""
    kind = "a positive integer" if least == 1 else f"an integer >= {least}"

    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} takes {kind}, not {s!r}") from None
        if v < least:
            raise argparse.ArgumentTypeError(f"{what} takes {kind}, not {s!r}")
        return v

    return parse


_jobs = _int_option("--jobs", 1)
_retries = _int_option("--retries", 0)


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="replay many traces x memory sizes x policies (process pool or Dask)",
                       description=DESCRIPTION,
                       epilog="Example: vmcore sweep a.vtrace b.npy --memory 16MiB,64MiB,256MiB "
                              "--policy mach,lru,fifo,clock --jobs 2 --out results.parquet --plot mrc.png")
    p.add_argument("traces", nargs="+", metavar="TRACE", help="trace files (text, .npy or vnodefs), as for vmcore replay")
    p.add_argument("--memory", required=True, type=_csv_list("--memory"), metavar="SIZE[,SIZE...]",
                   help="physical memory sizes, comma-separated, e.g. 16MiB,64MiB,256MiB")
    p.add_argument("--policy", default=["mach"], type=_csv_list("--policy"), metavar="POLICY[,POLICY...]",
                   help="replacement policies, comma-separated: mach (default), lru, fifo, clock")
    p.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                   help="worker processes (default: the machine's cores); 1 runs the cells in this process")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run the cells on the Dask distributed cluster at ADDRESS (e.g. tcp://host:8786, "
                        "from `dask scheduler` / `dask worker`, or dask-jobqueue), or 'local' for a Dask "
                        "LocalCluster of --jobs worker processes; workers must import vmcore and read the traces")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write the rows to FILE (.csv or .parquet; rewritten as cells finish); cells already "
                        "in FILE without an error are skipped (resume an interrupted sweep)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="write a PNG: per trace, the miss ratio against memory, one line per policy")
    p.add_argument("--json", action="store_true", help="print one JSON object (every row with every counter) on stdout")
    p.add_argument("--page-size", type=int, default=4096, metavar="N", help="page size in bytes (default 4096)")
    p.add_argument("--ops", default="read,write", metavar="OPS",
                   help="vnodefs traces: which request kinds to replay (default read,write)")
    p.add_argument("--pid", type=int, default=None, help="vnodefs traces: only this process's requests")
    p.add_argument("--retries", type=_retries, default=1, metavar="N",
                   help="run a cell again up to N times when its worker dies (default 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show the progress bar even when stderr is not a terminal")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")
    p.set_defaults(func=cmd_sweep)


def format_rows(rows: list[dict]) -> str:
    """The sweep's table, one line a cell: `trace memory policy accesses misses miss ratio` (a cell
    that failed shows `-` for its numbers and `error: ...` after them). Drawn by vmcore.report; the
    trace column is as wide as the longest path, so no path is cut."""
    from vmcore.report import render_table
    from vmcore.types import format_size

    out = []
    for r in rows:
        name = r["trace"]
        if r.get("error"):
            out.append((name, format_size(r["memory"]), r["policy"], "-", "-", "-", f"error: {r['error']}"))
        else:
            out.append((name, format_size(r["memory"]), r["policy"], r["accesses"], r["misses"],
                        f"{100 * r['miss_ratio']:.2f}%", ""))
    return render_table(("trace", "memory", "policy", "accesses", "misses", "miss ratio", ""), out,
                        right=(1, 3, 4, 5))


class _Bar:
    """`vmcore sweep  42.0% [#####.......] 20/48 cells, 1 failed 0.50cells/s ETA 0:00:12` on stderr
    (vmcore.report's rich bar)."""

    def __init__(self, total: int, enabled: bool):
        from vmcore.report import ProgressBar

        self.total, self.enabled = total, enabled and total > 0
        self._bar = ProgressBar(PROG, self.enabled, unit="cells", scale=False)

    def __call__(self, done: int, failed: int) -> None:
        self._bar(done, self.total, f", {failed} failed" if failed else "")

    def close(self) -> None:
        self._bar.close()


def _check_writable(path: str, what: str) -> None:
    from vmcore.errors import InvalidArgument

    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d) or not os.access(d, os.W_OK) or os.path.isdir(path):
        raise InvalidArgument(f"cannot write {what} {path}")


def cmd_sweep(args) -> int:
    from vmcore.errors import InvalidArgument
    from vmcore.policy import POLICIES
    from vmcore.types import parse_size

    policies = []
    for p in args.policy:
        q = p.strip().lower()
        if q not in POLICIES:
            raise InvalidArgument(f"unknown replacement policy {p!r} (valid: {', '.join(POLICIES)})")
        if q not in policies:
            policies.append(q)
    memories = []
    for m in args.memory:
        v = parse_size(m, "memory")
        if v <= 0:
            raise InvalidArgument(f"memory {m!r} must be positive")
        if v not in memories:
            memories.append(v)
    if args.page_size <= 0 or args.page_size & (args.page_size - 1):
        raise InvalidArgument(f"page size {args.page_size} is not a positive power of two")
    ops = ",".join(o.strip() for o in args.ops.split(",") if o.strip())
    if not ops:
        raise InvalidArgument("--ops names no request kind (e.g. read,write)")
    for t in args.traces:
        if not os.path.isfile(t):
            raise InvalidArgument(f"trace file {t} does not exist" if not os.path.exists(t)
                                  else f"trace file {t} is not a regular file")
    if args.out:
        try:
            _fmt_kind(args.out)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        _check_writable(args.out, "results file")
    if args.plot:
        _check_writable(args.plot, "plot file")
    if args.scheduler is not None and args.scheduler != "local" and "://" not in args.scheduler \
            and ":" not in args.scheduler:
        raise InvalidArgument(f"--scheduler {args.scheduler!r} is not an address (tcp://HOST:PORT) or 'local'")
    # the memory floor is the kernel's: check one cell's kernel builds before starting every cell
    from vmcore.cli import _kernel_class

    for m in memories:
        k = _kernel_class()(memory=m, page_size=args.page_size, policy=policies[0])
        close = getattr(k, "close", None)
        if callable(close):
            close()
    jobs = args.jobs or os.cpu_count() or 1
    cells = cells_for(args.traces, memories, policies, args.page_size, ops, args.pid)
    previous = []
    if args.out:
        try:
            previous = read_results(args.out)
        except Exception as e:  # noqa: BLE001 - a file that is not ours
            raise InvalidArgument(f"cannot read results file {args.out} to resume: {e}") from None
    done_keys = {row_key(r) for r in previous if not r.get("error")}
    todo = [c for c in cells if c.key() not in done_keys]
    wanted = {c.key() for c in cells}
    kept = [r for r in previous if row_key(r) in done_keys or row_key(r) not in wanted]
    skipped = len(cells) - len(todo)
    if skipped:
        print(f"{PROG}: {skipped} of {len(cells)} cells already in {args.out}: skipped", file=sys.stderr)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    bar = _Bar(len(todo), show)
    rows_new: dict = {}
    failed = 0
    last_write = time.monotonic()
    t0 = time.perf_counter()
    try:
        for i, (cell, row) in enumerate(sweep(todo, jobs=jobs, scheduler=args.scheduler, retries=args.retries), 1):
            rows_new[cell.key()] = row
            if row.get("error"):
                failed += 1
                bar.close() if bar.enabled else None
                print(f"{PROG}: cell {cell.trace} memory {cell.memory} policy {cell.policy} failed: {row['error']}",
                      file=sys.stderr)
            bar(i, failed)
            if args.out and time.monotonic() - last_write > 2.0:
                write_results(args.out, kept + list(rows_new.values()))
                last_write = time.monotonic()
    except OSError as e:
        if args.scheduler and args.scheduler != "local":
            raise InvalidArgument(f"cannot reach the Dask scheduler at {args.scheduler}: {e}") from None
        raise
    finally:
        bar.close()
        if args.out and rows_new:
            write_results(args.out, kept + list(rows_new.values()))
    wall = time.perf_counter() - t0
    order = {c.key(): i for i, c in enumerate(cells)}
    rows = sorted([r for r in kept if row_key(r) in wanted] + list(rows_new.values()),
                  key=lambda r: order.get(row_key(r), len(order)))
    if args.plot:
        plot_sweep(rows, args.plot)
        print(f"{PROG}: plot written to {args.plot}", file=sys.stderr)
    where = (f"Dask {'LocalCluster' if args.scheduler == 'local' else args.scheduler}" if args.scheduler
             else ("this process" if jobs <= 1 else f"a pool of {jobs} processes"))
    if args.json:
        print(json.dumps({"cells": rows, "ran": len(todo), "skipped": skipped, "failed": failed, "jobs": jobs,
                          "scheduler": args.scheduler, "where": where, "wall_s": round(wall, 3)}))
    else:
        print(f"{PROG}: {len(cells)} cells ({len(args.traces)} traces x {len(memories)} memory sizes x "
              f"{len(policies)} policies), {len(todo)} run on {where} in {wall:.1f} s"
              f"{f', {skipped} skipped' if skipped else ''}{f', {failed} FAILED' if failed else ''}")
        print(format_rows(rows))
    return 1 if failed else 0
