"""Invariant guarded: `vmcore replay` reads a vnodefs trace file exactly as vnodefs recorded it: each
read / write request becomes one access per page it touched, in start-time order, one region per
file; writes are write accesses; --ops and --pid select requests; a trace cut short by a crash
replays its whole records with a one-line warning. (The trace is written with vnodefs' own
TraceWriter, the writer the FUSE dispatcher uses; no mount is needed to test the reader side.)
"""

from __future__ import annotations

import json

from vnodefs import trace as vtrace
from vmcore.cli import load_trace, main

PS = 4096


def write_trace(path, requests, header_page_size=4096):
    """requests: (start_ns, pid, op, file path, offset, length, result)."""
    w = vtrace.TraceWriter(str(path), flush_interval=0)
    for start_ns, pid, op, fpath, off, length, result in requests:
        fid = w.file_id(fpath)
        w.record(start_ns, 1000, 0, off, length, result, pid, 0, fid, vtrace.OPS[op])
    w.start({"cache": "direct", "page_size": header_page_size, "latency": "none"})
    w.close()
    return str(path)


REQUESTS = [
    # written out of time order on purpose: the loader sorts by start time
    (30, 100, "read", "/data/db", 0, 3 * PS, 3 * PS),           # pages 0, 1, 2 of db
    (10, 100, "read", "/lib/a", PS // 2, PS, PS),               # straddles pages 0 and 1 of a
    (20, 200, "write", "/data/db", 5 * PS, 100, 100),           # page 5 of db, a write
    (40, 0, "write", "/data/db", 0, PS, PS),                    # kernel writeback of page 0
    (50, 100, "read", "/lib/a", 10 * PS, PS, 0),                # read at EOF: touches nothing
    (60, 100, "fsync", "/data/db", 0, 0, 0),                    # not a read or write
    (70, 200, "read", "/lib/a", 0, PS, -5),                     # failed (EIO): touches nothing
]


def test_load_expands_requests_into_page_accesses(tmp_path):
    path = write_trace(tmp_path / "t.vtrace", REQUESTS)
    tr = load_trace(path, PS)
    named = [(tr.names[f], int(p), bool(w)) for f, p, w in zip(tr.file, tr.page, tr.write)]
    assert named == [("lib/a", 0, False), ("lib/a", 1, False), ("data/db", 5, True),
                     ("data/db", 0, False), ("data/db", 1, False), ("data/db", 2, False),
                     ("data/db", 0, True)]
    # another page size regroups the same bytes: one access per request and page it touched
    tr16 = load_trace(path, 16384)
    assert tr16.page.tolist() == [0, 1, 0, 0]
    # --ops and --pid
    reads = load_trace(path, PS, ops=("read",))
    assert reads.write is None and len(reads) == 5
    pid200 = load_trace(path, PS, pid=200)
    assert pid200.page.tolist() == [5] and pid200.write.tolist() == [True]


def test_cli_replays_a_vnodefs_trace(tmp_path, capsys):
    path = write_trace(tmp_path / "t.vtrace", REQUESTS)
    assert main(["replay", path, "--memory", str(3 * PS), "--policy", "lru", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["accesses"] == 7 and d["files"] == 2
    # three frames, LRU: a0 a1 db5 db0 db1 db2 db0 -> every access but the last misses
    assert d["misses"] == 6
    assert d["Pageouts"] >= 1  # db5 was written, then evicted


def test_truncated_trace_replays_whole_records_with_one_warning(tmp_path, capsys):
    path = write_trace(tmp_path / "t.vtrace", REQUESTS)
    with open(path, "r+b") as fh:
        # drop the last three records (failed read, fsync, read at EOF) and cut the writeback of db0
        fh.truncate(fh.seek(0, 2) - 3 * vtrace.RECORD_SIZE - 10)
    assert main(["replay", path, "--memory", "1MiB", "--policy", "fifo", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["accesses"] == 6
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "truncated" in lines[0]


def test_bad_vnodefs_traces(tmp_path, capsys):
    path = write_trace(tmp_path / "t.vtrace", REQUESTS)
    assert main(["replay", path, "--memory", "1MiB", "--ops", "read,bogus"]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and err.count("\n") == 1
    broken = tmp_path / "broken.vtrace"
    broken.write_bytes(vtrace.MAGIC + b"\x01\x00\x00\x00\xff\xff\x00\x00{")
    assert main(["replay", str(broken), "--memory", "1MiB"]) == 2
    err = capsys.readouterr().err
    assert "cannot read vnodefs trace" in err and err.count("\n") == 1
    plain = tmp_path / "plain.txt"
    plain.write_text("1\n")
    assert main(["replay", str(plain), "--memory", "1MiB", "--pid", "3"]) == 2
    assert "vnodefs traces only" in capsys.readouterr().err
