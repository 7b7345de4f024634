"""Invariant guarded: a vnodefs trace round-trips exactly (records, file table, header); every
whole-record prefix of a trace (a daemon killed mid-write) loads, with every file id it names
resolved; a partial last record loads with a warning; anything else raises one clear ValueError."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from vnodefs.trace import (MAGIC, OP_NAMES, OPS, RECORD_DTYPE, RECORD_SIZE, TraceWriter, encode_header, load,
                           read_header)

HEADER = {"cache_mode": "direct", "page_size": 4096, "latency": {"model": "none"}}


def write_trace(path, reqs, capacity=16384, paths=None):
    """reqs: list of (path, op, offset, length, result, pid)."""
    w = TraceWriter(str(path), capacity=capacity, flush_interval=0)
    w.start(HEADER)
    t = 1000
    for p, op, off, ln, res, pid in reqs:
        fid = w.file_id(p)
        w.record(t, 10, 3, off, ln, res, pid, 1000, fid, OPS[op])
        t += 100
    w.close()
    return w


def test_round_trip_records_files_header(tmp_path):
    path = tmp_path / "t.vtrace"
    reqs = [("/a", "open", 0, 0, 0, 7), ("/a", "read", 0, 8192, 8192, 7),
            ("/dir/b" + "x" * 130, "write", 4096, 100, 100, 0), ("/a", "read", 8192, 10, -5, 7),
            ("/a", "release", 0, 0, 0, 0)]
    write_trace(path, reqs)
    tr = load(path)
    assert tr.header["cache_mode"] == "direct" and tr.page_size == 4096
    assert tr.files == {1: "a", 2: "dir/b" + "x" * 130}
    r = tr.records
    assert r.dtype == RECORD_DTYPE and r.size == 5
    assert [OP_NAMES[o] for o in r["op"]] == [q[1] for q in reqs]
    assert r["offset"].tolist() == [0, 0, 4096, 8192, 0]
    assert r["length"].tolist() == [0, 8192, 100, 10, 0]
    assert r["result"].tolist() == [0, 8192, 100, -5, 0]
    assert r["pid"].tolist() == [7, 7, 0, 7, 0]
    assert r["file"].tolist() == [1, 1, 2, 1, 1]
    assert r["uid"].tolist() == [1000] * 5
    assert (r["dur_ns"] == 10).all() and (r["delay_ns"] == 3).all()
    assert np.all(np.diff(r["start_ns"]) > 0)


def test_records_load_with_one_numpy_call(tmp_path):
    path = tmp_path / "t.vtrace"
    write_trace(path, [("/a", "read", 0, 4096, 4096, 1)] * 3)
    _, start = read_header(str(path))
    assert start % RECORD_SIZE == 0
    raw = np.fromfile(path, dtype=RECORD_DTYPE, offset=start)
    assert raw.size == 4  # one file-table chunk + three requests
    assert (raw["op"] == 255).sum() == 1


def test_expand_pages(tmp_path):
    path = tmp_path / "t.vtrace"
    reqs = [("/a", "read", 0, 4096, 4096, 1),        # page 0
            ("/a", "read", 4000, 200, 200, 1),       # pages 0, 1
            ("/b", "read", 8192, 3 * 4096, 5000, 2),  # short read: pages 2, 3
            ("/a", "read", 0, 4096, -5, 1),          # failed: none
            ("/a", "write", 12288, 1, 1, 0),          # page 3 (write)
            ("/a", "read", 100, 0, 0, 1)]            # empty: none
    write_trace(path, reqs)
    tr = load(path)
    p = tr.expand_pages()
    assert p["page"].tolist() == [0, 0, 1, 2, 3]
    assert p["file"].tolist() == [1, 1, 1, 2, 2]
    assert p["pid"].tolist() == [1, 1, 1, 2, 2]
    assert np.all(np.diff(p["t_ns"]) >= 0)
    pw = tr.expand_pages(ops=("read", "write"))
    assert pw["page"].tolist() == [0, 0, 1, 2, 3, 3]
    assert pw["op"].tolist()[-1] == OPS["write"]
    with pytest.raises(ValueError, match="unknown op"):
        tr.expand_pages(ops=("bogus",))


def test_every_prefix_loads_with_its_paths(tmp_path):
    path = tmp_path / "t.vtrace"
    # small buffer so path chunks and requests cross block boundaries
    reqs = [(f"/f{i % 7}/" + "n" * (i * 13 % 90), "read", i * 4096, 4096, 4096, i) for i in range(60)]
    write_trace(path, reqs, capacity=5)
    data = path.read_bytes()
    _, start = read_header(str(path))
    for cut in range(start, len(data) + 1, RECORD_SIZE):
        p2 = tmp_path / "cut.vtrace"
        p2.write_bytes(data[:cut])
        tr = load(p2)
        assert set(tr.records["file"].tolist()) <= set(tr.files), f"prefix {cut} names unknown file ids"


def test_truncated_trace_warns_and_keeps_whole_records(tmp_path):
    path = tmp_path / "t.vtrace"
    write_trace(path, [("/a", "read", i * 10, 10, 10, 1) for i in range(10)])
    data = path.read_bytes()
    path.write_bytes(data[:-RECORD_SIZE - 17])
    with pytest.warns(RuntimeWarning, match="t.vtrace.*truncated"):
        tr = load(path)
    assert tr.truncated and tr.records.size == 8
    assert tr.records["offset"].tolist() == [i * 10 for i in range(8)]


@pytest.mark.parametrize("content,msg", [
    (b"", "not a vnodefs trace"),
    (b"hello world, this is text and not a trace at all" * 3, "not a vnodefs trace"),
    (MAGIC + (99).to_bytes(4, "little") + (0).to_bytes(4, "little"), "version 99"),
    (MAGIC + (1).to_bytes(4, "little") + (1000).to_bytes(4, "little") + b"{}", "header is truncated"),
    (encode_header({"a": 1})[:16] + b"x" * (len(encode_header({"a": 1})) - 16), "not valid JSON"),
])
def test_not_a_trace_is_one_clear_value_error(tmp_path, content, msg):
    path = tmp_path / "bad.vtrace"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=msg) as ei:
        load(path)
    assert "\n" not in str(ei.value) and "bad.vtrace" in str(ei.value)


def test_writer_is_thread_safe(tmp_path):
    path = tmp_path / "t.vtrace"
    w = TraceWriter(str(path), capacity=64, flush_interval=0.01)
    w.start(HEADER)

    def worker(k):
        for i in range(2000):
            fid = w.file_id(f"/t{k}/{i % 50}")
            w.record(i, 1, 0, i, 1, 1, k, 0, fid, OPS["read"])

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    w.close()
    tr = load(path)
    assert tr.records.size == 8000
    assert len(tr.files) == 200
    for k in range(4):
        mine = tr.records[tr.records["pid"] == k]
        assert sorted(mine["offset"].tolist()) == list(range(2000))
        names = {tr.files[f] for f in mine["file"].tolist()}
        assert names == {f"t{k}/{i}" for i in range(50)}


def test_nothing_reaches_the_file_before_the_header(tmp_path):
    path = tmp_path / "t.vtrace"
    w = TraceWriter(str(path), capacity=4, flush_interval=0)
    for i in range(10):
        w.record(i, 1, 0, 0, 1, 1, 1, 0, w.file_id("/a"), OPS["read"])
    w.flush()
    assert os.path.getsize(path) == 0
    w.close(header=HEADER)
    assert load(path).records.size == 10


def test_disabled_writer_still_assigns_ids(tmp_path):
    w = TraceWriter(None)
    assert w.file_id("/a") == 1 and w.file_id("/b") == 2 and w.file_id("/a") == 1
    w.forget_path("/a")
    assert w.file_id("/a") == 3
    w.record(0, 0, 0, 0, 0, 0, 0, 0, 1, 1)
    w.start(HEADER)
    w.close()
