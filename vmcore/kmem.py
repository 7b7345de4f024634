"""Kernel memory allocation ("Allocating Memory Using Mach Routines", docs/mach-vm.md): kernel_map,
kernel_object and the kmem_alloc family.

Owns: `KernelMemory` (one per kernel, made on first use by `kernel_map(kernel)`: the kernel's own
address map, the kernel_object every kernel_map entry maps at offset = address - map minimum, as
XNU does, and a `KernelTask` that faults in kernel_map), and the guide's calls, each taking the map
first ("Unless you need to allocate memory in a different map, you should pass kernel_map"):
  kmem_alloc(map, size)            wired, zero-filled ("All of the kmem_alloc functions except
  kmem_alloc_wired(map, size)      kmem_alloc_pageable allocate wired memory"; _wired "is
                                   synonymous with kmem_alloc")
  kmem_alloc_pageable(map, size)   "creates the appropriate VM structures but does not back the
                                   region with physical memory"
  kmem_alloc_aligned(map, size)    wired, "aligned according to the value of the size argument,
                                   which must be a power of 2"
  kmem_alloc_contig(map, size, mask=0, flags=0)
                                   wired, physically contiguous frames (the first frame's byte
                                   address & mask == 0); "This is not always possible, and requires
                                   a full sort of the system free list even for short allocations":
                                   every call sorts the free list (counted in `contig_sorts`) and
                                   fails with ResourceShortage, naming the longest free run, when
                                   no run is long enough
  kmem_free(map, addr, size)       "kmem_free requires the length of the object": the size must be
                                   the allocation's (page-rounded) size, else InvalidArgument
plus kmem_read / kmem_write (bytes through kernel faults) and physical_frames (pmap_extract).

Invariants: kernel_object is registered and its ref_count is 1 (the kernel's) + one per
kernel_map entry; wired allocations have entry wired_count 1 and their frames on the wired
queue; allocations do not overlap; `allocations` maps start -> (size, kind) for every live one.
Who calls: users, vmcore.wired (the zone pages of kernel resources), vmcore.scenario.
Caveats: no kmem_suballoc (a map argument other than kernel_map is refused); the free list is a
stack (pop() = lowest frame after a sort), so the sort changes which frames later faults get;
kernel translations live in kernel_map entries like user ones (no separate kernel pmap).
"""

from __future__ import annotations

from vmcore.errors import InvalidAddress, InvalidArgument, NoSpace, ResourceShortage
from vmcore.map import VMMap, VMMapEntry
from vmcore.object import object_page_remove
from vmcore.task import Task
from vmcore.types import VM_PROT_ALL, VM_PROT_DEFAULT, Behavior, Inherit

KERNEL_MIN_ADDRESS = 0x1000
KERNEL_MAP_SIZE = 1 << 32


class KernelTask(Task):
    """kernel_task: faults in kernel_map go through the ordinary fault path with this task. It is
    not in kernel.tasks (it is not a user process and never terminates)."""

    def __init__(self, kernel, kmap: VMMap):  # noqa: D107 (no Task.__init__: not registered)
        self.kernel = kernel
        self.name = "kernel_task"
        self.id = 0
        self.map = kmap
        self.created_at = 0.0
        self.alive = True
        self.parent = None
        self.shared_regions = None


class KernelMemory:
    def __init__(self, kernel):
        self.kernel = kernel
        ps = kernel.page_size
        self.map = VMMap(ps, KERNEL_MIN_ADDRESS, KERNEL_MIN_ADDRESS + KERNEL_MAP_SIZE,
                         name="kernel_map")
        self.map.kernel = kernel
        self.object = kernel.object_create(KERNEL_MAP_SIZE, internal=True, name="kernel_object")
        self.task = KernelTask(kernel, self.map)
        self.map.task = self.task
        self.allocations: dict[int, tuple[int, str]] = {}
        self.contig_sorts = 0
        self.contig_failures = 0

    # ---- helpers --------------------------------------------------------------------------------
    def _size(self, size, what: str = "size") -> int:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"{what} {size!r} must be a positive number of bytes")
        if size > KERNEL_MAP_SIZE:
            raise InvalidArgument(f"{what} {size:#x} is larger than kernel_map")
        ps = self.kernel.page_size
        return (size + ps - 1) // ps * ps

    def _find_space(self, size: int, align: int) -> int:
        m = self.map
        addr = m.min_address
        for e in m.entries + [None]:
            a = (addr + align - 1) // align * align
            limit = e.start if e is not None else m.max_address
            if a + size <= limit:
                return a
            if e is not None:
                addr = max(addr, e.end)
        raise NoSpace(f"kernel_map has no free range of {size:#x} bytes aligned to {align:#x}")

    def _enter(self, size: int, align: int, tag: str) -> VMMapEntry:
        addr = self._find_space(size, align)
        obj = self.object
        e = VMMapEntry(self.map, addr, addr + size, obj, addr - self.map.min_address,
                       VM_PROT_DEFAULT, VM_PROT_ALL, Inherit.NONE, Behavior.DEFAULT, tag=tag)
        obj.ref_count += 1
        self.map.insert(e)
        return e

    def _remove(self, e: VMMapEntry) -> None:
        k = self.kernel
        if e.wired_count and e.wired_frames is not None:
            for f in e.wired_frames.tolist():
                for _ in range(e.wired_count):
                    k.frame_unwire(f)
            e.wired_count = 0
            e.wired_frames = None
        k.pmap_remove_range(e)
        self.map.remove(e)
        lo = e.offset >> k.page_shift
        object_page_remove(k, self.object, lo, lo + e.npages)
        self.object.ref_count -= 1

    def grab_wired(self, e: VMMapEntry, slot: int) -> int:
        """kernel_memory_allocate for one page: vm_page_grab, zero it, insert it in kernel_object,
        wire it and enter its translation (no fault: kernel allocations are not counted as
        translation faults or zero fills). May raise ResourceShortage."""
        k = self.kernel
        pm = k.pm
        f = k.page_grab()
        pm.views[f][:] = pm.zero_page
        k.page_insert(self.object, (e.offset >> k.page_shift) + slot, f)
        k.frame_wire(f)
        k.pmap_enter(e, slot, f, True)
        return f

    def _wire(self, e: VMMapEntry) -> None:
        import numpy as np

        frames: list[int] = []
        try:
            for s in range(e.npages):
                frames.append(self.grab_wired(e, s))
        except BaseException:
            for f in frames:
                self.kernel.frame_unwire(f)
            self._remove(e)
            raise
        e.wired_frames = np.array(frames, dtype=np.int32)
        e.wired_count = 1

    def alloc(self, size, kind: str, align: int | None = None, mask: int = 0) -> int:
        size = self._size(size)
        ps = self.kernel.page_size
        align = max(ps, align or ps)
        if kind == "contig":
            frames = self._contig_frames(size // ps, mask)  # may fail before anything changes
        e = self._enter(size, align, tag=f"kmem {kind}")
        if kind == "contig":
            self._install(e, frames)
        elif kind != "pageable":
            self._wire(e)
        self.allocations[e.start] = (size, kind)
        return e.start

    # ---- contiguous frames ----------------------------------------------------------------------
    def _contig_frames(self, n: int, mask: int) -> list[int]:
        k = self.kernel
        pm = k.pm
        free = pm.free
        free.sort(reverse=True)  # "a full sort of the system free list": pop() = lowest first
        self.contig_sorts += 1
        reserve = k.free_reserved if k.policy is None else 0
        if len(free) - n < reserve:
            self.contig_failures += 1
            raise ResourceShortage(
                f"kmem_alloc_contig: {n} pages would leave {len(free) - n} free frames, below the "
                f"reserve of {reserve}")
        asc = free[::-1]
        best = run = 0
        start = None
        ps = k.page_size
        for i, f in enumerate(asc):
            if i and f == asc[i - 1] + 1:
                run += 1
            else:
                run = 1
                start = f
            if run > best:
                best = run
            # the run may begin later than `start` to satisfy the mask
            if run >= n:
                first = f - n + 1
                if (first * ps) & mask == 0:
                    return list(range(first, first + n))
        self.contig_failures += 1
        raise ResourceShortage(
            f"kmem_alloc_contig: no {n} physically contiguous free frames"
            + (f" with address mask {mask:#x}" if mask else "")
            + f" (longest free run {best} of {len(free)} free frames: memory is fragmented)")

    def _install(self, e: VMMapEntry, frames: list[int]) -> None:
        import numpy as np

        k = self.kernel
        pm = k.pm
        chosen = set(frames)
        pm.free[:] = [f for f in pm.free if f not in chosen]
        base = e.offset >> k.page_shift
        for i, f in enumerate(frames):  # taken off the free list directly: no fault counted
            pm.views[f][:] = pm.zero_page
            k.page_insert(self.object, base + i, f)
            k.frame_wire(f)
            k.pmap_enter(e, i, f, True)
        e.wired_frames = np.array(frames, dtype=np.int32)
        e.wired_count = 1

    # ---- freeing --------------------------------------------------------------------------------
    def free(self, addr, size) -> None:
        if isinstance(addr, bool) or not isinstance(addr, int):
            raise InvalidArgument(f"kmem_free: address {addr!r} is not an integer")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"kmem_free: size {size!r} must be a positive number of bytes")
        got = self.allocations.get(addr)
        if got is None:
            raise InvalidAddress(f"kmem_free: {addr:#x} is not the start of a kmem allocation")
        ps = self.kernel.page_size
        want, kind = got
        if (size + ps - 1) // ps * ps != want:
            raise InvalidArgument(
                f"kmem_free: size {size:#x} does not match the {kind} allocation at {addr:#x} "
                f"({want:#x} bytes); kmem_free needs the allocation's length (free the whole "
                f"object, not a portion)")
        e = self.map.lookup(addr)
        self._remove(e)
        del self.allocations[addr]

    def physical_frames(self, addr: int, size: int) -> list[int]:
        """The frames now mapped at [addr, addr+size) (pmap_extract; -1 where none)."""
        ps = self.kernel.page_size
        out = []
        for a in range(addr - addr % ps, addr + size, ps):
            e = self.map.lookup(a)
            if e is None:
                raise InvalidAddress(f"{a:#x} is not mapped in kernel_map")
            out.append(int(e.pmap[(a - e.start) // ps]))
        return out

    def regions(self):
        return self.task.regions()


# ---- the guide's calls ----------------------------------------------------------------------------

def kernel_map(kernel) -> VMMap:
    """The kernel's kernel_map (made, with kernel_object, on first use)."""
    return kmem_of(kernel).map


def kmem_of(kernel) -> KernelMemory:
    km = getattr(kernel, "kmem", None)
    if km is None:
        km = KernelMemory(kernel)
        kernel.kmem = km
    return km


def _km(vmmap) -> KernelMemory:
    k = getattr(vmmap, "kernel", None) if isinstance(vmmap, VMMap) else None
    km = getattr(k, "kmem", None) if k is not None else None
    if km is None or km.map is not vmmap:
        raise InvalidArgument(f"{vmmap!r} is not a kernel_map (pass kernel_map(kernel))")
    return km


def kmem_alloc(vmmap, size) -> int:
    return _km(vmmap).alloc(size, "wired")


def kmem_alloc_wired(vmmap, size) -> int:
    return _km(vmmap).alloc(size, "wired")


def kmem_alloc_pageable(vmmap, size) -> int:
    return _km(vmmap).alloc(size, "pageable")


def kmem_alloc_aligned(vmmap, size) -> int:
    km = _km(vmmap)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size & (size - 1):
        raise InvalidArgument(f"kmem_alloc_aligned: size {size!r} is not a power of two")
    return km.alloc(size, "aligned", align=size)


def kmem_alloc_contig(vmmap, size, mask: int = 0, flags: int = 0) -> int:
    km = _km(vmmap)
    if isinstance(mask, bool) or not isinstance(mask, int) or mask < 0:
        raise InvalidArgument(f"kmem_alloc_contig: mask {mask!r} must be a non-negative int")
    return km.alloc(size, "contig", mask=mask)


def kmem_free(vmmap, addr, size) -> None:
    _km(vmmap).free(addr, size)


def kmem_read(vmmap, addr: int, n: int) -> bytes:
    return _km(vmmap).task.read(addr, n)


def kmem_write(vmmap, addr: int, data) -> None:
    _km(vmmap).task.write(addr, data)


__all__ = ["KernelMemory", "KernelTask", "kernel_map", "kmem_of", "kmem_alloc", "kmem_alloc_wired",
           "kmem_alloc_pageable", "kmem_alloc_aligned", "kmem_alloc_contig", "kmem_free",
           "kmem_read", "kmem_write"]
