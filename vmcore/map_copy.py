"""Map copies (the copy half of vm_map.c): vm_map_copy_t and the calls that make, place and drop one.

Owns: `VMMapCopy` (a copy list: one `CopyEntry` per piece of the copied range, each holding a
reference on the VM object that carries the data, plus the range's byte size and in-page offset)
and the Kernel Programming Guide's low-level map API:

  vm_map_copyin(src_map, src_addr, len, src_destroy=False) -> VMMapCopy
      "copies data from an arbitrary (potentially non-kernel) memory map into a copy list". No
      byte moves: each piece is copied copy-on-write (vm_object_copy_strategically):
        * symmetric  the source entry is needs_copy over anonymous memory nobody shares (its
                     object is shared copy-on-write and written by nobody): the copy shares
                     the object, needs_copy;
        * delayed    otherwise: a copy object (vmcore.object.object_copy_delayed) shadows the
                     source object and becomes its `copy`; the source's translations are
                     write-protected and the source's next write to each page pushes the old
                     contents into the copy object first (vmcore.fault.copy_push); the copy maps
                     the copy object needs_copy;
        * slowly     device memory: its bytes are copied into a new object now.
      With src_destroy the source range is removed from src_map afterwards (kernel_map's
      allocations belong to vmcore.kmem: src_destroy there is refused).
  vm_map_copyout(dst_map, copy, address=None) -> address or None
      "used for filling an unused region in an address map. If the region is allocated, then
      vm_map_copyout does nothing": the copy's entries are entered at `address` (or first fit)
      with default attributes (rw-/rwx, inheritance copy); if any part of the range at
      `address` is mapped, nothing happens, None is returned and the copy stays usable.
  vm_map_copy_overwrite(dst_map, dst_addr, copy, interruptible=False, pmap=None)
      "overwrites an object with the contents of a copy list". dst must be mapped and writable
      throughout. When source and destination are page aligned, each destination piece that is
      private anonymous memory (not wired, not shared, not a submap) takes the copy's object
      (its old pages go); any other destination piece (a shared object, a file, wired memory,
      the kernel_map, which maps the one kernel_object) has the bytes copied into it through
      the destination's faults (XNU: vm_map_copy_overwrite_aligned's physical copy). Unaligned
      copies move bytes.
  vm_map_copy_discard(copy)
      drops the copy's references ("If something goes wrong and you need to throw away this
      intermediate object, it should be freed with vm_map_copy_discard").
Copyout and overwrite consume the copy; a consumed or discarded copy raises InvalidArgument.

Invariants: a live copy holds one reference on each of its entries' objects (the kernel's
`map_copies` set lists the live copies; vmcore.invariants counts their references); copy entries
are page aligned and cover `size + offset` rounded up to pages.
Who calls: Task.vm_copy (copyin + overwrite within one task), users, vmcore.scenario.
Caveats: XNU copies anonymous (internal) memory with the symmetric strategy and keeps the delayed
one for shared and external objects; the model uses the delayed strategy for every object the
source maps directly, as Memory Management in Mac OS X and the Kernel Programming Guide's Memory and Virtual Memory chapter describe vm_copy ("If the VM object is involved in a
copy-on-write (vm_copy) operation, the shadow and copy fields may point to other VM objects").
The in-kernel optimisations of XNU's copy lists (kernel buffer copies for small sizes, entry
lists moved wholesale with src_destroy) are not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vmcore.errors import InvalidAddress, InvalidArgument, ProtectionFailure
from vmcore.fault import object_copy_slowly, object_page_find
from vmcore.map import VMMap, VMMapEntry
from vmcore.object import object_copy_delayed, object_deallocate, object_page_remove
from vmcore.pager import PagerKind
from vmcore.types import VM_PROT_ALL, VM_PROT_DEFAULT, VM_PROT_READ, Behavior, Inherit

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel


@dataclass
class CopyEntry:
    """One piece of a copy list: `size` bytes of `object` from byte `offset`, seen through a
    copy-on-write mapping when needs_copy."""

    object: object
    offset: int
    size: int
    needs_copy: bool
    protection: int
    max_protection: int
    tag: str = ""


@dataclass(eq=False)
class VMMapCopy:
    """vm_map_copy_t (entry-list type): what vm_map_copyin made of a source range."""

    kernel: "Kernel"
    offset: int  # the source address's offset in its first page
    size: int  # bytes copied
    entries: list[CopyEntry] = field(default_factory=list)
    alive: bool = True

    @property
    def pages(self) -> int:
        return sum(ce.size for ce in self.entries) // self.kernel.page_size

    def _alive(self) -> None:
        if not self.alive:
            raise InvalidArgument("the vm_map_copy was already consumed or discarded")

    def read(self) -> bytes:
        """The copied bytes (what an overwrite or copyout shows), read through the objects."""
        self._alive()
        out = b"".join(_object_bytes(self.kernel, ce.object, ce.offset, ce.size)
                       for ce in self.entries)
        return out[self.offset:self.offset + self.size]

    def __repr__(self) -> str:
        state = "" if self.alive else " consumed"
        return f"<vm_map_copy {self.size:#x} bytes +{self.offset:#x}, {len(self.entries)} entries{state}>"


def _object_bytes(k: "Kernel", obj, offset: int, size: int) -> bytes:
    """size bytes of obj from page-aligned byte offset, as its shadow chain shows them."""
    ps = k.page_size
    pm = k.pm
    out = bytearray()
    first = offset // ps
    for i in range(size // ps):
        f = object_page_find(k, obj, first + i)
        out += bytes(pm.views[f]) if f is not None else pm.zero_page
    return bytes(out)


def _map_task(vmmap: VMMap, what: str):
    t = getattr(vmmap, "task", None)
    if t is None:
        raise InvalidArgument(f"{what}: map {vmmap.name!r} belongs to no task (a submap?)")
    if not t.alive:
        raise InvalidArgument(f"{what}: task {t.name!r} has terminated")
    return t


def _range(k: "Kernel", vmmap: VMMap, addr, size, what: str) -> tuple[int, int, int, int]:
    """Validated (addr, size, page-aligned start, end)."""
    for v, name in ((addr, "address"), (size, "size")):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidArgument(f"{what}: {name} {v!r} is not an integer")
    if size <= 0:
        raise InvalidArgument(f"{what}: size {size} must be positive")
    if addr < vmmap.min_address or addr + size > vmmap.max_address:
        raise InvalidAddress(f"{what}: range {addr:#x}+{size:#x} lies outside the address space")
    ps = k.page_size
    return addr, size, addr // ps * ps, (addr + size + ps - 1) // ps * ps


def _pieces(k: "Kernel", vmmap: VMMap, start: int, end: int):
    """(object, byte offset, size, entry needs_copy, protection, max_protection, tag) for every
    piece of [start, end), through submaps; raises before anything changes."""
    out = []
    for e in vmmap.check_covered(start, end):
        a, b = max(e.start, start), min(e.end, end)
        if e.is_submap:
            sub = e.object
            lo = e.offset + (a - e.start)
            hi = lo + (b - a)
            for se in sub.check_covered(lo, hi):
                sa, sb = max(se.start, lo), min(se.end, hi)
                prot = e.protection & se.protection
                if not prot & VM_PROT_READ:
                    raise ProtectionFailure(
                        f"vm_map_copyin: {a + sa - lo:#x}-{a + sb - lo:#x} is not readable")
                out.append((se.object, se.offset + (sa - se.start), sb - sa,
                            se.needs_copy or e.needs_copy, prot,
                            e.max_protection & se.max_protection, se.tag or e.tag))
            continue
        if not e.protection & VM_PROT_READ:
            raise ProtectionFailure(f"vm_map_copyin: {a:#x}-{b:#x} is not readable")
        out.append((e.object, e.offset + (a - e.start), b - a, e.needs_copy, e.protection,
                    e.max_protection, e.tag))
    return out


def vm_map_copyin(src_map: VMMap, src_addr: int, len: int, src_destroy: bool = False) -> VMMapCopy:
    """Copy [src_addr, src_addr+len) of src_map into a new copy list (copy-on-write, see the
    module doc). Errors (before anything changes): InvalidAddress for a hole, ProtectionFailure
    for an unreadable piece, InvalidArgument for bad arguments."""
    task = _map_task(src_map, "vm_map_copyin")
    k = task.kernel
    src_addr, len, start, end = _range(k, src_map, src_addr, len, "vm_map_copyin")
    if src_destroy and src_map is getattr(getattr(k, "kmem", None), "map", None):
        raise InvalidArgument("vm_map_copyin: src_destroy on kernel_map (free it with kmem_free)")
    pieces = _pieces(k, src_map, start, end)
    copy = VMMapCopy(k, src_addr - start, len)
    try:
        for obj, off, size, needs_copy, prot, maxp, tag in pieces:
            ps_shift = k.page_shift
            if obj.kind == PagerKind.DEVICE:
                # device memory is never shared copy-on-write: its bytes are copied now
                new = object_copy_slowly(k, obj, off >> ps_shift, size >> ps_shift)
                ce = CopyEntry(new, 0, size, False, prot, maxp, tag)
            elif needs_copy and obj.internal and not obj.true_share:
                # symmetric: nobody writes the object; the copy shares it copy-on-write
                obj.ref_count += 1
                ce = CopyEntry(obj, off, size, True, prot, maxp, tag)
            else:
                # delayed: a copy object shadows the source object and takes its pushes
                new = object_copy_delayed(k, obj, (off + size) >> ps_shift)
                ce = CopyEntry(new, off, size, True, prot, maxp, tag)
            copy.entries.append(ce)
    except BaseException:
        vm_map_copy_discard(copy)
        raise
    k.map_copies.add(copy)
    if src_destroy:
        task.vm_deallocate(start, end - start)
    return copy


def vm_map_copy_discard(copy: VMMapCopy) -> None:
    """Drop the copy list and its references on the objects."""
    if not copy.alive:
        return
    copy.alive = False
    k = copy.kernel
    k.map_copies.discard(copy)
    for ce in copy.entries:
        object_deallocate(k, ce.object)
    copy.entries = []


def _consume(copy: VMMapCopy) -> list[CopyEntry]:
    """Take the entries (and their references) out of the copy, which is then dead."""
    ents = copy.entries
    copy.entries = []
    copy.alive = False
    copy.kernel.map_copies.discard(copy)
    return ents


def vm_map_copyout(dst_map: VMMap, copy: VMMapCopy, address: int | None = None) -> int | None:
    """Enter the copy in an unused region of dst_map: at `address` (page aligned), or first fit.
    Returns the address of the copied bytes (the region's start + the copy's in-page offset),
    or None, doing nothing, when the region at `address` is allocated (in part or whole)."""
    copy._alive()
    _map_task(dst_map, "vm_map_copyout")
    k = copy.kernel
    ps = k.page_size
    size = copy.pages * ps
    if address is None:
        start = dst_map.find_space(size)
    else:
        if isinstance(address, bool) or not isinstance(address, int) or address % ps:
            raise InvalidArgument(f"vm_map_copyout: address {address!r} is not page aligned")
        if address < dst_map.min_address or address + size > dst_map.max_address:
            raise InvalidAddress(f"vm_map_copyout: {address:#x}+{size:#x} lies outside the map")
        if not dst_map.range_free(address, address + size):
            return None  # "If the region is allocated, then vm_map_copyout does nothing."
        start = address
    a = start
    for ce in _consume(copy):
        e = VMMapEntry(dst_map, a, a + ce.size, ce.object, ce.offset, VM_PROT_DEFAULT,
                       VM_PROT_ALL, Inherit.COPY, Behavior.DEFAULT, needs_copy=ce.needs_copy,
                       tag=ce.tag or "VM_ALLOCATE")
        dst_map.insert(e)
        a += ce.size
    return start + copy.offset


def _replaceable(k: "Kernel", e: VMMapEntry) -> bool:
    """Can the overwrite give destination entry e the copy's object instead of copying bytes
    into it? Only anonymous memory that is not wired, not shared (true_share: shared
    inheritance, a named entry, a shared mapping), not device memory, not a submap, and not in
    kernel_map (whose entries all map kernel_object at their own address)."""
    if e.is_submap or e.wired_count:
        return False
    obj = e.object
    kmem = getattr(k, "kmem", None)
    return (obj.internal and not obj.true_share and obj.kind != PagerKind.DEVICE
            and (kmem is None or e.map is not kmem.map))


def vm_map_copy_overwrite(dst_map: VMMap, dst_addr: int, copy: VMMapCopy,
                          interruptible: bool = False, pmap=None) -> None:
    """Overwrite [dst_addr, dst_addr + copy.size) of dst_map with the copy (see the module doc).
    The whole destination must be mapped and writable (InvalidAddress / ProtectionFailure,
    before anything changes). `interruptible` must be False and `pmap` None (the Kernel Programming Guide (Memory and Virtual Memory): "For
    most purposes, the value passed for interruptible should be FALSE, and pmap should be
    NULL"; the model has neither interruptions nor a separate pmap to name)."""
    copy._alive()
    if interruptible is not False or pmap is not None:
        raise InvalidArgument("vm_map_copy_overwrite: interruptible must be False and pmap None")
    task = _map_task(dst_map, "vm_map_copy_overwrite")
    k = copy.kernel
    ps = k.page_size
    dst_addr, size, start, end = _range(k, dst_map, dst_addr, copy.size, "vm_map_copy_overwrite")
    task._check_access(dst_addr, size, True)
    if copy.offset or dst_addr % ps or size % ps:
        data = copy.read()
        task.write(dst_addr, data)
        vm_map_copy_discard(copy)
        return
    # aligned: cut the destination where the copy's entries meet, then piece by piece
    a = start
    for ce in copy.entries:
        dst_map.clip(k, a)
        a += ce.size
    dst_map.clip(k, end)
    ents = _consume(copy)
    a = start
    try:
        while ents:
            ce = ents[0]
            for e in dst_map.entries_in(a, a + ce.size):
                if _replaceable(k, e):
                    _entry_replace(k, task, e, ce, e.start - a)
                else:
                    task.write(e.start, _object_bytes(k, ce.object, ce.offset + (e.start - a),
                                                      e.end - e.start))
            object_deallocate(k, ce.object)  # the copy's reference (entries took their own)
            ents.pop(0)
            a += ce.size
    finally:
        for ce in ents:
            object_deallocate(k, ce.object)


def _entry_replace(k: "Kernel", task, e: VMMapEntry, ce: CopyEntry, off: int) -> None:
    """The destination entry e maps the copy entry's object, from `off` bytes into the piece;
    e's old object loses e's reference (and the range's pages, when nobody else sees them)."""
    k.pmap_remove_range(e)
    old = e.object
    if old in task._private_objects([e]) and old.ref_count > 1:
        lo = e.offset >> k.page_shift
        object_page_remove(k, old, lo, lo + e.npages)
    ce.object.ref_count += 1
    e.object = ce.object
    e.offset = ce.offset + off
    e.needs_copy = ce.needs_copy
    e.last_slot, e.run = -2, 0
    e.map.version += 1
    object_deallocate(k, old)
