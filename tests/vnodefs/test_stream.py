"""Invariant guarded: the chunked reader and chunked LRU stack distances give exactly the in-memory
analysis (vnodefs.locality.analyze) for any chunk size, records written out of start order
included; SHARDS estimates (fixed rate and fixed size) of seeded zipf, loop and mixed traces are
within a mean absolute error of 0.02 of the exact miss-ratio curve (the bound the report states);
a fixed-size sample tracks a bounded number of keys whatever the trace's length; the command
line (`vnodefs locality --sample / --sample-size / --stream`) states the rate, the sampled key
count and that the curve is an estimate, and rejects bad input in one line with exit 2; one real
mount's trace streams to the same curve as the in-memory analysis.

Traces are written with vnodefs.trace.TraceWriter (no FUSE) except the one @pytest.mark.fuse test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vnodefs.locality import analyze, page_keys, stack_distances
from vnodefs.stream import (HASH_SPACE, StackStream, TraceStream, analyze_stream, chunk_keys, format_stream_report,
                            mrc_error, spatial_hash)
from vnodefs.trace import OPS, TraceWriter, load

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import make_trace  # noqa: E402

P = 4096
HEADER = {"cache_mode": "direct", "page_size": P, "latency": {"model": "none"}}
ROOT = Path(__file__).resolve().parents[2]


def write_pages(path, pages, nfiles=3, npages=None, jitter=None):
    """One read per page number (of `npages[i]` pages), spread over `nfiles` files; `jitter[i]` ns
    is subtracted from the start time (records then sit out of start order, as the daemon writes
    them: in completion order)."""
    w = TraceWriter(str(path), flush_interval=0)
    w.start(HEADER)
    fids = [w.file_id(f"/f{i}") for i in range(nfiles)]
    npages = np.ones(len(pages), np.int64) if npages is None else npages
    for i, (pg, n) in enumerate(zip(np.asarray(pages).tolist(), np.asarray(npages).tolist())):
        t = 10_000 + 10 * i - (0 if jitter is None else int(jitter[i]))
        w.record(t, 5, 0, (pg // nfiles) * P, n * P, n * P, 7, 0, fids[pg % nfiles], OPS["read"])
    w.close()
    return str(path)


def test_stack_stream_equals_in_memory_distances_for_any_chunk_size():
    rng = np.random.default_rng(3)
    keys = np.concatenate([rng.integers(0, 400, 4000), np.arange(1000, 1600), rng.integers(0, 2000, 3000)])
    ref = stack_distances(keys)
    for size in (3, 7, 333, 4096, keys.size):
        s = StackStream()
        got = np.concatenate([s.feed(keys[i:i + size]) for i in range(0, keys.size, size)])
        assert (got == ref).all(), size
        assert s.stack.size == np.unique(keys).size


def test_chunk_keys_equal_expand_pages(tmp_path):
    w = TraceWriter(str(tmp_path / "t.vtrace"), flush_interval=0)
    w.start(HEADER)
    a, b = w.file_id("/a"), w.file_id("/b")
    w.record(100, 1, 0, 0, 3 * P, 3 * P, 1, 0, a, OPS["read"])
    w.record(200, 1, 0, 100, 2 * P, P, 1, 0, a, OPS["read"])  # short read: fewer pages
    w.record(300, 1, 0, 5 * P, P, -5, 1, 0, b, OPS["read"])  # failed: none
    w.record(400, 1, 0, 7 * P + 1, 2 * P, 2 * P, 2, 0, b, OPS["write"])
    w.record(500, 1, 0, 0, 10 * P, 0, 2, 0, b, OPS["truncate"])
    w.close()
    tr = load(str(tmp_path / "t.vtrace"))
    for ops in (("read",), ("read", "write"), ("read", "write", "truncate")):
        for ps in (P, 512, 3 * P):
            assert (chunk_keys(tr.records, ops, ps) == page_keys(tr.expand_pages(ops, page_size=ps))).all()


def test_chunked_analysis_equals_the_in_memory_one(tmp_path):
    rng = np.random.default_rng(5)
    pages = make_trace.zipf(30_000, 3_000, seed=4)
    jitter = rng.integers(0, 40, pages.size)  # up to 4 neighbours out of start order
    path = write_pages(tmp_path / "z.vtrace", pages, npages=rng.integers(1, 4, pages.size), jitter=jitter)
    exact = analyze(load(path))
    for chunk in (97, 1000, 1 << 18):
        rep = analyze_stream(path, chunk_records=chunk)
        assert rep["streaming"]["late_records"] == 0
        assert rep["streaming"]["chunks"] >= (30_000 // chunk) - 1 if chunk < 30_000 else rep["streaming"]["chunks"] == 1
        for k in ("requests", "bytes", "page_accesses", "footprint_pages", "files", "pids", "span_s"):
            assert rep[k] == exact[k], k
        for k in ("cache_pages", "misses", "miss_ratio", "cold_misses", "accesses"):
            assert rep["mrc"][k] == exact["mrc"][k], k
        for k in ("bins", "median", "max", "cold", "reuses"):
            assert rep["reuse_distance"][k] == exact["reuse_distance"][k], k
        assert rep["reuse_distance"]["mean"] == pytest.approx(exact["reuse_distance"]["mean"], rel=1e-12)
        assert rep["mrc"]["estimate"] is False and rep["sampling"]["mode"] == "exact"
    assert mrc_error(analyze_stream(path), exact)["max_absolute_error"] == 0


def test_spatial_hash_is_uniform_and_per_key():
    keys = np.arange(200_000, dtype=np.int64) * 4096 + (5 << 40)
    h = spatial_hash(keys)
    assert h.min() >= 0 and h.max() < HASH_SPACE
    assert (spatial_hash(keys[::-1]) == h[::-1]).all()
    assert abs((h < HASH_SPACE // 100).mean() - 0.01) < 0.002  # 1% of keys below 1% of the space


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeded")
    out = {}
    for kind in ("zipf", "loop", "mixed"):
        path = write_pages(d / f"{kind}.vtrace", make_trace.generate(kind, 150_000, 30_000, seed=7))
        out[kind] = (path, analyze_stream(path))
    return out


@pytest.mark.parametrize("kind", ["zipf", "loop", "mixed"])
def test_shards_fixed_rate_within_the_stated_error(seeded, kind):
    path, exact = seeded[kind]
    for rate in (0.1, 0.05):
        est = analyze_stream(path, rate=rate)
        sm = est["sampling"]
        assert sm["rate"] == rate and sm["estimate"] and sm["mode"] == "fixed-rate"
        assert sm["sampled_keys"] >= 1000
        assert est["page_accesses"] == exact["page_accesses"]  # totals stay exact
        err = mrc_error(est, exact)
        assert err["mean_absolute_error"] <= 0.02, (rate, err)
        assert abs(est["footprint_pages"] - exact["footprint_pages"]) <= 0.1 * exact["footprint_pages"]
        assert est["mrc"]["miss_ratio"] == sorted(est["mrc"]["miss_ratio"], reverse=True)


@pytest.mark.parametrize("kind", ["zipf", "loop", "mixed"])
def test_shards_fixed_size_within_the_stated_error(seeded, kind):
    path, exact = seeded[kind]
    for size in (1500, 4000):
        est = analyze_stream(path, sample_size=size, chunk_records=20_000)
        sm = est["sampling"]
        assert sm["mode"] == "fixed-size" and sm["sample_size"] == size and sm["sampled_keys"] <= size
        assert sm["final_rate"] < 1
        assert est["streaming"]["peak_tracked_keys"] <= 2 * size  # bounded, whatever the length
        err = mrc_error(est, exact)
        assert err["mean_absolute_error"] <= 0.02, (size, err)


def test_fixed_size_state_does_not_grow_with_the_trace(tmp_path):
    peaks = []
    for n in (20_000, 80_000):
        path = write_pages(tmp_path / f"u{n}.vtrace", np.random.default_rng(1).integers(0, n, n))
        rep = analyze_stream(path, sample_size=1000, chunk_records=5000)
        peaks.append(rep["streaming"]["peak_tracked_keys"])
        assert rep["sampling"]["sampled_keys"] <= 1000
    assert max(peaks) <= 2000


def test_cli_sample_text_and_json(seeded, capsys):
    from vnodefs.locality import main

    path, exact = seeded["zipf"]
    assert main([path, "--sample", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "SHARDS" in out and "rate 0.1" in out and "sampled keys" in out and "an estimate" in out
    assert main([path, "--sample-size", "2000", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["sampling"]["sample_size"] == 2000 and rep["mrc"]["estimate"] is True
    assert main([path, "--stream", "--json", "--chunk-records", "5000"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["mrc"]["misses"] == exact["mrc"]["misses"]
    assert "the exact curve" in format_stream_report(rep)


@pytest.mark.parametrize("args, msg", [
    (["--sample", "0"], "rate in (0, 1]"),
    (["--sample", "1.5"], "rate in (0, 1]"),
    (["--sample", "x"], "rate in (0, 1]"),
    (["--sample-size", "0"], "positive integer"),
    (["--sample", "0.1", "--sample-size", "10"], "not allowed with"),
    (["--sample", "0.1", "--by", "pid"], "--by needs the in-memory analysis"),
    (["--stream", "--chunk-records", "-3"], "positive integer"),
])
def test_cli_bad_input_one_line_exit_2(seeded, args, msg):
    path, _ = seeded["loop"]
    p = subprocess.run([sys.executable, "-m", "vnodefs", "locality", path, *args], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_cli_missing_and_non_trace_files(tmp_path, capsys):
    from vnodefs.locality import main

    assert main([str(tmp_path / "nope.vtrace"), "--sample", "0.1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.vtrace").write_bytes(b"not a trace at all")
    assert main([str(tmp_path / "x.vtrace"), "--stream"]) == 2
    assert "not a vnodefs trace" in capsys.readouterr().err


def test_truncated_trace_streams_with_its_warning(tmp_path, capsys):
    from vnodefs.locality import main

    path = write_pages(tmp_path / "t.vtrace", np.arange(100) % 10)
    with open(path, "ab") as fh:
        fh.write(b"\0" * 17)
    assert main([path, "--stream", "--json"]) == 0
    cap = capsys.readouterr()
    assert "truncated" in cap.err and json.loads(cap.out)["truncated"] is True
    assert TraceStream(path).truncated


@pytest.mark.fuse
def test_real_mount_trace_streams_to_the_in_memory_curve(tmp_path):
    from vnodefs.mount import mounted

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(512 << 10))
    (src / "b.bin").write_bytes(os.urandom(256 << 10))
    trace = str(tmp_path / "real.vtrace")
    rng = np.random.default_rng(0)
    with mounted(str(src), trace=trace, cache="direct") as m:
        fds = [os.open(os.path.join(m.mountpoint, n), os.O_RDONLY) for n in ("a.bin", "b.bin")]
        try:
            for _ in range(400):
                i = int(rng.integers(0, 2))
                size = (512 << 10) if i == 0 else (256 << 10)
                os.pread(fds[i], 8192, int(rng.integers(0, size // 4096 - 1)) * 4096)
        finally:
            for fd in fds:
                os.close(fd)
    exact = analyze(load(trace))
    rep = analyze_stream(trace, chunk_records=50)
    assert rep["page_accesses"] == exact["page_accesses"] >= 800
    assert rep["mrc"]["misses"] == exact["mrc"]["misses"] and rep["mrc"]["cache_pages"] == exact["mrc"]["cache_pages"]
    assert rep["reuse_distance"]["bins"] == exact["reuse_distance"]["bins"]
