"""Address maps (vm_map.c): a VMMap is an ordered list of page-aligned vm_map_entry records.

Owns: `VMMapEntry` (start, end, object + offset, protection, max_protection, inheritance,
behavior, wired_count, is_submap, needs_copy, use_pmap) with the entry's slice of the pmap, and
`VMMap` (sorted entries, lookup by address, first-fit free-space search, clipping).

The pmap: each entry carries `pmap` (numpy int32, entry page -> frame, -1 when not mapped) and `pmw`
(numpy bool, the translation allows writes). A slot is set only by the fault path and cleared by the
kernel's pmap_disconnect / pmap_remove when the page is freed, moved, copied up, or the entry's
protection changes. The reverse map (PhysicalMemory.pv) lists every (entry, slot) mapping a frame;
clipping relabels those records.

use_pmap (Kernel Programming Guide, "Memory Maps Explained": "whether a submap's low-level mappings should be shared among all tasks into
which the submap is mapped"): a submap entry with use_pmap true is *nested*: its `pmap` / `pmw`
arrays are views into the submap's own translation arrays (`VMMap.pmap` / `VMMap.pmw`, one slot per
page of the submap, made by `nested_pmap()`), so a translation entered by one task's fault is seen
by every task that maps the submap (one translation, one pv record `(submap, submap slot)`). A
submap entry with use_pmap false keeps private translations; if it is also needs_copy it is a
copy-on-write submap mapping (the shared region's data): reads see the submap's objects, the first
write extracts the submap entry into the task's own map as a private copy-on-write entry
(vmcore.fault, as vm_map_lookup_locked's cow_sub_map_parent does).

Wiring (vm_map_wire / vm_map_unwire, the Kernel Programming Guide (Memory and Virtual Memory) "Using Mach Memory Maps"): `vm_map_wire(map, start,
end, access_type, user_wire)` faults in every page of the range for `access_type` (so those
accesses no longer fault) and wires it; a user wiring (user_wire true, what vm_wire does) counts
in the entry's user_wired_count, all of them together holding one wiring level, and only a user
wiring can be undone from user space (`vm_map_unwire(..., user_wire=True)`); a kernel wiring
(user_wire false: memory about to be used for I/O) adds a level of its own that only a kernel
unwire removes. Both validate the whole range first and leave nothing wired on failure.

Invariants: entries are sorted, non-overlapping, page aligned, start < end; an entry's object
offset is page aligned and the entry fits in its object; a submap entry's `object` is a VMMap; a
nested entry's pmap is a view of its submap's nested pmap at the entry's offset.
Who calls: task.py (every vm_* call), fault.py (lookup), memory_entry.py (submaps), invariants.py.
Caveats: addresses are Python ints in [map.min_address, map.max_address); 64-bit sparse.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

import numpy as np

from vmcore.errors import InvalidAddress, InvalidArgument, NoSpace, ProtectionFailure
from vmcore.types import (
    VM_PROT_DEFAULT, VM_PROT_NONE, VM_PROT_WRITE, Behavior, Inherit, prot_str,
)

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel


class VMMapEntry:
    __slots__ = ("map", "start", "end", "object", "offset", "protection", "max_protection",
                 "inheritance", "behavior", "wired_count", "user_wired_count", "is_submap",
                 "needs_copy", "use_pmap",
                 "_pmap", "_pmw", "pmv", "pwv", "wired_frames", "last_slot", "run", "tag",
                 "tws_obj", "tws_set", "__weakref__")

    def __init__(self, vmmap: "VMMap", start: int, end: int, obj, offset: int,
                 protection: int = VM_PROT_DEFAULT, max_protection: int = 7,
                 inheritance: Inherit = Inherit.COPY, behavior: Behavior = Behavior.DEFAULT,
                 is_submap: bool = False, needs_copy: bool = False, tag: str = ""):
        self.map = vmmap
        self.start = start
        self.end = end
        self.object = obj
        self.offset = offset
        self.protection = protection
        self.max_protection = max_protection
        self.inheritance = inheritance
        self.behavior = behavior
        #: wiring levels applied to the entry's pages: one per kernel wiring (user_wire false)
        #: plus one for all the user wirings together (as XNU's wired_count)
        self.wired_count = 0
        #: user wirings (vm_wire, user_wire true), which user space may undo one by one
        self.user_wired_count = 0
        self.is_submap = is_submap
        self.needs_copy = needs_copy
        self.use_pmap = True
        n = (end - start) // vmmap.page_size
        self.pmap = np.full(n, -1, dtype=np.int32)
        self.pmw = np.zeros(n, dtype=np.bool_)
        self.wired_frames: np.ndarray | None = None
        self.last_slot = -2  # deactivate-behind: last faulting slot and run length
        self.run = 0
        self.tag = tag
        #: the fault path's cache of the working-set page set of (this map's task, tws_obj)
        self.tws_obj = None
        self.tws_set = None

    # the translation arrays, and memoryview aliases of them (`pmv`, `pwv`: the same memory, for
    # the one-slot-at-a-time fault path, a third of the cost of a numpy scalar access); assigning
    # `pmap` / `pmw` rebinds the alias
    @property
    def pmap(self) -> np.ndarray:
        return self._pmap

    @pmap.setter
    def pmap(self, a: np.ndarray) -> None:
        self._pmap = a
        self.pmv = memoryview(a)

    @property
    def pmw(self) -> np.ndarray:
        return self._pmw

    @pmw.setter
    def pmw(self, a: np.ndarray) -> None:
        self._pmw = a
        self.pwv = memoryview(a)

    @property
    def npages(self) -> int:
        return (self.end - self.start) // self.map.page_size

    @property
    def nested(self) -> bool:
        """A submap entry sharing the submap's translations (use_pmap true)."""
        return self.is_submap and self.use_pmap

    def __repr__(self) -> str:
        what = f"submap" if self.is_submap else f"obj={getattr(self.object, 'id', None)}"
        return (f"<entry {self.start:#x}-{self.end:#x} {what}+{self.offset:#x} prot={self.protection}"
                f"/{self.max_protection} nc={self.needs_copy} wired={self.wired_count}>")


class VMMap:
    """An address space (or a submap: a map fragment shared by several maps)."""

    def __init__(self, page_size: int, min_address: int, max_address: int, name: str = "",
                 is_submap: bool = False):
        self.page_size = page_size
        self.min_address = min_address
        self.max_address = max_address
        self.entries: list[VMMapEntry] = []
        self.starts: list[int] = []
        self.name = name
        self.is_submap = is_submap
        self.task = None
        self.parents: list[VMMapEntry] = []  # for a submap: the entries that map it
        self.version = 0
        self._np_cache = None  # (version, starts ndarray, ends ndarray)
        self.ref_count = 1
        #: a submap's nested pmap (use_pmap): one translation slot per page of the submap; made on
        #: first use by nested_pmap(); pv records of nested translations are (this map, slot)
        self.pmap: np.ndarray | None = None
        self.pmw: np.ndarray | None = None
        self.pmv = self.pwv = None  # memoryview aliases of pmap / pmw (as VMMapEntry's)
        #: a submap whose mappings may never be removed (the shared region: "a shared
        #: library cannot be unshared")
        self.permanent = False

    def nested_pmap(self) -> tuple[np.ndarray, np.ndarray]:
        """The submap's shared translation arrays (created on first use)."""
        if self.pmap is None:
            n = self.max_address // self.page_size
            self.pmap = np.full(n, -1, dtype=np.int32)
            self.pmw = np.zeros(n, dtype=np.bool_)
            self.pmv, self.pwv = memoryview(self.pmap), memoryview(self.pmw)
        return self.pmap, self.pmw

    def attach(self, entry: "VMMapEntry") -> None:
        """Register a parent entry that maps this submap (and nest its pmap when use_pmap)."""
        self.ref_count += 1
        self.parents.append(entry)
        if entry.use_pmap:
            pm, pw = self.nested_pmap()
            lo = entry.offset // self.page_size
            entry.pmap = pm[lo:lo + entry.npages]
            entry.pmw = pw[lo:lo + entry.npages]

    def detach(self, entry: "VMMapEntry") -> None:
        self.parents[:] = [x for x in self.parents if x is not entry]
        self.ref_count -= 1

    # ---- lookup ---------------------------------------------------------------------------------
    def lookup(self, addr: int) -> VMMapEntry | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0:
            e = self.entries[i]
            if addr < e.end:
                return e
        return None

    def index_after(self, addr: int) -> int:
        """Index of the first entry whose end is > addr."""
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.entries[i].end:
            return i
        return i + 1

    def bounds_arrays(self):
        """numpy arrays of entry starts and ends (cached per map version), for batch lookups."""
        c = self._np_cache
        if c is None or c[0] != self.version:
            c = (self.version, np.array(self.starts, dtype=np.int64),
                 np.array([e.end for e in self.entries], dtype=np.int64))
            self._np_cache = c
        return c[1], c[2]

    def find_space(self, size: int) -> int:
        """First fit (vm_map_find_space)."""
        addr = self.min_address
        for e in self.entries:
            if e.start - addr >= size:
                return addr
            addr = max(addr, e.end)
        if self.max_address - addr >= size:
            return addr
        raise NoSpace(f"no free range of {size:#x} bytes in the address space")

    def range_free(self, start: int, end: int) -> bool:
        i = self.index_after(start)
        return i >= len(self.entries) or self.entries[i].start >= end

    # ---- structure changes ----------------------------------------------------------------------
    def insert(self, entry: VMMapEntry) -> None:
        i = bisect.bisect_left(self.starts, entry.start)
        self.entries.insert(i, entry)
        self.starts.insert(i, entry.start)
        self.version += 1

    def remove(self, entry: VMMapEntry) -> None:
        i = bisect.bisect_left(self.starts, entry.start)
        assert self.entries[i] is entry
        del self.entries[i]
        del self.starts[i]
        self.version += 1

    def clip(self, kernel: "Kernel", addr: int) -> None:
        """vm_map_clip_start/end: make addr an entry boundary if it falls inside an entry."""
        e = self.lookup(addr)
        if e is None or e.start == addr:
            return
        ps = self.page_size
        k = (addr - e.start) // ps
        right = VMMapEntry(self, addr, e.end, e.object, e.offset + k * ps, e.protection,
                           e.max_protection, e.inheritance, e.behavior, e.is_submap,
                           e.needs_copy, e.tag)
        right.wired_count = e.wired_count
        right.user_wired_count = e.user_wired_count
        right.use_pmap = e.use_pmap
        right.last_slot, right.run = e.last_slot - k, e.run
        right.pmap = e.pmap[k:]
        right.pmw = e.pmw[k:]
        e.pmap = e.pmap[:k]
        e.pmw = e.pmw[:k]
        if e.wired_frames is not None:
            right.wired_frames = e.wired_frames[k:]
            e.wired_frames = e.wired_frames[:k]
        e.end = addr
        if e.is_submap:
            e.object.ref_count += 1
            e.object.parents.append(right)
        elif e.object is not None:
            e.object.ref_count += 1
        self.insert(right)
        if e.is_submap and e.use_pmap:
            return  # nested: the pv records name the submap's slots, not this entry
        pv = kernel.pm.pv
        for s in np.flatnonzero(right.pmap >= 0).tolist():
            f = int(right.pmap[s])
            lst = pv[f]
            for j, (pe, ps_) in enumerate(lst):
                if pe is e and ps_ == s + k:
                    lst[j] = (right, s)
                    break

    def entries_in(self, start: int, end: int) -> list[VMMapEntry]:
        """Entries overlapping [start, end), in order (no clipping)."""
        out = []
        i = self.index_after(start)
        while i < len(self.entries) and self.entries[i].start < end:
            out.append(self.entries[i])
            i += 1
        return out

    def check_covered(self, start: int, end: int) -> list[VMMapEntry]:
        """Entries covering [start, end) with no hole, else InvalidAddress naming the hole."""
        ents = self.entries_in(start, end)
        addr = start
        for e in ents:
            if e.start > addr:
                break
            addr = e.end
        if addr < end:
            raise InvalidAddress(f"address {addr:#x} in [{start:#x}, {end:#x}) is not mapped")
        return ents

    def clipped_range(self, kernel: "Kernel", start: int, end: int) -> list[VMMapEntry]:
        """Clip at start and end and return the entries exactly covering [start, end)."""
        self.check_covered(start, end)
        self.clip(kernel, start)
        self.clip(kernel, end)
        return self.entries_in(start, end)


# ---- wiring -------------------------------------------------------------------------------------

def _wire_range(vmmap: VMMap, start, end, what: str) -> tuple[int, int]:
    for v, name in ((start, "start"), (end, "end")):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidArgument(f"{what}: {name} {v!r} is not an integer")
    ps = vmmap.page_size
    start, end = start // ps * ps, (end + ps - 1) // ps * ps
    if start >= end:
        raise InvalidArgument(f"{what}: empty range {start:#x}-{end:#x}")
    if start < vmmap.min_address or end > vmmap.max_address:
        raise InvalidAddress(f"{what}: range {start:#x}-{end:#x} lies outside the address space")
    return start, end


def _drop_level(kernel: "Kernel", e: VMMapEntry) -> None:
    for f in e.wired_frames.tolist():
        kernel.frame_unwire(f)
    e.wired_count -= 1
    if e.wired_count == 0:
        e.wired_frames = None


def vm_map_wire(vmmap: VMMap, start: int, end: int, access_type: int | None = None,
                user_wire: bool = False) -> None:
    """Fault in and wire every page of [start, end) of vmmap (the Kernel Programming Guide (Memory and Virtual Memory): "the argument
    access_type indicates the types of accesses that should not be allowed to generate a page
    fault"): the pages are faulted for access_type (a write resolves copy-on-write now, so later
    writes do not fault) and each entry gets a wiring level. access_type None: read, and write
    where the entry allows it (what vm_wire does). user_wire: a user wiring (see the module doc).
    Errors before anything changes: InvalidAddress (a hole), ProtectionFailure (an entry that
    does not allow access_type, or no access at all), InvalidArgument; ResourceShortage when
    the pages cannot all be had (then nothing stays wired)."""
    from vmcore.fault import vm_fault

    task = vmmap.task
    if task is None:
        raise InvalidArgument(f"vm_map_wire: map {vmmap.name!r} belongs to no task")
    k = task.kernel
    start, end = _wire_range(vmmap, start, end, "vm_map_wire")
    if access_type is not None and (isinstance(access_type, bool) or not isinstance(access_type, int)
                                    or not 0 < access_type <= 7):
        raise InvalidArgument(f"vm_map_wire: access_type {access_type!r} is not a protection")
    ents = vmmap.check_covered(start, end)
    for e in ents:
        if e.protection == VM_PROT_NONE:
            raise ProtectionFailure(f"cannot wire {e.start:#x}-{e.end:#x}: no access allowed")
        if access_type is not None and access_type & ~e.protection:
            raise ProtectionFailure(
                f"cannot wire {max(e.start, start):#x}-{min(e.end, end):#x} for "
                f"{prot_str(access_type)}: the region allows {prot_str(e.protection)}")
    ps = k.page_size
    done: list[tuple[VMMapEntry, list[int], bool, bool]] = []
    try:
        for e in vmmap.clipped_range(k, start, end):
            if user_wire and e.user_wired_count:
                e.user_wired_count += 1  # the user level holds the pages already
                done.append((e, [], False, True))
                continue
            if access_type is None:
                write = bool(e.protection & VM_PROT_WRITE) and not e.is_submap
                fallback = True
            else:
                write = bool(access_type & VM_PROT_WRITE)
                fallback = False
            frames: list[int] = []
            first = e.wired_frames is None
            done.append((e, frames, first, False))
            for s_ in range(e.npages):
                a = e.start + s_ * ps
                try:
                    f = vm_fault(k, task, a, write)
                except ProtectionFailure:
                    if not fallback or not write:
                        raise
                    f = vm_fault(k, task, a, False)
                k.frame_wire(f)
                frames.append(f)
            if first:
                e.wired_frames = np.array(frames, dtype=np.int32)
            e.wired_count += 1
            if user_wire:
                e.user_wired_count = 1
    except BaseException:
        for e, frames, first, counted in done:
            if counted:
                e.user_wired_count -= 1
                continue
            for f in frames:
                k.frame_unwire(f)
            if len(frames) == e.npages:
                e.wired_count -= 1
                if user_wire:
                    e.user_wired_count = 0
            if e.wired_count == 0:
                e.wired_frames = None
        raise
    # pages wired at a later level must be the ones recorded by the first
    for e, frames, first, _ in done:
        if not first:
            for s_, f in enumerate(frames):
                w = int(e.wired_frames[s_])
                if w != f:  # the page was replaced since (cannot happen: wired pages stay)
                    k.frame_unwire(f)
                    k.frame_wire(w)


def vm_map_unwire(vmmap: VMMap, start: int, end: int, user_wire: bool = False) -> None:
    """Undo one wiring of every entry of [start, end): a user wiring (user_wire true; the pages
    stay wired while other user wirings or kernel wirings remain) or a kernel one. the Kernel Programming Guide (Memory and Virtual Memory): "If
    you set the argument user_wire to TRUE, then the page can be unwired from user space": a
    range wired by the kernel only cannot be unwired with user_wire true (InvalidArgument), nor
    can a range no kernel wiring holds be unwired with user_wire false."""
    task = vmmap.task
    if task is None:
        raise InvalidArgument(f"vm_map_unwire: map {vmmap.name!r} belongs to no task")
    k = task.kernel
    start, end = _wire_range(vmmap, start, end, "vm_map_unwire")
    for e in vmmap.check_covered(start, end):
        a, b = max(e.start, start), min(e.end, end)
        if user_wire and e.user_wired_count == 0:
            if e.wired_count:
                raise InvalidArgument(f"{a:#x}-{b:#x} is wired by the kernel: it cannot be "
                                      f"unwired from user space")
            raise InvalidArgument(f"{a:#x}-{b:#x} is not wired")
        if not user_wire and e.wired_count - (1 if e.user_wired_count else 0) <= 0:
            raise InvalidArgument(f"{a:#x}-{b:#x} holds no kernel wiring"
                                  + (" (only user wirings)" if e.user_wired_count else ""))
    for e in vmmap.clipped_range(k, start, end):
        if user_wire:
            e.user_wired_count -= 1
            if e.user_wired_count:
                continue
        _drop_level(k, e)
