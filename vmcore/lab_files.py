"""File mappings through a vnodefs mount: the vnode objects of a Kernel(files=SOURCE_DIR).

Owns (wiring layer):
  * `FileSystem`: the kernel's own vnodefs mount of SOURCE_DIR (cache mode `direct`, so every
    model page-in and page-out reaches vnodefs and its trace), the table of file VM objects (one
    per file, keyed by the file's inode on the mount: 1:1 with the vnode, shared by every task),
    the resolver the working-set recorder uses (object id, offset -> (path, page)), truncation
    handling, and the unmount. A `weakref.finalize` closes every pager fd and unmounts even when
    the kernel is never closed (garbage collection, interpreter exit): no mount is left behind.
  * `FileTask`: the Task class of the lab Kernel: `vm_map_file`, `vm_msync`, `prefetch_score`, and
    the fault wrapper that seeds lazily (vmcore.lab_profiles), names the file in a past-EOF fault
    and drops pages past a file's new end, and the overrides of read/write/access/vm_wire that
    first apply the mount's pending setsize reports (below).

Object cache: like the UBC holding a vnode's object, the FileSystem holds one reference on each
file object it made, so its pages stay cached after the last mapping goes (a later launch finds
them resident) until `Kernel.file_cache_purge()` or close (dirty pages are written back then).

Truncation (what is detected, and when):
  * through the mount (XNU's ubc_setsize path): the vnodefs daemon reports every request that
    shrinks a file (truncate/ftruncate to a smaller size, open or create with O_TRUNC of a
    non-empty file) as a `setsize` record on the kernel's file events channel
    (vnodefs.events: a non-blocking pipe plus a shared counters page), before the request's
    reply, whoever made it (this process or any other). The kernel consumes pending records before
    every FileTask operation that can touch file pages (read, write, vm_read/vm_write/vm_copy,
    access, vm_wire, vm_msync, vm_map_file) and before the lab Kernel's pageout entry points,
    file_revalidate, file_cache_purge and close; the check is one load from shared memory (measured
    about 0.2 us on an 8-byte read of a resident page, ~7%); a truncation that lands while one
    operation runs (another process) is applied at the start of the next. Each
    record drops the file object's resident pages wholly past the new end (dirty ones are NOT
    written back: that would re-extend the file), removing their translations in every task,
    zeroes the resident tail page past the new end (as FreeBSD's vnode_pager_setsize), and cuts
    the object's size (then fstat's once: a file grown again since keeps its new size). So an
    access past the new end after a truncate(2) through the mount has returned is an
    InvalidAddress naming the file, with no msync or revalidate call;
  * `removed` records (unlink, rename over) change nothing: as in XNU, a mapped file's object
    lives on (the pager's open fd keeps the host inode) and its pages stay valid;
  * records the daemon dropped (channel full because nobody consumed it, or closed) are counted
    (`FileSystem.events_dropped`, vm_stat's "File events dropped"); on seeing a drop the kernel
    revalidates every file object (fstat each, as below): a net shrink is caught there, but a
    shrink undone by a later growth before the kernel looked is not (stale pages in between stay);
  * host-side truncation behind FUSE's back (on SOURCE itself) sends no record: it is seen only
    when a page-in meets EOF (the vnode pager's short read) or a pager fstat shows a smaller size,
    i.e. at the next page-in, `vm_msync` or `Kernel.file_revalidate()`; until then a resident,
    still-mapped page past the new end stays readable (stale data);
  * private (copy-on-write) mappings: pages the task already copied belong to its shadow object and
    stay readable, as in XNU; pages it never copied read through to the file object and fault past
    the new end like a shared mapping;
  * wired pages (vm_wire) past the new end are not dropped (they stay until unwired).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import weakref

from vmcore.errors import InvalidAddress, InvalidArgument, ProtectionFailure
from vmcore.task import Task


def _cleanup(state: dict) -> None:
    """Finalizer: close pager fds, unmount, remove the mount point (never raises)."""
    from vnodefs.mount import MountError, umount

    for fd in list(state["fds"]):
        with contextlib.suppress(OSError):
            os.close(fd)
    state["fds"].clear()
    ev = state.get("events")
    if ev is not None:
        state["events"] = None
        with contextlib.suppress(OSError, ValueError):
            ev.close()
    m = state.get("mount")
    if m is not None:
        state["mount"] = None
        try:
            umount(m.mountpoint, proc=m.proc)
        except (MountError, OSError):
            subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            if m.proc is not None and m.proc.poll() is None:
                m.proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proc.wait(timeout=10)
    tmp = state.get("tmp")
    if tmp:
        with contextlib.suppress(OSError):
            os.rmdir(tmp)
        state["tmp"] = None


class FileSystem:
    """The kernel's vnodefs mount and its file objects (see module doc)."""

    def __init__(self, kernel, source, latency: str | None = "none", trace=None):
        from vnodefs.events import open_channel
        from vnodefs.mount import MountError, mount

        src = os.fspath(source)
        if not os.path.isdir(src):
            raise InvalidArgument(f"files={src!r} is not a directory")
        self.kernel = kernel
        self.source = os.path.realpath(src)
        self.trace_path = os.path.abspath(os.fspath(trace)) if trace is not None else None
        self.state = {"fds": set(), "mount": None, "events": None,
                      "tmp": tempfile.mkdtemp(prefix="vmcore-files-")}
        self._finalizer = weakref.finalize(self, _cleanup, self.state)
        self.events = None  # vnodefs.events.EventReader: the daemon's setsize reports
        self.events_received = self.events_dropped = self.events_applied = 0
        self._final_counts = (0, 0)
        try:
            reader, evconf, evfds = open_channel()
        except OSError as e:
            self._finalizer()
            raise InvalidArgument(f"files={src!r}: cannot create the file events channel: "
                                  f"{e.strerror}") from None
        self.state["events"] = reader
        try:
            m = mount(self.source, self.state["tmp"], trace=self.trace_path, latency=latency,
                      cache="direct", extra={"events": evconf})
        except MountError as e:
            self._finalizer()
            raise InvalidArgument(f"files={src!r}: {e}") from None
        finally:
            for fd in evfds:  # the daemon has its own copies
                os.close(fd)
        self.events = reader
        self.state["mount"] = m
        self.mountpoint = m.mountpoint
        self.latency = m.latency
        self.by_ino: dict[int, object] = {}  # inode -> VMObject
        self.paths: dict[int, str] = {}  # object id -> path relative to the source
        self.shrunk: list = []  # pagers that saw their file shrink (VnodePager.notify)
        self.closed = False

    # ---- names ------------------------------------------------------------------------------------
    def relpath(self, path) -> str:
        """Validate a path relative to SOURCE_DIR (no absolute paths, no escape)."""
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidArgument(f"file path {path!r} must be a non-empty string")
        if os.path.isabs(path):
            raise InvalidArgument(f"file path {path!r} must be relative to the files directory")
        norm = os.path.normpath(path)
        if norm == "." or norm == ".." or norm.startswith("../"):
            raise InvalidArgument(f"file path {path!r} leaves the files directory")
        return norm

    def host_path(self, path) -> str:
        return os.path.join(self.source, self.relpath(path))

    def mount_path(self, path) -> str:
        return os.path.join(self.mountpoint, self.relpath(path))

    # ---- objects ----------------------------------------------------------------------------------
    def object_for(self, path):
        """The VM object of a file (made on first use; one per inode)."""
        from vnodefs.pager import VnodePager

        if self.closed:
            raise InvalidArgument("the kernel's file system is closed")
        rel = self.relpath(path)
        mp = os.path.join(self.mountpoint, rel)
        try:
            st = os.stat(mp)
        except FileNotFoundError:
            raise InvalidArgument(f"file {rel!r} does not exist under {self.source}") from None
        except OSError as e:
            raise InvalidArgument(f"file {rel!r}: {e.strerror}") from None
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode):
            raise InvalidArgument(f"file {rel!r} is not a regular file")
        k = self.kernel
        obj = self.by_ino.get(st.st_ino)
        # the file cache is the object cache of vnode objects (vm_object_enter): vm_stat's
        # "Object cache: N hits of M lookups" counts its lookups
        k.stats.lookups += 1
        if obj is not None and obj.alive:
            k.stats.hits += 1
            if st.st_size < obj.size:  # shrank since: no page may stay past the new end
                self.drop_past(obj, st.st_size)
            else:
                self._resize(obj, st.st_size)
            return obj
        try:
            pager = VnodePager(mp, k.page_size, writable=True, name=rel, notify=self.shrunk)
        except OSError as e:
            raise InvalidArgument(f"file {rel!r}: cannot open: {e.strerror}") from None
        self.state["fds"].add(pager.fd)
        obj = k.object_create(max(st.st_size, 1), pager=pager, internal=False, name=rel)
        self.by_ino[st.st_ino] = obj
        self.paths[obj.id] = rel
        return obj

    def _resize(self, obj, size: int) -> None:
        ps = self.kernel.page_size
        obj.size = max(size, 1)
        obj.npages = (obj.size + ps - 1) // ps

    def path_of(self, obj) -> str | None:
        return self.paths.get(obj.id)

    def resolve(self, object_id: int, offset: int):
        """PageResolver for vmcore.workingset: (path, page) of a file object's page, else None."""
        p = self.paths.get(object_id)
        if p is None:
            return None
        return p, offset // self.kernel.page_size

    # ---- file events (the setsize back edge) ------------------------------------------------------
    def sync_events(self) -> int:
        """Apply the daemon's pending size reports (cheap when there are none: no system call).
        Returns the records applied."""
        ev = self.events
        if ev is None or not ev.pending():
            return 0
        return self._apply_events()

    def _apply_events(self) -> int:
        evs, lost = self.events.read()
        self.events_received += len(evs)
        if lost:
            self.events_dropped += lost
        shrink: dict[int, tuple[object, int]] = {}  # object id -> (object, smallest new size)
        for e in evs:
            if e.kind != "setsize":
                continue  # removed: the object lives on while mapped (see the module doc)
            obj = self.by_ino.get(e.ino)
            if obj is None or not obj.alive:
                continue
            prev = shrink.get(obj.id)
            shrink[obj.id] = (obj, e.size if prev is None else min(prev[1], e.size))
        for obj, size in shrink.values():
            self.setsize(obj, size)
        if lost:  # records were dropped: we cannot know which files shrank; ask every one
            self.revalidate(sync=False)
        self.drain_shrunk()
        self.events_applied += len(shrink)
        return len(evs)

    def setsize(self, obj, size: int) -> int:
        """ubc_setsize for a shrink reported by the file system: drop obj's pages past `size`,
        then take the file's current size (one fstat: it may have grown again since). Returns the
        pages dropped."""
        dropped = self.drop_past(obj, size)
        pager = obj.pager
        if pager is not None and pager.known_size > size:
            pager.known_size = size
        cur = pager.size() if pager is not None else None
        if cur is not None and cur > size:
            self._resize(obj, cur)
        return dropped

    def event_stats(self) -> dict[str, int]:
        """The channel's counters: records the daemon emitted and dropped, records read here,
        file objects resized by them."""
        ev = self.events
        emitted, dropped = ev.counts() if ev is not None else self._final_counts
        return {"emitted": emitted, "dropped": dropped, "received": self.events_received,
                "objects_resized": self.events_applied}

    # ---- truncation -------------------------------------------------------------------------------
    def drain_shrunk(self) -> None:
        """Drop pages past the new end of every file whose pager saw it shrink."""
        while self.shrunk:
            pager = self.shrunk.pop()
            if pager.eof_shrunk is None:
                continue
            new = pager.eof_shrunk
            pager.eof_shrunk = None
            for obj in self.by_ino.values():
                if obj.pager is pager and obj.alive:
                    self.drop_past(obj, new)

    def drop_past(self, obj, size: int) -> int:
        """Free obj's resident pages wholly at or past byte `size` (not written back) and zero
        the resident tail page past `size`; cut the object's size."""
        k = self.kernel
        pm = k.pm
        ps = k.page_size
        limit = (size + ps - 1) // ps
        dropped = 0
        for p, f in sorted(obj.pages.items()):
            if p >= limit and not pm.busy[f] and pm.wire_count[f] == 0:
                pm.dirty[f] = False
                k.page_free(f)
                dropped += 1
        tail = size % ps
        if tail:
            f = obj.pages.get(size // ps)
            if f is not None and not pm.busy[f]:
                pm.views[f][tail:] = bytes(ps - tail)  # bytes past EOF read as zeros, as after a page-in
        self._resize(obj, size)
        return dropped

    def revalidate(self, obj=None, sync: bool = True) -> None:
        """fstat one file object (or all) and drop pages past a new end."""
        if obj is None and sync:
            self.sync_events()
        objs = [obj] if obj is not None else list(self.by_ino.values())
        for o in objs:
            if o.alive and o.pager is not None:
                o.pager.size()
        self.drain_shrunk()

    # ---- lifetime ---------------------------------------------------------------------------------
    def purge(self) -> int:
        """Drop the cache's reference on every file object: objects nobody maps die (their dirty
        pages are written back, their pagers closed). Returns objects released."""
        k = self.kernel
        self.sync_events()
        n = 0
        for ino, obj in list(self.by_ino.items()):
            del self.by_ino[ino]
            if obj.alive:
                fd = getattr(obj.pager, "fd", -1)
                k.object_deallocate(obj)
                n += 1
                if not obj.alive:
                    self.state["fds"].discard(fd)
                    self.paths.pop(obj.id, None)
                else:  # still mapped: keep tracking it (its pager closes when it dies)
                    self.by_ino[ino] = obj
                    obj.ref_count += 1  # the cache keeps its reference after all
        return n

    def close(self) -> None:
        """Write back and release every file object, close the pagers, unmount."""
        if self.closed:
            return
        self.closed = True
        k = self.kernel
        try:
            with contextlib.suppress(Exception):  # a broken channel must not stop the write-back
                self.sync_events()
            for obj in list(self.by_ino.values()):
                if obj.alive:
                    try:
                        k.pageout_daemon.flush_object(obj)
                    finally:
                        if obj.pager is not None:
                            self.state["fds"].discard(getattr(obj.pager, "fd", -1))
                            obj.pager.terminate()
        finally:
            self.by_ino.clear()
            if self.events is not None:
                self._final_counts = self.events.counts()
            self.events = None
            self._finalizer()

    @property
    def mounted(self) -> bool:
        return self.state.get("mount") is not None


class FileTask(Task):
    """The lab Kernel's task: Task + file mappings, msync, launch profiles' seeding and score."""

    def __init__(self, kernel, name: str, is64: bool = True):
        super().__init__(kernel, name, is64=is64)
        self.executable: str | None = None
        self.identity = None
        self.uid: int | None = None
        self.profile = None  # the profile this launch was seeded from
        self.seed_mode = "off"
        self.lazy_seeder = None
        self.scoreboard = None

    # ---- the setsize reports: consumed before anything that can touch file pages ----------------
    def _sync(self) -> None:
        fs = self.kernel.files
        if fs is not None:
            ev = fs.events
            if ev is not None and ev.seq_view[3] != ev.seen_seq:  # EventReader.pending(), inline
                fs._apply_events()

    def read(self, addr, n) -> bytes:
        self._sync()
        return Task.read(self, addr, n)

    def write(self, addr, data) -> None:
        self._sync()
        Task.write(self, addr, data)

    def access(self, addrs, write=False) -> None:
        self._sync()
        Task.access(self, addrs, write)

    def vm_wire(self, addr, size, access=None) -> None:
        self._sync()
        super().vm_wire(addr, size, access)

    # ---- file mappings ----------------------------------------------------------------------------
    def _fs(self) -> FileSystem:
        fs = getattr(self.kernel, "files", None)
        if fs is None:
            raise InvalidArgument("this kernel has no files directory (Kernel(files=SOURCE_DIR))")
        return fs

    def vm_map_file(self, path, offset=0, size=None, prot="rw", shared: bool = True,
                    address=None, behavior=None) -> int:
        """Map `path` (relative to the kernel's files directory) and return the address. shared:
        writes reach the file (pageout, vm_msync); private: copy-on-write over the file."""
        self._alive()
        if not isinstance(shared, bool):
            raise InvalidArgument(f"shared={shared!r} must be True or False")
        fs = self._fs()
        fs.sync_events()
        obj = fs.object_for(path)
        rel = fs.path_of(obj)
        ps = self.kernel.page_size
        if size is None:
            if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
                raise InvalidArgument(f"offset {offset!r} must be a non-negative integer")
            fsize = obj.pager.size() or 0
            size = fsize - offset
            if size <= 0:
                raise InvalidArgument(
                    f"file {rel!r} is {fsize} bytes: nothing to map at offset {offset:#x}")
        maxp = None
        if shared and not obj.pager.writable:
            maxp = "r"
            from vmcore.types import VM_PROT_WRITE, parse_prot

            if parse_prot(prot) & VM_PROT_WRITE:
                raise ProtectionFailure(f"file {rel!r} is read-only: it cannot be mapped shared "
                                        f"writable")
        addr = self.vm_map_object(obj, offset=offset, size=size, prot=prot, copy=not shared,
                                  address=address, max_prot=maxp, tag="mapped file")
        if behavior is not None:
            self.vm_behavior_set(addr, self.map.lookup(addr).end - addr, behavior)
        return addr

    def _file_entries(self, start: int, end: int):
        """(entry, file object) for entries of [start, end) that map a file object directly."""
        fs = getattr(self.kernel, "files", None)
        out = []
        for e in self.map.entries_in(start, end):
            if e.is_submap or e.needs_copy or fs is None:
                continue
            if fs.path_of(e.object) is not None:
                out.append(e)
        return out

    def vm_msync(self, addr, size, sync: bool = True) -> int:
        """Write the dirty pages of shared file mappings in [addr, addr+size) back through the
        mount (the pages stay resident and become clean); sync=True also fsyncs the file.
        Private (copy-on-write) mappings write nothing. Returns pages written."""
        self._alive()
        start, end = self._page_range(addr, size)
        self.map.check_covered(start, end)
        k = self.kernel
        fs = self._fs()
        fs.sync_events()
        shift = k.page_shift
        written = 0
        for e in self._file_entries(start, end):
            obj = e.object
            fs.revalidate(obj)
            a, b = max(e.start, start), min(e.end, end)
            lo = (e.offset + a - e.start) >> shift
            hi = (e.offset + b - e.start) >> shift
            before = k.stats.pageout_failures
            written += k.pageout_daemon.flush_object(obj, lo, hi)
            if k.stats.pageout_failures != before:
                from vmcore.errors import PagerIOError

                raise PagerIOError(f"msync of {fs.path_of(obj)!r}: {k.last_pageout_error}")
            if sync:
                obj.pager.sync()
        return written

    # ---- the access path --------------------------------------------------------------------------
    def _touch(self, addr: int, write: bool) -> int:
        if self.lazy_seeder is not None and self.lazy_seeder.pending_frames:
            e = self.map.lookup(addr)
            if e is None or not (0 <= e.pmap[(addr - e.start) >> self.kernel.page_shift]):
                self.kernel.profiles.lazy_touch(self, addr)
        try:
            f = super()._touch(addr, write)
        except InvalidAddress as err:
            fs = getattr(self.kernel, "files", None)
            if fs is not None:
                fs.drain_shrunk()
                named = self._name_file_fault(addr, err)
                if named is not None:
                    raise named from None
            raise
        fs = self.kernel.files
        if fs is not None and fs.shrunk:
            fs.drain_shrunk()
            return self._touch(addr, write)  # the page may just have been dropped
        return f

    def _name_file_fault(self, addr: int, err) -> InvalidAddress | None:
        e = self.map.lookup(addr)
        fs = self.kernel.files
        if e is None or e.is_submap:
            return None
        obj = e.object
        while obj.shadow is not None:
            obj = obj.shadow
        rel = fs.path_of(obj)
        if rel is None or "past the end" not in str(err):
            return None
        return InvalidAddress(
            f"address {addr:#x} in task {self.name!r} lies past the end of file {rel!r} "
            f"({obj.pager.known_size} bytes now; truncated underneath?)")

    # ---- profiles ---------------------------------------------------------------------------------
    def prefetch_score(self) -> dict[str, int]:
        """BootCache-style score of this launch's seeding: used / wasted / late (and missed,
        prefetched) page counts; zeros when the launch was not seeded."""
        if self.scoreboard is None:
            return {"used": 0, "wasted": 0, "late": 0, "missed": 0, "prefetched": 0}
        return self.scoreboard.score().as_dict()

    def terminate(self) -> None:
        if self.alive:
            prof = getattr(self.kernel, "profiles", None)
            if prof is not None:
                prof.task_ended(self)
        super().terminate()


__all__ = ["FileSystem", "FileTask"]
