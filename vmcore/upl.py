"""Universal page lists (docs/mach-vm.md#universal-page-lists, xnu-792): a bounded list of an object's
pages handed to a pager for one pagein or pageout transaction, then committed or aborted.

Owns: `UPL` and the flag values of osfmk/mach/memory_object_types.h that the model implements.

Life cycle: `UPL(kernel, obj, offset, size, flags)` gathers pages (creation), the pager reads or
writes their buffers (`buffers()`, `runs()`), then `commit_range` / `abort_range` settle parts and
`commit` / `abort` settle the rest and free the UPL. With COMMIT_FREE_ON_EMPTY /
ABORT_FREE_ON_EMPTY, the range call that settles the last page frees the UPL; using a freed UPL
raises InvalidArgument.

Creation flags:
  UPL_NO_SYNC          no push to the copy object first: without it, a pagein-direction UPL over an
                       object that has a copy object (vm_copy) first gives the copy object every
                       page of the range it lacks, as the page is now, so that what the UPL's user
                       writes cannot show through the copy
  UPL_COPYOUT_FROM     pageout direction: gather the resident pages of the range; missing, absent,
                       wired or busy pages leave a hole
  UPL_RET_ONLY_DIRTY   with COPYOUT_FROM: only dirty or precious pages; with UPL_FOR_PAGEOUT the
                       neighbours of the anchor page must also be unreferenced and inactive
  UPL_RET_ONLY_ABSENT  pagein: skip resident pages (hole); create absent busy placeholders elsewhere
  UPL_NOBLOCK          do not wait on busy pages: leave a hole. Without it a request that meets a
                       page another UPL holds busy waits for it (the Kernel Programming Guide (Memory and Virtual Memory): "a request for
                       information on that page would normally block"): the new UPL is created
                       waiting (`waiting` > 0, `ready` false; its pages cannot be used or
                       settled yet) and takes the page when the holder commits or aborts it
                       (the model has no threads, so the wait is this state, not a sleep).
                       RET_ONLY_ABSENT requests skip resident pages, busy ones included
  UPL_SET_INTERNAL     the page list is kept inside the UPL (`upl_get_internal_page_list`), so the
                       UPL alone can be passed around (the Kernel Programming Guide (Memory and Virtual Memory): "cause all information about a
                       UPL to be contained in a single memory object"); without it the page list
                       is the creator's own copy (vm_map_get_upl returns it)
  UPL_QUERY_OBJECT_TYPE  vm_map_get_upl only: no UPL, just what object it would be over: flags
                       UPL_DEV_MEMORY / UPL_PHYS_CONTIG and its other properties (`ObjectType`)
  UPL_CLEAN_IN_PLACE   pageout: the pages stay mapped and usable, and are not freed on commit
  UPL_PRECIOUS         pagein: created pages are precious (must be returned even if clean)
Commit flags: COMMIT_FREE_ON_EMPTY, CLEAR_DIRTY, SET_DIRTY, INACTIVATE.
Abort flags: ABORT_RESTART, UNAVAILABLE, ERROR (the page becomes an error page: later faults raise
PagerIOError), FREE_ON_EMPTY, DUMP_PAGES (free the pages).

`vm_map_get_upl(map, addr, size, flags)` (the Kernel Programming Guide (Memory and Virtual Memory): "It gets the underlying VM object associated
with a given range within an address space. Since this returns only the first object in that
range, it is your responsibility to determine whether the entire range is covered by the
resulting UPL"): the UPL of the object of the map entry at addr (through a submap), over at most
the rest of that entry; the result says how many bytes it covers.

Invariants: while open, every gathered page is busy unless CLEAN_IN_PLACE, and its object's
paging_in_progress counts the UPL (which blocks collapse); the kernel's `upls` set holds exactly
the open UPLs (vmcore.invariants checks it is empty between operations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmcore.errors import InvalidAddress, InvalidArgument
from vmcore.resident import INACTIVE

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel

UPL_COPYOUT_FROM = 0x1
UPL_PRECIOUS = 0x2
UPL_NO_SYNC = 0x4
UPL_CLEAN_IN_PLACE = 0x8
UPL_NOBLOCK = 0x10
UPL_RET_ONLY_DIRTY = 0x20
UPL_SET_INTERNAL = 0x40
UPL_QUERY_OBJECT_TYPE = 0x80
UPL_RET_ONLY_ABSENT = 0x100
UPL_SET_LITE = 0x400
UPL_FOR_PAGEOUT = 0x2000
UPL_VALID_FLAGS = 0x00FFFFFF

#: what vm_map_get_upl's QUERY_OBJECT_TYPE reports (memory_object_types.h)
UPL_DEV_MEMORY = 0x1
UPL_PHYS_CONTIG = 0x2

UPL_COMMIT_FREE_ON_EMPTY = 0x1
UPL_COMMIT_CLEAR_DIRTY = 0x2
UPL_COMMIT_SET_DIRTY = 0x4
UPL_COMMIT_INACTIVATE = 0x8
UPL_COMMIT_NOTIFY_EMPTY = 0x10
UPL_COMMIT_ALLOW_ACCESS = 0x20

UPL_ABORT_RESTART = 0x1
UPL_ABORT_UNAVAILABLE = 0x2
UPL_ABORT_ERROR = 0x4
UPL_ABORT_FREE_ON_EMPTY = 0x8
UPL_ABORT_DUMP_PAGES = 0x10
UPL_ABORT_NOTIFY_EMPTY = 0x20
UPL_ABORT_ALLOW_ACCESS = 0x40

MAX_UPL_TRANSFER = 256

_HOLE, _HELD, _DONE, _WAIT = 0, 1, 2, 3


class UPL:
    """One page list over [offset, offset+size) of a VM object."""

    def __init__(self, kernel: "Kernel", obj, offset: int, size: int, flags: int = 0,
                 anchor: int | None = None, _grab_exempt: bool = False):
        ps = kernel.page_size
        if flags & ~UPL_VALID_FLAGS:
            raise InvalidArgument(f"UPL flags {flags:#x} has bits outside UPL_VALID_FLAGS")
        if offset % ps or size % ps or size <= 0 or offset < 0:
            raise InvalidArgument(
                f"UPL range offset={offset:#x} size={size:#x} is not page aligned and non-empty")
        if not obj.alive:
            raise InvalidArgument(f"UPL over dead object {obj.id}")
        n = min(size // ps, MAX_UPL_TRANSFER)
        self.kernel = kernel
        self.object = obj
        self.flags = flags
        self.first = offset // ps  # first page index in the object
        self.npages = n
        self.size = n * ps
        self.frames = [-1] * n
        self.state = [_HOLE] * n
        self.created = [False] * n
        self.was_dirty = [False] * n
        self.closed = False
        self.anchor = anchor
        #: UPL_SET_INTERNAL: the page list lives in the UPL (upl_get_internal_page_list)
        self.internal = bool(flags & UPL_SET_INTERNAL)
        #: pages this UPL waits for (busy in another UPL; no UPL_NOBLOCK)
        self.waiting = 0
        if not flags & (UPL_COPYOUT_FROM | UPL_NO_SYNC) and obj.copy is not None:
            self._copy_sync()
        try:
            for i in range(n):
                self._gather(i)
        except BaseException:
            self._unwind()
            raise
        obj.paging_in_progress += 1
        kernel.upls.add(self)

    def _copy_sync(self) -> None:
        """A UPL that may fill the object's pages, over an object with a copy object (vm_copy):
        the copy object first gets every page of the range it lacks, as the page is now (XNU
        pushes to the copy object unless UPL_NO_SYNC; the pagein paths, whose pager supplies the
        page as it already is, pass UPL_NO_SYNC)."""
        from vmcore.fault import copy_has, copy_push, object_page_find

        k, obj = self.kernel, self.object
        for p in range(self.first, self.first + self.npages):
            if obj.copy is not None and not copy_has(obj, p):
                copy_push(k, obj, p, object_page_find(k, obj, p))

    def _gather(self, i: int) -> None:
        """Take page i of the range into the UPL, leave a hole, or wait for it (a busy page and
        no UPL_NOBLOCK)."""
        kernel, obj, flags = self.kernel, self.object, self.flags
        pm = kernel.pm
        p = self.first + i
        f = obj.pages.get(p)
        if flags & UPL_COPYOUT_FROM:
            if f is None or pm.absent[f] or pm.wire_count[f] > 0:
                return
            if pm.busy[f]:
                self._wait(i) if not flags & UPL_NOBLOCK else None
                return
            if flags & UPL_RET_ONLY_DIRTY and not (pm.dirty[f] or pm.precious[f]):
                return
            if flags & UPL_FOR_PAGEOUT and p != self.anchor and (
                    pm.referenced[f] or pm.queue[f] != INACTIVE):
                return
            self._hold(i, f, busy=not flags & UPL_CLEAN_IN_PLACE)
            self.was_dirty[i] = bool(pm.dirty[f])
            if not flags & UPL_CLEAN_IN_PLACE:
                kernel.pmap_disconnect(f)
            return
        if f is not None:
            if flags & UPL_RET_ONLY_ABSENT or pm.wire_count[f] > 0:
                return
            if pm.busy[f]:
                self._wait(i) if not flags & UPL_NOBLOCK else None
                return
            self._hold(i, f, busy=True)
            return
        nf = kernel.page_grab()
        kernel.page_insert(obj, p, nf)
        pm.absent[nf] = True
        pm.special[nf] = True
        if flags & UPL_PRECIOUS:
            pm.precious[nf] = True
        self.created[i] = True
        self._hold(i, nf, busy=True)

    def _wait(self, i: int) -> None:
        """Wait for page i, busy in another UPL: it is taken when that UPL settles it."""
        self.state[i] = _WAIT
        self.waiting += 1
        self.kernel.upl_waiters.setdefault((self.object.id, self.first + i), []).append((self, i))

    def _unwait_all(self) -> None:
        w = self.kernel.upl_waiters
        for i in range(self.npages):
            if self.state[i] == _WAIT:
                key = (self.object.id, self.first + i)
                lst = [x for x in w.get(key, []) if x[0] is not self]
                if lst:
                    w[key] = lst
                else:
                    w.pop(key, None)
                self.state[i] = _HOLE
        self.waiting = 0

    def _wakeup(self, pages: list[int]) -> None:
        """Pages [first + i] of this UPL's object were settled: UPLs waiting for them retry."""
        w = self.kernel.upl_waiters
        if not w:
            return
        oid = self.object.id
        for p in pages:
            lst = w.pop((oid, p), None)
            for upl, i in lst or ():
                if upl.closed or upl.state[i] != _WAIT:
                    continue
                upl.waiting -= 1
                upl.state[i] = _HOLE
                if upl.object.alive:
                    upl._gather(i)

    def _hold(self, i: int, f: int, busy: bool) -> None:
        self.frames[i] = f
        self.state[i] = _HELD
        if busy:
            self.kernel.pm.busy[f] = True
            self.kernel.pm.special[f] = True

    def _unwind(self) -> None:
        pm = self.kernel.pm
        self._unwait_all()
        settled = []
        for i in range(self.npages):
            if self.state[i] == _HELD:
                f = self.frames[i]
                pm.busy[f] = False
                if self.created[i]:
                    self.kernel.page_free(f, force=True)
                self.state[i] = _DONE
                settled.append(self.first + i)
        self._wakeup(settled)

    # ---- what the pager sees ------------------------------------------------------------------
    def _alive(self) -> None:
        if self.closed:
            raise InvalidArgument("UPL already committed/aborted and freed")
        if self.waiting:
            raise InvalidArgument(
                f"UPL is waiting for {self.waiting} busy page(s) held by another UPL "
                f"(created without UPL_NOBLOCK): settle that UPL first")

    @property
    def ready(self) -> bool:
        """Open and waiting for no busy page."""
        return not self.closed and not self.waiting

    def page_list(self) -> list[tuple[int, int, bool, bool, bool]]:
        """(page index in the UPL, frame, dirty, absent, precious) for every held page."""
        self._alive()
        pm = self.kernel.pm
        return [(i, f, bool(pm.dirty[f]), bool(pm.absent[f]), bool(pm.precious[f]))
                for i, f in enumerate(self.frames) if self.state[i] == _HELD]

    def frame_at(self, i: int) -> int:
        return self.frames[i]

    def buffers(self) -> list[memoryview]:
        """One writable page buffer per held page, in order (holes skipped)."""
        self._alive()
        fr = self.kernel.pm.frames
        return [memoryview(fr[f]) for i, f in enumerate(self.frames) if self.state[i] == _HELD]

    def runs(self) -> list[tuple[int, list[int]]]:
        """Contiguous runs of held pages: (first page index in the object, [UPL indexes])."""
        self._alive()
        out: list[tuple[int, list[int]]] = []
        cur: list[int] = []
        for i in range(self.npages):
            if self.state[i] == _HELD:
                if cur and cur[-1] == i - 1:
                    cur.append(i)
                else:
                    if cur:
                        out.append((self.first + cur[0], cur))
                    cur = [i]
        if cur:
            out.append((self.first + cur[0], cur))
        return out

    @property
    def held(self) -> int:
        return sum(1 for s in self.state if s == _HELD)

    # ---- settling -----------------------------------------------------------------------------
    def _range(self, offset: int, size: int) -> range:
        ps = self.kernel.page_size
        if offset % ps or size % ps or offset < 0 or size < 0 or offset + size > self.size:
            raise InvalidArgument(
                f"UPL range offset={offset:#x} size={size:#x} outside the UPL's {self.size:#x} bytes")
        return range(offset // ps, (offset + size) // ps)

    def commit_range(self, offset: int, size: int, flags: int = 0, _speculative: bool = False) -> bool:
        """Settle [offset, offset+size) as done; returns True when the UPL is now empty."""
        self._alive()
        k = self.kernel
        pm = k.pm
        pageout = bool(self.flags & UPL_COPYOUT_FROM)
        settled = []
        for i in self._range(offset, size):
            if self.state[i] != _HELD:
                continue
            f = self.frames[i]
            self.state[i] = _DONE
            pm.busy[f] = False
            settled.append(self.first + i)
            if pageout:
                pm.precious[f] = False
                if flags & UPL_COMMIT_SET_DIRTY:
                    pm.dirty[f] = True
                    continue
                pm.dirty[f] = False
                if not self.flags & UPL_CLEAN_IN_PLACE:
                    k.page_free(f)
                    if self.was_dirty[i]:
                        k.stats.pageouts += 1
                elif flags & UPL_COMMIT_INACTIVATE and pm.wire_count[f] == 0:
                    pm.deactivate(f)
            else:
                pm.absent[f] = False
                if flags & UPL_COMMIT_SET_DIRTY:
                    pm.dirty[f] = True
                if flags & UPL_COMMIT_CLEAR_DIRTY:
                    pm.dirty[f] = False
                if pm.wire_count[f]:
                    continue
                if _speculative:
                    pm.clustered[f] = True
                    pm.special[f] = True
                    pm.deactivate(f)  # speculative: reference bit clear, inactive tail
                    if k.policy is not None:
                        k.policy_insert(f)
                elif flags & UPL_COMMIT_INACTIVATE or not pm.referenced[f]:
                    pm.deactivate(f)
                else:
                    pm.activate(f)
        self._wakeup(settled)
        return self._maybe_free(flags & UPL_COMMIT_FREE_ON_EMPTY)

    def abort_range(self, offset: int, size: int, flags: int = 0) -> bool:
        self._alive()
        k = self.kernel
        pm = k.pm
        settled = []
        for i in self._range(offset, size):
            if self.state[i] != _HELD:
                continue
            f = self.frames[i]
            self.state[i] = _DONE
            pm.busy[f] = False
            settled.append(self.first + i)
            if pm.absent[f]:
                if flags & UPL_ABORT_ERROR:
                    self.object.error_pages.add(self.first + i)
                k.page_free(f, force=True)
            elif flags & UPL_ABORT_DUMP_PAGES and pm.wire_count[f] == 0:
                k.page_free(f, force=True)
        self._wakeup(settled)
        return self._maybe_free(flags & UPL_ABORT_FREE_ON_EMPTY)

    def _maybe_free(self, free_on_empty: int) -> bool:
        empty = all(s != _HELD for s in self.state)
        if empty and free_on_empty:
            self.close()
        return empty

    def commit(self, flags: int = 0) -> None:
        self.commit_range(0, self.size, flags)
        self.close()

    def abort(self, flags: int = 0) -> None:
        if self.closed:
            return
        self._unwait_all()  # a waiting request given up
        self.abort_range(0, self.size, flags)
        self.close()

    def close(self) -> None:
        """ubc_upl_deallocate: abort whatever is still held and free the UPL."""
        if self.closed:
            return
        self._unwait_all()
        if any(s == _HELD for s in self.state):
            self.abort_range(0, self.size)
        self.closed = True
        self.object.paging_in_progress -= 1
        self.kernel.upls.discard(self)

    deallocate = close

    def __enter__(self) -> "UPL":
        return self

    def __exit__(self, *exc) -> None:
        if not self.closed:
            self.abort()


# ---- the page list and vm_map_get_upl ----------------------------------------------------------

def upl_get_internal_page_list(upl: UPL) -> list[tuple[int, int, bool, bool, bool]]:
    """The page list kept inside a UPL created with UPL_SET_INTERNAL (live: it follows commits
    and aborts). A UPL made without the flag keeps none: its creator has its own copy."""
    if not upl.internal:
        raise InvalidArgument("UPL was created without UPL_SET_INTERNAL: its page list is the "
                              "creator's, not the UPL's")
    return upl.page_list()


@dataclass(frozen=True)
class ObjectType:
    """What QUERY_OBJECT_TYPE reports of the object a UPL would be over."""

    flags: int  # UPL_DEV_MEMORY | UPL_PHYS_CONTIG
    object_id: int
    phys_contiguous: bool  # one physically contiguous run (device memory over one buffer)
    device_memory: bool  # device (IOKit) memory: fictitious pages, never paged
    internal: bool  # anonymous memory (the default pager) rather than a file
    pager_kind: str  # "default", "vnode", "device", or "none" before a pager is needed
    true_share: bool  # shared: copies of it are made eagerly
    size: int  # bytes
    resident_pages: int
    shadow_depth: int


@dataclass
class MapUPL:
    """vm_map_get_upl's result: the UPL (None with QUERY_OBJECT_TYPE), the bytes of the asked
    range it covers from the start address (the caller checks coverage), the object type flags,
    the creator's page list (None when UPL_SET_INTERNAL keeps it in the UPL), the object's type."""

    upl: UPL | None
    size: int
    flags: int
    page_list: list | None
    object_type: ObjectType


def object_type(obj) -> ObjectType:
    from vmcore.pager import PagerKind

    dev = obj.pager is not None and obj.pager.kind is PagerKind.DEVICE
    return ObjectType((UPL_DEV_MEMORY | UPL_PHYS_CONTIG) if dev else 0, obj.id, dev, dev,
                      obj.internal, obj.pager.kind.value if obj.pager is not None else "none",
                      obj.true_share, obj.size, len(obj.pages), obj.depth())


def vm_map_get_upl(vmmap, addr: int, size: int, flags: int = 0) -> MapUPL:
    """The UPL of the first VM object in [addr, addr+size) of vmmap (see the module doc): over the
    map entry holding addr (through a submap) and at most to its end, and at most
    MAX_UPL_TRANSFER pages. A request that will fill pages (no UPL_COPYOUT_FROM) through a
    copy-on-write entry first gives the entry its own shadow object, so the pages land there.
    Errors: InvalidAddress (addr unmapped), InvalidArgument (bad range or flags)."""
    task = getattr(vmmap, "task", None)
    if task is None:
        raise InvalidArgument(f"vm_map_get_upl: map {vmmap.name!r} belongs to no task")
    k = task.kernel
    ps = k.page_size
    for v, name in ((addr, "address"), (size, "size")):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidArgument(f"vm_map_get_upl: {name} {v!r} is not an integer")
    if addr % ps or size % ps or size <= 0:
        raise InvalidArgument(
            f"vm_map_get_upl: range {addr:#x}+{size:#x} is not page aligned and non-empty")
    if flags & ~UPL_VALID_FLAGS:
        raise InvalidArgument(f"UPL flags {flags:#x} has bits outside UPL_VALID_FLAGS")
    e = vmmap.lookup(addr)
    if e is None:
        raise InvalidAddress(f"vm_map_get_upl: address {addr:#x} is not mapped")
    end = min(addr + size, e.end)
    if e.is_submap:
        saddr = e.offset + (addr - e.start)
        se = e.object.lookup(saddr)
        if se is None:
            raise InvalidAddress(f"vm_map_get_upl: address {addr:#x} (offset {saddr:#x} in submap "
                                 f"{e.object.name!r}) is not mapped")
        end = min(end, addr + (se.end - saddr))
        e, addr_in = se, saddr
    else:
        addr_in = addr
    if e.needs_copy and not flags & UPL_COPYOUT_FROM:
        k.entry_resolve_needs_copy(e)
    obj = e.object
    covered = min(end - addr, MAX_UPL_TRANSFER * ps)
    ot = object_type(obj)
    if flags & UPL_QUERY_OBJECT_TYPE:
        return MapUPL(None, covered, ot.flags, None, ot)
    upl = UPL(k, obj, e.offset + (addr_in - e.start), covered, flags)
    return MapUPL(upl, upl.size, ot.flags, None if upl.internal else upl.page_list(), ot)
