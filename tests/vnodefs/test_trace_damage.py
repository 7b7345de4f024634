"""Invariant guarded: every reader of a vnodefs trace applies one validation (vnodefs.trace.load ->
check_records): a trace with a damaged record (bytes flipped, a field overwritten) is refused by
`vnodefs trace`, `locality`, `export` and `vmcore replay` alike, in one line naming the first bad
record, exit status 2, nothing on stdout, no output file; an intact trace, a version-1 trace and a
record with an op code this version does not know (reserved fields 0) still load."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from vnodefs.trace import OPS, RECORD_SIZE, TraceWriter, load, read_header

HEADER = {"cache_mode": "direct", "page_size": 4096, "latency": {"model": "none"}}


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory):
    """A trace of a real program (cat, then dd at an offset) run through a real mount."""
    tmp_path = tmp_path_factory.mktemp("real")
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(bytes(range(256)) * 1024)
    trace = tmp_path / "real.vtrace"
    p = subprocess.run([sys.executable, "-m", "vnodefs", "run", str(src), "--cache", "direct", "--trace", str(trace),
                        "--quiet", "--", "sh", "-c", "cat {mnt}/data >/dev/null && "
                        "dd if={mnt}/data of=/dev/null bs=4096 skip=10 count=5 2>/dev/null"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return trace


def _request_positions(trace):
    """(byte offset of every request record in file order, index) of a trace file."""
    _, start = read_header(str(trace))
    raw = np.fromfile(trace, dtype=np.uint8, offset=start).reshape(-1, RECORD_SIZE)
    ops = raw[:, 60]
    return start, [i for i in range(raw.shape[0]) if ops[i] == OPS["read"]]


def _flip_all(b: bytearray, off: int) -> None:
    for i in range(off, off + RECORD_SIZE):
        b[i] ^= 0xFF


def _set(fmt: str, field_off: int, value):
    def damage(b: bytearray, off: int) -> None:
        struct.pack_into(fmt, b, off + field_off, value)
    return damage


DAMAGE = {
    "all bytes flipped": _flip_all,
    "negative duration": _set("<q", 8, -1089 * 10**9),
    "absurd length": _set("<q", 32, 1 << 57),
    "negative pid": _set("<i", 48, -12345),
    "result larger than the request": _set("<q", 40, 1 << 40),
    "reserved bits": _set("<H", 62, 0x00FF),
}


def _readers(trace, out):
    vn = [sys.executable, "-m", "vnodefs"]
    return {
        "trace": vn + ["trace", str(trace)],
        "trace --json": vn + ["trace", str(trace), "--json"],
        "locality": vn + ["locality", str(trace)],
        "export": vn + ["export", str(trace), "--format", "csv", "-o", str(out)],
        "replay": [sys.executable, "-m", "vmcore", "replay", str(trace), "--memory", "4MiB"],
    }


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_every_reader_refuses_a_damaged_trace_naming_the_record(real_trace, tmp_path, kind):
    start, reads = _request_positions(real_trace)
    assert len(reads) >= 3
    idx = reads[len(reads) // 2]
    b = bytearray(real_trace.read_bytes())
    DAMAGE[kind](b, start + idx * RECORD_SIZE)
    bad = tmp_path / "bad.vtrace"
    bad.write_bytes(b)
    with pytest.raises(ValueError, match=rf"record {idx} \(byte {start + idx * RECORD_SIZE}"):
        load(bad)
    out = tmp_path / "out.csv"
    for name, cmd in _readers(bad, out).items():
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (name, p.stdout[-300:], p.stderr)
        assert p.stdout == "" and "Traceback" not in p.stderr, (name, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, (name, p.stderr)
        assert f"record {idx} " in p.stderr and "damaged" in p.stderr and "bad.vtrace" in p.stderr, (name, p.stderr)
    assert not out.exists()


def test_intact_real_trace_passes_every_reader(real_trace, tmp_path):
    out = tmp_path / "out.csv"
    for name, cmd in _readers(real_trace, out).items():
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (name, p.stderr)
    assert out.exists()


def test_unknown_op_code_with_clean_reserved_fields_still_loads(tmp_path):
    """Codes 11..254 are reserved for later versions: such a record is kept, not called damage."""
    w = TraceWriter(str(tmp_path / "t.vtrace"), flush_interval=0)
    w.start(HEADER)
    fid = w.file_id("/a")
    w.record(1000, 10, 0, 0, 4096, 4096, 7, 0, fid, OPS["read"])
    w.record(1100, 10, 0, 0, 0, 0, 7, 0, fid, 42)
    w.close()
    tr = load(tmp_path / "t.vtrace")
    assert tr.records["op"].tolist() == [OPS["read"], 42]
