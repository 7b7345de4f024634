"""One swap file: a sparse file of fixed logical size divided into clusters, and its cluster bitmap.

Owns: `SwapFile` (the paging segment of XNU's default pager, `dp_backing_store.c`: one file, a
bitmap of clusters, reads and writes of whole clusters or runs of clusters), `punch_hole` (the
`fallocate(FALLOC_FL_PUNCH_HOLE)` wrapper) and `SwapFileDamaged`.

Theory of operation:
  The file is created with mode 0600 and `ftruncate` to its logical size: it is *sparse*, so its
  allocated blocks (`st_blocks`) grow only as clusters are written (XNU preallocated; the sparse
  file is a deliberate difference, see swapd/FORMAT.md). A cluster is `cluster_pages` consecutive
  page *slots*; cluster c holds the byte range [c * cluster_bytes, (c + 1) * cluster_bytes).
  Space is a byte-per-cluster bitmap (0 free, 1 in use) searched with `bytes.find`, next-fit from a
  rotor so that successive allocations land one after another and a pageout becomes one sequential
  `pwritev`. A freed cluster is punched out of the file, so `st_blocks` shrinks again.
  A slot never written reads as zeros (a hole), which is the format's rule "hole = zero page".

Invariants:
  * `free_clusters == bitmap.count(0)`; a cluster is allocated to at most one owner at a time;
  * every I/O first `fstat`s the descriptor: a file unlinked (`st_nlink == 0`) or truncated below
    its logical size behind the pool's back is marked damaged and refuses further I/O with
    `SwapFileDamaged` naming the file; a damaged file is never allocated from again.

Who calls: swapd.swapspace (allocation, free), swapd.pager (reads and writes), swapd.pool (create,
remove, status).

Caveats:
  * Not thread-safe by itself: swapd.pool serialises every call with the pool lock.
  * Writes may fail with OSError (ENOSPC on a full file system): the caller decides what to do; the
    bytes of a failed write's clusters are unspecified until written again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import Sequence

from swapd.errors import SwapError

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
IOV_MAX = 1024

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate [offset, offset + length) of the file, keeping its size. Returns False when the
    file system cannot punch holes (EOPNOTSUPP): the caller writes nothing instead; the range stays
    allocated but is free in the bitmap."""
    if _fallocate is None or length <= 0:
        return False
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


class SwapFileDamaged(SwapError):
    """The swap file was deleted or truncated behind the pool's back."""


class SwapFile:
    """One sparse swap file `swapfile<number>` of `nclusters` clusters.

    Fields:
      path, number      where it lives and N in swapfileN
      fd                the descriptor every I/O goes through (O_RDWR | O_CLOEXEC)
      size              logical size in bytes (a whole number of clusters)
      cluster_bytes     bytes per cluster (cluster_pages * page_size)
      bitmap            bytearray, one byte per cluster: 0 free, 1 allocated
      free_clusters     clusters free in the bitmap
      used_slots        page slots holding a valid page (kept by the pagers through `note_slots`)
      going_away        swapoff in progress: never allocate from it (XNU ps_going_away)
      damaged           None, or the one-line reason it is unusable (deleted / truncated)
    """

    __slots__ = ("path", "number", "fd", "size", "page_size", "cluster_pages", "cluster_bytes",
                 "nclusters", "bitmap", "free_clusters", "used_slots", "rotor", "going_away",
                 "damaged", "ino", "dev", "punch_ok")

    def __init__(self, path: str, number: int, size: int, page_size: int, cluster_pages: int):
        cluster_bytes = page_size * cluster_pages
        if size <= 0 or size % cluster_bytes:
            raise ValueError(f"swap file size {size} is not a positive multiple of {cluster_bytes}")
        self.path = path
        self.number = number
        self.size = size
        self.page_size = page_size
        self.cluster_pages = cluster_pages
        self.cluster_bytes = cluster_bytes
        self.nclusters = size // cluster_bytes
        self.bitmap = bytearray(self.nclusters)
        self.free_clusters = self.nclusters
        self.used_slots = 0
        self.rotor = 0
        self.going_away = False
        self.damaged: str | None = None
        self.punch_ok = True
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.ftruncate(fd, size)  # sparse: no blocks yet
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise
        self.fd = fd
        self.ino, self.dev = st.st_ino, st.st_dev

    # ---- health -------------------------------------------------------------------------------

    def check(self) -> None:
        """fstat the descriptor; mark the file damaged and raise SwapFileDamaged if it was deleted
        or truncated behind the pool's back."""
        if self.damaged is None:
            if self.fd < 0:
                self.damaged = f"swap file {self.path} is closed"
            else:
                st = os.fstat(self.fd)
                if st.st_nlink == 0:
                    self.damaged = f"swap file {self.path} was deleted behind the pool's back"
                elif st.st_size < self.size:
                    self.damaged = (f"swap file {self.path} was truncated behind the pool's back "
                                    f"to {st.st_size} bytes (expected {self.size})")
        if self.damaged is not None:
            raise SwapFileDamaged(self.damaged)

    def healthy(self) -> bool:
        try:
            self.check()
        except SwapFileDamaged:
            return False
        return True

    def allocated_bytes(self) -> int:
        """Bytes of disk the file really holds (st_blocks * 512)."""
        if self.fd < 0:
            return 0
        return os.fstat(self.fd).st_blocks * 512

    # ---- the bitmap ---------------------------------------------------------------------------

    @property
    def allocatable(self) -> bool:
        return not self.going_away and self.damaged is None and self.free_clusters > 0

    def allocate(self, want: int) -> tuple[int, int] | None:
        """Allocate one run of up to `want` contiguous free clusters, next-fit from the rotor.
        Returns (first cluster, count) or None if the file has no free cluster."""
        if self.free_clusters == 0 or want <= 0:
            return None
        want = min(want, self.free_clusters)
        bm = self.bitmap
        need = bytes(want)
        start = bm.find(need, self.rotor)
        if start < 0:
            start = bm.find(need, 0)
        if start >= 0:
            count = want
        else:  # no run that long: take the first free cluster from the rotor and what follows it
            start = bm.find(b"\x00", self.rotor)
            if start < 0:
                start = bm.find(b"\x00", 0)
            end = bm.find(b"\x01", start, start + want)
            count = (end if end >= 0 else min(start + want, self.nclusters)) - start
        bm[start:start + count] = b"\x01" * count
        self.free_clusters -= count
        self.rotor = start + count if start + count < self.nclusters else 0
        return start, count

    def free(self, first: int, count: int = 1, punch: bool = True) -> None:
        """Return clusters [first, first + count) to the bitmap and punch them out of the file."""
        bm = self.bitmap
        if bm[first:first + count] != b"\x01" * count:
            raise ValueError(f"{self.path}: freeing clusters {first}..{first + count - 1} "
                             f"that are not all allocated")
        bm[first:first + count] = bytes(count)
        self.free_clusters += count
        if punch and self.punch_ok and self.damaged is None and self.fd >= 0:
            try:
                self.punch_ok = punch_hole(self.fd, first * self.cluster_bytes,
                                           count * self.cluster_bytes)
            except OSError:
                pass  # the space stays allocated; the bitmap is what counts

    def note_slots(self, delta: int) -> None:
        self.used_slots += delta

    # ---- I/O ----------------------------------------------------------------------------------

    def write(self, offset: int, bufs: Sequence) -> None:
        """pwritev `bufs` at byte `offset` (whole pages), retrying short writes; OSError (ENOSPC,
        EIO) propagates with `.written` = how many leading bytes did reach the file. One system
        call per IOV_MAX buffers in the normal case."""
        self.check()
        fd = self.fd
        i = 0
        n = len(bufs)
        total = 0
        try:
            while i < n:
                chunk = bufs[i:i + IOV_MAX]
                want = len(chunk) * self.page_size
                done = os.pwritev(fd, chunk, offset)
                total += done
                while done < want:  # a short write: go on page by page so ENOSPC surfaces
                    page, rest = divmod(done, self.page_size)
                    got = os.pwrite(fd, memoryview(chunk[page]).cast("B")[rest:], offset + done)
                    if got <= 0:
                        raise OSError(errno.EIO, f"short write to {self.path}")
                    done += got
                    total += got
                offset += want
                i += IOV_MAX
        except OSError as e:
            e.written = total  # bytes of `bufs` that did reach the file, from the start
            raise

    def read(self, offset: int, bufs: Sequence) -> None:
        """preadv whole pages at byte `offset` into `bufs`; holes read as zeros. A short read means
        the file shrank under us: SwapFileDamaged."""
        fd = self.fd
        if self.damaged is not None or fd < 0:
            self.check()
        st = os.fstat(fd)  # check() inlined: this is the pagein fast path
        if st.st_nlink == 0 or st.st_size < self.size:
            self.check()
        n = len(bufs)
        if n <= IOV_MAX:
            got = os.preadv(fd, bufs, offset)
            if got == n * self.page_size:
                return
        i = 0
        while i < n:
            chunk = bufs[i:i + IOV_MAX]
            want = len(chunk) * self.page_size
            got = os.preadv(fd, chunk, offset)
            if got < want:
                self.check()  # names the truncation if that is what happened
                self.damaged = (f"swap file {self.path}: short read at offset {offset + got} "
                                f"({got} of {want} bytes)")
                raise SwapFileDamaged(self.damaged)
            offset += want
            i += IOV_MAX

    # ---- life ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def unlink(self) -> None:
        """Close and remove the file, if the path is still ours (same inode)."""
        self.close()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_dev) == (self.ino, self.dev):
            os.unlink(self.path)

    def __repr__(self) -> str:
        state = self.damaged or ("going away" if self.going_away else "ok")
        return (f"SwapFile({self.path!r}, {self.size} B, {self.nclusters - self.free_clusters}/"
                f"{self.nclusters} clusters used, {state})")
