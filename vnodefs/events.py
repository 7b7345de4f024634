"""File events: how vnodefs tells the VM that a file's size changed (the setsize back edge).

Owns: the event record format, `EventWriter` (the daemon side: never blocks, never raises),
`EventReader` (the VM side: a cheap `pending()` check, then `read()`), `open_channel()` (creates
both ends and the config the daemon needs), and `Event`. Imports only the standard library.

This is the "FileEvents" back edge of the module layout: XNU's ubc_setsize / FreeBSD's
vnode_pager_setsize. The file system reports; the wiring layer (vmcore.lab_files) applies the
report to the file's VM object (drops pages past the new end). vnodefs never imports vmcore's
object module and the reader never calls into vnodefs.

The channel (Linux):
  * a pipe, both ends O_NONBLOCK: the daemon holds the write end (passed with Popen pass_fds, its
    number in the mount config `events.fd`), the VM side the read end. Every record is one
    write(2) of at most PIPE_BUF bytes, so it is atomic: a reader sees whole records only.
  * a 64-byte counters page (a memfd, mapped MAP_SHARED by both sides; config `events.counters_fd`):
        offset 0  4s  magic b"VNEV"
        offset 4  u32 version (1)
        offset 8  u64 emitted  (records written to the pipe)
        offset 16 u64 dropped  (records the daemon could not write: pipe full or reader gone)
        offset 24 u64 seq      (emitted + dropped, stored last)
    The daemon stores the counters after the record is in the pipe, so the reader's hot-path check
    is one integer load from shared memory, no system call: `pending()` is true when `seq` moved
    since the reader last read (`seq_view[3] != seen_seq` inline, for callers that count ns).
  * dropping: the daemon never waits. A full pipe (EAGAIN) or a closed reader (EPIPE; the daemon
    ignores SIGPIPE) drops the record and bumps `dropped`. The reader reports `dropped` moving as
    `lost` in its next read(); the VM must then revalidate every file (fstat all), as Linux's
    inotify IN_Q_OVERFLOW asks of its readers.

Record (little endian), one per write(2):
    u16 total length (header + path), u8 kind (1 = setsize, 2 = removed), u8 flags (1 = path cut
    short to fit PIPE_BUF), u64 inode (host inode = mount inode: vnodefs mounts with use_ino),
    i64 size (the new size; -1 for removed), then the path relative to the mount root (UTF-8,
    surrogateescape), without a leading '/'.

Which requests emit (vnodefs.fuseops.Passthrough): truncate/ftruncate to a smaller size, open or
create with O_TRUNC of a non-empty file (setsize 0); unlink of a file and rename over an existing
file (removed). Growth emits nothing. Reads and writes never touch the channel.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import struct
import threading
from dataclasses import dataclass

SETSIZE = 1
REMOVED = 2
KINDS = {SETSIZE: "setsize", REMOVED: "removed"}
FLAG_PATH_CUT = 1

_HDR = struct.Struct("<HBBQq")
HEADER_SIZE = _HDR.size  # 20
PIPE_BUF = select.PIPE_BUF
MAX_RECORD = PIPE_BUF
MAGIC = b"VNEV"
VERSION = 1
COUNTERS_SIZE = 64
_COUNTS = struct.Struct("<QQQ")  # emitted, dropped, seq at offset 8


class EventError(Exception):
    """A malformed record or counters page: str() is one line."""


@dataclass(frozen=True)
class Event:
    kind: str  # "setsize" | "removed"
    ino: int
    size: int  # new size in bytes; -1 for removed
    path: str  # relative to the mount root
    path_cut: bool = False


def encode(kind: int, ino: int, size: int, path: str) -> bytes:
    """One record (at most PIPE_BUF bytes; a longer path is cut and flagged)."""
    p = path.lstrip("/").encode("utf-8", "surrogateescape")
    flags = 0
    room = MAX_RECORD - HEADER_SIZE
    if len(p) > room:
        p = p[:room]
        flags |= FLAG_PATH_CUT
    return _HDR.pack(HEADER_SIZE + len(p), kind, flags, ino, size) + p


def decode_all(buf: bytearray) -> list[Event]:
    """Decode and remove every whole record at the front of `buf` (a partial one stays)."""
    out = []
    pos = 0
    n = len(buf)
    while n - pos >= HEADER_SIZE:
        total, kind, flags, ino, size = _HDR.unpack_from(buf, pos)
        if total < HEADER_SIZE or total > MAX_RECORD or kind not in KINDS:
            raise EventError(f"malformed file event record at byte {pos} (length {total}, "
                             f"kind {kind})")
        if n - pos < total:
            break
        path = bytes(buf[pos + HEADER_SIZE:pos + total]).decode("utf-8", "surrogateescape")
        out.append(Event(KINDS[kind], ino, size, path, bool(flags & FLAG_PATH_CUT)))
        pos += total
    del buf[:pos]
    return out


def _map_counters(fd: int, init: bool) -> mmap.mmap:
    if init:
        os.ftruncate(fd, COUNTERS_SIZE)
    mm = mmap.mmap(fd, COUNTERS_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    if init:
        mm[0:8] = MAGIC + struct.pack("<I", VERSION)
    elif mm[0:4] != MAGIC:
        mm.close()
        raise EventError("the file events counters page has no VNEV magic")
    return mm


class EventWriter:
    """The daemon's end. `setsize()` / `removed()` never block and never raise; the records are
    serialised by one lock (only size-changing requests take it)."""

    def __init__(self, fd: int, counters_fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.mm = _map_counters(counters_fd, init=False)
        os.close(counters_fd)  # the mapping keeps the memfd alive
        self.lock = threading.Lock()
        self.emitted, self.dropped, _ = _COUNTS.unpack_from(self.mm, 8)
        self.reader_gone = False

    @classmethod
    def from_config(cls, cfg: dict | None) -> "EventWriter | None":
        if not cfg:
            return None
        return cls(int(cfg["fd"]), int(cfg["counters_fd"]))

    def emit(self, kind: int, ino: int, size: int, path: str) -> bool:
        """Write one record; False if it was dropped (counted)."""
        rec = encode(kind, ino, size, path)
        with self.lock:
            ok = False
            if not self.reader_gone:
                try:
                    ok = os.write(self.fd, rec) == len(rec)  # <= PIPE_BUF: all or EAGAIN
                except OSError as e:
                    if e.errno == errno.EPIPE:
                        self.reader_gone = True
            if ok:
                self.emitted += 1
            else:
                self.dropped += 1
            _COUNTS.pack_into(self.mm, 8, self.emitted, self.dropped, self.emitted + self.dropped)
            return ok

    def setsize(self, ino: int, size: int, path: str) -> bool:
        return self.emit(SETSIZE, ino, size, path)

    def removed(self, ino: int, path: str) -> bool:
        return self.emit(REMOVED, ino, -1, path)

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            self.reader_gone = True


class EventReader:
    """The VM's end: `pending()` is the cheap check (shared-memory loads only); `read()` drains
    the pipe and returns (events, lost) where `lost` counts records the daemon dropped since the
    last read (lost > 0: revalidate every file)."""

    def __init__(self, fd: int, counters_fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.mm = _map_counters(counters_fd, init=False)
        self.seq_view = memoryview(self.mm).cast("Q")  # [3] is seq
        self.seen_seq = 0
        self.buf = bytearray()
        self.consumed = 0  # records read
        self.seen_dropped = 0
        self.received = 0
        self.lost = 0

    def counts(self) -> tuple[int, int]:
        """(emitted, dropped) as the daemon last wrote them."""
        return _COUNTS.unpack_from(self.mm, 8)[:2]

    def pending(self) -> bool:
        return self.seq_view[3] != self.seen_seq

    def read(self) -> tuple[list[Event], int]:
        _, dropped, seq = _COUNTS.unpack_from(self.mm, 8)
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.buf += chunk
        evs = decode_all(self.buf)
        self.consumed += len(evs)
        self.received += len(evs)
        lost = dropped - self.seen_dropped
        self.seen_dropped = dropped
        self.seen_seq = seq
        self.lost += lost
        return evs, lost

    def stats(self) -> dict[str, int]:
        emitted, dropped = self.counts()
        return {"emitted": emitted, "received": self.received, "dropped": dropped}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.mm.closed:
            self.seq_view.release()
            self.mm.close()


def open_channel() -> tuple[EventReader, dict, tuple[int, int]]:
    """Create a channel: (reader, the daemon's config {"fd", "counters_fd"}, the two fds to pass
    to the daemon). The caller closes those two fds once the daemon has them (its own copies)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        cfd = os.memfd_create("vnodefs-events", os.MFD_CLOEXEC)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    try:
        _map_counters(cfd, init=True).close()
        reader = EventReader(r, cfd)
    except BaseException:
        for fd in (r, w, cfd):
            os.close(fd)
        raise
    return reader, {"fd": w, "counters_fd": cfd}, (w, cfd)


__all__ = ["Event", "EventError", "EventReader", "EventWriter", "open_channel", "encode",
           "decode_all", "SETSIZE", "REMOVED"]
