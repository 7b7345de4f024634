"""Invariant guarded: vm_copy and the low-level map copy API (vmcore.map_copy) move data
copy-on-write through VM objects' shadow and copy fields, never lose or leak a byte or a
reference, and follow the Apple documents's contract for vm_map_copyin (src_destroy), vm_map_copyout (fills
an unused region only), vm_map_copy_overwrite (into an existing, writable range, the kernel's
included) and vm_map_copy_discard."""

import pytest

from vmcore import invariants
from vmcore.errors import InvalidAddress, InvalidArgument, ProtectionFailure
from vmcore.kernel import Kernel
from vmcore.kmem import kernel_map, kmem_alloc, kmem_read
from vmcore.map_copy import (
    vm_map_copy_discard, vm_map_copy_overwrite, vm_map_copyin, vm_map_copyout,
)

PS = 4096


def _fill(t, a, n, tag):
    for i in range(n):
        t.write(a + i * PS, bytes([tag, i]) * (PS // 2))


def _frame(t, a):
    e = t.map.lookup(a)
    return int(e.pmap[(a - e.start) // PS])


def test_vm_copy_is_copy_on_write_through_the_shadow_and_copy_fields():
    """Memory Management in Mac OS X, "VM Objects" (table 1: Shadow, Copy, "Used for copy-on-write optimizations"):
    "If the VM object is involved in a copy-on-write (vm_copy) operation, the shadow and copy
    fields may point to other VM objects. Otherwise both fields are usually NULL."

    A page-aligned vm_copy copies no page: the destination maps a copy object that shadows the
    source object, which names it in its copy field; the copy reads the source's frames; a
    write on either side leaves the other's bytes as they were, through memory pressure too.
    (XNU copies anonymous memory with the symmetric strategy and keeps copy objects for shared
    and external ones; the model follows the seed.)"""
    k = Kernel(memory="2MiB")
    t = k.task_create("t")
    n = 8
    src = t.vm_allocate(n * PS)
    dst = t.vm_allocate(n * PS)
    _fill(t, src, n, 0xA)
    _fill(t, dst, n, 0xB)
    so = t.map.lookup(src).object
    assert so.shadow is None and so.copy is None  # "Otherwise both fields are usually NULL"
    zero_fills = k.vm_stat()["Pages zero filled"]
    t.vm_copy(src, n * PS, dst)
    de = t.map.lookup(dst)
    co = de.object
    assert so.copy is co and co.shadow is so and de.needs_copy
    assert len(co.pages) == 0  # no page was copied
    assert t.read(dst, 2) == bytes([0xA, 0]) and _frame(t, dst) == _frame(t, src)
    assert k.vm_stat()["Pages zero filled"] == zero_fills
    invariants.check(k)
    # the source writes: the old page is pushed into the copy object first
    t.write(src + 2 * PS, b"new source")
    assert k.vm_stat()["Copy-object pushes"] == 1 and 2 in co.pages
    assert t.read(dst + 2 * PS, 2) == bytes([0xA, 2])
    # the destination writes: only it sees its write
    t.write(dst + 3 * PS, b"new dest")
    assert t.read(src + 3 * PS, 2) == bytes([0xA, 3])
    assert t.read(dst + 3 * PS, 8) == b"new dest"
    invariants.check(k)
    k.pageout()
    for i in range(n):
        want_src = b"new source" if i == 2 else bytes([0xA, i]) * 5
        want_dst = b"new dest\x0a\x03" if i == 3 else bytes([0xA, i]) * 5
        assert t.read(src + i * PS, 10) == want_src, i
        assert t.read(dst + i * PS, 10) == want_dst, i
    invariants.check(k)
    # unaligned copies move bytes
    t.vm_copy(src + 1, 10, dst + 7)
    assert t.read(dst + 7, 10) == t.read(src + 1, 10)
    invariants.check(k)
    k.close()


def test_collapse_skips_a_backing_object_that_is_its_shadows_copy():
    """Kernel Programming Guide, "Mac OS X VM Overview": "Further, Mach automatically garbage collects shadow
    objects, removing any intermediate shadow objects whose pages are no longer referenced by any
    (nondefunct) shadow object." A copy object is not such an intermediate: XNU's
    vm_object_collapse skips a backing object that is its own shadow's copy object (xnu.md 7),
    because the source keeps pushing old pages into it.

    Two vm_copy calls from one source make old copy -> new copy -> source; when the second
    destination goes, the new copy object is referenced only by the old one, yet it stays, and
    the first destination still sees the source as it was."""
    k = Kernel(memory="2MiB")
    t = k.task_create("t")
    src = t.vm_allocate(4 * PS)
    d1 = t.vm_allocate(4 * PS)
    d2 = t.vm_allocate(4 * PS)
    t.write(src, b"v1" * (2 * PS))
    t.vm_copy(src, 4 * PS, d1)
    t.write(src, b"v2")  # pushed into the first copy object
    t.vm_copy(src, 4 * PS, d2)
    so = t.map.lookup(src).object
    c1, c2 = t.map.lookup(d1).object, t.map.lookup(d2).object
    assert so.copy is c2 and c2.shadow is so and c1.shadow is c2
    t.vm_deallocate(d2, 4 * PS)
    assert c2.alive and c2.ref_count == 1 and c1.shadow is c2 and so.copy is c2
    t.write(src + PS, b"v3")  # pushed into c2, which c1 still sees through
    assert t.read(d1, 2) == b"v1" and t.read(d1 + PS, 2) == b"v1"
    assert t.read(src, 2) == b"v2" and t.read(src + PS, 2) == b"v3"
    invariants.check(k)
    # the source goes: its copy object takes its pages (an ordinary collapse) and d1 still reads
    t.vm_deallocate(src, 4 * PS)
    assert t.read(d1, 2) == b"v1" and t.read(d1 + PS, 2) == b"v1"
    invariants.check(k)
    k.close()


def test_copyin_overwrite_into_the_kernel_map_and_discard():
    """Kernel Programming Guide, "Using Mach Memory Maps": "The function vm_map_copyin copies data from an
    arbitrary (potentially non-kernel) memory map into a copy list and returns the copy list
    pointer in copy_result. If something goes wrong and you need to throw away this intermediate
    object, it should be freed with vm_map_copy_discard. In order to actually get the data from
    the copy list, you need to overwrite a memory object in the kernel's address space with
    vm_map_copy_overwrite.\""""
    k = Kernel(memory="2MiB")
    t = k.task_create("user")
    a = t.vm_allocate(4 * PS)
    t.write(a, b"from user space" + bytes(100) + b"end")
    km = kernel_map(k)
    buf = kmem_alloc(km, 4 * PS)
    copy = vm_map_copyin(t.map, a, 4 * PS)
    assert copy.size == 4 * PS and copy in k.map_copies
    invariants.check(k)  # the copy's references are counted
    t.write(a, b"changed after copyin")  # the copy keeps the bytes as they were
    vm_map_copy_overwrite(km, buf, copy)
    assert kmem_read(km, buf, 15) == b"from user space"
    assert kmem_read(km, buf + 115, 3) == b"end"
    assert not copy.alive and copy not in k.map_copies
    with pytest.raises(InvalidArgument):
        vm_map_copy_overwrite(km, buf, copy)  # consumed
    invariants.check(k)
    # something goes wrong: the copy is thrown away, its references go
    so = t.map.lookup(a).object
    refs = so.ref_count
    c2 = vm_map_copyin(t.map, a, 2 * PS)
    assert so.ref_count == refs + 1
    vm_map_copy_discard(c2)
    vm_map_copy_discard(c2)  # twice is harmless
    assert so.ref_count == refs
    invariants.check(k)
    # copyin from the kernel map, overwrite into the user map (the reverse direction)
    c3 = vm_map_copyin(km, buf, 15)
    b = t.vm_allocate(PS)
    vm_map_copy_overwrite(t.map, b + 100, c3)
    assert t.read(b + 100, 15) == b"from user space"
    invariants.check(k)
    k.close()


def test_copyin_src_destroy_and_errors_leave_the_source_alone():
    """Kernel Programming Guide, Memory and Virtual Memory: `vm_map_copyin(vm_map_t src_map, vm_offset_t src_addr, vm_size_t len, boolean_t
    src_destroy, vm_map_copy_t *copy_result)`: with src_destroy the source range is removed once
    it is copied; a hole or an unreadable page refuses the copy and changes nothing."""
    k = Kernel(memory="2MiB")
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    t.write(a, b"moving")
    copy = vm_map_copyin(t.map, a, 4 * PS, src_destroy=True)
    assert t.map.lookup(a) is None
    b = vm_map_copyout(t.map, copy)
    assert t.read(b, 6) == b"moving"
    invariants.check(k)
    c = t.vm_allocate(2 * PS)
    t.vm_protect(c + PS, PS, "")
    with pytest.raises(ProtectionFailure):
        vm_map_copyin(t.map, c, 2 * PS)
    with pytest.raises(InvalidAddress):
        vm_map_copyin(t.map, c, 8 * PS)
    with pytest.raises(InvalidArgument):
        vm_map_copyin(t.map, c, 0)
    with pytest.raises(InvalidArgument):
        vm_map_copyin(kernel_map(k), kmem_alloc(kernel_map(k), PS), PS, src_destroy=True)
    assert not k.map_copies
    # device memory is never shared copy-on-write: copyin takes its bytes at once
    import numpy as np

    from vmcore.device_pager import DevicePager

    fb = np.zeros(2 * PS, dtype=np.uint8)
    fb[:5] = np.frombuffer(b"frame", np.uint8)
    dev = t.vm_map_object(DevicePager(fb, wimg="io", name="fb"))
    got = vm_map_copyout(t.map, vm_map_copyin(t.map, dev, 2 * PS))
    fb[0] = ord("F")
    assert t.read(got, 5) == b"frame" and t.read(dev, 5) == b"Frame"
    invariants.check(k)
    k.close()


def test_copyout_fills_an_unused_region_only():
    """Kernel Programming Guide, Memory and Virtual Memory: "The function vm_map_copyout is used for filling an unused region in an address
    map. If the region is allocated, then vm_map_copyout does nothing.\""""
    k = Kernel(memory="2MiB")
    src = k.task_create("src")
    new = k.task_create("new")
    a = src.vm_allocate(3 * PS)
    src.write(a, b"process image")
    taken = new.vm_allocate(3 * PS)
    new.write(taken, b"already here")
    copy = vm_map_copyin(src.map, a, 3 * PS)
    before = [(e.start, e.end, e.object) for e in new.map.entries]
    assert vm_map_copyout(new.map, copy, address=taken) is None  # allocated: nothing happens
    assert vm_map_copyout(new.map, copy, address=taken + PS) is None  # partly allocated
    assert [(e.start, e.end, e.object) for e in new.map.entries] == before
    assert new.read(taken, 12) == b"already here" and copy.alive
    free = taken + 16 * PS
    got = vm_map_copyout(new.map, copy, address=free)
    assert got == free and new.read(free, 13) == b"process image"
    assert not copy.alive
    r = new.vm_region(free)
    assert (r.start, r.end, r.protection, r.max_protection) == (free, free + 3 * PS, "rw-", "rwx")
    # the copy is copy-on-write: the new task's write stays its own
    new.write(free, b"P")
    assert src.read(a, 1) == b"p" and new.read(free, 1) == b"P"
    invariants.check(k)
    k.close()


def test_overwrite_needs_a_mapped_writable_destination():
    """Kernel Programming Guide, Memory and Virtual Memory: vm_map_copy_overwrite "overwrites an object with the contents of a copy list":
    the destination must exist and be writable; otherwise nothing is written and the copy is
    still there to discard."""
    k = Kernel(memory="2MiB")
    t = k.task_create("t")
    a = t.vm_allocate(2 * PS)
    t.write(a, b"data")
    ro = t.vm_allocate(2 * PS, prot="r")
    copy = vm_map_copyin(t.map, a, 2 * PS)
    with pytest.raises(ProtectionFailure):
        vm_map_copy_overwrite(t.map, ro, copy)
    with pytest.raises(InvalidAddress):
        vm_map_copy_overwrite(t.map, a + 64 * PS, copy)
    with pytest.raises(InvalidArgument):
        vm_map_copy_overwrite(t.map, a, copy, interruptible=True)
    assert copy.alive and t.read(ro, 4) == bytes(4)
    vm_map_copy_discard(copy)
    invariants.check(k)
    k.close()


def test_a_upl_filling_a_copied_object_pushes_to_its_copy_first():
    """Kernel Programming Guide, "Universal Page Lists (UPLs)": "UPLs can also be used to push data into and pull
    data from VM objects." Data a UPL pushes into a source object after a vm_copy must not show
    through the copy: the copy object gets the range's old pages first (XNU does so unless
    UPL_NO_SYNC, xnu.md 6)."""
    from vmcore.upl import UPL_RET_ONLY_ABSENT, vm_map_get_upl

    k = Kernel(memory="2MiB")
    t = k.task_create("t")
    src = t.vm_allocate(4 * PS)
    dst = t.vm_allocate(4 * PS)
    t.write(src, b"old" * PS)
    k.pageout()  # page 0..2 in the pager; page 3 was never written
    t.vm_copy(src, 4 * PS, dst)
    r = vm_map_get_upl(t.map, src, 4 * PS, UPL_RET_ONLY_ABSENT)
    # the push brought pages 0-2 in (the copy object got them); page 3 is the one absent page
    assert [i for i, *_ in r.page_list] == [3]
    for buf in r.upl.buffers():
        buf[:3] = b"NEW"
    r.upl.commit()
    assert t.read(src + 3 * PS, 3) == b"NEW" and t.read(dst + 3 * PS, 3) == bytes(3)
    assert t.read(src, 3) == b"old" == t.read(dst, 3)
    invariants.check(k)
    k.close()
