"""The vnode pager: a vmcore memory object over one real file (docs/mach-vm.md#pagers).

Owns: `VnodePager(path, page_size=4096, writable=True, name=None, notify=None)`, a vmcore.pager.Pager of kind
VNODE over the file at `path` (normally a file under a vnodefs mount, so that every page-in and
page-out of the model becomes one traced request).

Theory of operation:
  * data_request(offset, pages): ONE `os.preadv` for the whole cluster (one FUSE read request when
    the mount runs in `direct` cache mode). Pages wholly past end of file are BAD (the fault fails
    with InvalidAddress); the tail page is zero-filled past EOF. EOF is taken from the read itself
    (a short read), so a file truncated underneath is seen at the first page-in after the
    truncation, whatever the attribute cache says.
  * data_return(offset, pages): ONE `os.pwritev` per call, clipped to the current file size
    (fstat): a page wholly past EOF is not written (the file is never extended) and answers ERROR
    naming the file (the kernel keeps it dirty; the wiring layer drops such pages once it sees the
    file shrank); the tail page writes only the bytes before EOF. A read-only pager answers ERROR
    ("EBADF: opened read-only").
  * has_page(offset): offset < the file size (fstat). size(): the file size (fstat).
  * `eof_shrunk`: the smallest size this pager saw below the size it knew before; when it shrinks
    the pager also appends itself to the `notify` list it was given (a plain list the wiring layer,
    vmcore.lab_files, drains after each fault to drop the VM object's pages past the new end). The
    pager never calls back into vmcore (data flows one way).
  * counters: `requests`, `pages_read`, `bytes_read`, `writes`, `pages_written`.

Imports only vmcore.pager and the standard library (tests/test_architecture.py).

Caveats: the file descriptor stays open until terminate(); a mount cannot be unmounted while a
pager over it is alive (the wiring layer terminates its pagers first). Not thread-safe (the model
is single-threaded).
"""

from __future__ import annotations

import errno
import os
from typing import Sequence

from vmcore.pager import Buffer, Pager, PagerKind, PagerResult


class VnodePager(Pager):
    kind = PagerKind.VNODE

    def __init__(self, path: str | os.PathLike, page_size: int = 4096, writable: bool = True,
                 name: str | None = None, notify: list | None = None):
        self.path = os.fspath(path)
        self.notify = notify
        self.name = name or self.path
        self.page_size = page_size
        self.writable = False
        self.fd = -1
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        if writable:
            try:
                self.fd = os.open(self.path, os.O_RDWR | flags)
                self.writable = True
            except OSError as e:
                if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDONLY | flags)
        st = os.fstat(self.fd)
        self.ino = st.st_ino
        self.known_size = st.st_size
        self.eof_shrunk: int | None = None
        self.requests = self.pages_read = self.bytes_read = 0
        self.writes = self.pages_written = 0
        self.last_error = None

    def __repr__(self) -> str:
        return f"<VnodePager {self.name!r} ino={self.ino} fd={self.fd}>"

    # ---- size -------------------------------------------------------------------------------------
    def _saw_size(self, size: int) -> None:
        if size < self.known_size:
            self.eof_shrunk = size if self.eof_shrunk is None else min(self.eof_shrunk, size)
            if self.notify is not None:
                self.notify.append(self)
        self.known_size = size

    def size(self) -> int | None:
        if self.fd < 0:
            return None
        try:
            sz = os.fstat(self.fd).st_size
        except OSError:
            return None
        self._saw_size(sz)
        return sz

    def has_page(self, offset: int) -> bool:
        sz = self.size()
        return sz is not None and 0 <= offset < sz

    # ---- pagein -----------------------------------------------------------------------------------
    def data_request(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        ps = self.page_size
        n = len(pages)
        self.requests += 1
        try:
            got = os.preadv(self.fd, pages, offset)
        except OSError as e:
            self.last_error = f"{e.strerror or e} reading {self.name} at offset {offset:#x}"
            return [PagerResult.ERROR] * n
        self.bytes_read += got
        out = []
        for i, b in enumerate(pages):
            lo = i * ps
            if got >= lo + ps:
                out.append(PagerResult.OK)
            elif got > lo:  # the tail page: zero past EOF
                b[got - lo:] = bytes(ps - (got - lo))
                out.append(PagerResult.OK)
            else:
                out.append(PagerResult.BAD)
        self.pages_read += sum(1 for r in out if r == PagerResult.OK)
        if got < n * ps:  # a short read is EOF
            self._saw_size(offset + got if got > 0 or offset < self.known_size else
                           min(self.known_size, offset))
        return out

    # ---- pageout ----------------------------------------------------------------------------------
    def data_return(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        n = len(pages)
        if not self.writable:
            self.last_error = f"EBADF writing {self.name}: opened read-only"
            return [PagerResult.ERROR] * n
        ps = self.page_size
        try:
            size = os.fstat(self.fd).st_size
        except OSError as e:
            self.last_error = f"{e.strerror or e} writing {self.name}"
            return [PagerResult.ERROR] * n
        self._saw_size(size)
        bufs = []
        for i, b in enumerate(pages):
            lo = offset + i * ps
            if lo >= size:
                break
            bufs.append(b if lo + ps <= size else b[:size - lo])
        if bufs:
            want = sum(len(b) for b in bufs)
            try:
                done = os.pwritev(self.fd, bufs, offset)
            except OSError as e:
                self.last_error = f"{e.strerror or e} writing {self.name} at offset {offset:#x}"
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR):
                    return [PagerResult.AGAIN] * n
                return [PagerResult.ERROR] * n
            self.writes += 1
            if done < want:
                self.last_error = f"short write to {self.name}: {done} of {want} bytes"
                return [PagerResult.OK if (i + 1) * ps <= done else PagerResult.AGAIN
                        for i in range(n)]
            self.pages_written += len(bufs)
        if len(bufs) < n:  # pages wholly past EOF: not stored (the file is not extended)
            self.last_error = (f"{self.name}: page at offset {offset + len(bufs) * ps:#x} lies past "
                               f"the end of the file ({size} bytes; truncated underneath?)")
        return [PagerResult.OK] * len(bufs) + [PagerResult.ERROR] * (n - len(bufs))

    def sync(self) -> None:
        """fsync the file (msync with MS_SYNC semantics)."""
        if self.fd >= 0 and self.writable:
            os.fsync(self.fd)

    def terminate(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
