"""The FUSE side of vnodefs: a POSIX passthrough over a host directory, and its one dispatcher.

Owns: `Passthrough` (mfusepy Operations: every file-system operation on the host directory, as
plain os calls that raise OSError), `VnodeFUSE` (an mfusepy.FUSE whose dispatcher `_wrapper`
is the ONE choke point every kernel request passes through: it times the request, applies the
device model (vnodefs.layout finds where the bytes lie, vnodefs.devqueue waits for the device), records read/write/truncate/fsync/open/create/release/fallocate (and each
copy_file_range as a read + write) in the trace,
and is the only place where OSError becomes -errno), and `FsConfig`.

Who calls it: vnodefs.mount (the daemon process builds a Passthrough and runs VnodeFUSE in the
foreground). Nothing else mounts.

Why the dispatcher is `VnodeFUSE._wrapper` and not `Operations.__call__`: mfusepy >= 3 ignores
the Operations call operator (it warns if one exists); every libfuse callback is bound as
`functools.partial(FUSE._wrapper, method)`, so `_wrapper` is the dispatcher. VnodeFUSE also
replaces mfusepy's read/write with zero-copy versions (os.preadv / os.pwrite straight into / out
of libfuse's request buffer) and handles rename flags and UTIME_NOW / UTIME_OMIT.

Invariants:
  * one host fd per open (fh = the host fd), os.pread/os.pwrite on it, no global lock;
  * every traced request produces exactly one record, whatever its outcome (result = bytes or
    -errno); pid 0 (kernel: writeback, release) is recorded as is;
  * O_APPEND and O_DIRECT are not passed to the host fd (the kernel sends explicit offsets, and
    page-cache writeback may write any offset through any writable handle); write-only opens get a
    read-write host fd when permitted, so the kernel may read pages through it.
  * with a prefetch cache (vnodefs.prefetch.PrefetchCache, `vnodefs run --profile --prefetch
    cache`), every read asks the cache first; a write, truncate, fallocate, create or O_TRUNC open
    drops the file's cached pages before/after it reaches the host.
  * file events (vnodefs.events, when the mount config has `events`): truncate/ftruncate to a
    smaller size, and open/create with O_TRUNC of a non-empty file, report `setsize` (inode, new
    size, path) to the VM after the host call succeeded and before the reply goes back to the
    kernel (so the requester's truncate(2) returns after the record is in the channel); unlink and
    rename over an existing file report `removed`. Each costs one extra lstat/fstat on that request
    only; read/write never touch the channel, and the writer never blocks (it drops and counts).
  * sparse files pass through: fallocate with the caller's mode, lseek SEEK_DATA / SEEK_HOLE and
    copy_file_range are served by the host file (host errno on failure); a fallocate record holds
    its mode in `flags`, a copy is recorded as a read + write pair with FLAG_COPY.
Caveats:
  * An open file whose last name was unlinked keeps working through its fd for read, write,
    ftruncate, fsync and fallocate, but fstat / fchmod / fchown / futimens on it fail with ESTALE:
    the kernel sends those without the file handle, and libfuse's high-level API has no path left
    for the node (the host answers them). Linux's FUSE module itself refuses fallocate COLLAPSE_RANGE / INSERT_RANGE (EOPNOTSUPP, no
    request sent); vnodefs would forward them. A copy through the mount is charged to the device
    model as a read + write even where the host reflinks it.
  * Writeback cache and FUSE passthrough stay off (they would hide requests from the trace).
  * `page` mode uses libfuse's auto_cache: the kernel keeps a file's pages across opens unless the
    host file's mtime/size changed; the trace then holds page-cache misses only.
  * `direct` mode sets direct_io on every open: every read reaches vnodefs with the program's own
    offset and size, but the kernel refuses shared mmap (ENODEV) unless it and libfuse negotiate
    FUSE_DIRECT_IO_ALLOW_MMAP, which libfuse 3.14 (Debian 12) cannot (private mmap still works).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # noqa: E402

from vnodefs.devqueue import NOTHING as _NO_IO  # noqa: E402
from vnodefs.latency import NONE as _NO_DEVICE  # noqa: E402
from vnodefs.latency import LatencySpec  # noqa: E402
from vnodefs.trace import FLAG_ADDR_ESTIMATED, FLAG_COPY, FLAG_SEEK, OPS, TraceWriter  # noqa: E402

log = logging.getLogger("vnodefs")

MIB = 1 << 20
FUSE_CAP_WRITEBACK_CACHE = 1 << 16
FUSE_CAP_ASYNC_DIO = 1 << 15
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
_HOST_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | getattr(os, "O_DIRECT", 0)

_get_ctx = mfusepy._libfuse.fuse_get_context
_mono = time.monotonic_ns
_char_array = ctypes.c_char
_addressof = ctypes.addressof


#: the kernel's entry / attribute / negative-lookup cache lifetime (s), the default of
#: FsConfig.metadata_timeout (libfuse's own defaults: 1 s for names and attributes, no negative
#: caching)
METADATA_TIMEOUT = 1.0


@dataclass
class FsConfig:
    source: str
    cache: str = "page"  # "page" | "direct"
    read_only: bool = False
    xattr: bool = False  # serve extended attributes (costs a getxattr round trip per write)
    max_read: int = MIB
    max_write: int = MIB
    latency: LatencySpec = field(default_factory=lambda: _NO_DEVICE)
    #: seconds the kernel may answer lookups (names that exist and names that do not) and
    #: attributes from its own cache; 0 (`--strict-metadata`) sends every metadata request here.
    #: Changes made through the mount are seen at once either way; a change made in SOURCE behind
    #: the mount's back is seen within this bound.
    metadata_timeout: float = METADATA_TIMEOUT
    #: the kernel's writeback cache (page mode only): write(2) returns once the bytes are in the
    #: kernel's page cache and the kernel sends them later, in up to max_write pieces, as the
    #: flusher or close(2) / fsync(2) pushes them, as whole dirty pages. Writes then reach vnodefs
    #: (and the trace) when they are flushed, not when the program wrote them, and carry pid 0;
    #: O_APPEND is the kernel's (its idea of the end of the file). And the kernel keeps a regular
    #: file's size and mtime itself, per name (Linux's FUSE ignores them in the file system's
    #: answers then): a change made in SOURCE behind the mount, or through another hard-link name
    #: of the file, is not seen while the kernel holds the file. For programs that write a lot in
    #: small pieces (measured: 4 KiB writes 0.15x -> 0.86x of the host) on files only they change.
    writeback_cache: bool = False


_RENAME_EXCHANGE = 2


def _libc():
    return ctypes.CDLL(None, use_errno=True)


#: fallocate(2) mode bits (linux/falloc.h)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
_fallocate = _libc().fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def _host_fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with any mode (os.posix_fallocate knows mode 0 only); raises OSError."""
    if _fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


_LONG_PATH = 4096  # PATH_MAX: a host path of this many bytes or more is reached piece by piece

_invalidate_path = mfusepy._libfuse.fuse_invalidate_path
_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_invalidate_path.restype = ctypes.c_int


class HardLinks:
    """The names of multiply-linked regular files, so a change through one name reaches the others.

    libfuse's high-level API gives every name its own kernel inode, each with its own cached
    attributes and pages, where the host has one inode. So when a file with other names changes
    (link, unlink, chmod, chown, utimens, truncate, write, fallocate, a copy into it), the kernel's
    view of each other name seen so far is invalidated (fuse_invalidate_path: attributes and
    cached pages). A metadata change does it before replying, so the next stat through any name
    sees it. A write does it before replying too, unless another name of the file is open for
    writing: that name's pages may be locked by a write waiting on this daemon, so the
    invalidation goes to a notifier thread instead (a reader may see the old bytes for the few
    microseconds until it runs)."""

    def __init__(self):
        #: inode -> mount paths seen for it (only inodes seen with more than one link)
        self.names: dict[int, set[str]] = {}
        #: open host fd -> (inode, mount path, opened for writing), for multiply-linked files
        self.fds: dict[int, tuple[int, str, bool]] = {}
        self._fuse = None
        self._queue = None

    def seen(self, ino: int, path: str | None) -> None:
        if path is None:  # a handle's request (libfuse names no path): nothing learnt
            return
        names = self.names.get(ino)
        if names is None:
            names = self.names[ino] = set()
        names.add(path)

    def _fuse_ptr(self):
        if self._fuse is None:
            self._fuse = _get_ctx().contents.fuse
        return self._fuse

    def changed(self, ino: int, path: str, gone: bool = False, sync: bool = True) -> None:
        """File `ino` changed through `path` (`gone`: that name was removed)."""
        names = self.names.get(ino)
        if not names:
            return
        if gone:
            names.discard(path)
        others = [n for n in names if n != path]
        if not others:
            return
        f = self._fuse_ptr()
        if sync:
            for other in others:
                _invalidate_path(f, other.encode("utf-8", "surrogateescape"))
        else:
            self._notify_later(f, others)

    def changed_path(self, ops, path: str) -> None:
        if not self.names or not path:
            return
        st = ops._lstat_or_none(path)
        if st is not None and st.st_nlink > 1 and st.st_ino in self.names:
            self.changed(st.st_ino, path)

    def wrote(self, fd: int) -> None:
        """A write, fallocate or copy through open fd `fd` (a multiply-linked file) completed."""
        ent = self.fds.get(fd)
        if ent is None:
            return
        ino, path, _w = ent
        busy = any(i == ino and p != path and w for i, p, w in list(self.fds.values()))
        self.changed(ino, path, sync=not busy)

    def renamed(self, old: str, new: str) -> None:
        if not self.names:
            return
        pre = old + "/"
        for names in self.names.values():
            names.discard(new)  # renamed over: that file lost the name
            for n in [n for n in names if n == old or n.startswith(pre)]:
                names.discard(n)
                names.add(new + n[len(old):])

    def _notify_later(self, f, paths) -> None:
        if self._queue is None:
            import queue
            self._queue = queue.SimpleQueue()
            threading.Thread(target=self._notifier, name="vnodefs-links", daemon=True).start()
        for p in paths:
            self._queue.put((f, p.encode("utf-8", "surrogateescape")))

    def _notifier(self) -> None:
        while True:
            f, p = self._queue.get()
            _invalidate_path(f, p)


class Passthrough(mfusepy.Operations):
    """Every operation of a POSIX passthrough on `root`; raises OSError, never translates it.

    Paths arrive relative to the mount root ("/a/b"); `self.trace.file_id(path)` names files in
    the trace. `fid_of_fd` maps an open host fd to its trace file id."""

    use_ns = True

    def __init__(self, config: FsConfig, trace: TraceWriter):
        self.config = config
        self.root = os.path.realpath(config.source)
        #: the SOURCE directory, held open: every host call is relative to it (see _do)
        self.rootfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._euid = os.geteuid()
        self.trace = trace
        #: names of multiply-linked files, so a change through one name reaches the others
        self.links = HardLinks()
        self.fid_of_fd: dict[int, int] = {}
        self.path_of_fd: dict[int, str] = {}
        self.negotiated: dict = {}
        self._renameat2 = None
        #: vnodefs.events.EventWriter (the setsize back edge) or None; set by vnodefs.mount
        self.events = None

    # -- host paths: every host call is relative to the SOURCE directory's fd -------------------
    def _do(self, fn, path: str, *args, **kwargs):
        """fn(relative path, *args, dir_fd=<its directory>, **kwargs) for mount path `path`.

        Paths are relative to the SOURCE directory fd, so a path is as long on the host as the
        caller made it inside the mount; one longer than the host's PATH_MAX (libfuse passes whole
        paths from the mount root, which a caller deep inside the mount can make that long) is
        reached by opening its parent directories a piece at a time."""
        if path is None:  # libfuse names no path for a file whose last name is gone (nullpath_ok)
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        rel = path[1:] or "."
        if len(rel) < _LONG_PATH:
            return fn(rel, *args, dir_fd=self.rootfd, **kwargs)
        d, name = self._walk(rel)
        try:
            return fn(name, *args, dir_fd=d, **kwargs)
        finally:
            os.close(d)

    def _do2(self, fn, a: str, b: str, **kwargs):
        """fn(relative a, relative b, src_dir_fd=, dst_dir_fd=, **kwargs): _do for the calls that
        take two mount paths (rename, link)."""
        opened = []
        try:
            fds, names = [], []
            for p in (a, b):
                rel = p[1:]
                if len(rel) < _LONG_PATH:
                    fds.append(self.rootfd)
                    names.append(rel)
                else:
                    d, name = self._walk(rel)
                    opened.append(d)
                    fds.append(d)
                    names.append(name)
            return fn(names[0], names[1], src_dir_fd=fds[0], dst_dir_fd=fds[1], **kwargs)
        finally:
            for d in opened:
                os.close(d)

    def _walk(self, rel: str):
        """(an fd of the directory holding `rel`'s last component, that component): the caller
        closes the fd."""
        parent, _, name = rel.rpartition("/")
        d = os.dup(self.rootfd)
        try:
            while parent:
                if len(parent) < _LONG_PATH:
                    piece, parent = parent, ""
                else:
                    cut = parent.rindex("/", 0, _LONG_PATH)
                    piece, parent = parent[:cut], parent[cut + 1:]
                nd = os.open(piece, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
                os.close(d)
                d = nd
        except BaseException:
            os.close(d)
            raise
        return d, name

    def lstat(self, path: str) -> os.stat_result:
        return self._do(os.stat, path, follow_symlinks=False)

    def _lstat_or_none(self, path: str):
        try:
            return self.lstat(path)
        except OSError:
            return None

    def _proc_path(self, path: str, fn):
        """fn(a /proc/self/fd path naming mount path `path` without following its last component):
        for the calls that take no dir_fd (the xattr calls)."""
        return self._do(lambda name, dir_fd: fn(f"/proc/self/fd/{dir_fd}/{name}"), path)

    def _own(self, path: str, fd: int | None = None) -> None:
        """Give what a caller just created to the caller, as the host would: the caller's uid, and
        its gid unless the parent directory is set-group-ID (then the host already gave the
        directory's group). Only a root daemon serving another user has anything to do."""
        if self._euid != 0:
            return
        ctx = _get_ctx().contents
        uid, gid = ctx.uid, ctx.gid
        if uid == 0 and gid == 0:
            return
        st = os.fstat(fd) if fd is not None else self.lstat(path)
        parent = self.lstat(path.rpartition("/")[0] or "/")
        if parent.st_mode & stat.S_ISGID:
            gid = -1
        if (uid, gid) == (st.st_uid, st.st_gid if gid != -1 else -1):
            return
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            self._do(os.chown, path, uid, gid, follow_symlinks=False)

    # -- lifecycle ---------------------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        c = self.config
        if conn is not None:
            conn.max_read = c.max_read  # must equal the max_read mount option on libfuse 3
            conn.max_write = c.max_write
            conn.max_readahead = max(conn.max_readahead, c.max_read)
            if c.writeback_cache and c.cache == "page" and conn.capable & FUSE_CAP_WRITEBACK_CACHE:
                conn.want |= FUSE_CAP_WRITEBACK_CACHE
            else:
                conn.want &= ~FUSE_CAP_WRITEBACK_CACHE
            self.negotiated = {"capable": int(conn.capable), "want": int(conn.want),
                               "max_read": int(conn.max_read), "max_write": int(conn.max_write),
                               "max_readahead": int(conn.max_readahead),
                               "proto": f"{conn.proto_major}.{conn.proto_minor}"}
        if config is not None:
            config.use_ino = 1
            config.nullpath_ok = 1  # an open file that lost its last name is served through its fd
            config.entry_timeout = config.attr_timeout = config.negative_timeout = c.metadata_timeout
            config.hard_remove = 1
            config.kernel_cache = 0
            config.auto_cache = 1 if c.cache == "page" else 0
            config.direct_io = 1 if c.cache == "direct" else 0

    # -- metadata ----------------------------------------------------------------------------
    def getattr(self, path, fh=None):
        st = os.fstat(fh.fh) if fh is not None else self._do(os.stat, path, follow_symlinks=False)
        if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
            self.links.seen(st.st_ino, path)
        return {
            "st_mode": st.st_mode, "st_ino": st.st_ino, "st_nlink": st.st_nlink, "st_uid": st.st_uid,
            "st_gid": st.st_gid, "st_size": st.st_size, "st_rdev": st.st_rdev, "st_blocks": st.st_blocks,
            "st_blksize": st.st_blksize, "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns,
            "st_ctime": st.st_ctime_ns,
        }

    def opendir(self, path):
        """An fd of the host directory: the handle readdir lists (libfuse names no path then)."""
        return self._do(os.open, path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def readdir(self, path, fh):
        out = [".", ".."]
        os.lseek(fh, 0, os.SEEK_SET)  # every listing starts at the beginning (libfuse keeps the rest)
        with os.scandir(fh) as it:
            for e in it:
                out.append((e.name, {"st_mode": stat.S_IFMT(e.stat(follow_symlinks=False).st_mode),
                                     "st_ino": e.inode()}, 0))
        return out

    def releasedir(self, path, fh):
        os.close(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        os.fsync(fh)
        return 0

    def readlink(self, path):
        return self._do(os.readlink, path)

    def mknod(self, path, mode, dev):
        self._do(os.mknod, path, mode, dev)
        self._own(path)
        return 0

    def mkdir(self, path, mode):
        self._do(os.mkdir, path, mode)
        self._own(path)
        return 0

    def rmdir(self, path):
        self._do(os.rmdir, path)
        return 0

    def unlink(self, path):
        st = self._lstat_or_none(path)
        self._do(os.unlink, path)
        self.trace.forget_path(path)
        if st is not None and stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1:
                self.links.changed(st.st_ino, path, gone=True)
            if self.events is not None:
                self.events.removed(st.st_ino, path)
        return 0

    def symlink(self, target, source):
        """Create the symlink `target` (a mount path) whose content is `source`."""
        self._do(lambda name, dir_fd: os.symlink(source, name, dir_fd=dir_fd), target)
        self._own(target)
        return 0

    def rename(self, old, new, flags=0):
        ev = self.events
        if ev is not None:  # a file renamed over loses its name (reported as removed)
            st = self._lstat_or_none(new)
        if flags:
            self._do2(self._renameat2_flags, old, new, flags=flags)
        else:
            self._do2(os.rename, old, new)
        self.trace.forget_path(old)
        self.trace.forget_path(new)
        self.links.renamed(old, new)
        if ev is not None and st is not None and stat.S_ISREG(st.st_mode) and \
                not flags & _RENAME_EXCHANGE:
            nst = self._lstat_or_none(new)
            if nst is None or nst.st_ino != st.st_ino:
                ev.removed(st.st_ino, new)
        return 0

    def _renameat2_flags(self, old, new, src_dir_fd, dst_dir_fd, flags):
        if self._renameat2 is None:
            self._renameat2 = _libc().renameat2
        if self._renameat2(src_dir_fd, os.fsencode(old), dst_dir_fd, os.fsencode(new), ctypes.c_uint(flags)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def link(self, target, source):
        """Create the hard link `target` to the existing `source` (both mount paths)."""
        self._do2(os.link, source, target, follow_symlinks=False)
        st = self.lstat(target)
        if stat.S_ISREG(st.st_mode):
            self.links.seen(st.st_ino, source)
            self.links.seen(st.st_ino, target)
            self.links.changed(st.st_ino, target)  # every other name's link count went up
        return 0

    # chmod, chown and utimens get `fh` (the open file's fuse_file_info) when the kernel names the
    # handle: libfuse then names no path (nullpath_ok), and the host fd is changed instead.
    def chmod(self, path, mode, fh=None):
        if fh is not None:
            os.fchmod(fh.fh, mode)
            self.links.wrote(fh.fh)
            return 0
        self._do(os.chmod, path, mode)
        self.links.changed_path(self, path)
        return 0

    def chown(self, path, uid, gid, fh=None):
        if fh is not None:
            os.fchown(fh.fh, uid, gid)
            self.links.wrote(fh.fh)
            return 0
        self._do(os.chown, path, uid, gid, follow_symlinks=False)
        self.links.changed_path(self, path)
        return 0

    def truncate(self, path, length, fh=None):
        ev = self.events
        if fh is not None:
            st = os.fstat(fh.fh) if ev is not None else None  # the size before: only a shrink is reported
            os.ftruncate(fh.fh, length)
        else:
            fd = self._do(os.open, path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
        if ev is not None and length < st.st_size:
            ev.setsize(st.st_ino, length, path or (self.path_of_fd.get(fh.fh, "") if fh is not None else ""))
        if fh is not None:
            self.links.wrote(fh.fh)
        elif path:
            self.links.changed_path(self, path)
        return 0

    def _o_trunc_size(self, path, flags):
        """(inode, size) of a non-empty regular file an O_TRUNC open is about to empty, else None."""
        if self.events is None or not flags & os.O_TRUNC:
            return None
        st = self._lstat_or_none(path)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        return st.st_ino, st.st_size

    def utimens(self, path, times=None, fh=None):
        if fh is not None:
            if times is None:
                os.utime(fh.fh)
            else:
                os.utime(fh.fh, ns=times)
            self.links.wrote(fh.fh)
            return 0
        if times is None:
            self._do(os.utime, path, follow_symlinks=False)
        else:
            self._do(os.utime, path, ns=times, follow_symlinks=False)
        self.links.changed_path(self, path)
        return 0

    def access(self, path, amode):
        if not self._do(os.access, path, amode, follow_symlinks=False):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return 0

    def statfs(self, path):
        fd = self._do(os.open, path, os.O_PATH | os.O_CLOEXEC)
        try:
            sv = os.statvfs(fd)
        finally:
            os.close(fd)
        return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                                             "f_ffree", "f_favail", "f_flag", "f_namemax")}

    # -- files -------------------------------------------------------------------------------
    def _host_open(self, path, flags, mode=0o666, keep=0):
        """The host fd of an open of `path`: the caller's flags without the ones the kernel
        handles (_HOST_STRIP, except those in `keep`), read-write instead of write-only where the
        host allows it."""
        hflags = (flags & ~(_HOST_STRIP & ~keep)) | os.O_CLOEXEC
        if flags & os.O_ACCMODE == os.O_WRONLY:
            try:  # a readable fd lets the kernel read pages through any handle
                return self._do(os.open, path, (hflags & ~os.O_ACCMODE) | os.O_RDWR, mode)
            except PermissionError:
                pass
        return self._do(os.open, path, hflags, mode)

    def open(self, path, fi):
        was = self._o_trunc_size(path, fi.flags)
        return self._opened(path, fi, self._host_open(path, fi.flags), was)

    def create(self, path, mode, fi):
        was = self._o_trunc_size(path, fi.flags)
        fd = self._host_open(path, fi.flags | os.O_CREAT, mode, keep=os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        try:
            self._own(path, fd)
        except OSError:
            os.close(fd)
            raise
        return self._opened(path, fi, fd, was)

    def _opened(self, path, fi, fd: int, was) -> int:
        """open/create's common end: report an O_TRUNC shrink, bind the host fd and its file id
        to the FUSE handle, set direct I/O in direct mode."""
        if was is not None:
            self.events.setsize(was[0], 0, path)
        fi.fh = fd
        self.fid_of_fd[fd] = self.trace.file_id(path)
        self.path_of_fd[fd] = path  # handle requests carry no path (nullpath_ok)
        if self.links.names:  # a file with other names: writes through this fd reach them all
            st = os.fstat(fd)
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                self.links.seen(st.st_ino, path)
                self.links.fds[fd] = (st.st_ino, path, fi.flags & os.O_ACCMODE != os.O_RDONLY)
        if self.config.cache == "direct":
            fi.direct_io = 1
        return 0

    # No flush: every write has reached the host file when its request returns, so close(2) has
    # nothing left to report; without a flush callback libfuse answers FLUSH itself and the
    # kernel stops sending it (one synchronous round trip less per close: a warm small-file
    # open + read + close went from 223-260 us to 124-166 us on this 2-vCPU VM under load).

    def release(self, path, fh):
        fd = fh.fh
        self.fid_of_fd.pop(fd, None)
        self.path_of_fd.pop(fd, None)
        self.links.fds.pop(fd, None)
        os.close(fd)
        return 0

    def fsync(self, path, datasync, fh):
        if datasync:
            os.fdatasync(fh.fh)
        else:
            os.fsync(fh.fh)
        return 0

    def fallocate(self, path, mode, offset, size, fh):
        """fallocate(2) on the host fd with the caller's mode (FALLOC_FL_KEEP_SIZE, PUNCH_HOLE,
        ZERO_RANGE, COLLAPSE_RANGE, INSERT_RANGE, ...): what the host file system does not support
        fails with its own errno (mode 0 included: glibc's posix_fallocate then emulates it in the
        caller, as it would on the host). A collapse shrinks the file: reported as `setsize`."""
        _host_fallocate(fh.fh, mode, offset, size)
        self.links.wrote(fh.fh)
        ev = self.events
        if ev is not None and mode & FALLOC_FL_COLLAPSE_RANGE:
            st = os.fstat(fh.fh)
            ev.setsize(st.st_ino, st.st_size, path or self.path_of_fd.get(fh.fh, ""))
        return 0

    def lseek(self, path, offset, whence, fh):
        """SEEK_DATA / SEEK_HOLE answered by the host file (the kernel handles SEEK_SET / CUR /
        END itself and never sends them)."""
        return os.lseek(fh.fh, offset, whence)

    def copy_file_range(self, path_in, fh_in, off_in, path_out, fh_out, off_out, length, flags):
        """copy_file_range(2) between the two host fds (in-kernel copy, or a reflink where the host
        file system shares extents); returns the bytes copied."""
        if flags:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        n = os.copy_file_range(fh_in.fh, fh_out.fh, length, off_in, off_out)
        self.links.wrote(fh_out.fh)
        return n


    # read / write live in VnodeFUSE (zero-copy into libfuse's buffer); these exist so mfusepy
    # registers the callbacks.
    def read(self, path, size, offset, fh):  # pragma: no cover - replaced by VnodeFUSE.read
        return os.pread(fh.fh, size, offset)

    def write(self, path, data, offset, fh):  # pragma: no cover - replaced by VnodeFUSE.write
        return os.pwrite(fh.fh, data, offset)


class PassthroughXattr(Passthrough):
    """Passthrough plus extended attributes (`--xattr`). Not the default: once a file system
    answers getxattr, the kernel asks for security.capability before EVERY write (one extra
    round trip per write request, measured: 257 getxattr calls for 256 writes)."""

    # -- extended attributes -----------------------------------------------------------------
    def getxattr(self, path, name, position=0):
        return self._proc_path(path, lambda p: os.getxattr(p, name, follow_symlinks=False))

    def setxattr(self, path, name, value, options, position=0):
        self._proc_path(path, lambda p: os.setxattr(p, name, value, options, follow_symlinks=False))
        return 0

    def listxattr(self, path):
        return self._proc_path(path, lambda p: os.listxattr(p, follow_symlinks=False))

    def removexattr(self, path, name):
        self._proc_path(path, lambda p: os.removexattr(p, name, follow_symlinks=False))
        return 0


# name of the mfusepy low-level method -> trace op code
_TRACED = {
    "read": OPS["read"], "write": OPS["write"], "truncate_fuse_3": OPS["truncate"],
    "ftruncate": OPS["truncate"], "fsync": OPS["fsync"], "open": OPS["open"], "create": OPS["create"],
    "release": OPS["release"], "flush": OPS["flush"], "fallocate": OPS["fallocate"],
}
#: metadata requests traced with trace_metadata: mfusepy method -> op code
_TRACED_META = {"getattr_fuse_3": OPS["getattr"], "readdir_fuse_3": OPS["readdir"], "opendir": OPS["opendir"],
                "readlink": OPS["readlink"]}
_READ, _WRITE = OPS["read"], OPS["write"]
_FIRST_META = min(_TRACED_META.values())
_OPEN, _CREATE, _TRUNC, _FALLOC = OPS["open"], OPS["create"], OPS["truncate"], OPS["fallocate"]


_tls = threading.local()
_VIEWS_PER_THREAD = 32  # cached buffer views per worker thread (see _view)


def _view(buf, size: int) -> memoryview:
    """A writable byte view of libfuse's `size`-byte buffer at `buf` (a ctypes pointer).

    Building one costs ~0.35 us (a ctypes array over the address, a memoryview, a cast); libfuse
    mallocs and frees a worker's buffers per request, so the same (address, size) comes back on
    nearly every request and the view is kept per thread. A view is only used while its buffer
    is the one libfuse passed in (same address and size now), so a stale entry is never read or
    written through."""
    addr = _addressof(buf.contents)
    views = _tls.views
    view = views.get((addr, size))
    if view is None:
        if len(views) >= _VIEWS_PER_THREAD:
            views.clear()
        view = views[addr, size] = memoryview((_char_array * size).from_address(addr)).cast("B")
    return view


def _read_into(fd: int, buf, size: int, offset: int) -> int:
    """pread straight into libfuse's reply buffer (no bytes object, no memmove)."""
    view = _view(buf, size)
    got = os.preadv(fd, [view], offset)
    while 0 < got < size:  # a short read before EOF would read as zeros: finish it
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _write_from(fd: int, buf, size: int, offset: int) -> int:
    """pwrite straight from libfuse's request buffer."""
    view = _view(buf, size)
    done = os.pwrite(fd, view, offset)
    while done < size:
        done += os.pwrite(fd, view[done:], offset + done)
    return done


def _pin_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state alive between callbacks.

    A ctypes callback on a thread Python did not create gets a fresh thread state each time and
    drops it on return (measured: an mmap + munmap of its frame stack, a gettid, a new
    threading.local, per request). One extra PyGILState_Ensure that is never released pins it."""
    ctypes.pythonapi.PyGILState_Ensure()
    _tls.pinned = True
    _tls.ctx = _get_ctx().contents
    _tls.views = {}


def _neg_errno(e: OSError) -> int:
    return -e.errno if isinstance(e.errno, int) and e.errno > 0 else -errno.EIO


def _call(func, args) -> int:
    """func(*args) as libfuse wants its answer: 0 / a count, or -errno (EIO, logged, for a bug)."""
    try:
        return func(*args) or 0
    except OSError as e:
        return _neg_errno(e)
    except Exception:
        log.exception("vnodefs: %s raised; returning EIO", func.__name__)
        return -errno.EIO


class VnodeFUSE(mfusepy.FUSE):
    """mfusepy.FUSE with vnodefs' dispatcher. Construct with (ops, mountpoint, device=, layout=,
    **options): `device` a vnodefs.devqueue.Device (None: no device model), `layout` the
    vnodefs.layout.Layout its addresses come from. Like mfusepy.FUSE, the constructor runs the file
    system until it is unmounted."""

    def __init__(self, operations: Passthrough, mountpoint: str, device=None, layout=None, pcache=None,
                 trace_metadata: bool = False, **kwargs):
        self.trace = operations.trace
        self.device = device
        self.layout = layout
        self.fid_of_fd = operations.fid_of_fd
        self._link_fds = operations.links.fds
        #: vnodefs.prefetch.PrefetchCache (strategy `cache` of `vnodefs run --profile`) or None
        self._pcache = pcache
        self._tracing = self.trace.enabled
        self._plain = not self._tracing and device is None and pcache is None  # nothing to do: just call
        self._append, self._pack = self.trace.append, self.trace.pack
        #: mfusepy method -> op code of the requests this dispatcher records
        self._traced_ops = {**_TRACED, **_TRACED_META} if trace_metadata and self._tracing else _TRACED
        super().__init__(operations, mountpoint, raw_fi=True, **kwargs)

    # -- the dispatcher: every libfuse callback passes through here ------------------------------
    def _wrapper(self, func, *args, **kwargs):
        if not _tls.__dict__:
            _pin_thread_state()
        op = self._traced_ops.get(func.__name__)
        try:
            if op is None:
                try:
                    return func(*args, **kwargs) or 0
                except OSError as e:
                    if func.__name__ == "init_fuse_3":
                        raise
                    return _neg_errno(e)
                except Exception:
                    if func.__name__ == "init_fuse_3":
                        raise
                    log.exception("vnodefs: %s raised; returning EIO", func.__name__)
                    return -errno.EIO
            if (op == _READ or op == _WRITE) and not self._plain:
                return self._traced_rw(op, *args)
            if op >= _FIRST_META:
                return self._traced_meta(op, func, args)
            return self._traced(op, func, args)
        except BaseException as e:  # SystemExit/KeyboardInterrupt inside a callback: stop the mount
            self._FUSE__critical_exception = e
            log.critical("vnodefs: fatal error in %s; unmounting", func.__name__, exc_info=True)
            mfusepy.fuse_exit()
            return -errno.EFAULT

    def _traced_rw(self, op, path, buf, length, offset, fip):
        """read/write with the trace or the device model on: the per-request hot path, inline."""
        t0 = _mono()
        fd = fip.contents.fh
        fid = self.fid_of_fd.get(fd, 0)
        pc = self._pcache
        if pc is not None:
            if op == _READ:
                try:
                    got = pc.serve(fid, fd, buf, length, offset)
                except OSError as e:
                    got = (_neg_errno(e), 0, 0, _NO_IO)
                if got is not None:
                    if self._tracing:
                        ctx = _tls.ctx
                        sv = got[3]
                        self._append(self._pack(t0, _mono() - t0, got[1], offset, length, got[0], ctx.pid,
                                                ctx.uid, fid, op, got[2], 0, sv.dev_addr, sv.dev_prev, sv.seek_ns,
                                                sv.rot_ns, sv.xfer_ns, sv.segments, 0))
                    return got[0]
            else:
                pc.invalidate(fid)
        dev = self.device
        if dev is not None:  # the device model: where the bytes lie, and the wait for them
            try:
                segs, est = self.layout.segments(fd, offset, length, op == _WRITE)
            except OSError:
                segs, est = (), False
            ticket = dev.start(segs, op == _WRITE)
        try:
            result = _read_into(fd, buf, length, offset) if op == _READ else _write_from(fd, buf, length, offset)
        except OSError as e:
            result = _neg_errno(e)
        if dev is not None:  # the reply leaves when the modelled device has served the request
            sv = dev.finish(ticket)
            delay = sv.delay_ns
            flags = (FLAG_SEEK if sv.seeked else 0) | (FLAG_ADDR_ESTIMATED if est and segs else 0)
        else:
            sv, delay, flags = _NO_IO, 0, 0
        if op == _WRITE and fd in self._link_fds:
            self.operations.links.wrote(fd)
        if self._tracing:
            ctx = _tls.ctx  # libfuse's per-thread context struct: its address is fixed per thread
            self._append(self._pack(t0, _mono() - t0, delay, offset, length, result, ctx.pid, ctx.uid, fid, op,
                                    flags, 0, sv.dev_addr, sv.dev_prev, sv.seek_ns, sv.rot_ns, sv.xfer_ns,
                                    sv.segments, 0))
        return result

    def _traced(self, op, func, args):
        if self._plain:
            return _call(func, args)
        ctx = _tls.ctx  # libfuse's per-thread context struct: its address is fixed per thread
        pid, uid = ctx.pid, ctx.uid
        t0 = _mono()
        delay = 0
        flags = 0
        offset = length = 0
        fid = 0
        if op != _OPEN and op != _CREATE:  # open/create learn their file id from the call below
            fip = args[-1]
            if fip:
                fid = self.fid_of_fd.get(fip.contents.fh, 0)
            elif args[0] is not None:
                fid = self.trace.file_id(args[0].decode(self.encoding, self.errors))
            if op == _TRUNC:
                offset = args[1]
            elif op == _FALLOC:  # a fallocate record carries its mode (FALLOC_FL_*) in flags
                flags, offset, length = args[1] & 0xFF, args[2], args[3]
        result = _call(func, args)
        if op == _OPEN or op == _CREATE:
            fip = args[-1]
            fid = self.fid_of_fd.get(fip.contents.fh, 0) if result == 0 else \
                self.trace.file_id(args[0].decode(self.encoding, self.errors))
            if self._pcache is not None and (op == _CREATE or fip.contents.flags & os.O_TRUNC):
                self._pcache.invalidate(fid)
        elif op == _TRUNC or op == _FALLOC:
            if self._pcache is not None:
                self._pcache.invalidate(fid)
            if op == _FALLOC and self.layout is not None and args[-1]:
                self.layout.forget(args[-1].contents.fh)  # extents moved, appeared or were punched out
        if self._tracing:
            self._append(self._pack(t0, _mono() - t0, delay, offset, length, result, pid, uid, fid, op, flags, 0,
                                    -1, -1, 0, 0, 0, 0, 0))
        return result

    def _traced_meta(self, op, func, args):
        """A metadata request (trace_metadata): one record naming the path asked about (file id 0
        for a handle's request), result 0 or -errno; nothing else is charged."""
        ctx = _tls.ctx
        t0 = _mono()
        result = _call(func, args)
        fid = self.trace.file_id(args[0].decode(self.encoding, self.errors)) if args[0] is not None else 0
        self._append(self._pack(t0, _mono() - t0, 0, 0, 0, result, ctx.pid, ctx.uid, fid, op, 0, 0,
                                -1, -1, 0, 0, 0, 0, 0))
        return result

    # -- zero-copy data path -------------------------------------------------------------------
    def read(self, path, buf, size, offset, fip):
        return _read_into(fip.contents.fh, buf, size, offset)

    def write(self, path, buf, size, offset, fip):
        fd = fip.contents.fh
        n = _write_from(fd, buf, size, offset)
        if fd in self._link_fds:
            self.operations.links.wrote(fd)
        return n

    # -- operations mfusepy declares but does not wrap ------------------------------------------
    def lseek(self, path, offset, whence, fip):
        return self.operations.lseek(self._path(path), offset, whence, fip.contents)

    def copy_file_range(self, path_in, fip_in, off_in, path_out, fip_out, off_out, length, flags):
        """A copy done by the host between two open files: traced as a read of the source range
        and a write of the destination range (flag FLAG_COPY on both, length = result = bytes
        copied, or length 0 and result -errno), and charged to the device model as that read
        followed by that write."""
        dec = self.encoding, self.errors
        fd_in, fd_out = fip_in.contents.fh, fip_out.contents.fh
        fid_in, fid_out = self.fid_of_fd.get(fd_in, 0), self.fid_of_fd.get(fd_out, 0)
        t0 = _mono()
        dev = self.device
        if dev is not None:
            try:
                segs_in, est_in = self.layout.segments(fd_in, off_in, length, False)
                segs_out, est_out = self.layout.segments(fd_out, off_out, length, True)
            except OSError:
                segs_in, est_in, segs_out, est_out = (), False, (), False
        try:
            result = self.operations.copy_file_range(
                None if path_in is None else path_in.decode(*dec), fip_in.contents, off_in,
                None if path_out is None else path_out.decode(*dec), fip_out.contents, off_out, length, flags)
        except OSError as e:
            result = _neg_errno(e)
        if self._pcache is not None:
            self._pcache.invalidate(fid_out)
        if self.layout is not None:
            self.layout.forget(fd_out)
        halves = []
        for op, segs, est in ((_READ, segs_in, est_in), (_WRITE, segs_out, est_out)) if dev is not None else \
                ((_READ, (), False), (_WRITE, (), False)):
            if dev is not None and result > 0:
                sv = dev.finish(dev.start(segs, op == _WRITE))
                halves.append((sv, sv.delay_ns, (FLAG_SEEK if sv.seeked else 0) |
                               (FLAG_ADDR_ESTIMATED if est and segs else 0)))
            else:
                halves.append((_NO_IO, 0, 0))
        if self._tracing:
            ctx = _tls.ctx
            t1 = _mono()
            done = max(result, 0)  # the bytes the copy read and wrote (callers ask for up to 2^63)
            for (op, fid, offset), (sv, delay, fl) in zip(((_READ, fid_in, off_in), (_WRITE, fid_out, off_out)),
                                                          halves):
                self._append(self._pack(t0, t1 - t0, delay, offset, done, result, ctx.pid, ctx.uid, fid, op,
                                        fl | FLAG_COPY, 0, sv.dev_addr, sv.dev_prev, sv.seek_ns, sv.rot_ns,
                                        sv.xfer_ns, sv.segments, 0))
        return result

    # -- operations mfusepy would get slightly wrong for a passthrough ----------------------------
    def rename_fuse_3(self, old, new, flags):
        return self.operations.rename(old.decode(self.encoding, self.errors),
                                      new.decode(self.encoding, self.errors), flags)

    def truncate_fuse_3(self, path, length, fip):
        return self.operations.truncate(self._path(path), length, fip.contents if fip else None)

    def chmod_fuse_3(self, path, mode, fip):
        return self.operations.chmod(self._path(path), mode, fip.contents if fip else None)

    def chown_fuse_3(self, path, uid, gid, fip):
        uid = -1 if mfusepy.c_uid_t(uid + 1).value == 0 else uid  # (uid_t)-1 / (gid_t)-1: leave as is
        gid = -1 if mfusepy.c_gid_t(gid + 1).value == 0 else gid
        return self.operations.chown(self._path(path), uid, gid, fip.contents if fip else None)

    def _path(self, path):
        """The decoded path of a request, or None where libfuse named none (a request with a
        handle, served through it, or a file that lost its last name: Passthrough._do answers
        ESTALE)."""
        return None if path is None else path.decode(self.encoding, self.errors)

    def utimens_fuse_3(self, path, buf, fip):
        p = self._path(path)
        fh = fip.contents if fip else None
        if not buf:
            return self.operations.utimens(p, None, fh)
        ts = (buf.contents.actime, buf.contents.modtime)
        if any(t.tv_nsec in (_UTIME_NOW, _UTIME_OMIT) for t in ts):
            st = os.fstat(fh.fh) if fh is not None else self.operations.lstat(p)
            now = time.time_ns()
            cur = (st.st_atime_ns, st.st_mtime_ns)
            vals = tuple(now if t.tv_nsec == _UTIME_NOW else cur[i] if t.tv_nsec == _UTIME_OMIT
                         else t.tv_sec * 10**9 + t.tv_nsec for i, t in enumerate(ts))
        else:
            vals = tuple(t.tv_sec * 10**9 + t.tv_nsec for t in ts)
        return self.operations.utimens(p, vals, fh)


def describe_libfuse() -> str:
    return f"libfuse {mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor}"


if mfusepy.fuse_version_major != 3:  # pragma: no cover - depends on the host
    print("vnodefs: libfuse 3 is required (Debian package libfuse3-3); mfusepy loaded libfuse "
          f"{mfusepy.fuse_version_major}", file=sys.stderr)
