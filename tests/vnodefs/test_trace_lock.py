"""Invariant guarded: a trace is never lost to a second writer. A trace a live mount is writing is
locked: `vnodefs mount` / `vnodefs run` with that `--trace` are refused in one line (exit 2, even
with --force) and the live mount's records all survive; a second TraceWriter on the file raises
TraceInUse without emptying it. A finished trace is not overwritten unless --force; a default
trace name never overwrites an existing file (it gets a -2 suffix)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from vnodefs.mount import umount
from vnodefs.run import default_trace_path
from vnodefs.trace import OPS, TraceInUse, TraceWriter, load, trace_in_use

VNODEFS = [sys.executable, "-m", "vnodefs"]
HEADER = {"cache_mode": "direct", "page_size": 4096, "latency": {"model": "none"}}


def _vn(*args, cwd=None):
    return subprocess.run(VNODEFS + [str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_second_writer_is_refused_and_the_first_keeps_its_records(tmp_path):
    path = tmp_path / "t.vtrace"
    a = TraceWriter(str(path), flush_interval=0)
    a.start(HEADER)
    fid = a.file_id("/f")
    for i in range(10):
        a.record(1000 + i, 1, 0, i * 4096, 4096, 4096, 1, 0, fid, OPS["read"])
    a.flush()
    size = path.stat().st_size
    assert trace_in_use(path)
    with pytest.raises(TraceInUse, match="in use"):
        TraceWriter(str(path))
    assert path.stat().st_size == size
    a.close()
    assert not trace_in_use(path)
    assert load(path).records.size == 10


def test_live_mount_trace_is_locked_against_mount_and_run(vmount, tmp_path):
    m = vmount(cache="direct")
    with open(os.path.join(m.src, "f"), "wb") as fh:
        fh.write(os.urandom(64 * 1024))
    with open(os.path.join(m.mountpoint, "f"), "rb") as fh:
        first = fh.read()
    assert len(first) == 64 * 1024
    time.sleep(0.5)  # the flusher writes the records
    other = tmp_path / "other-mnt"
    other.mkdir()
    for args in (["mount", m.src, other, "--trace", m.trace_path],
                 ["mount", m.src, other, "--trace", m.trace_path, "--force"],
                 ["run", m.src, "--trace", m.trace_path, "--force", "--", "cat", "{mnt}/f"]):
        p = _vn(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "in use" in p.stderr, p.stderr
        assert f"daemon pid {m.pid}" in p.stderr
    assert not os.path.ismount(other)
    umount(m.mountpoint)
    tr = load(m.trace_path)
    reads = tr.records[tr.op_mask("read")]
    assert int(reads["result"].clip(min=0).sum()) == 64 * 1024  # every record of the first mount is there


def test_finished_trace_needs_force(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 10000)
    trace = tmp_path / "t.vtrace"
    p = _vn("run", src, "--trace", trace, "--quiet", "--", "cat", "{mnt}/f")
    assert p.returncode == 0, p.stderr
    before = trace.read_bytes()
    p = _vn("run", src, "--trace", trace, "--quiet", "--", "cat", "{mnt}/f")
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "exists" in p.stderr and "--force" in p.stderr
    assert trace.read_bytes() == before
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = _vn("mount", src, mnt, "--trace", trace)
    assert p.returncode == 2 and "--force" in p.stderr and not os.path.ismount(mnt)
    assert trace.read_bytes() == before
    p = _vn("run", src, "--trace", trace, "--quiet", "--force", "--", "true")
    assert p.returncode == 0, p.stderr
    assert trace.read_bytes() != before and load(trace).records.size >= 0


def test_default_trace_name_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, note = default_trace_path("run")
    assert note is None and os.path.dirname(first) == str(tmp_path)
    open(first, "wb").write(b"old trace")
    second, _ = default_trace_path("run")
    assert second != first and not os.path.exists(second)
    open(second, "wb").write(b"x")
    third, _ = default_trace_path("run")
    assert third not in (first, second)
    assert open(first, "rb").read() == b"old trace"
