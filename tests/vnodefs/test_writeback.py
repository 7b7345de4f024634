"""Invariant guarded: `--writeback-cache` (page mode with the kernel's writeback cache) loses no
byte and says what it changes: whatever a program wrote reads back through the mount and is in the
host file after fsync / close; writes reach the trace as the kernel flushes them (pid 0) and the
trace header says writeback_cache: true; a mount without it records every write with the writer's
pid. It needs page mode: direct mode refuses it with one line.

The POSIX probe, fsx and metadata-cache tests run in this mode too (tests/vnodefs/cache_modes.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from vnodefs.mount import MountError, mount
from vnodefs.trace import OPS, load

pytestmark = pytest.mark.fuse
MIB = 1 << 20


def _write_file(path, blocks, flags=0):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flags, 0o644)
    try:
        for b in blocks:
            os.write(fd, b)
        os.fsync(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("writeback", [False, True])
def test_writes_land_and_the_trace_says_who_wrote_them(vmount, writeback):
    m = vmount(cache="writeback" if writeback else "page")
    rng = np.random.default_rng(7)
    blocks = [rng.bytes(MIB) for _ in range(8)] + [rng.bytes(12345)]
    data = b"".join(blocks)
    _write_file(os.path.join(m.mountpoint, "w.bin"), blocks)
    with open(os.path.join(m.src, "w.bin"), "rb") as fh:  # on the host after fsync + close
        assert fh.read() == data
    with open(os.path.join(m.mountpoint, "w.bin"), "rb") as fh:
        assert fh.read() == data
    with open(os.path.join(m.mountpoint, "w.bin"), "ab") as fh:  # O_APPEND: the kernel's end of file
        fh.write(b"tail")
    with open(os.path.join(m.src, "w.bin"), "rb") as fh:
        assert fh.read() == data + b"tail"
    m.umount()
    tr = load(m.trace_path)
    assert tr.header["writeback_cache"] is writeback
    w = tr.records[tr.records["op"] == OPS["write"]]
    assert (w["result"] >= 0).all()
    if writeback:  # the kernel writes back whole dirty pages: the append rewrote the last page's head
        covered = np.zeros(len(data) + 4, bool)
        for off, n in zip(w["offset"], w["length"]):
            assert off + n <= len(covered)
            covered[off:off + n] = True
        assert covered.all()
    else:
        assert int(w["length"].sum()) == len(data) + 4
    pids = set(int(p) for p in w["pid"])
    assert pids == ({0} if writeback else {os.getpid()})
    if writeback:
        assert "flush" in tr.header["trace_holds"]
    from vnodefs.summary import format_summary, summarize

    text = format_summary(summarize(tr))
    assert ("cache page + writeback cache" in text) is writeback


def test_write_only_files_and_partial_pages(vmount):
    """A file the caller may only write: with the writeback cache the kernel reads the rest of a
    partly written page through the daemon's handle, so the bytes around a small write survive."""
    m = vmount(cache="writeback")
    p = os.path.join(m.mountpoint, "wo")
    _write_file(p, [b"a" * 10000])
    os.chmod(p, 0o200)
    fd = os.open(p, os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"XY", 4097) == 2
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(os.path.join(m.src, "wo"), "rb") as fh:
        assert fh.read() == b"a" * 4097 + b"XY" + b"a" * (10000 - 4099)
    os.chmod(p, 0o600)
    os.utime(p, ns=(10**9, 3 * 10**9))
    assert os.stat(p).st_mtime_ns == 3 * 10**9 == os.stat(os.path.join(m.src, "wo")).st_mtime_ns


def test_direct_mode_refuses_it(tmp_path):
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    with pytest.raises(MountError, match="--writeback-cache needs --cache page"):
        mount(str(src), str(mnt), trace=None, cache="direct", writeback_cache=True)


def test_cli_offers_it(vcli, tmp_path):
    rc, out, err = vcli("mount", "--help")
    assert rc == 0 and "--writeback-cache" in out
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    rc, out, err = vcli("mount", src, mnt, "--no-trace", "--cache", "direct", "--writeback-cache")
    assert rc == 2 and "--writeback-cache needs --cache page" in err and len(err.strip().splitlines()) == 1
