"""Invariant guarded: vnodefs reports every request through the mount that shrinks a file (truncate,
ftruncate, open/create with O_TRUNC) as one `setsize` record (inode, new size, path) that is in the
channel before the request returns, and unlink / rename over as `removed`; growth and reads/writes
report nothing; the record format round-trips (whole records only, long paths cut and flagged,
garbage is a clear error); and the daemon never blocks on the channel: a full pipe or a vanished
reader drops the record, counts it in the shared counters, and the mount keeps serving."""

from __future__ import annotations

import os

import pytest

from vnodefs import events as ev
from vnodefs.mount import mounted


# ---- the record format and the two ends, no FUSE -------------------------------------------------

def test_records_round_trip_partial_and_cut():
    a = ev.encode(ev.SETSIZE, 7, 12345, "/d/file")
    b = ev.encode(ev.REMOVED, 8, -1, "x")
    buf = bytearray(a + b[:5])
    got = ev.decode_all(buf)
    assert got == [ev.Event("setsize", 7, 12345, "d/file")]
    assert bytes(buf) == b[:5]  # the partial record waits for the rest
    buf += b[5:]
    assert ev.decode_all(buf) == [ev.Event("removed", 8, -1, "x")] and not buf
    long = ev.encode(ev.SETSIZE, 1, 0, "n" * 10000)
    assert len(long) == ev.PIPE_BUF
    (e,) = ev.decode_all(bytearray(long))
    assert e.path_cut and e.path == "n" * (ev.PIPE_BUF - ev.HEADER_SIZE)
    with pytest.raises(ev.EventError, match="malformed"):
        ev.decode_all(bytearray(b"\x05\x00" + bytes(18)))


def test_writer_never_blocks_drops_and_counts():
    reader, conf, fds = ev.open_channel()
    w = ev.EventWriter(conf["fd"], os.dup(conf["counters_fd"]))
    os.close(conf["counters_fd"])
    try:
        assert not reader.pending()
        assert w.setsize(5, 100, "a")
        assert reader.pending()
        assert reader.read() == ([ev.Event("setsize", 5, 100, "a")], 0)
        assert not reader.pending()
        n = 0
        while w.setsize(6, n, "p" * 1000):  # fill the pipe: the writer returns, never waits
            n += 1
        assert n > 10
        for _ in range(4):
            assert not w.setsize(6, 0, "q")
        assert reader.counts() == (n + 1, 5)
        got, lost = reader.read()
        assert len(got) == n and lost == 5 and reader.lost == 5
        assert [e.size for e in got] == list(range(n))
        assert w.setsize(6, 1, "r")  # room again
        reader.close()
        assert not w.setsize(6, 0, "gone")  # reader gone: EPIPE, dropped and counted
        assert not w.setsize(6, 0, "gone")
        assert (w.emitted, w.dropped) == (n + 2, 7)
    finally:
        w.close()
        reader.close()


# ---- through a real mount ------------------------------------------------------------------------

def _mount_with_channel(tmp_path, files):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    reader, conf, fds = ev.open_channel()
    return src, reader, conf, fds


@pytest.mark.fuse
def test_mount_reports_shrinks_and_removals(tmp_path):
    src, reader, conf, fds = _mount_with_channel(tmp_path, {"a": b"x" * 10000, "b": b"y" * 300,
                                                            "c": b"z" * 50, "d": b"w"})
    ino = {n: (src / n).stat().st_ino for n in "abcd"}
    try:
        with mounted(str(src), cache="direct", extra={"events": conf}) as m:
            for fd in fds:
                os.close(fd)
            fds = ()
            mp = m.mountpoint

            def drain():
                assert reader.pending()
                got, lost = reader.read()
                assert lost == 0
                return [(e.kind, e.ino, e.size, e.path) for e in got]

            os.truncate(os.path.join(mp, "a"), 4000)  # by path
            assert drain() == [("setsize", ino["a"], 4000, "a")]
            os.truncate(os.path.join(mp, "a"), 9000)  # growth: nothing
            with open(os.path.join(mp, "a"), "r+b") as fh:  # ftruncate, and reads/writes: nothing
                fh.write(b"hello")
                fh.read(100)
                fh.truncate(10)
            assert drain() == [("setsize", ino["a"], 10, "a")]
            with open(os.path.join(mp, "b"), "wb"):  # open O_TRUNC of a non-empty file
                pass
            assert drain() == [("setsize", ino["b"], 0, "b")]
            with open(os.path.join(mp, "b"), "wb"):  # already empty: nothing
                pass
            fd = os.open(os.path.join(mp, "c"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.close(fd)
            assert drain() == [("setsize", ino["c"], 0, "c")]
            os.rename(os.path.join(mp, "c"), os.path.join(mp, "d"))  # d loses its name
            os.unlink(os.path.join(mp, "a"))
            assert drain() == [("removed", ino["d"], -1, "d"), ("removed", ino["a"], -1, "a")]
            os.rename(os.path.join(mp, "d"), os.path.join(mp, "e"))  # nothing renamed over
            with open(os.path.join(mp, "e"), "rb") as fh:
                fh.read()
            assert not reader.pending()
            assert reader.stats() == {"emitted": 6, "received": 6, "dropped": 0}
    finally:
        for fd in fds:
            os.close(fd)
        reader.close()


@pytest.mark.fuse
def test_unread_channel_daemon_keeps_serving(tmp_path):
    data = os.urandom(64 << 10)
    src, reader, conf, fds = _mount_with_channel(tmp_path, {"f" * 200: data, "g": data})
    try:
        with mounted(str(src), cache="direct", extra={"events": conf}) as m:
            for fd in fds:
                os.close(fd)
            fds = ()
            p = os.path.join(m.mountpoint, "f" * 200)
            n = 400  # ~220-byte records: more than a 64 KiB pipe holds
            for i in range(n):
                os.truncate(p, (64 << 10) - 1 - i)
            emitted, dropped = reader.counts()
            assert emitted + dropped == n and dropped > 0 and emitted > 100
            with open(os.path.join(m.mountpoint, "g"), "rb") as fh:  # reads still served
                assert fh.read() == data
            got, lost = reader.read()
            assert len(got) == emitted and lost == dropped
            assert got[-1].size == (64 << 10) - emitted  # in order, whole records
            # the reader goes away: the daemon keeps serving and counts what it could not send
            os.close(reader.fd)
            reader.fd = -1
            os.truncate(os.path.join(m.mountpoint, "g"), 10)
            with open(os.path.join(m.mountpoint, "g"), "rb") as fh:
                assert fh.read() == data[:10]
            assert reader.counts() == (emitted, dropped + 1)
    finally:
        for fd in fds:
            os.close(fd)
        reader.close()
