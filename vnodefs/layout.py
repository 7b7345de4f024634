"""Where a file's bytes lie on the device: the layout the device model reads addresses from.

Owns: `Layout` (the `fiemap` and `synthetic` layouts behind one call, `segments(fd, offset,
length, write)`), `fiemap(fd)` (the host file's extents via the FS_IOC_FIEMAP ioctl), `choose(source,
mode)`, `LayoutError`. Used by the FUSE dispatcher (vnodefs.fuseops) and the prefetchers
(vnodefs.prefetch) to turn (open host file, offset, length) into device extents for vnodefs.devqueue.

`fiemap` (the default where the host file system supports FS_IOC_FIEMAP: ext4, xfs, btrfs, f2fs):
    a file's extents are the host's own, read once and cached per inode, and read again when the
    file's size or mtime changes (one fstat per request checks). Addresses are byte addresses on
    the host file system's block device. Holes, and preallocated (unwritten) extents on reads, cost
    no I/O. Bytes with no known address yet (delayed allocation, a write into a hole or past the
    last extent) are placed right after the file's previous extent on the device, where the
    allocator aims, and marked estimated.
`synthetic` (where FIEMAP is missing: tmpfs, overlayfs, FUSE, NFS; or `--layout synthetic`):
    the files of SOURCE laid end to end in inode order from address 0, each file's every byte below
    its size allocated (sparse files are not seen), 4 KiB aligned. The table is built once, at the
    first request, by walking SOURCE; a file created later, or grown past its slot, gets the next
    space at the end. Every address is marked estimated.
`Layout.describe()` says which is in force; the trace header records it as `layout`.

Invariants: segments are (device address, length) in file-offset order, never overlapping holes;
a read past end of file has no segment. Thread safety: the per-inode cache is a dict of immutable
tuples replaced whole (atomic under the GIL); the synthetic allocator takes a lock.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
import stat
import struct
import threading

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 1
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_UNKNOWN = 0x2
FIEMAP_EXTENT_DELALLOC = 0x4
FIEMAP_EXTENT_UNWRITTEN = 0x800
_FM = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_FE = struct.Struct("=QQQQQIIII")  # logical, physical, length, reserved64[2], flags, reserved[3]
_BATCH = 256
ALIGN = 4096
MODES = ("auto", "fiemap", "synthetic")


class LayoutError(ValueError):
    """A layout that cannot be used (one clear line)."""


def fiemap(fd: int, sync: bool = False) -> list[tuple[int, int, int, int]]:
    """[(logical, physical, length, flags)] of the open file `fd`, every extent, in logical order.
    OSError (EOPNOTSUPP / ENOTTY / EINVAL) where the file system has no FIEMAP."""
    out = []
    start = 0
    while True:
        buf = bytearray(_FM.size + _FE.size * _BATCH)
        _FM.pack_into(buf, 0, start, (1 << 64) - 1 - start, FIEMAP_FLAG_SYNC if sync else 0, 0, _BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        n = _FM.unpack_from(buf, 0)[3]
        if n == 0:
            return out
        last = False
        for i in range(n):
            lo, ph, ln, _r0, _r1, fl, *_ = _FE.unpack_from(buf, _FM.size + i * _FE.size)
            out.append((lo, ph, ln, fl))
            last = bool(fl & FIEMAP_EXTENT_LAST)
        if last or n < _BATCH:
            return out
        start = out[-1][0] + out[-1][2]


def _device_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
        return int(st.f_blocks * st.f_frsize)
    except OSError:
        return 0


class Layout:
    """Device extents of host files (see the module docstring)."""

    def __init__(self, source: str, kind: str = "fiemap"):
        if kind not in ("fiemap", "synthetic"):
            raise LayoutError(f"unknown layout {kind!r}: use fiemap or synthetic")
        self.root = os.path.realpath(source)
        self.kind = kind
        #: (st_dev, st_ino) -> (size, mtime_ns, starts, extents): extents = [(logical, physical,
        #: length, estimated)] sorted, starts = their logical offsets (for bisect)
        self._cache: dict = {}
        self._lock = threading.Lock()
        self._synthetic: dict | None = None
        self._cursor = 0
        self.fallback_files = 0  # files FIEMAP could not map (placed synthetically)
        self.refreshes = 0
        #: end of the last extent seen: where a file with no known extent yet is assumed to go
        self._last_alloc = 0
        self.span = _device_bytes(self.root) if kind == "fiemap" else 0

    def describe(self) -> dict:
        if self.kind == "fiemap":
            return {"kind": "fiemap", "device_bytes": self.span,
                    "note": "host extents (FS_IOC_FIEMAP), refreshed when a file's size or mtime changes; "
                            "holes cost no I/O; unallocated bytes of writes placed after the file's "
                            "previous extent (marked estimated)"}
        return {"kind": "synthetic",
                "note": "files of SOURCE end to end in inode order from address 0, every byte below "
                        "EOF allocated, 4 KiB aligned; later files appended; every address estimated"}

    # -- lookups -------------------------------------------------------------------------------------
    def extents(self, fd: int, st=None, sync: bool = False):
        """The cached (size, mtime, starts, extents) of open file `fd`, refreshed if it changed.
        `sync`: if the host has not allocated some of its bytes yet (delayed allocation), ask again
        with FIEMAP_FLAG_SYNC (the host writes the file back and reports the real addresses)."""
        if st is None:
            st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        ent = self._cache.get(key)
        if ent is not None and ent[0] == st.st_size and ent[1] == st.st_mtime_ns:
            return ent
        ext = None
        if self.kind == "fiemap":
            try:
                raw = fiemap(fd)
                if sync and any(fl & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC) for *_x, fl in raw):
                    raw = fiemap(fd, sync=True)
                    st = os.fstat(fd)
            except OSError:
                raw = None
                self.fallback_files += 1
            if raw is not None:
                ext = []
                for lo, ph, ln, fl in raw:
                    if fl & FIEMAP_EXTENT_UNWRITTEN:
                        continue  # preallocated: reads of it return zeros without device I/O
                    ext.append((lo, ph, ln, bool(fl & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_DELALLOC))))
                ext = self._place_unknown(ext)
        if ext is None:
            ext = self._synthetic_extents(key, st.st_size)
        ent = (st.st_size, st.st_mtime_ns, [e[0] for e in ext], ext)
        self._cache[key] = ent
        self.refreshes += 1
        return ent

    def forget(self, fd: int) -> None:
        """Drop what is cached of open file `fd`'s extents (they changed without a size or mtime
        change the next lookup would notice: fallocate, a copy into it)."""
        try:
            st = os.fstat(fd)
        except OSError:
            return
        self._cache.pop((st.st_dev, st.st_ino), None)

    def _place_unknown(self, ext):
        """Extents whose physical address is not known yet go right after the previous extent."""
        out = []
        prev_end = None
        for lo, ph, ln, est in ext:
            if est:
                ph = prev_end if prev_end is not None else self._last_alloc
            out.append((lo, ph, ln, est))
            prev_end = ph + ln
        if prev_end is not None:
            self._last_alloc = prev_end
        return out

    def segments(self, fd: int, offset: int, length: int, write: bool = False, st=None):
        """([(device address, bytes)], estimated) for `length` bytes at `offset` of open file `fd`:
        the device extents a read must fetch (holes and bytes past EOF need none) or a write
        lands in (unallocated bytes placed after the previous extent, estimated)."""
        size, _mt, starts, ext = self.extents(fd, st, sync=not write)
        end = offset + length
        if not write:
            end = min(end, size)
        segs: list = []
        est = self.kind == "synthetic"
        if end <= offset:
            return segs, est
        i = bisect.bisect_right(starts, offset) - 1
        pos = offset
        prev_phys_end = None
        if i >= 0:
            lo, ph, ln, _e = ext[i]
            prev_phys_end = ph + min(ln, max(0, offset - lo))
        j = max(i, 0)
        while pos < end and j < len(ext):
            lo, ph, ln, e = ext[j]
            if lo + ln <= pos:
                j += 1
                prev_phys_end = ph + ln
                continue
            if lo > pos:  # a hole before this extent
                if write:
                    n = min(lo, end) - pos
                    a = prev_phys_end if prev_phys_end is not None else ph - (lo - pos)
                    _add(segs, max(a, 0), n)
                    est = True
                pos = min(lo, end)
                if pos >= end:
                    break
            n = min(lo + ln, end) - pos
            _add(segs, ph + (pos - lo), n)
            est = est or e
            pos += n
            prev_phys_end = ph + (pos - lo)
            j += 1
        if pos < end and write:  # past the last extent: the allocator aims right after it
            a = prev_phys_end if prev_phys_end is not None else self._synthetic_start(fd, st)
            _add(segs, a, end - pos)
            est = True
        return segs, est

    def pieces(self, fd: int, offset: int, length: int, st=None) -> list[tuple[int, int, int]]:
        """[(file offset, device address, bytes)] of the bytes a read of `length` at `offset`
        must fetch (holes and bytes past EOF left out), in file-offset order."""
        size, _mt, starts, ext = self.extents(fd, st, sync=True)
        end = min(offset + length, size)
        out = []
        i = max(bisect.bisect_right(starts, offset) - 1, 0)
        while i < len(ext) and offset < end:
            lo, ph, ln, _e = ext[i]
            a, b = max(lo, offset), min(lo + ln, end)
            if a < b:
                out.append((a, ph + (a - lo), b - a))
            if lo >= end:
                break
            i += 1
        return out

    def address(self, fd: int, offset: int):
        """Device address of byte `offset` of open file `fd`, or None (a hole, past EOF)."""
        segs, _ = self.segments(fd, offset, 1)
        return segs[0][0] if segs else None

    # -- synthetic ---------------------------------------------------------------------------------
    def _build_synthetic(self) -> dict:
        files = []
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    files.append((st.st_ino, st.st_dev, st.st_size))
        files.sort()
        table = {}
        pos = 0
        for ino, dev, size in files:
            if (dev, ino) in table:
                continue
            table[(dev, ino)] = [(0, pos, size)]
            pos += -(-max(size, 1) // ALIGN) * ALIGN
        self._cursor = pos
        self.span = max(self.span, pos)
        return table

    def _synthetic_extents(self, key, size: int):
        with self._lock:
            if self._synthetic is None:
                self._synthetic = self._build_synthetic()
            slots = self._synthetic.setdefault(key, [])
            have = sum(ln for _lo, _ph, ln in slots) if slots else 0
            if not slots:
                slots.append((0, self._cursor, size))
                self._cursor += -(-max(size, 1) // ALIGN) * ALIGN
            elif size > have:
                slots.append((have, self._cursor, size - have))
                self._cursor += -(-(size - have) // ALIGN) * ALIGN
            self.span = max(self.span, self._cursor)
            out = []
            for lo, ph, ln in slots:
                if lo >= size:
                    break
                out.append((lo, ph, min(ln, size - lo), True))
            return out

    def _synthetic_start(self, fd, st) -> int:
        if self.kind == "fiemap":
            return self._last_alloc
        st = st or os.fstat(fd)
        ext = self._synthetic_extents((st.st_dev, st.st_ino), st.st_size)
        return ext[0][1] if ext else self._cursor


def _add(segs: list, addr: int, n: int) -> None:
    if n <= 0:
        return
    if segs and segs[-1][0] + segs[-1][1] == addr:
        segs[-1] = (segs[-1][0], segs[-1][1] + n)
    else:
        segs.append((addr, n))


def probe_fiemap(source: str) -> bool | None:
    """True / False whether FIEMAP maps a regular file of SOURCE (the first found within a short
    walk), None if SOURCE has no regular file to try."""
    seen = 0
    for dirpath, _dirs, names in os.walk(source):
        for name in names:
            p = os.path.join(dirpath, name)
            seen += 1
            if seen > 200:
                return None
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fiemap(fd)
                return True
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
                    return False
                continue
            finally:
                os.close(fd)
    return None


def choose(source: str, mode: str = "auto") -> Layout:
    """The layout for SOURCE: `fiemap`, `synthetic`, or `auto` (fiemap if it maps a file of SOURCE
    or SOURCE has none yet, synthetic otherwise). LayoutError for a mode fiemap cannot serve."""
    if mode not in MODES:
        raise LayoutError(f"unknown layout {mode!r}: use auto, fiemap or synthetic")
    if mode == "synthetic":
        return Layout(source, "synthetic")
    ok = probe_fiemap(source)
    if ok is False:
        if mode == "fiemap":
            raise LayoutError(f"--layout fiemap: the file system of {source} does not support FIEMAP "
                              f"(use --layout synthetic or auto)")
        return Layout(source, "synthetic")
    return Layout(source, "fiemap")
