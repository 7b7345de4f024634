"""Invariant guarded: a vnodefs mount is a faithful window onto the host directory (bytes read and
written through it equal the host file's, POSIX namespace operations behave as on the host, shared
mmap writes reach the host file in page mode), and its trace is an exact record of what reached it
(this process's pid, the exact offsets and lengths it read in direct mode, pid-0 kernel requests
kept, the latency model's delay paid by the requester and recorded)."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import signal
import stat
import time

import numpy as np
import pytest

from vnodefs.mount import find_mount, read_state
from vnodefs.trace import OPS, load

pytestmark = pytest.mark.fuse


def _fill(path, n, seed):
    data = random.Random(seed).randbytes(n)
    with open(path, "wb") as fh:
        fh.write(data)
    return data


@pytest.mark.parametrize("cache", ["page", "direct"])
def test_random_reads_and_writes_equal_host(vmount, cache):
    m = vmount(cache=cache)
    rng = random.Random(42)
    files = {}
    for i in range(12):
        size = rng.choice([0, 1, 4095, 4096, 70_000, 1 << 20, 3 * (1 << 20) + 17])
        files[f"f{i}"] = bytearray(_fill(os.path.join(m.src, f"f{i}"), size, i))
    os.mkdir(os.path.join(m.mountpoint, "sub"))
    files["sub/new"] = bytearray()
    open(os.path.join(m.mountpoint, "sub/new"), "wb").close()
    for _ in range(300):
        name = rng.choice(sorted(files))
        data = files[name]
        p = os.path.join(m.mountpoint, name)
        fd = os.open(p, os.O_RDWR)
        try:
            off = rng.randrange(0, len(data) + 5000)
            n = rng.choice([1, 100, 4096, 5000, 65536, 300_000, 1 << 20, 1_500_000])
            if rng.random() < 0.5:
                got = os.pread(fd, n, off)
                assert got == bytes(data[off:off + n]), (name, off, n)
            else:
                buf = rng.randbytes(min(n, 200_000))
                assert os.pwrite(fd, buf, off) == len(buf)
                if off > len(data):
                    data.extend(b"\0" * (off - len(data)))
                data[off:off + len(buf)] = buf
        finally:
            os.close(fd)
    for name, data in files.items():
        with open(os.path.join(m.src, name), "rb") as fh:
            assert fh.read() == bytes(data), name
        with open(os.path.join(m.mountpoint, name), "rb") as fh:
            assert hashlib.sha1(fh.read()).digest() == hashlib.sha1(bytes(data)).digest()


def test_shared_mmap_read_and_write_reach_host_in_page_mode(vmount):
    m = vmount(cache="page")
    data = _fill(os.path.join(m.src, "map.bin"), 64 * 4096 + 100, 7)
    fd = os.open(os.path.join(m.mountpoint, "map.bin"), os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 0, mmap.MAP_SHARED)
        assert mm[:] == data
        mm[4096:4096 + 11] = b"hello world"
        mm[-5:] = b"TAIL!"
        mm.flush()  # msync(MS_SYNC)
        mm[10 * 4096] = 0x41
        mm.close()  # munmap: dirty page still in the page cache
    finally:
        os.close(fd)
    fd = os.open(os.path.join(m.mountpoint, "map.bin"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    m.umount()  # unmount writes back everything
    host = open(os.path.join(m.src, "map.bin"), "rb").read()
    want = bytearray(data)
    want[4096:4096 + 11] = b"hello world"
    want[-5:] = b"TAIL!"
    want[10 * 4096] = 0x41
    assert host == bytes(want)
    # the writeback came from the kernel (pid 0) and is in the trace, labelled, not dropped
    tr = load(m.trace_path)
    w = tr.records[tr.records["op"] == OPS["write"]]
    assert w.size >= 1 and (w["pid"] == 0).any()


def test_shared_mmap_in_direct_mode_is_refused_with_enodev(vmount):
    m = vmount(cache="direct")
    data = _fill(os.path.join(m.src, "d.bin"), 3 * 4096, 3)
    fd = os.open(os.path.join(m.mountpoint, "d.bin"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as ei:
            mmap.mmap(fd, 0, mmap.MAP_SHARED)
        assert ei.value.errno == errno.ENODEV
        assert m.info and read_state(m.mountpoint)["cache"] == "direct"
        priv = mmap.mmap(fd, 0, mmap.MAP_PRIVATE, mmap.PROT_READ)  # private mappings still work
        assert priv[:] == data
        priv.close()
    finally:
        os.close(fd)


def test_namespace_semantics(vmount):
    m = vmount(cache="page", xattr=True)
    M, S = m.mountpoint, m.src
    j = os.path.join
    with open(j(M, "a"), "wb") as fh:
        fh.write(b"0123456789")
    # rename (also over an existing file), and RENAME_NOREPLACE-like refusal of directories
    with open(j(M, "b"), "wb") as fh:
        fh.write(b"old")
    os.rename(j(M, "a"), j(M, "b"))
    assert not os.path.exists(j(S, "a")) and open(j(S, "b"), "rb").read() == b"0123456789"
    os.mkdir(j(M, "d"))
    os.rename(j(M, "b"), j(M, "d", "b2"))
    assert os.listdir(j(S, "d")) == ["b2"]
    # hard link: same inode, shared content, link count 2
    os.link(j(M, "d", "b2"), j(M, "h"))
    st1, st2 = os.stat(j(M, "d", "b2")), os.stat(j(M, "h"))
    assert st1.st_ino == st2.st_ino == os.stat(j(S, "h")).st_ino and st2.st_nlink == 2
    with open(j(M, "h"), "r+b") as fh:
        fh.write(b"X")
    assert open(j(M, "d", "b2"), "rb").read() == b"X123456789"
    # symlink: readlink, follow, lstat
    os.symlink("d/b2", j(M, "s"))
    assert os.readlink(j(M, "s")) == "d/b2" == os.readlink(j(S, "s"))
    assert stat.S_ISLNK(os.lstat(j(M, "s")).st_mode)
    assert open(j(M, "s"), "rb").read() == b"X123456789"
    # truncate: shorter, longer (zeros), through an open fd
    os.truncate(j(M, "h"), 4)
    assert open(j(S, "h"), "rb").read() == b"X123"
    os.truncate(j(M, "h"), 8)
    assert open(j(M, "h"), "rb").read() == b"X123\0\0\0\0"
    with open(j(M, "h"), "r+b") as fh:
        os.ftruncate(fh.fileno(), 2)
    assert os.path.getsize(j(S, "h")) == 2
    # chmod
    os.chmod(j(M, "h"), 0o640)
    assert stat.S_IMODE(os.stat(j(S, "h")).st_mode) == 0o640 == stat.S_IMODE(os.stat(j(M, "h")).st_mode)
    # utime, with ns precision
    os.utime(j(M, "h"), ns=(1_000_000_123, 2_000_000_456))
    assert os.stat(j(S, "h")).st_mtime_ns == 2_000_000_456
    # unlink / rmdir / errors as on the host
    os.unlink(j(M, "s"))
    assert not os.path.lexists(j(S, "s"))
    with pytest.raises(FileNotFoundError):
        os.stat(j(M, "nope"))
    with pytest.raises(OSError) as ei:
        os.rmdir(j(M, "d"))
    assert ei.value.errno == errno.ENOTEMPTY
    os.unlink(j(M, "d", "b2"))
    os.rmdir(j(M, "d"))
    with pytest.raises(FileExistsError):
        os.mkdir(j(M, "h"))
    # unlink right after close works every time (hard_remove, no .fuse_hidden files)
    for i in range(50):
        with open(j(M, f"tmp{i}"), "wb") as fh:
            fh.write(b"x")
        os.unlink(j(M, f"tmp{i}"))
    assert sorted(os.listdir(M)) == sorted(os.listdir(S)) == ["h"]
    # xattrs (served with --xattr)
    os.setxattr(j(M, "h"), "user.vnodefs", b"v1")
    assert os.getxattr(j(S, "h"), "user.vnodefs") == b"v1"
    assert "user.vnodefs" in os.listxattr(j(M, "h"))
    # statfs
    assert os.statvfs(M).f_blocks == os.statvfs(S).f_blocks


def test_direct_mode_trace_holds_exact_offsets_lengths_and_pid(vmount):
    m = vmount(cache="direct")
    _fill(os.path.join(m.src, "x.bin"), 3 << 20, 11)
    rng = random.Random(5)
    want = []
    fd = os.open(os.path.join(m.mountpoint, "x.bin"), os.O_RDONLY)
    try:
        for _ in range(40):
            off, n = rng.randrange(0, 3 << 20), rng.choice([1, 777, 4096, 10_000, 131072])
            got = os.pread(fd, n, off)
            want.append((off, n, len(got)))
    finally:
        os.close(fd)
    m.umount()
    tr = load(m.trace_path)
    assert tr.header["cache_mode"] == "direct"
    fid = {v: k for k, v in tr.files.items()}["x.bin"]
    reads = tr.records[(tr.records["op"] == OPS["read"]) & (tr.records["file"] == fid)]
    assert [(int(r["offset"]), int(r["length"]), int(r["result"])) for r in reads] == want
    assert set(reads["pid"].tolist()) == {os.getpid()}
    assert set(reads["uid"].tolist()) == {os.getuid()}
    assert (reads["dur_ns"] > 0).all()
    opens = tr.records[tr.records["op"] == OPS["open"]]
    assert os.getpid() in opens["pid"].tolist()
    # release comes from the kernel: recorded with pid 0, not dropped
    assert 0 in tr.records[tr.records["op"] == OPS["release"]]["pid"].tolist()


def test_latency_model_slows_the_requester_by_the_expected_amount(vmount):
    m = vmount(cache="direct", latency="50000:100")  # 50 ms seek, 100 MB/s
    _fill(os.path.join(m.src, "l.bin"), 2 << 20, 1)
    fd = os.open(os.path.join(m.mountpoint, "l.bin"), os.O_RDONLY)
    try:
        t0 = time.monotonic()
        os.pread(fd, 4096, 0)  # seek + 4096 B: ~50.04 ms
        t1 = time.monotonic()
        os.pread(fd, 1 << 20, 4096)  # sequential, 1 MiB at 100 MB/s: ~10.5 ms, no seek
        t2 = time.monotonic()
    finally:
        os.close(fd)
    assert 0.045 <= t1 - t0 < 1.0
    assert 0.009 <= t2 - t1 < 0.045
    m.umount()
    tr = load(m.trace_path)
    lat = tr.header["latency"]
    assert (lat["model"], lat["kind"], lat["seek_us"], lat["mbps"]) == ("flat", "flat", 50000.0, 100.0)
    assert tr.header["device"] == lat and tr.header["layout"]["kind"] in ("fiemap", "synthetic")
    r = tr.records[tr.records["op"] == OPS["read"]]
    # the first read seeks; the 1 MiB read may arrive split (the kernel splits unaligned user
    # buffers at max_pages), but the pieces continue each other: transfer time only, no seek
    assert int(r["delay_ns"][0]) == 50_000_000 + 40_960
    assert int(r["delay_ns"][1:].sum()) == 10_485_760 and (r["flags"][1:] == 0).all()
    assert int(r["result"][1:].sum()) == 1 << 20
    assert (r["dur_ns"] >= r["delay_ns"]).all()


def test_latency_blocks_only_the_requesting_process(vmount):
    m = vmount(cache="direct", latency="300000:1000")  # 300 ms per seek
    _fill(os.path.join(m.src, "slow"), 8192, 1)
    _fill(os.path.join(m.src, "other"), 8192, 2)
    pid = os.fork()
    if pid == 0:  # child: a slow seek
        try:
            fd = os.open(os.path.join(m.mountpoint, "slow"), os.O_RDONLY)
            os.pread(fd, 4096, 0)
            os.close(fd)
        finally:
            os._exit(0)
    time.sleep(0.05)
    t0 = time.monotonic()
    with open(os.path.join(m.src, "other"), "rb"):
        pass
    os.stat(os.path.join(m.mountpoint, "other"))  # metadata is not delayed, nor blocked by the child
    assert time.monotonic() - t0 < 0.2
    os.waitpid(pid, 0)


def test_sigkilled_daemon_is_cleaned_up_by_umount(vmount, vcli):
    m = vmount(cache="page")
    _fill(os.path.join(m.src, "k"), 10_000, 1)
    assert open(os.path.join(m.mountpoint, "k"), "rb").read(10) == open(os.path.join(m.src, "k"), "rb").read(10)
    time.sleep(0.7)  # let the periodic flusher write what it has
    os.kill(m.pid, signal.SIGKILL)
    m.proc.wait()
    with pytest.raises(OSError) as ei:
        os.listdir(m.mountpoint)
    assert ei.value.errno == errno.ENOTCONN  # a dead mount
    rc, out, err = vcli("umount", m.mountpoint)
    assert rc == 0, err
    assert find_mount(m.mountpoint) is None
    assert os.listdir(m.mountpoint) == []
    assert read_state(m.mountpoint) is None
    # the killed daemon's trace still loads, with its paths
    tr = load(m.trace_path)
    assert "k" in tr.files.values()


def test_sigterm_flushes_the_trace_and_unmounts(vmount):
    m = vmount(cache="direct")
    _fill(os.path.join(m.src, "t"), 100_000, 1)
    fd = os.open(os.path.join(m.mountpoint, "t"), os.O_RDONLY)
    for i in range(25):
        os.pread(fd, 100, i * 1000)
    os.close(fd)
    os.kill(m.pid, signal.SIGTERM)
    m.proc.wait(timeout=20)
    assert find_mount(m.mountpoint) is None
    tr = load(m.trace_path)
    assert (tr.records["op"] == OPS["read"]).sum() == 25


def test_header_states_mount_facts(vmount):
    m = vmount(cache="page", latency="ssd")
    m.umount()
    h = load(m.trace_path).header
    assert h["cache_mode"] == "page" and h["latency"]["model"] == "ssd"
    assert h["max_read"] == h["max_write"] == 1 << 20
    assert h["page_size"] == os.sysconf("SC_PAGE_SIZE")
    assert h["writeback_cache"] is False and h["passthrough"] is False
    assert os.path.realpath(h["source"]) == os.path.realpath(m.src)
    assert isinstance(h["readahead_kb"], int) and h["readahead_kb"] > 0
    if os.geteuid() == 0:
        assert h["readahead_kb"] == 1024


def test_page_mode_sequential_reads_arrive_in_large_requests(vmount):
    m = vmount(cache="page")
    _fill(os.path.join(m.src, "big"), 8 << 20, 3)
    with open(os.path.join(m.mountpoint, "big"), "rb") as fh:
        while fh.read(1 << 16):
            pass
    m.umount()
    tr = load(m.trace_path)
    r = tr.records[tr.records["op"] == OPS["read"]]
    assert r["result"].sum() == 8 << 20
    if tr.header["readahead_kb"] == 1024:
        assert np.max(r["length"]) == 1 << 20


def test_concurrent_requesters_queue_on_one_device(vmount):
    """Two processes reading two files at once under a 200 ms seek: one disk serves them one after
    the other, so the pair takes two seeks, and the trace records the queueing in delay_ns."""
    m = vmount(cache="direct", latency="200000:1000")
    _fill(os.path.join(m.src, "a"), 8192, 1)
    _fill(os.path.join(m.src, "b"), 8192, 2)
    t0 = time.monotonic()
    pids = []
    for name in ("a", "b"):
        pid = os.fork()
        if pid == 0:
            try:
                fd = os.open(os.path.join(m.mountpoint, name), os.O_RDONLY)
                os.pread(fd, 4096, 0)
                os.close(fd)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.39, f"two seeks on one device took {elapsed:.3f} s"
    m.umount()
    r = load(m.trace_path).records
    r = r[r["op"] == OPS["read"]]
    assert len(r) == 2
    assert sorted(int(d) // 100_000_000 for d in r["delay_ns"]) == [2, 3]  # 200 ms, then ~400 ms
