"""Tasks: an address space (VMMap) and the Mach VM calls on it, plus the vectorised access path.

Owns: `Task` with vm_allocate, vm_deallocate, vm_protect, vm_inherit, vm_behavior_set, vm_wire
and vm_unwire (user wirings: vmcore.map.vm_map_wire), vm_read, vm_write, read, write, vm_copy
(vmcore.map_copy), vm_map (a named entry), vm_map_object (an object or pager, e.g. a file), fork,
vm_region, regions, terminate, and `access(addrs, write)`, the batch access used by trace replay;
and `Region`, one vm_region record.

Every call validates its whole range before changing anything (holes -> InvalidAddress, rights ->
ProtectionFailure, bad sizes or alignment -> InvalidArgument, overlaps -> NoSpace), so a failed
call leaves the task as it was. Exception: read/write/access stop at the first page that cannot get
a frame (ResourceShortage) or whose pager fails (PagerIOError, InvalidAddress from a BAD page);
bytes before it were transferred.

Hit path (`access`, and the first step of every read/write): a page whose translation is in the
entry's pmap (with write permission for a write) is a hit: its reference bit (and modify bit) is
set in numpy batches and the replacement policy gets the frames in one `referenced(frames)` call;
no Python runs per hit. A miss goes through vmcore.fault.vm_fault. Hits computed before a fault are
reused only if no translation was removed in between (kernel.pmap_epoch unchanged).

fork (docs/mach-vm.md#fork, xnu vm_map_fork): per entry inheritance: none -> nothing; shared -> the child maps
the same object (a needs_copy entry gets its shadow first, the object becomes true_share); copy ->
symmetric copy-on-write (both entries needs_copy, the parent's translations write-protected), or
an eager copy (vm_object_copy_slowly) when the object is true_share. Submap entries are always
shared, keeping use_pmap (nested: the child views the submap's shared pmap) and copy-on-write
(the shared region's DATA). Device memory is always shared, never copied (vmcore.device_pager).
The child keeps its parent's shared region set (vmcore.shared_region).

Submaps (vm_map of a named region): nested by default (use_pmap true: translations shared through
the submap's pmap), or copy=True for a copy-on-write submap mapping (use_pmap false). vm_protect
of a nested entry unnests it (pmap_unnest: private translations from then on).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from vmcore.errors import InvalidAddress, InvalidArgument, NoSpace, ProtectionFailure, VMError
from vmcore.fault import object_copy_slowly, resolve_entry, vm_fault, zero_fill_fast
from vmcore.map import VMMap, VMMapEntry, vm_map_unwire, vm_map_wire
from vmcore.object import object_deallocate, object_page_remove
from vmcore.pager import Pager, PagerKind
from vmcore.types import (
    SM_COW, SM_EMPTY, SM_PRIVATE, SM_PRIVATE_ALIASED, SM_SHARED, SM_SHARED_ALIASED, VM_PROT_ALL,
    VM_PROT_DEFAULT, VM_PROT_READ, VM_PROT_WRITE, Behavior, Inherit, format_size,
    parse_prot, parse_size, prot_str,
)


@dataclass
class Region:
    """One vm_region record (what vmmap prints per line)."""

    start: int
    end: int
    protection: str
    max_protection: str
    inheritance: str
    behavior: str
    share_mode: str
    resident: int  # pages resident (in any object of the chain)
    dirty: int  # resident pages that are modified
    swapped: int  # pages held only by a pager
    object_id: int | None
    detail: str
    wired: int = 0  # wired count of the entry
    is_submap: bool = False
    shadow_depth: int = 0
    tag: str = ""

    @property
    def size(self) -> int:
        return self.end - self.start

    def format(self, page_size: int = 4096) -> str:
        """`START-END [VSIZE RSDNT DIRTY SWAP] PRT/MAX SHRMOD DETAIL` (vmmap 2.4 columns)."""
        def sz(pages: int) -> str:
            return format_size(pages * page_size) if pages else "0K"

        return (f"{(self.tag or 'VM_ALLOCATE'):<14s} {self.start:016x}-{self.end:016x} "
                f"[{format_size(self.size):>6s} {sz(self.resident):>6s} {sz(self.dirty):>6s} "
                f"{sz(self.swapped):>6s}] {self.protection}/{self.max_protection} "
                f"SM={self.share_mode:<3s} {self.detail}")


def _unnest(e: VMMapEntry) -> None:
    """pmap_unnest: a nested submap entry gets private (empty) translations; the submap's shared
    translations stay for the other tasks."""
    e.use_pmap = False
    e.pmap = np.full(e.npages, -1, dtype=np.int32)
    e.pmw = np.zeros(e.npages, dtype=np.bool_)


def _as_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidArgument(f"{what} {v!r} is not an integer")
    return int(v)


class Task:
    def __init__(self, kernel, name: str, is64: bool = True):
        from vmcore.kernel import USER32_MAX_ADDRESS, USER_MAX_ADDRESS, USER_MIN_ADDRESS

        self.kernel = kernel
        self.name = name
        self.id = kernel._next_task
        kernel._next_task += 1
        #: a 64-bit task, or a 32-bit one whose address space ends at 4 GiB (Memory Management in Mac OS X)
        self.is64 = bool(is64)
        self.map = VMMap(kernel.page_size, USER_MIN_ADDRESS,
                         USER_MAX_ADDRESS if self.is64 else USER32_MAX_ADDRESS, name=name)
        self.map.task = self
        self.created_at = kernel.clock.now()
        self.alive = True
        self.parent = None
        self.shared_regions = None  # the vmcore.shared_region set this task maps
        kernel.tasks[self.id] = self

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name!r} entries={len(self.map.entries)}>"

    # ---- argument checking --------------------------------------------------------------------
    def _alive(self) -> None:
        if not self.alive:
            raise InvalidArgument(f"task {self.name!r} has terminated")

    def _size(self, size, what: str = "size") -> int:
        size = _as_int(size, what)
        if size <= 0:
            raise InvalidArgument(f"{what} {size} must be positive")
        if size > self.map.max_address - self.map.min_address:
            raise InvalidArgument(f"{what} {size:#x} is larger than the address space")
        return size

    def _page_range(self, addr, size) -> tuple[int, int]:
        """[trunc_page(addr), round_page(addr+size)) after validation."""
        addr = _as_int(addr, "address")
        size = self._size(size)
        if addr < 0 or addr + size > self.map.max_address:
            raise InvalidAddress(f"range {addr:#x}+{size:#x} lies outside the address space")
        ps = self.kernel.page_size
        return addr // ps * ps, (addr + size + ps - 1) // ps * ps

    # ---- allocation ---------------------------------------------------------------------------
    def vm_allocate(self, size, address=None, prot="rw", tag: str = "VM_ALLOCATE") -> int:
        """Map size bytes of zero-filled anonymous memory, anywhere or at a fixed address."""
        self._alive()
        size = self._size(size)
        ps = self.kernel.page_size
        size = (size + ps - 1) // ps * ps
        p = parse_prot(prot)
        if address is None:
            addr = self.map.find_space(size)
        else:
            addr = _as_int(address, "address")
            if addr % ps:
                raise InvalidArgument(f"fixed address {addr:#x} is not page aligned ({ps} bytes)")
            if addr < self.map.min_address or addr + size > self.map.max_address:
                raise InvalidAddress(
                    f"fixed range {addr:#x}+{size:#x} lies outside the address space "
                    f"[{self.map.min_address:#x}, {self.map.max_address:#x})")
            if not self.map.range_free(addr, addr + size):
                raise NoSpace(f"fixed range {addr:#x}-{addr + size:#x} overlaps an existing mapping")
        obj = self.kernel.object_create(size, internal=True)
        e = VMMapEntry(self.map, addr, addr + size, obj, 0, p, VM_PROT_ALL, Inherit.COPY,
                       Behavior.DEFAULT, tag=tag)
        self.map.insert(e)
        return addr

    def vm_deallocate(self, addr, size) -> None:
        """Remove every mapping in the range (holes are allowed, as in Mach)."""
        self._alive()
        start, end = self._page_range(addr, size)
        ents = self.map.entries_in(start, end)
        if not ents:
            return
        private = self._private_objects(ents)
        self.map.clip(self.kernel, start)
        self.map.clip(self.kernel, end)
        for e in self.map.entries_in(start, end):
            self._entry_delete(e, free_pages=e.object in private)

    def _private_objects(self, ents) -> set:
        """Objects whose every reference is an entry of this map over disjoint offsets: pages of a
        removed part can be freed (and their swap discarded) at once."""
        out = set()
        for e in ents:
            obj = e.object
            if e.is_submap or obj in out or not obj.internal or obj.true_share or obj.shadowers:
                continue
            refs = sum(1 for x in self.map.entries if x.object is obj)
            if refs == obj.ref_count:
                out.add(obj)
        return out

    def _entry_delete(self, e: VMMapEntry, free_pages: bool = False) -> None:
        k = self.kernel
        if e.wired_count and e.wired_frames is not None:
            for f in e.wired_frames.tolist():
                if f >= 0:
                    for _ in range(e.wired_count):
                        k.frame_unwire(f)
            e.wired_count = e.user_wired_count = 0
            e.wired_frames = None
        if not e.nested:  # a nested entry's translations belong to the submap (pmap_unnest)
            k.pmap_remove_range(e)
        self.map.remove(e)
        if e.is_submap:
            e.object.detach(e)
            return
        obj = e.object
        if free_pages and obj.ref_count > 1:
            off = e.offset >> k.page_shift
            object_page_remove(k, obj, off, off + e.npages)
        object_deallocate(k, obj)

    # ---- attributes -----------------------------------------------------------------------------
    def vm_protect(self, addr, size, prot, set_maximum: bool = False) -> None:
        """Set the protection (never above max_protection); set_maximum lowers the maximum."""
        self._alive()
        start, end = self._page_range(addr, size)
        new = parse_prot(prot)
        ents = self.map.check_covered(start, end)
        for e in ents:
            if new & ~e.max_protection:
                raise ProtectionFailure(
                    f"protection {prot_str(new)} exceeds the maximum {prot_str(e.max_protection)} "
                    f"of {max(e.start, start):#x}-{min(e.end, end):#x}")
        for e in self.map.clipped_range(self.kernel, start, end):
            if set_maximum:
                e.max_protection = new
                e.protection &= new
            else:
                e.protection = new
            if e.nested:
                _unnest(e)  # the task's protection differs: it gets translations of its own
            else:
                self.kernel.pmap_remove_range(e)

    def vm_inherit(self, addr, size, inheritance) -> None:
        self._alive()
        start, end = self._page_range(addr, size)
        inh = Inherit.parse(inheritance)
        ents = self.map.check_covered(start, end)
        for e in ents:
            if e.is_submap and inh == Inherit.COPY:
                raise InvalidArgument(
                    f"a submap ({e.start:#x}-{e.end:#x}) cannot be inherited by copy")
            if not e.is_submap and inh == Inherit.COPY and e.object.kind == PagerKind.DEVICE:
                raise InvalidArgument(
                    f"device memory ({e.start:#x}-{e.end:#x}) cannot be inherited by copy")
        for e in self.map.clipped_range(self.kernel, start, end):
            e.inheritance = inh

    def vm_behavior_set(self, addr, size, behavior) -> None:
        self._alive()
        start, end = self._page_range(addr, size)
        b = Behavior.parse(behavior)
        self.map.check_covered(start, end)
        for e in self.map.clipped_range(self.kernel, start, end):
            e.behavior = b
            e.run = 0
            e.last_slot = -2

    # ---- wiring ---------------------------------------------------------------------------------
    def vm_wire(self, addr, size, access=None) -> None:
        """Fault in and wire every page of the range (it then survives any memory pressure): a
        user wiring (vm_map_wire with user_wire true). `access` (protection bits or "rw"-style):
        the accesses that must not fault from now on; None: read, and write where allowed."""
        self._alive()
        start, end = self._page_range(addr, size)
        vm_map_wire(self.map, start, end, None if access is None else parse_prot(access),
                    user_wire=True)

    def vm_unwire(self, addr, size) -> None:
        """Undo one vm_wire of the range (vm_map_unwire with user_wire true)."""
        self._alive()
        start, end = self._page_range(addr, size)
        vm_map_unwire(self.map, start, end, user_wire=True)

    # ---- byte access ------------------------------------------------------------------------------
    def _check_access(self, addr: int, n: int, write: bool) -> None:
        """The whole range is mapped and allows the access (before any byte moves)."""
        if addr < 0 or addr + n > self.map.max_address:
            raise InvalidAddress(f"range {addr:#x}+{n:#x} lies outside the address space")
        ps = self.kernel.page_size
        start, end = addr // ps * ps, (addr + n + ps - 1) // ps * ps
        need = VM_PROT_WRITE if write else VM_PROT_READ
        for e in self.map.check_covered(start, end):
            if e.is_submap:
                a = max(e.start, start)
                while a < min(e.end, end):
                    resolve_entry(self, a, write)
                    a += ps
            elif not e.protection & need:
                raise ProtectionFailure(
                    f"{'write' if write else 'read'} at {max(e.start, addr):#x} in task "
                    f"{self.name!r}: region {e.start:#x}-{e.end:#x} allows {prot_str(e.protection)}")

    def _touch(self, addr: int, write: bool) -> int:
        """Translate one address (hit or fault); returns the frame."""
        e = self.map.lookup(addr)
        if e is not None:
            k = self.kernel
            slot = (addr - e.start) >> k.page_shift
            f = e.pmv[slot]
            if f >= 0 and (not write or e.pwv[slot]):
                pm = k.pm
                pm.ref_mv[f] = True
                if write:
                    pm.dirty_mv[f] = True
                if k.policy is not None and k.tracked[f]:
                    k.policy_hit(f)
                return f
        return vm_fault(self.kernel, self, addr, write, e)

    def read(self, addr, n) -> bytes:
        """Read n bytes at addr (any alignment) through the fault path."""
        self._alive()
        addr = _as_int(addr, "address")
        n = _as_int(n, "length")
        if n < 0:
            raise InvalidArgument(f"length {n} is negative")
        if n == 0:
            return b""
        self._check_access(addr, n, False)
        ps = self.kernel.page_size
        views = self.kernel.pm.views
        out = bytearray(n)
        pos = 0
        a = addr
        while pos < n:
            off = a & (ps - 1)
            chunk = min(ps - off, n - pos)
            f = self._touch(a, False)
            out[pos:pos + chunk] = views[f][off:off + chunk]
            pos += chunk
            a += chunk
        return bytes(out)

    def write(self, addr, data) -> None:
        """Write bytes at addr (any alignment) through the fault path."""
        self._alive()
        addr = _as_int(addr, "address")
        try:
            buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        except TypeError:
            raise InvalidArgument(f"data of type {type(data).__name__} is not bytes-like") from None
        n = buf.size
        if n == 0:
            return
        self._check_access(addr, n, True)
        ps = self.kernel.page_size
        views = self.kernel.pm.views
        pos = 0
        a = addr
        while pos < n:
            off = a & (ps - 1)
            chunk = min(ps - off, n - pos)
            f = self._touch(a, True)
            views[f][off:off + chunk] = buf[pos:pos + chunk]
            pos += chunk
            a += chunk

    def vm_read(self, addr, size) -> bytes:
        return self.read(addr, size)

    def vm_write(self, addr, data) -> None:
        self.write(addr, data)

    def vm_copy(self, src, size, dst) -> None:
        """Copy size bytes from src to dst within this task (dst must be mapped and writable):
        vm_map_copyin + vm_map_copy_overwrite (vmcore.map_copy). Page-aligned copies share the
        pages copy-on-write (the source object gets a copy object, Memory Management in Mac OS X and the Kernel Programming Guide); others
        move bytes."""
        from vmcore.map_copy import vm_map_copy_discard, vm_map_copy_overwrite, vm_map_copyin

        self._alive()
        src = _as_int(src, "source address")
        dst = _as_int(dst, "destination address")
        size = self._size(size)
        self._check_access(src, size, False)
        self._check_access(dst, size, True)
        ps = self.kernel.page_size
        if src % ps or dst % ps or size % ps:
            data = self.read(src, size)
            self.write(dst, data)
            return
        copy = vm_map_copyin(self.map, src, size)
        try:
            vm_map_copy_overwrite(self.map, dst, copy)
        finally:
            vm_map_copy_discard(copy)

    # ---- vectorised access (trace replay) ---------------------------------------------------------
    def access(self, addrs, write=False) -> None:
        """Touch the page of each address in order, as one-byte reads (or writes) would."""
        self._alive()
        a = np.asarray(addrs)
        if a.ndim != 1:
            a = a.reshape(-1)
        if a.size == 0:
            return
        if a.dtype.kind not in "iu":
            raise InvalidArgument(f"addresses must be integers, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        n = a.size
        warr = None
        if isinstance(write, (bool, np.bool_)):
            wscalar = bool(write)
        else:
            warr = np.asarray(write)
            if warr.shape != (n,):
                raise InvalidArgument(f"write flags have shape {warr.shape}, addresses ({n},)")
            warr = warr.astype(np.bool_, copy=False)
            wscalar = False
        k = self.kernel
        # a plain Task's _touch may be inlined for misses (a subclass's override is always called)
        plain = type(self)._touch is Task._touch
        mp = self.map
        shift = k.page_shift
        last_e, ver = None, -1
        i = 0
        W = 1024
        while i < n:
            end = min(n, i + W)
            seg = a[i:end]
            wseg = warr[i:end] if warr is not None else None
            fr, ok = self._lookup(seg, wseg, wscalar)
            m = end - i
            if ok.all():
                self._hits(fr, wseg, wscalar)
                i = end
                W = min(W * 2, 1 << 16)
                continue
            bad = np.flatnonzero(~ok).tolist()
            epoch = k.pmap_epoch
            pos = 0
            stale = False
            # addresses (and flags) as Python ints once per window when misses are many
            many = 8 * len(bad) >= m
            segl = seg.tolist() if many else None
            wl = wseg.tolist() if many and wseg is not None else None
            for j in bad:
                if j > pos:
                    if k.pmap_epoch != epoch:
                        stale = True
                        break
                    self._hits(fr[pos:j], wseg[pos:j] if wseg is not None else None, wscalar)
                if many:
                    a_, w_ = segl[j], (wl[j] if wl is not None else wscalar)
                else:
                    a_, w_ = int(seg[j]), (bool(wseg[j]) if wseg is not None else wscalar)
                if plain:
                    # Task._touch inline, with the entry of the last miss when it still holds a_
                    # (the map unchanged), and the zero-fill fast path called directly
                    e = last_e
                    if e is None or mp.version != ver or not e.start <= a_ < e.end:
                        e = last_e = mp.lookup(a_)
                        ver = mp.version
                    if e is not None and not e.is_submap:
                        slot = (a_ - e.start) >> shift
                        f = e.pmv[slot]
                        if (f < 0 or (w_ and not e.pwv[slot])) \
                                and zero_fill_fast(k, self, e, slot, a_, w_) >= 0:
                            pos = j + 1
                            continue
                self._touch(a_, w_)
                pos = j + 1
            if not stale and pos < m and k.pmap_epoch == epoch:
                self._hits(fr[pos:], wseg[pos:] if wseg is not None else None, wscalar)
                pos = m
            i += pos
            W = max(64, min(W, 4 * (pos + 1)))

    def _lookup(self, seg: np.ndarray, wseg, wscalar: bool):
        """Frames of the pmap translations of seg (-1: none) and the hit mask."""
        shift = self.kernel.page_shift
        lo = int(seg.min())
        hi = int(seg.max())
        e = self.map.lookup(lo)
        if e is not None and hi < e.end:
            slots = (seg - e.start) >> shift
            fr = e.pmap[slots]
            ok = fr >= 0
            if wscalar:
                ok &= e.pmw[slots]
            elif wseg is not None:
                ok &= e.pmw[slots] | ~wseg
            return fr, ok
        starts, ends = self.map.bounds_arrays()
        fr = np.full(seg.size, -1, dtype=np.int32)
        pw = np.zeros(seg.size, dtype=np.bool_)
        if starts.size:
            idx = np.searchsorted(starts, seg, side="right") - 1
            valid = idx >= 0
            valid[valid] &= seg[valid] < ends[idx[valid]]
            for u in np.unique(idx[valid]).tolist():
                ent = self.map.entries[u]
                mask = valid & (idx == u)
                slots = (seg[mask] - ent.start) >> shift
                fr[mask] = ent.pmap[slots]
                pw[mask] = ent.pmw[slots]
        ok = fr >= 0
        if wscalar:
            ok &= pw
        elif wseg is not None:
            ok &= pw | ~wseg
        return fr, ok

    def _hits(self, fr: np.ndarray, wseg, wscalar: bool) -> None:
        if fr.size == 0:
            return
        k = self.kernel
        pm = k.pm
        pm.referenced[fr] = True
        if wscalar:
            pm.dirty[fr] = True
        elif wseg is not None:
            pm.dirty[fr[wseg]] = True
        pol = k.policy
        if pol is not None:
            if k.nwired:
                fr = fr[pm.wire_count[fr] == 0]
                if fr.size == 0:
                    return
            pol.referenced(fr)

    # ---- mapping objects and named entries -------------------------------------------------------
    def _place(self, size: int, address) -> int:
        ps = self.kernel.page_size
        if address is None:
            return self.map.find_space(size)
        addr = _as_int(address, "address")
        if addr % ps:
            raise InvalidArgument(f"fixed address {addr:#x} is not page aligned ({ps} bytes)")
        if addr < self.map.min_address or addr + size > self.map.max_address:
            raise InvalidAddress(f"fixed range {addr:#x}+{size:#x} lies outside the address space")
        if not self.map.range_free(addr, addr + size):
            raise NoSpace(f"fixed range {addr:#x}-{addr + size:#x} overlaps an existing mapping")
        return addr

    def vm_map(self, handle, size=None, offset=0, address=None, prot=None,
               inheritance="shared", copy: bool = False, max_prot=None, use_pmap=None,
               tag: str | None = None) -> int:
        """Map a named entry (from Kernel.make_memory_entry / make_named_region).

        For a named region (submap): use_pmap (default: not copy) shares the submap's
        translations with every other task that maps it nested; copy=True maps it copy-on-write
        (use_pmap false): the task sees the submap's pages until it writes, and a write gives it
        a private copy of that submap entry's pages (the shared-library DATA submap of the Kernel Programming Guide)."""
        from vmcore.memory_entry import NamedEntry

        self._alive()
        if not isinstance(handle, NamedEntry) or not handle.alive:
            raise InvalidArgument(f"{handle!r} is not a live named entry")
        k = self.kernel
        ps = k.page_size
        offset = _as_int(offset, "offset")
        if offset < 0 or offset % ps:
            raise InvalidArgument(f"offset {offset:#x} must be non-negative and page aligned")
        size = handle.size - offset if size is None else self._size(size)
        size = (size + ps - 1) // ps * ps
        if size <= 0 or offset + size > handle.size:
            raise InvalidArgument(
                f"offset {offset:#x} + size {size:#x} exceeds the named entry's {handle.size:#x} bytes")
        p = handle.protection if prot is None else parse_prot(prot)
        maxp = handle.protection if max_prot is None else parse_prot(max_prot)
        if p & ~handle.protection or maxp & ~handle.protection:
            raise ProtectionFailure(
                f"protection {prot_str(p)}/{prot_str(maxp)} exceeds the named entry's "
                f"{prot_str(handle.protection)}")
        inh = Inherit.parse(inheritance)
        if copy and not handle.is_submap and handle.object.kind == PagerKind.DEVICE:
            raise InvalidArgument("device memory cannot be mapped copy-on-write (never copied)")
        addr = self._place(size, address)
        if handle.is_submap:
            nest = (not copy) if use_pmap is None else bool(use_pmap)
            if copy and nest:
                raise InvalidArgument(
                    "a submap mapped copy-on-write cannot share its translations (use_pmap=True)")
            sub = handle.object
            e = VMMapEntry(self.map, addr, addr + size, sub, handle.offset + offset, p, maxp,
                           Inherit.SHARE if inh == Inherit.COPY else inh, Behavior.DEFAULT,
                           is_submap=True, needs_copy=bool(copy), tag=tag or "SUBMAP")
            e.use_pmap = nest
            sub.attach(e)
        else:
            obj = handle.object
            obj.ref_count += 1
            e = VMMapEntry(self.map, addr, addr + size, obj, handle.offset + offset, p, maxp, inh,
                           Behavior.DEFAULT, needs_copy=bool(copy), tag=tag or "shared memory")
            if copy and obj.true_share:
                obj.ref_count -= 1
                new = object_copy_slowly(k, obj, (handle.offset + offset) >> k.page_shift,
                                         size >> k.page_shift)
                e.object, e.offset, e.needs_copy = new, 0, False
        self.map.insert(e)
        return addr

    def vm_map_object(self, obj_or_pager, offset=0, size=None, prot="rw", copy: bool = False,
                      address=None, max_prot=None, inheritance=None, tag: str = "") -> int:
        """Map a VM object, or a pager (its object from the kernel's object cache, made on first
        use: Kernel.vm_object_enter), e.g. a file's vnode pager.
        copy=True makes a private copy-on-write mapping over the object."""
        self._alive()
        k = self.kernel
        ps = k.page_size
        if isinstance(obj_or_pager, Pager):
            psize = obj_or_pager.size()
            osize = psize if psize is not None else (size or 0) + _as_int(offset, "offset")
            # the object cache: a pager already mapped keeps its one VM object
            obj, _ = k.vm_object_enter(obj_or_pager, max(osize, ps),
                                       internal=obj_or_pager.kind == PagerKind.DEFAULT)
            fresh = True  # this call holds a reference of its own (dropped on error)
        elif hasattr(obj_or_pager, "pages") and hasattr(obj_or_pager, "shadow"):
            obj = obj_or_pager
            if not obj.alive:
                raise InvalidArgument(f"object {obj.id} is dead")
            fresh = False
        else:
            raise InvalidArgument(f"{obj_or_pager!r} is neither a VM object nor a pager")
        try:
            offset = _as_int(offset, "offset")
            if offset < 0 or offset % ps:
                raise InvalidArgument(f"offset {offset:#x} must be non-negative and page aligned")
            if copy and obj.kind == PagerKind.DEVICE:
                raise InvalidArgument("device memory cannot be mapped copy-on-write (never copied)")
        except VMError:
            if fresh:
                object_deallocate(k, obj)
            raise
        if size is None:
            size = obj.npages * ps - offset
        size = self._size(size)
        size = (size + ps - 1) // ps * ps
        if offset + size > obj.npages * ps and obj.internal:
            raise InvalidArgument(
                f"offset {offset:#x} + size {size:#x} exceeds the object's {obj.npages * ps:#x} bytes")
        p = parse_prot(prot)
        maxp = VM_PROT_ALL if max_prot is None else parse_prot(max_prot)
        if p & ~maxp:
            raise ProtectionFailure(f"protection {prot_str(p)} exceeds maximum {prot_str(maxp)}")
        inh = Inherit.parse(inheritance if inheritance is not None else ("copy" if copy else "shared"))
        try:
            addr = self._place(size, address)
        except VMError:
            if fresh:
                object_deallocate(k, obj)
            raise
        if not fresh:
            obj.ref_count += 1
        if not copy and obj.internal:
            obj.true_share = True
        kind = {PagerKind.VNODE: "mapped file", PagerKind.DEVICE: "IOKit"}.get(obj.kind,
                                                                              "shared memory")
        e = VMMapEntry(self.map, addr, addr + size, obj, offset, p, maxp, inh, Behavior.DEFAULT,
                       needs_copy=bool(copy), tag=tag or kind)
        if copy and obj.true_share:
            new = object_copy_slowly(k, obj, offset >> k.page_shift, size >> k.page_shift)
            object_deallocate(k, obj)
            e.object, e.offset, e.needs_copy = new, 0, False
        self.map.insert(e)
        return addr

    # ---- fork / terminate -----------------------------------------------------------------------
    def fork(self, name: str | None = None) -> "Task":
        """A child task whose address space follows each entry's inheritance."""
        self._alive()
        k = self.kernel
        child = type(self)(k, name or f"{self.name}-child", is64=self.is64)
        child.parent = self
        cm = child.map
        for e in list(self.map.entries):
            inh = e.inheritance
            if inh == Inherit.NONE:
                continue
            ce = VMMapEntry(cm, e.start, e.end, e.object, e.offset, e.protection,
                            e.max_protection, inh, e.behavior, e.is_submap, False, e.tag)
            if e.is_submap:
                ce.needs_copy = e.needs_copy
                ce.use_pmap = e.use_pmap
                e.object.attach(ce)
            elif inh == Inherit.SHARE or e.object.kind == PagerKind.DEVICE:
                ce.inheritance = Inherit.SHARE
                if e.needs_copy:
                    k.entry_resolve_needs_copy(e)
                    ce.object, ce.offset = e.object, e.offset
                e.object.true_share = True
                e.object.ref_count += 1
            else:
                obj = e.object
                if obj.true_share:
                    new = object_copy_slowly(k, obj, e.offset >> k.page_shift, e.npages)
                    ce.object, ce.offset = new, 0
                else:
                    obj.ref_count += 1
                    e.needs_copy = True
                    ce.needs_copy = True
                    k.pmap_protect_entry(e)
            cm.insert(ce)
        if self.shared_regions is not None:
            self.shared_regions.task_forked(self, child)
        if k.wired_acct is not None:
            k.wired_acct.sync()
        return child

    def terminate(self) -> None:
        """Destroy the address space: every mapping is removed, anonymous memory freed."""
        if not self.alive:
            return
        private = self._private_objects(self.map.entries)
        for e in list(self.map.entries):
            self._entry_delete(e, free_pages=e.object in private)
        self.alive = False
        self.kernel.tasks.pop(self.id, None)
        if self.kernel.tws is not None:
            self.kernel.tws.forget(self)
        if self.kernel.wired_acct is not None:
            self.kernel.wired_acct.sync()  # a fall is reclaimed lazily (vmcore.wired)

    # ---- regions --------------------------------------------------------------------------------
    def vm_region(self, addr) -> Region:
        """The region containing addr, or the first one after it (Mach's vm_region)."""
        self._alive()
        addr = _as_int(addr, "address")
        i = self.map.index_after(addr)
        if i >= len(self.map.entries):
            raise InvalidAddress(f"no region at or after {addr:#x} in task {self.name!r}")
        return self._region(self.map.entries[i])

    def regions(self) -> list[Region]:
        self._alive()
        return [self._region(e) for e in self.map.entries]

    def _page_counts(self, obj, first: int, n: int) -> tuple[int, int, int]:
        pm = self.kernel.pm
        seen: set[int] = set()
        res = dirty = swapped = 0
        base = first
        while obj is not None:
            if len(seen) >= n:
                break
            if n < len(obj.pages):
                items = ((q, obj.pages.get(base + q)) for q in range(n))
                items = [(q, f) for q, f in items if f is not None]
            else:
                items = [(p - base, f) for p, f in obj.pages.items() if base <= p < base + n]
            for q, f in items:
                if q not in seen and not pm.absent[f]:
                    seen.add(q)
                    res += 1
                    dirty += bool(pm.dirty[f])
            if obj.internal and obj.existence:
                for p in obj.existence:
                    q = p - base
                    if 0 <= q < n and q not in seen:
                        seen.add(q)
                        swapped += 1
            base += obj.shadow_offset
            obj = obj.shadow
        return res, dirty, swapped

    def _region(self, e: VMMapEntry) -> Region:
        k = self.kernel
        shift = k.page_shift
        if e.is_submap:
            sub = e.object
            res = dirty = swapped = 0
            lo = e.offset
            hi = e.offset + (e.end - e.start)
            for se in sub.entries_in(lo, hi):
                a, b = max(se.start, lo), min(se.end, hi)
                first = (se.offset + a - se.start) >> shift
                r, d, s = self._page_counts(se.object, first, (b - a) >> shift)
                res, dirty, swapped = res + r, dirty + d, swapped + s
            how = ("nested pmap" if e.use_pmap else
                   "copy-on-write, private pmap" if e.needs_copy else "private pmap")
            return Region(e.start, e.end, prot_str(e.protection), prot_str(e.max_protection),
                          e.inheritance.label, e.behavior.label,
                          SM_COW if e.needs_copy else SM_SHARED, res, dirty, swapped, None,
                          f"submap {sub.name!r} +{e.offset:#x} ({len(sub.parents)} maps, {how})",
                          e.wired_count, True, 0, e.tag)
        obj = e.object
        res, dirty, swapped = self._page_counts(obj, e.offset >> shift, e.npages)
        if e.needs_copy or (obj.shadow is not None and obj.ref_count == 1):
            sm = SM_COW
        elif obj.ref_count == 1:
            sm = SM_PRIVATE if (res or swapped or obj.pager is not None) else SM_EMPTY
        else:
            here = sum(1 for x in self.map.entries if x.object is obj)
            # references that are mappings (not handles held by named entries)
            mappings = obj.ref_count - sum(1 for ne in k.named_entries if ne.object is obj)
            if here >= mappings:
                sm = SM_PRIVATE_ALIASED
            elif here > 1:
                sm = SM_SHARED_ALIASED
            else:
                sm = SM_SHARED
        depth = obj.depth()
        kind = obj.kind.value if obj.pager is not None else ("anonymous" if obj.internal else "file")
        detail = f"obj {obj.id} {kind}"
        if obj.name:
            detail += f" {obj.name}"
        if obj.kind == PagerKind.DEVICE:
            from vmcore.device_pager import wimg_str

            detail += f" {getattr(obj.pager, 'name', '')} WIMG={wimg_str(obj.pager.wimg)}"
        if depth:
            detail += f", shadow depth {depth}"
        if e.needs_copy:
            detail += ", needs copy"
        if e.wired_count:
            detail += f", wired x{e.wired_count}"
        return Region(e.start, e.end, prot_str(e.protection), prot_str(e.max_protection),
                      e.inheritance.label, e.behavior.label, sm, res, dirty, swapped, obj.id,
                      detail, e.wired_count, False, depth, e.tag)
