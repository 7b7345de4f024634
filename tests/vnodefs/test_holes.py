"""Invariant guarded: sparse files look the same through a vnodefs mount as on the host directory.

Every fallocate(2) mode the kernel passes to a FUSE file system (KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE,
plain allocation) reaches the host file and gives the host's answer, size, block count and bytes;
lseek SEEK_DATA / SEEK_HOLE give the host's offsets (ENXIO past the data); copy_file_range copies
the right bytes. Each is checked against the same calls on a twin file in the host directory, in
both cache modes. The trace records every fallocate with its mode in `flags` and every
copy_file_range as a read of the source and a write of the destination (FLAG_COPY).

COLLAPSE_RANGE and INSERT_RANGE: Linux's FUSE module (fs/fuse/file.c, fuse_file_fallocate) refuses
them itself with EOPNOTSUPP before any request is sent, so no FUSE file system can serve them
through the kernel; the daemon's forwarding of them is checked in-process on a real host file, and
through the mount the test checks that the refusal came from the kernel (no request reached
vnodefs) or, on a kernel that sends them, that the host's answer came back.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import types

import pytest

from vnodefs.fuseops import (FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE, FALLOC_FL_KEEP_SIZE,
                             FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, FsConfig, Passthrough)
from vnodefs.trace import FLAG_COPY, OPS, TraceWriter, load

pytestmark = pytest.mark.fuse

KiB, MiB = 1 << 10, 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def fallocate(fd, mode, offset, length):
    """0, or the errno fallocate(2) failed with."""
    return 0 if _libc.fallocate(fd, mode, offset, length) == 0 else ctypes.get_errno()


def seek(fd, offset, whence):
    """lseek's answer, or -errno."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as e:
        return -e.errno


def sparse_map(fd, size):
    """Every SEEK_DATA / SEEK_HOLE answer from a grid of offsets (4 KiB steps, and past EOF)."""
    return [(off, seek(fd, off, os.SEEK_DATA), seek(fd, off, os.SEEK_HOLE))
            for off in list(range(0, size + 8 * KiB, 4 * KiB)) + [size + MiB]]


def state(path, fd):
    """(size, blocks, sha256 of the bytes, sparse map) of the open file `fd` at `path`."""
    st = os.fstat(fd)
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return st.st_size, st.st_blocks, digest, sparse_map(fd, st.st_size)


def make_sparse(path):
    """Data at 0..64K, a 1 MiB hole, 4 KiB of data, a hole to 2 MiB + 12 KiB of data."""
    rng = random.Random(11)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, rng.randbytes(64 * KiB), 0)
    os.pwrite(fd, rng.randbytes(4 * KiB), 64 * KiB + MiB)
    os.pwrite(fd, rng.randbytes(12 * KiB), 2 * MiB)
    os.fsync(fd)
    return fd


SEQUENCE = [  # (mode, offset, length): applied to the mount file and to its host twin
    (FALLOC_FL_KEEP_SIZE, 2 * MiB + 12 * KiB, 256 * KiB),  # preallocate past EOF: size unchanged
    (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 16 * KiB, 32 * KiB),  # a hole inside the data
    (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * MiB + 2 * KiB, 1 * KiB),  # partial block: zeroed
    (FALLOC_FL_PUNCH_HOLE, 0, 4 * KiB),  # PUNCH_HOLE without KEEP_SIZE: EOPNOTSUPP on the host
    (FALLOC_FL_ZERO_RANGE, 64 * KiB + MiB, 4 * KiB),  # data turned to zeros
    (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 2 * MiB + 8 * KiB, 64 * KiB),  # past EOF, size kept
    (FALLOC_FL_ZERO_RANGE, 2 * MiB + 8 * KiB, 64 * KiB),  # the same, growing the file
    (0, 3 * MiB, 128 * KiB),  # plain allocation: grows the file
    (0, 0, 0),  # a zero length: EINVAL on the host
    (FALLOC_FL_KEEP_SIZE, -4096, 4096),  # a negative offset: EINVAL
    (FALLOC_FL_KEEP_SIZE, 17 << 40, 4096),  # past ext4's largest file: the host's EFBIG
]
#: refused by the kernel's VFS before any file system sees them (so never reach vnodefs)
NOT_SENT = {(FALLOC_FL_PUNCH_HOLE, 0, 4 * KiB), (0, 0, 0), (FALLOC_FL_KEEP_SIZE, -4096, 4096)}


@pytest.mark.parametrize("cache", ["page", "direct"])
def test_fallocate_modes_and_seek_data_hole_match_host(vmount, tmp_path, cache):
    m = vmount(cache=cache)
    host_path = str(tmp_path / "host-twin")
    mnt_path = os.path.join(m.mountpoint, "f")
    make_sparse(os.path.join(m.src, "f"))
    hfd = make_sparse(host_path)
    mfd = os.open(mnt_path, os.O_RDWR)
    try:
        assert state(mnt_path, mfd) == state(host_path, hfd)
        # the issue's own example: a 1 MiB hole, then 4 KiB of data
        for fd in (hfd, mfd):
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"d" * 4096, MiB)
        assert seek(mfd, 0, os.SEEK_DATA) == seek(hfd, 0, os.SEEK_DATA) == MiB
        assert seek(mfd, 0, os.SEEK_HOLE) == seek(hfd, 0, os.SEEK_HOLE) == 0
        os.close(mfd)
        os.close(hfd)
        make_sparse(os.path.join(m.src, "f"))
        hfd = make_sparse(host_path)
        mfd = os.open(mnt_path, os.O_RDWR)
        for mode, off, ln in SEQUENCE:
            want = fallocate(hfd, mode, off, ln)
            got = fallocate(mfd, mode, off, ln)
            assert got == want, (mode, off, ln, os.strerror(got), os.strerror(want))
            assert state(mnt_path, mfd) == state(host_path, hfd), (mode, off, ln)
        assert fallocate(mfd, FALLOC_FL_KEEP_SIZE, 0, 4096) == 0  # the mount really took the calls
    finally:
        os.close(mfd)
        os.close(hfd)
    m.umount()
    tr = load(m.trace_path)
    fa = tr.records[tr.records["op"] == OPS["fallocate"]]
    sent = [call for call in SEQUENCE if call not in NOT_SENT]
    recorded = [(int(r["flags"]), int(r["offset"]), int(r["length"])) for r in fa]
    for call in sent:
        assert call in recorded, f"fallocate{call} did not reach vnodefs: {recorded}"
    big = [r for r in fa if int(r["offset"]) == 17 << 40]
    if os.statvfs(m.src).f_bsize == 4096 and fallocate_errno_is_host(m.src):
        assert len(big) == 1 and int(big[0]["result"]) == -errno.EFBIG  # the host's errno, recorded


def fallocate_errno_is_host(src):
    """Whether fallocate past 16 TiB fails on the host itself (ext4 with 4 KiB blocks)."""
    fd = os.open(os.path.join(src, ".probe"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        return fallocate(fd, FALLOC_FL_KEEP_SIZE, 17 << 40, 4096) == errno.EFBIG
    finally:
        os.close(fd)
        os.unlink(os.path.join(src, ".probe"))


def _fake_fh(fd):
    return types.SimpleNamespace(fh=fd)


def test_collapse_and_insert_range_are_forwarded_with_host_errno(tmp_path):
    """The daemon's own fallocate on a real host file: COLLAPSE_RANGE / INSERT_RANGE give the
    host's result; misaligned ranges give the host's EINVAL."""
    src = tmp_path / "src"
    src.mkdir()
    ops = Passthrough(FsConfig(source=str(src)), TraceWriter(None))
    a, b = str(src / "a"), str(tmp_path / "b")
    fda, fdb = make_sparse(a), make_sparse(b)
    try:
        for mode, off, ln in [(FALLOC_FL_COLLAPSE_RANGE, 16 * KiB, 32 * KiB),
                              (FALLOC_FL_INSERT_RANGE, 0, 64 * KiB),
                              (FALLOC_FL_COLLAPSE_RANGE, 1000, 4096),  # misaligned: EINVAL
                              (FALLOC_FL_INSERT_RANGE, 64 * MiB, 4096)]:  # past EOF: EINVAL
            want = fallocate(fdb, mode, off, ln)
            try:
                ops.fallocate("/a", mode, off, ln, _fake_fh(fda))
                got = 0
            except OSError as e:
                got = e.errno
            assert got == want, (mode, off, ln)
            assert state(a, fda) == state(b, fdb)
    finally:
        os.close(fda)
        os.close(fdb)


@pytest.mark.parametrize("mode", [FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_INSERT_RANGE])
def test_collapse_insert_through_mount_refused_by_kernel_or_forwarded(vmount, tmp_path, mode):
    m = vmount(cache="page")
    fd = make_sparse(os.path.join(m.mountpoint, "f"))
    hfd = make_sparse(str(tmp_path / "twin"))
    try:
        got = fallocate(fd, mode, 0, 64 * KiB)
        want = fallocate(hfd, mode, 0, 64 * KiB)
        assert want == 0
    finally:
        os.close(fd)
        os.close(hfd)
    m.umount()
    tr = load(m.trace_path)
    reached = [r for r in tr.records if r["op"] == OPS["fallocate"] and int(r["flags"]) == mode]
    if got == errno.EOPNOTSUPP:
        assert not reached, "vnodefs answered EOPNOTSUPP itself"
    else:
        assert got == want and reached


@pytest.mark.parametrize("cache", ["page", "direct"])
def test_copy_file_range_copies_and_is_traced(vmount, cache):
    m = vmount(cache=cache)
    rng = random.Random(7)
    data = rng.randbytes(3 * MiB + 123)
    with open(os.path.join(m.src, "in"), "wb") as fh:
        fh.write(data)
    pin, pout = os.path.join(m.mountpoint, "in"), os.path.join(m.mountpoint, "out")
    fin = os.open(pin, os.O_RDONLY)
    fout = os.open(pout, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fout, b"z" * (4 * MiB), 0)
        os.pread(fout, 4 * MiB, 0)  # the destination's pages are cached before the copy
        done = 0
        while done < len(data):  # the kernel may copy less than asked: loop as cp does
            n = os.copy_file_range(fin, fout, len(data) - done, done, 1000 + done)
            assert n > 0
            done += n
        assert os.copy_file_range(fin, fout, 4096, len(data), 0) == 0  # at EOF: nothing copied
        want = b"z" * 1000 + data + b"z" * (4 * MiB - 1000 - len(data))
        assert os.pread(fout, 4 * MiB + 10, 0) == want  # no stale cached page
    finally:
        os.close(fin)
        os.close(fout)
    with open(os.path.join(m.src, "out"), "rb") as fh:
        assert fh.read() == want
    m.umount()
    tr = load(m.trace_path)
    r = tr.records
    copies = r[(r["flags"] & FLAG_COPY) != 0]
    reads = copies[copies["op"] == OPS["read"]]
    writes = copies[copies["op"] == OPS["write"]]
    assert len(reads) == len(writes) >= 1
    assert int(reads["result"][reads["result"] > 0].sum()) == len(data)
    assert int(reads["offset"].min()) == 0 and int(writes["offset"].min()) == 1000
    names = {tr.files[int(f)] for f in reads["file"]} | {tr.files[int(f)] for f in writes["file"]}
    assert names == {"in", "out"}
    assert (copies["pid"] == os.getpid()).all()


def test_device_model_charges_punch_as_metadata_and_copies_as_io(vmount):
    """With the hdd model a hole punch costs no device time (metadata only) and the punched range
    then needs no device I/O to read; a copy is charged as the source read and destination write."""
    m = vmount(cache="direct", latency="hdd", layout="fiemap")
    p = os.path.join(m.src, "f")
    with open(p, "wb") as fh:
        fh.write(random.Random(1).randbytes(1 * MiB))
        fh.flush()
        os.fsync(fh.fileno())
    fd = os.open(os.path.join(m.mountpoint, "f"), os.O_RDWR)
    out = os.open(os.path.join(m.mountpoint, "g"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pread(fd, 64 * KiB, 256 * KiB)  # the layout of the range is now cached
        assert fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 256 * KiB, 64 * KiB) == 0
        assert os.pread(fd, 64 * KiB, 256 * KiB) == bytes(64 * KiB)
        assert os.copy_file_range(fd, out, 128 * KiB, 0, 0) == 128 * KiB
    finally:
        os.close(fd)
        os.close(out)
    m.umount()
    r = load(m.trace_path).records
    fa = r[r["op"] == OPS["fallocate"]]
    assert len(fa) == 1 and int(fa["delay_ns"][0]) == 0 and int(fa["dev_addr"][0]) == -1
    reads = r[(r["op"] == OPS["read"]) & (r["offset"] == 256 * KiB) & ((r["flags"] & FLAG_COPY) == 0)]
    assert len(reads) == 2
    assert int(reads["dev_addr"][0]) >= 0 and int(reads["delay_ns"][0]) > 0  # before the punch: I/O
    assert int(reads["dev_addr"][1]) == -1  # after: a hole, no device I/O
    copies = r[(r["flags"] & FLAG_COPY) != 0]
    assert sorted(int(x) for x in copies["op"]) == [OPS["read"], OPS["write"]]
    assert (copies["delay_ns"] > 0).all() and (copies["dev_addr"] >= 0).all()
