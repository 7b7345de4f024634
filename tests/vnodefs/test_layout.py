"""Invariant guarded: device addresses come from the host file's real extents (FIEMAP) where the
file system has them, from the documented synthetic layout where it does not; holes cost no I/O;
a file that grows or is rewritten is mapped again; prefetch playlists come out sorted by device
address; and through a real mount the trace's device addresses are the FIEMAP mapping."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import vnodefs.layout as layout_mod
from vnodefs.layout import ALIGN, Layout, LayoutError, choose, fiemap, probe_fiemap
from vnodefs.prefetch import order_by_device
from vnodefs.trace import FLAG_ADDR_ESTIMATED, OPS, load

MIB = 1 << 20


def _fiemap_dir(tmp_path):
    """A directory on a file system with FIEMAP (tmp_path, else the checkout's own tree)."""
    for d in (tmp_path, os.path.dirname(__file__)):
        probe = os.path.join(d, ".fiemap-probe")
        with open(probe, "wb") as fh:
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            fd = os.open(probe, os.O_RDONLY)
            try:
                fiemap(fd)
                return d
            except OSError:
                continue
            finally:
                os.close(fd)
        finally:
            os.unlink(probe)
    pytest.skip("no FIEMAP-capable file system under the test directory or the checkout")


def _write_pattern(path):
    """1 MiB of data, a 1 MiB hole, 1 MiB of data; written back so it has real extents."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, b"a" * MIB, 0)
    os.pwrite(fd, b"b" * MIB, 2 * MIB)
    os.fsync(fd)
    return fd


def test_fiemap_extents_of_a_known_pattern(tmp_path):
    d = _fiemap_dir(tmp_path)
    path = os.path.join(d, f"pattern-{os.getpid()}")
    fd = _write_pattern(path)
    try:
        ext = fiemap(fd)
        covered = [(lo, ln) for lo, _ph, ln, _fl in ext]
        # the hole [1 MiB, 2 MiB) is in no extent; both data ranges are covered exactly
        assert sum(ln for _lo, ln in covered) == 2 * MIB
        assert all(not (lo < 2 * MIB and lo + ln > MIB) for lo, ln in covered)
        lay = Layout(d, "fiemap")
        assert lay.segments(fd, MIB + 100, 4096) == ([], False)  # a hole costs no I/O
        assert lay.segments(fd, 3 * MIB, 4096) == ([], False)  # past EOF: nothing either
        segs, est = lay.segments(fd, MIB - 4096, 2 * MIB)  # data, hole, data: two device pieces
        assert not est and sum(n for _a, n in segs) == MIB and len(segs) == 2
        lo0, ph0 = ext[0][0], ext[0][1]
        assert lay.address(fd, 4096) == ph0 + 4096 - lo0
        pieces = lay.pieces(fd, 0, 3 * MIB)
        assert [(o, n) for o, _a, n in pieces] == [(0, MIB), (2 * MIB, MIB)] or len(pieces) > 2
    finally:
        os.close(fd)
        os.unlink(path)


def test_growing_and_rewritten_files_are_mapped_again(tmp_path):
    d = _fiemap_dir(tmp_path)
    path = os.path.join(d, f"grow-{os.getpid()}")
    fd = _write_pattern(path)
    try:
        lay = Layout(d, "fiemap")
        assert lay.segments(fd, 4 * MIB, 4096)[0] == []  # past EOF
        os.pwrite(fd, b"c" * MIB, 4 * MIB)  # grows: size and mtime change
        segs, _est = lay.segments(fd, 4 * MIB, 4096)
        ext = fiemap(fd)
        want = [ph + 4 * MIB - lo for lo, ph, ln, _f in ext if lo <= 4 * MIB < lo + ln]
        assert segs and segs[0][0] == want[0]  # read back: flushed, the real address
        os.ftruncate(fd, 0)  # rewritten from scratch
        os.pwrite(fd, b"d" * 8192, 0)
        os.fsync(fd)
        ext = fiemap(fd)
        assert lay.address(fd, 0) == ext[0][1]
        assert lay.refreshes >= 3
    finally:
        os.close(fd)
        os.unlink(path)


def test_without_fiemap_the_synthetic_layout_is_used(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"a": 5000, "b": 100, "c": 3 * 4096}
    for name, n in sizes.items():
        (src / name).write_bytes(b"z" * n)

    def no_fiemap(fd, sync=False):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(layout_mod, "fiemap", no_fiemap)
    assert probe_fiemap(str(src)) is False
    assert choose(str(src), "auto").kind == "synthetic"
    with pytest.raises(LayoutError) as ei:
        choose(str(src), "fiemap")
    assert "FIEMAP" in str(ei.value) and "\n" not in str(ei.value)
    lay = choose(str(src))
    # files end to end in inode order from address 0, each slot 4 KiB aligned
    by_ino = sorted(sizes, key=lambda n: os.stat(src / n).st_ino)
    addr = 0
    for name in by_ino:
        fd = os.open(src / name, os.O_RDONLY)
        try:
            segs, est = lay.segments(fd, 0, sizes[name])
            assert est and segs == [(addr, sizes[name])]
        finally:
            os.close(fd)
        addr += -(-sizes[name] // ALIGN) * ALIGN
    assert lay.describe()["kind"] == "synthetic"
    # a FIEMAP layout whose ioctl fails for a file falls back to the synthetic placement, marked
    fl = Layout(str(src), "fiemap")
    fd = os.open(src / "a", os.O_RDONLY)
    try:
        segs, est = fl.segments(fd, 0, 100)
        assert est and segs and fl.fallback_files == 1
    finally:
        os.close(fd)


def test_playlist_comes_out_sorted_by_device_address(tmp_path):
    d = _fiemap_dir(tmp_path)
    src = os.path.join(d, f"pl-{os.getpid()}")
    os.mkdir(src)
    try:
        names = [f"f{i:02d}" for i in range(30)]
        for i, n in enumerate(reversed(names)):  # created in reverse name order
            with open(os.path.join(src, n), "wb") as fh:
                fh.write(bytes([i]) * (4096 * (1 + i % 3)))
                fh.flush()
                os.fsync(fh.fileno())
        extents = [(n, 0, 4096 * 3) for n in names]  # the profile's order: by name
        lay = choose(src)
        out, info = order_by_device(extents, src, lay)
        addrs = []
        for path, off, ln in out:
            fd = os.open(os.path.join(src, path), os.O_RDONLY)
            try:
                addrs.append(lay.address(fd, off))
            finally:
                os.close(fd)
        assert addrs == sorted(addrs) and None not in addrs
        assert info["order"] == "device" and info["bytes"] == sum(os.path.getsize(os.path.join(src, n))
                                                                   for n in names)
        assert sorted(p for p, _o, _l in out) == sorted(names)  # every file, holes/EOF clipped
    finally:
        for n in os.listdir(src):
            os.unlink(os.path.join(src, n))
        os.rmdir(src)


@pytest.mark.fuse
def test_trace_device_addresses_are_the_fiemap_mapping(vmount, tmp_path):
    _fiemap_dir(tmp_path)
    m = vmount(cache="direct", latency="nvme")
    path = os.path.join(m.src, "p.bin")
    os.close(_write_pattern(path))
    fd = os.open(os.path.join(m.mountpoint, "p.bin"), os.O_RDONLY)
    offsets = [0, 8192, MIB + 4096, 2 * MIB + 12288, 3 * MIB - 4096]
    try:
        for off in offsets:
            os.pread(fd, 4096, off)
    finally:
        os.close(fd)
    m.umount()
    tr = load(m.trace_path)
    assert tr.header["layout"]["kind"] == "fiemap" and tr.header["device"]["model"] == "nvme"
    r = tr.records[tr.records["op"] == OPS["read"]]
    hfd = os.open(path, os.O_RDONLY)
    try:
        ext = fiemap(hfd)
    finally:
        os.close(hfd)

    def mapped(off):
        for lo, ph, ln, _f in ext:
            if lo <= off < lo + ln:
                return ph + off - lo
        return -1  # a hole: no device I/O

    got = {int(o): int(a) for o, a in zip(r["offset"], r["dev_addr"])}
    for off in offsets:
        assert got[off] == mapped(off), off
    hole = r[r["offset"] == MIB + 4096]
    assert int(hole["delay_ns"][0]) == 0 and int(hole["dev_segments"][0]) == 0
    data = r[r["dev_addr"] >= 0]
    assert (data["flags"] & FLAG_ADDR_ESTIMATED == 0).all()
    assert (data["seek_ns"] == 20_000).all()  # nvme access latency on every request


@pytest.mark.fuse
def test_hdd_through_a_mount_random_sequential_and_distance(vmount):
    """A 1 GiB file that spans a 1 GiB modelled drive (synthetic layout): random 4 KiB reads give
    HDD-like IOPS; two small files next to each other cost less to alternate between than two at
    opposite ends of the drive."""
    m = vmount(cache="direct", latency="hdd,capacity=1GiB", layout="synthetic")
    src = m.src
    with open(os.path.join(src, "a"), "wb") as fh:  # inode order: a, b, big, z
        fh.write(b"a" * 8192)
    with open(os.path.join(src, "b"), "wb") as fh:
        fh.write(b"b" * 8192)
    with open(os.path.join(src, "big"), "wb") as fh:
        fh.truncate(1000 * MIB)  # sparse on the host; synthetic layout allocates every byte
    with open(os.path.join(src, "z"), "wb") as fh:
        fh.write(b"z" * 8192)
    inos = [os.stat(os.path.join(src, n)).st_ino for n in ("a", "b", "big", "z")]
    if inos != sorted(inos):
        pytest.skip("the host file system did not hand out increasing inode numbers")
    import time

    fd = os.open(os.path.join(m.mountpoint, "big"), os.O_RDONLY)
    rng = np.random.default_rng(3)
    n = 40
    try:
        t0 = time.monotonic()
        for page in rng.integers(0, 1000 * MIB // 4096, n):
            os.pread(fd, 4096, int(page) * 4096)
        iops = n / (time.monotonic() - t0)
    finally:
        os.close(fd)
    assert 55 <= iops <= 110, iops  # 8.5 ms average seek + 4.17 ms rotation: ~79 IOPS

    def alternate(x, y, rounds=8):
        fx = os.open(os.path.join(m.mountpoint, x), os.O_RDONLY)
        fy = os.open(os.path.join(m.mountpoint, y), os.O_RDONLY)
        try:
            t = time.monotonic()
            for i in range(rounds):
                os.pread(fx, 4096, (i % 2) * 4096)
                os.pread(fy, 4096, (i % 2) * 4096)
            return time.monotonic() - t
        finally:
            os.close(fx)
            os.close(fy)

    near, far = alternate("a", "b"), alternate("a", "z")
    assert far > near * 1.5, (near, far)


@pytest.mark.fuse
def test_hdd_sequential_reads_reach_the_media_rate(vmount, tmp_path):
    """1 MiB sequential reads (page-aligned buffer, direct mode) stream within 10% of the modelled
    media rate at the file's place on the device: no seek or rotation between them, and the
    drive's read-ahead covers the gaps between the program's requests."""
    import mmap
    import time

    from vnodefs.latency import HDDService, parse_latency

    _fiemap_dir(tmp_path)
    m = vmount(cache="direct", latency="hdd", trace=False)
    path = os.path.join(m.src, "s.bin")
    with open(path, "wb") as fh:
        for _ in range(32):
            fh.write(os.urandom(MIB))
        fh.flush()
        os.fsync(fh.fileno())
    lay = choose(m.src)
    hfd = os.open(path, os.O_RDONLY)
    try:
        base = lay.address(hfd, 0)
    finally:
        os.close(hfd)
    rate = HDDService(parse_latency("hdd"), lay.span).rate_mbps(base)
    buf = mmap.mmap(-1, MIB)
    fd = os.open(os.path.join(m.mountpoint, "s.bin"), os.O_RDONLY)
    try:
        os.preadv(fd, [buf], 0)  # the first request seeks; time the stream after it
        t, n = time.monotonic(), MIB
        while True:
            k = os.preadv(fd, [buf], n)
            if not k:
                break
            n += k
        got = (n - MIB) / (time.monotonic() - t) / 1e6
    finally:
        os.close(fd)
    assert got == pytest.approx(rate, rel=0.10), (got, rate)


@pytest.mark.fuse
def test_a_file_system_without_fiemap_mounts_with_the_synthetic_layout(tmp_path, vcli):
    """tmpfs has no FIEMAP: `--layout fiemap` is refused in one line; auto falls back to the
    synthetic layout, and the trace header and the summary say so."""
    shm = "/dev/shm"
    if not os.path.isdir(shm) or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) on this machine")
    import tempfile

    src = tempfile.mkdtemp(prefix="vnodefs-nofiemap-", dir=shm)
    try:
        with open(os.path.join(src, "a"), "wb") as fh:
            fh.write(b"a" * 20000)
        if probe_fiemap(src) is not False:
            pytest.skip("/dev/shm supports FIEMAP here")
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        rc, _out, err = vcli("mount", src, mnt, "--latency", "hdd", "--layout", "fiemap", "--no-trace")
        assert rc == 2 and "does not support FIEMAP" in err and len(err.strip().splitlines()) == 1
        tr = tmp_path / "t.vtrace"
        rc, _out, err = vcli("run", src, "--latency", "hdd", "--cache", "direct", "--trace", tr, "--",
                             "cat", "{mnt}/a")
        assert rc == 0, err
        assert "layout synthetic" in err
        t = load(tr)
        assert t.header["layout"]["kind"] == "synthetic"
        r = t.records[t.records["op"] == OPS["read"]]
        data = r[r["dev_addr"] >= 0]
        assert data.size and (data["flags"] & FLAG_ADDR_ESTIMATED).all()
    finally:
        for n in os.listdir(src):
            os.unlink(os.path.join(src, n))
        os.rmdir(src)
