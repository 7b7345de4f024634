"""Named entries ("Named Entries", docs/mach-vm.md): handles to a VM object range or to a submap.

Owns: `NamedEntry`, `make_memory_entry` (mach_make_memory_entry_64 over a task's range) and
`make_named_region` (vm_region_object_create: a named entry backed by a submap, "a virtual map
fragment" several maps include).

Object entries: the range must lie in one map entry; a needs_copy entry first gets its own shadow
object (so the handle names memory the task really owns), and the object becomes true_share: later
copies of it (fork with copy inheritance, vm_map with copy=True) are eager. Each handle holds one
object reference until `release()`. Mapping it with Task.vm_map in two tasks gives them the same
object: each sees the other's writes.

use_pmap: a task maps a region nested (use_pmap true, the default: translations shared through
the submap's nested pmap, so a structure change flushes that one pmap), unnested (private
translations, flushed per parent), or copy-on-write (Task.vm_map(copy=True): use_pmap false,
private pages after the first write). A permanent submap (the shared region) refuses
vm_deallocate of its mappings.

Named regions (submaps): `region.vm_allocate(size, offset=None)`, `region.vm_deallocate(offset,
size)` and `region.vm_protect(...)` change the submap's structure; every task that mapped the
region sees the change (their translations for the region are flushed). Faults resolve through the
task's submap entry into the submap's entry (protection = both ANDed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmcore.errors import InvalidAddress, InvalidArgument, NoSpace, ProtectionFailure
from vmcore.map import VMMap, VMMapEntry
from vmcore.object import object_deallocate
from vmcore.types import VM_PROT_ALL, Behavior, Inherit, parse_prot, prot_str

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel


class NamedEntry:
    def __init__(self, kernel: "Kernel", obj, offset: int, size: int, protection: int,
                 is_submap: bool = False, name: str = ""):
        self.kernel = kernel
        self.object = obj
        self.offset = offset
        self.size = size
        self.protection = protection
        self.is_submap = is_submap
        self.name = name
        self.alive = True
        kernel.named_entries.append(self)

    def __repr__(self) -> str:
        what = f"submap {self.object.name!r}" if self.is_submap else f"object {self.object.id}"
        return f"<NamedEntry {what} +{self.offset:#x} size={self.size:#x} {prot_str(self.protection)}>"

    def release(self) -> None:
        """Drop the handle's reference (mach_port_deallocate of the entry)."""
        if not self.alive:
            return
        self.alive = False
        try:
            self.kernel.named_entries.remove(self)
        except ValueError:
            pass
        if self.is_submap:
            sub = self.object
            sub.ref_count -= 1
            if sub.ref_count == 0:
                if sub.pmap is not None:
                    self.kernel.pmap_remove_range(sub)
                for e in list(sub.entries):
                    _submap_entry_delete(self.kernel, sub, e)
                if sub in self.kernel.submaps:
                    self.kernel.submaps.remove(sub)
        else:
            object_deallocate(self.kernel, self.object)

    # ---- submap structure (named regions) -------------------------------------------------------
    def _sub(self) -> VMMap:
        if not self.alive:
            raise InvalidArgument("named entry has been released")
        if not self.is_submap:
            raise InvalidArgument("not a named region: only submap entries have a structure")
        return self.object

    def _flush(self) -> None:
        """The submap's structure changed: remove the translations that show it (once in the
        nested pmap, shared by every use_pmap parent; per parent for the others)."""
        sub = self.object
        k = self.kernel
        if sub.pmap is not None:
            k.pmap_remove_range(sub)
        for pe in list(sub.parents):
            if not pe.nested:
                k.pmap_remove_range(pe)

    def vm_allocate(self, size: int, offset: int | None = None, prot="rw") -> int:
        """Allocate anonymous memory inside the region; returns its offset in the region."""
        sub = self._sub()
        k = self.kernel
        ps = k.page_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"size {size!r} must be a positive integer")
        size = (size + ps - 1) // ps * ps
        p = parse_prot(prot)
        if offset is None:
            off = sub.find_space(size)
        else:
            if isinstance(offset, bool) or not isinstance(offset, int) or offset % ps or offset < 0:
                raise InvalidArgument(f"offset {offset!r} must be a page-aligned non-negative int")
            if offset + size > sub.max_address:
                raise InvalidAddress(f"range {offset:#x}+{size:#x} lies outside the region")
            if not sub.range_free(offset, offset + size):
                raise NoSpace(f"range {offset:#x}+{size:#x} overlaps a mapping in the region")
            off = offset
        obj = k.object_create(size, internal=True)
        obj.true_share = True
        sub.insert(VMMapEntry(sub, off, off + size, obj, 0, p, VM_PROT_ALL, Inherit.SHARE,
                              Behavior.DEFAULT, tag="region"))
        self._flush()
        return off

    def vm_deallocate(self, offset: int, size: int) -> None:
        sub = self._sub()
        k = self.kernel
        ps = k.page_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"size {size!r} must be a positive integer")
        start, end = offset // ps * ps, (offset + size + ps - 1) // ps * ps
        if sub.permanent and sub.entries_in(start, end):
            raise InvalidArgument(
                f"submap {sub.name!r} is permanent: its mappings at {start:#x}-{end:#x} cannot be "
                f"removed (a shared library cannot be unshared; make new regions instead)")
        sub.clip(k, start)
        sub.clip(k, end)
        for e in sub.entries_in(start, end):
            _submap_entry_delete(k, sub, e)
        self._flush()

    def vm_protect(self, offset: int, size: int, prot, set_maximum: bool = False) -> None:
        sub = self._sub()
        k = self.kernel
        ps = k.page_size
        new = parse_prot(prot)
        start, end = offset // ps * ps, (offset + size + ps - 1) // ps * ps
        for e in sub.check_covered(start, end):
            if new & ~e.max_protection:
                raise ProtectionFailure(
                    f"protection {prot_str(new)} exceeds the maximum {prot_str(e.max_protection)}")
        for e in sub.clipped_range(k, start, end):
            if set_maximum:
                e.max_protection = new
                e.protection &= new
            else:
                e.protection = new
        self._flush()

    def vm_map_object(self, obj, offset: int = 0, size: int | None = None, at: int | None = None,
                      prot="rw") -> int:
        """Put (a range of) a VM object into the region; returns its offset in the region."""
        sub = self._sub()
        k = self.kernel
        ps = k.page_size
        size = obj.npages * ps - offset if size is None else (size + ps - 1) // ps * ps
        if size <= 0 or offset % ps or offset < 0:
            raise InvalidArgument(f"offset {offset:#x} / size {size:#x} invalid")
        off = sub.find_space(size) if at is None else at
        if at is not None and (at % ps or not sub.range_free(at, at + size)):
            raise NoSpace(f"range {at:#x}+{size:#x} is not free in the region")
        obj.ref_count += 1
        sub.insert(VMMapEntry(sub, off, off + size, obj, offset, parse_prot(prot), VM_PROT_ALL,
                              Inherit.SHARE, Behavior.DEFAULT, tag="region"))
        self._flush()
        return off


def _submap_entry_delete(k: "Kernel", sub: VMMap, e: VMMapEntry) -> None:
    sub.remove(e)
    if e.is_submap:
        e.object.ref_count -= 1
    else:
        object_deallocate(k, e.object)


def make_memory_entry(k: "Kernel", task, addr: int, size: int, prot: int) -> NamedEntry:
    task._alive()
    start, end = task._page_range(addr, size)
    e = task.map.lookup(start)
    if e is None:
        raise InvalidAddress(f"address {start:#x} is not mapped in task {task.name!r}")
    if end > e.end:
        raise InvalidArgument(
            f"range {start:#x}-{end:#x} spans more than one map entry (ends at {e.end:#x})")
    if prot & ~e.max_protection:
        raise ProtectionFailure(
            f"memory entry protection {prot_str(prot)} exceeds the range's maximum "
            f"{prot_str(e.max_protection)}")
    if e.is_submap:
        sub = e.object
        sub.ref_count += 1
        return NamedEntry(k, sub, e.offset + (start - e.start), end - start, prot, True, sub.name)
    if e.needs_copy:
        k.entry_resolve_needs_copy(e)
    obj = e.object
    obj.true_share = True
    obj.ref_count += 1
    return NamedEntry(k, obj, e.offset + (start - e.start), end - start, prot)


def make_named_region(k: "Kernel", size: int, name: str) -> NamedEntry:
    ps = k.page_size
    if size <= 0:
        raise InvalidArgument(f"region size {size} must be positive")
    size = (size + ps - 1) // ps * ps
    sub = VMMap(ps, 0, size, name=name, is_submap=True)
    k.submaps.append(sub)
    return NamedEntry(k, sub, 0, size, VM_PROT_ALL, True, name)
