"""Invariant guarded: vnodefs.locality's metrics on hand-made traces with known answers (sequential,
strided, looping, two files, two pids); LRU stack distances equal a plain stack's; the MRC equals
an independent OrderedDict LRU simulation's miss count at every cache size; W(t, tau) matches a
hand-computed example; a trace cut short still analyses with its warning; bad input is one clear
line and exit 2; one real direct-mode mount gives the expected sequential fraction and footprint.

Traces are built with vnodefs.trace.TraceWriter (no FUSE) except the one @pytest.mark.fuse test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest

from vnodefs.locality import (analyze, format_report, main, miss_counts, mrc_at, mrc_steps, page_keys,
                              split_keys, stack_distances, working_set)
from vnodefs.trace import OPS, RECORD_SIZE, TraceWriter, load

P = 4096
HEADER = {"cache_mode": "direct", "page_size": P, "latency": {"model": "none"}}


def write_trace(path, reqs, header=HEADER):
    """reqs: list of (t_ns, path, op, offset, length, pid); result = length (or given as 7th item)."""
    w = TraceWriter(str(path), flush_interval=0)
    w.start(header)
    for req in reqs:
        t, p, op, off, ln, pid = req[:6]
        res = req[6] if len(req) > 6 else ln
        w.record(t, 10, 0, off, ln, res, pid, 1000, w.file_id(p), OPS[op])
    w.close()
    return str(path)


def reads(pages_list, path="/a", pid=7, t0=1000, dt=100, npages=1):
    """One read of `npages` pages at each page number in pages_list, dt ns apart."""
    return [(t0 + i * dt, path, "read", pg * P, npages * P, pid) for i, pg in enumerate(pages_list)]


def lru_misses(keys, capacity):
    """An independent LRU cache of `capacity` pages: its miss count over `keys`."""
    cache: OrderedDict = OrderedDict()
    misses = 0
    for k in keys:
        if k in cache:
            cache.move_to_end(k)
        else:
            misses += 1
            cache[k] = True
            if len(cache) > capacity:
                cache.popitem(last=False)
    return misses


def stack_reference(keys):
    stack, out = [], []
    for k in keys:
        if k in stack:
            i = stack.index(k)
            out.append(len(stack) - 1 - i)
            stack.pop(i)
        else:
            out.append(-1)
        stack.append(k)
    return out


# ---- hand-made traces with known answers --------------------------------------------------------

def test_purely_sequential(tmp_path):
    tr = load(write_trace(tmp_path / "t.vtrace", reads(range(0, 20, 2), npages=2)))
    r = analyze(tr)
    assert (r["requests"], r["bytes"], r["page_accesses"], r["footprint_pages"]) == (10, 20 * P, 20, 20)
    assert r["footprint_bytes"] == 20 * P
    assert r["sequential_fraction"] == pytest.approx(0.9) and r["sequential_requests"] == 9
    assert r["run_length"]["runs"] == 1 and r["run_length"]["max_pages"] == 20
    assert r["run_length"]["bins"][-1] == {"lo": 16, "hi": 32, "count": 1}
    sd = r["seek_distance"]
    assert (sd["sequential"], sd["forward"], sd["backward"], sd["first_on_file"]) == (9, 0, 0, 1)
    assert sd["bins"] == [{"sign": "0", "abs_lo": 0, "abs_hi": 0, "count": 9}]
    assert r["reuse_distance"]["reuses"] == 0 and r["reuse_distance"]["cold"] == 20
    assert r["mrc"]["cache_pages"] == [0] and r["mrc"]["misses"] == [20]  # every access misses at any C


def test_strided(tmp_path):
    tr = load(write_trace(tmp_path / "t.vtrace", reads(range(0, 30, 3))))  # 1 page every 3 pages
    r = analyze(tr)
    assert r["sequential_fraction"] == 0.0
    assert r["run_length"]["runs"] == 10 and r["run_length"]["bins"] == [{"lo": 1, "hi": 2, "count": 10}]
    # offset - previous end = 3 pages - 1 page = +2 pages: the [2, 4) forward bin
    assert r["seek_distance"]["bins"] == [{"sign": "+", "abs_lo": 2, "abs_hi": 4, "count": 9}]
    assert r["footprint_pages"] == 10


def test_looping_over_n_pages(tmp_path):
    n, loops = 8, 5
    tr = load(write_trace(tmp_path / "t.vtrace", reads(list(range(n)) * loops)))
    r = analyze(tr)
    pages = tr.expand_pages(("read",))
    d = stack_distances(page_keys(pages))
    assert (d[:n] == -1).all() and (d[n:] == n - 1).all()  # exactly N-1 for every non-cold access
    total = n * loops
    assert r["mrc"]["cache_pages"] == [0, n] and r["mrc"]["misses"] == [total, n]
    for c in range(1, n):
        assert mrc_at(r, c) == total  # LRU thrashes below N pages
    for c in (n, n + 1, 100):
        assert mrc_at(r, c) == n  # cold misses only from C = N on
    assert r["reuse_distance"]["median"] == n - 1 and r["reuse_distance"]["max"] == n - 1
    # each wrap-around (page 7 -> page 0) is a backward seek of 8 pages; the rest continue
    assert r["sequential_requests"] == total - loops
    assert r["seek_distance"]["bins"] == [{"sign": "-", "abs_lo": 8, "abs_hi": 16, "count": loops - 1},
                                          {"sign": "0", "abs_lo": 0, "abs_hi": 0, "count": total - loops}]
    text = format_report(r)
    assert "footprint 8 pages" in text and "cold" in text


def test_two_files_interleaved(tmp_path):
    a = [(1000 + 200 * i, "/a", "read", i * P, P, 7) for i in range(10)]
    b = [(1100 + 200 * i, "/dir/b", "read", (100 + i) * P, P, 7) for i in range(10)]
    once = sorted(a + b)
    twice = once + [(t + 10_000, p, op, off, ln, pid) for t, p, op, off, ln, pid in once]
    tr = load(write_trace(tmp_path / "t.vtrace", twice))
    r = analyze(tr)
    assert r["files"] == 2 and r["footprint_pages"] == 20 and r["page_accesses"] == 40
    # per file, every request continues the previous one on its file except the first of each pass
    assert r["sequential_requests"] == 40 - 4
    # globally 19 other pages lie between two accesses of a page; within its own file, 9
    assert r["reuse_distance"]["median"] == 19 and r["reuse_distance"]["max"] == 19
    by = {f["path"]: f for f in r["by_file"]}
    assert set(by) == {"a", "dir/b"}
    for f in by.values():
        assert (f["requests"], f["page_accesses"], f["footprint_pages"], f["reuses"]) == (20, 20, 10, 10)
        assert f["sequential_fraction"] == pytest.approx(18 / 20)
        assert f["median_reuse_distance"] == 9
    assert "dir/b" in format_report(r, by="file")


def test_two_pids(tmp_path):
    reqs = reads(range(4), pid=10) + reads(range(4), pid=20, t0=5000) + reads([9], pid=20, t0=9000)
    tr = load(write_trace(tmp_path / "t.vtrace", reqs))
    r = analyze(tr)
    assert r["pids"] == 2 and r["footprint_pages"] == 5
    assert r["reuse_distance"]["reuses"] == 4 and r["reuse_distance"]["median"] == 3
    by = {p["pid"]: p for p in r["by_pid"]}
    assert by[10]["footprint_pages"] == 4 and by[10]["requests"] == 4 and by[10]["reuses"] == 0
    # in its own sub-trace pid 20's pages are all first accesses
    assert by[20]["footprint_pages"] == 5 and by[20]["cold_misses"] == 5 and by[20]["reuses"] == 0
    assert by[20]["sequential_fraction"] == pytest.approx(3 / 5)
    text = format_report(r, by="pid")
    assert "pid 10" in text and "pid 20" in text


def test_kernel_pid_and_writes_and_ops_filter(tmp_path):
    reqs = reads(range(4)) + [(9000, "/a", "write", 0, 2 * P, 0), (9100, "/a", "fsync", 0, 0, 7)]
    tr = load(write_trace(tmp_path / "t.vtrace", reqs))
    r = analyze(tr)
    assert r["requests"] == 5 and r["page_accesses"] == 6
    assert {p["label"] for p in r["by_pid"]} == {"kernel", "pid 7"}
    r = analyze(tr, ops=("read",))
    assert r["requests"] == 4 and r["page_accesses"] == 4 and r["pids"] == 1
    r = analyze(tr, ops="read,write", page_size=2 * P)
    assert r["page_size"] == 2 * P and r["page_accesses"] == 5 and r["footprint_pages"] == 2


def test_failed_and_short_reads_touch_what_they_returned(tmp_path):
    reqs = [(1000, "/a", "read", 0, 4 * P, 7, P + 1), (1100, "/a", "read", 8 * P, P, 7, -5)]
    r = analyze(load(write_trace(tmp_path / "t.vtrace", reqs)))
    assert r["page_accesses"] == 2 and r["bytes"] == P + 1 and r["requests"] == 2


# ---- stack distances and the MRC against independent references ---------------------------------

def test_stack_distances_equal_a_plain_lru_stack():
    rng = np.random.default_rng(11)
    for _ in range(60):
        n = int(rng.integers(1, 400))
        keys = rng.integers(0, int(rng.integers(1, 80)), n)
        assert stack_distances(keys).tolist() == stack_reference(keys.tolist())


def test_mrc_equals_ordereddict_lru_on_a_seeded_random_trace(tmp_path):
    rng = np.random.default_rng(5)
    reqs, t = [], 1000
    for _ in range(1500):
        f = f"/f{int(rng.integers(0, 3))}"
        page = int(rng.zipf(1.3)) % 150 if rng.random() < 0.8 else int(rng.integers(0, 400))
        reqs.append((t, f, "read", page * P + int(rng.integers(0, 3)) * 1000, int(rng.integers(1, 3 * P)),
                     int(rng.integers(1, 4))))
        t += int(rng.integers(1, 1000))
    tr = load(write_trace(tmp_path / "t.vtrace", reqs))
    r = analyze(tr)
    keys = page_keys(tr.expand_pages(("read", "write"))).tolist()
    assert r["page_accesses"] == len(keys) and r["footprint_pages"] == len(set(keys))
    d = stack_distances(np.array(keys))
    sizes = list(range(0, r["footprint_pages"] + 3))
    expected = [lru_misses(keys, c) for c in sizes]
    assert miss_counts(d, sizes).tolist() == expected
    assert [mrc_at(r, c) for c in sizes] == expected
    assert r["mrc"]["miss_ratio"][-1] == pytest.approx(expected[-1] / len(keys))
    s, m = mrc_steps(d)
    assert np.all(np.diff(m) < 0) and m[-1] == r["footprint_pages"]  # strictly decreasing steps to cold


def test_page_keys_round_trip():
    arr = np.zeros(3, dtype=[("file", "<u4"), ("page", "<i8")])
    arr["file"] = [1, 2, 70000]
    arr["page"] = [0, 5, (1 << 40) - 1]
    f, p = split_keys(page_keys(arr))
    assert f.tolist() == [1, 2, 70000] and p.tolist() == arr["page"].tolist()
    arr["page"][0] = 1 << 40
    with pytest.raises(ValueError):
        page_keys(arr)


# ---- working set ------------------------------------------------------------------------------

def test_working_set_hand_computed():
    # time:   0  1  2  3  5  6  6
    # page:   A  B  A  C  D  A  E
    t = np.array([0, 1, 2, 3, 5, 6, 6])
    keys = np.array([1, 2, 1, 3, 4, 1, 5])
    at = [0, 2, 3, 5, 6]
    # tau = 3: (T-3, T]: T=0 {A}; T=2 {A,B}; T=3 {B,A,C} (A at 0 out, at 2 in); T=5 {C,D} (A at 2 is out:
    # the window is open on the left); T=6 {D,A,E}
    assert working_set(t, keys, 3, at).tolist() == [1, 2, 3, 2, 3]
    # tau = 1: only requests at exactly T
    assert working_set(t, keys, 1, at).tolist() == [1, 1, 1, 1, 2]
    # tau = 100: everything so far
    assert working_set(t, keys, 100, at).tolist() == [1, 2, 3, 4, 5]


def test_working_set_in_the_report(tmp_path):
    # one page per 1 ms over 8 distinct pages in a loop: W(t, 4 ms) = 4 once 4 ms have passed
    reqs = [(1_000_000 * i, "/a", "read", (i % 8) * P, P, 7) for i in range(64)]
    r = analyze(load(write_trace(tmp_path / "t.vtrace", reqs)), taus_s=[0.004, 1.0], ws_samples=64)
    ws = r["working_set"]
    assert ws["taus_s"] == [0.004, 1.0] and len(ws["t_s"]) == 64 and ws["t_s"][0] == 0.0
    assert ws["w_pages"][0][4:] == [4] * 60 and ws["w_pages"][1][8:] == [8] * 56
    assert ws["max_pages"] == [4, 8]


# ---- command line ------------------------------------------------------------------------------

def test_cli_human_json_by(tmp_path, capsys):
    path = write_trace(tmp_path / "t.vtrace", reads(list(range(8)) * 3) + reads(range(3), path="/b", pid=9, t0=9000))
    assert main([path]) == 0
    out = capsys.readouterr().out
    assert "sequential" in out and "footprint 11 pages" in out and "miss ratio" in out and "W(t, " in out
    assert len(out.splitlines()) < 50
    assert main([path, "--json", "--ops", "read", "--tau", "0.000001,0.001"]) == 0
    rep = json.loads(capsys.readouterr().out)
    for key in ("requests", "bytes", "footprint_pages", "sequential_fraction", "run_length", "seek_distance",
                "reuse_distance", "mrc", "working_set", "by_pid", "by_file", "units"):
        assert key in rep
    assert rep["working_set"]["taus_s"] == [0.000001, 0.001] and rep["ops"] == ["read"]
    assert main([path, "--by", "file"]) == 0
    out = capsys.readouterr().out
    assert "by file" in out and "by pid" not in out


def test_truncated_trace_still_analyses_with_its_warning(tmp_path):
    path = write_trace(tmp_path / "t.vtrace", reads(range(10)))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-RECORD_SIZE - 20])
    with pytest.warns(RuntimeWarning, match="truncated"):
        tr = load(path)
    assert analyze(tr)["requests"] == 8
    p = subprocess.run([sys.executable, "-m", "vnodefs.locality", path], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "warning" in p.stderr and "truncated" in p.stderr
    assert "8 (" in p.stdout and "cut short" in p.stdout


@pytest.mark.parametrize("make,args,msg", [
    (lambda d: (d / "x.txt").write_text("hello, I am not a trace\n"), ["x.txt"], "not a vnodefs trace"),
    (lambda d: None, ["missing.vtrace"], "does not exist"),
    (lambda d: None, [".", ], "directory"),
    (lambda d: write_trace(d / "t.vtrace", reads(range(3))), ["t.vtrace", "--ops", "read,bogus"], "unknown op"),
    (lambda d: write_trace(d / "t.vtrace", reads(range(3))), ["t.vtrace", "--page-size", "0"], "page size"),
    (lambda d: write_trace(d / "t.vtrace", reads(range(3))), ["t.vtrace", "--plot", "nodir/x.png"], "cannot write"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make, args, msg):
    make(tmp_path)
    p = subprocess.run([sys.executable, "-m", "vnodefs.locality", *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and msg in p.stderr, p.stderr
    assert p.stdout == ""


def test_empty_trace_analyses(tmp_path):
    r = analyze(load(write_trace(tmp_path / "t.vtrace", [])))
    assert r["requests"] == 0 and r["page_accesses"] == 0 and r["mrc"]["misses"] == [0]
    assert "0 accesses" in format_report(r)


# ---- one real mount ----------------------------------------------------------------------------

@pytest.mark.fuse
def test_real_direct_mount_sequential_fraction_and_footprint(tmp_path):
    from vnodefs.mount import mounted

    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(1 << 20)
    (src / "data.bin").write_bytes(data)
    trace = str(tmp_path / "real.vtrace")
    chunk = 64 << 10
    with mounted(str(src), trace=trace, cache="direct") as m:
        fd = os.open(os.path.join(m.mountpoint, "data.bin"), os.O_RDONLY)
        try:
            got = b"".join(os.pread(fd, chunk, off) for off in range(0, 1 << 20, chunk))  # one pass
        finally:
            os.close(fd)
        fd = os.open(os.path.join(m.mountpoint, "data.bin"), os.O_RDONLY)
        try:
            again = b"".join(os.pread(fd, chunk, off) for off in range(0, 256 << 10, chunk))  # first 256 KiB again
        finally:
            os.close(fd)
    assert got == data and again == data[:256 << 10]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr = load(trace)
    r = analyze(tr, ops=("read",))
    mine = [p for p in r["by_pid"] if p["pid"] == os.getpid()]
    assert mine, r["by_pid"]
    me = mine[0]
    n = me["requests"]
    ps = tr.page_size
    assert n >= 20 and me["page_accesses"] == ((1 << 20) + (256 << 10)) // ps  # every access reached vnodefs
    assert me["footprint_pages"] == (1 << 20) // ps
    # everything continues the previous read except the first read of each pass
    assert me["sequential_fraction"] == pytest.approx((n - 2) / n)
    # each re-read page saw every other page of the file since its first read
    assert me["reuses"] == (256 << 10) // ps and me["median_reuse_distance"] == (1 << 20) // ps - 1


def test_breakdowns_add_up_over_many_files_and_pids(tmp_path):
    rng = np.random.default_rng(2)
    reqs = [(1000 + 10 * i, f"/d/f{int(rng.integers(0, 300))}", "read", int(rng.integers(0, 64)) * P,
             int(rng.integers(1, 4)) * P, int(rng.integers(1, 6))) for i in range(3000)]
    tr = load(write_trace(tmp_path / "t.vtrace", reqs))
    for ps in (P, 4 * P):
        r = analyze(tr, page_size=ps)
        assert len(r["by_file"]) == len({q[1] for q in reqs}) and len(r["by_pid"]) == 5
        for key in ("by_file", "by_pid"):
            assert sum(g["requests"] for g in r[key]) == r["requests"] == 3000
            assert sum(g["page_accesses"] for g in r[key]) == r["page_accesses"]
            assert sum(g["bytes"] for g in r[key]) == r["bytes"]
        # keys carry the file: per-file footprints partition the footprint, and so do the runs
        assert sum(g["footprint_pages"] for g in r["by_file"]) == r["footprint_pages"]
        assert sum(g["runs"] for g in r["by_file"]) == r["run_length"]["runs"]
        assert sum(g["footprint_pages"] for g in r["by_pid"]) >= r["footprint_pages"]


def test_vnodefs_command_runs_locality_and_export(tmp_path):
    """`vnodefs locality` and `vnodefs export` are subcommands of the vnodefs console command."""
    path = tmp_path / "loop.vtrace"
    write_trace(path, reads([0, 1, 2, 3] * 5))
    cmd = [sys.executable, "-m", "vnodefs"]
    p = subprocess.run([*cmd, "locality", str(path), "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["footprint_pages"] == 4 and rep["requests"] == 20
    assert rep["mrc"]["cache_pages"] == [0, 4] and rep["mrc"]["misses"] == [20, 4]
    out = tmp_path / "loop.csv"
    p = subprocess.run([*cmd, "export", str(path), "--format", "csv", "-o", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert len(out.read_text().strip().splitlines()) == 1 + 20
