"""Invariant guarded: the kernel's name and attribute caches never show a stale answer for a change
made through the mount, and a change made in SOURCE behind the mount's back shows within the
documented bound (FsConfig.metadata_timeout, 1 s), or at once with strict_metadata.

Cases a cache could make stale, each checked right after the change, in both cache modes: a name
looked up while missing and then created through the mount; rename over an existing name; unlink
of an open file (it stays readable and writable through its fd); chmod / utimens through one hard-link name and
stat through the other (tests/vnodefs/test_posix.py holds more); a file created, changed and removed
in SOURCE directly.
"""

from __future__ import annotations

import os
import time

import pytest
from cache_modes import CACHE_MODES

from vnodefs.fuseops import METADATA_TIMEOUT
from vnodefs.trace import load

pytestmark = pytest.mark.fuse


def _write(p, data):
    with open(p, "w") as fh:
        fh.write(data)


def _read(p):
    with open(p) as fh:
        return fh.read()


def _until(pred, bound):
    """Seconds until pred() held (polling every 10 ms), or None if it did not within `bound`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 <= bound:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_changes_through_the_mount_are_seen_at_once(vmount, cache):
    m = vmount(cache=cache)
    p = lambda *a: os.path.join(m.mountpoint, *a)  # noqa: E731
    assert not os.path.exists(p("new"))  # a negative entry is cached now
    _write(p("new"), "n")
    assert _read(p("new")) == "n"
    _write(p("a"), "aaa")
    _write(p("b"), "b")
    os.stat(p("b"))
    os.rename(p("a"), p("b"))  # rename over
    assert _read(p("b")) == "aaa" and os.stat(p("b")).st_size == 3 and not os.path.exists(p("a"))
    fd = os.open(p("b"), os.O_RDWR)
    try:
        os.unlink(p("b"))  # unlink while open
        assert not os.path.exists(p("b"))
        assert os.pread(fd, 10, 0) == b"aaa"  # (fstat: ESTALE, see vnodefs.fuseops' caveats)
        assert os.pwrite(fd, b"AB", 1) == 2 and os.pread(fd, 10, 0) == b"aAB"
        os.ftruncate(fd, 1)
        assert os.pread(fd, 10, 0) == b"a"
    finally:
        os.close(fd)
    _write(p("h1"), "x")
    os.stat(p("h1"))
    os.link(p("h1"), p("h2"))
    os.chmod(p("h1"), 0o600)
    os.utime(p("h1"), ns=(10**9, 2 * 10**9))
    st = os.stat(p("h2"))
    if cache == "writeback":  # the kernel keeps each name's mtime itself (FsConfig.writeback_cache)
        assert (st.st_mode & 0o777, st.st_nlink) == (0o600, 2)
    else:
        assert (st.st_mode & 0o777, st.st_mtime_ns, st.st_nlink) == (0o600, 2 * 10**9, 2)
    os.mkdir(p("d"))
    os.rmdir(p("d"))
    assert not os.path.exists(p("d"))
    m.umount()
    assert load(m.trace_path).header["metadata_timeout_s"] == METADATA_TIMEOUT


@pytest.mark.parametrize("timeout", [None, 0.3, "strict"])
def test_changes_behind_the_mount_within_the_bound(tmp_path, timeout):
    from vnodefs.mount import mount, umount

    src, mnt = tmp_path / "s", tmp_path / "m"
    src.mkdir()
    mnt.mkdir()
    strict = timeout == "strict"
    m = mount(str(src), str(mnt), trace=None, strict_metadata=strict,
              metadata_timeout=None if strict else timeout)
    try:
        bound = 0.0 if strict else METADATA_TIMEOUT if timeout is None else timeout
        slack = 0.5  # scheduling on a loaded machine
        via = os.path.join(m.mountpoint, "behind")
        assert not os.path.exists(via)  # cached as missing
        _write(os.path.join(src, "behind"), "v1")
        t = _until(lambda: os.path.exists(via), bound + slack)
        assert t is not None, "a file created in SOURCE never appeared"
        if strict:
            assert t < 0.05
        assert _read(via) == "v1"
        os.stat(via)
        _write(os.path.join(src, "behind"), "version 2")
        t = _until(lambda: os.stat(via).st_size == 9, bound + slack)
        assert t is not None and (not strict or t < 0.05)
        assert _until(lambda: _read(via) == "version 2", bound + slack) is not None
        os.unlink(os.path.join(src, "behind"))
        t = _until(lambda: not os.path.exists(via), bound + slack)
        assert t is not None and (not strict or t < 0.05)
    finally:
        umount(m.mountpoint)


@pytest.mark.parametrize("strict", [False, True])
def test_trace_metadata_records_the_lookups_that_reach_vnodefs(tmp_path, strict):
    """A metadata-traced mount records each getattr (lookups included, failed ones as -ENOENT),
    readdir, opendir and readlink that reached it; with the caches on, a repeated lookup is not
    among them, with strict_metadata every one is. A default mount records none."""
    import errno

    from vnodefs.mount import mount, umount
    from vnodefs.trace import OPS

    src, mnt, tr = tmp_path / "s", tmp_path / "m", str(tmp_path / "t.vtrace")
    src.mkdir()
    mnt.mkdir()
    _write(os.path.join(src, "f"), "x")
    os.symlink("f", os.path.join(src, "l"))
    m = mount(str(src), str(mnt), trace=tr, strict_metadata=strict, trace_metadata=True)
    try:
        for _ in range(3):
            os.stat(os.path.join(m.mountpoint, "f"))
            assert not os.path.exists(os.path.join(m.mountpoint, "nope"))
        assert sorted(os.listdir(m.mountpoint)) == ["f", "l"]
        assert os.readlink(os.path.join(m.mountpoint, "l")) == "f"
    finally:
        umount(m.mountpoint)
    t = load(tr)
    r = t.records
    assert t.header["trace_metadata"] is True
    ga = r[r["op"] == OPS["getattr"]]
    names = [t.files.get(int(f), "") for f in ga["file"]]
    missing = [int(x) for x, n in zip(ga["result"], names) if n == "nope"]
    assert missing and set(missing) == {-errno.ENOENT}
    assert len(missing) == (3 if strict else 1)
    assert names.count("f") >= (3 if strict else 1) and (strict or names.count("f") < 3)
    assert (r["op"] == OPS["readdir"]).sum() >= 1 and (r["op"] == OPS["opendir"]).sum() >= 1
    assert (r["op"] == OPS["readlink"]).sum() >= 1
    nope = [int(p) for p, n in zip(ga["pid"], names) if n == "nope"]
    assert set(nope) == {os.getpid()}  # who asked (the daemon's own readiness probe also stats)
