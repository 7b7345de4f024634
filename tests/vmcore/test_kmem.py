"""Kernel allocations against the Kernel Programming Guide, "Allocating Memory Using Mach Routines"."""

from __future__ import annotations

import pytest

from vmcore import invariants
from vmcore.errors import InvalidAddress, InvalidArgument, ResourceShortage
from vmcore.kernel import Kernel
from vmcore.kmem import (
    kernel_map, kmem_alloc, kmem_alloc_aligned, kmem_alloc_contig, kmem_alloc_pageable,
    kmem_alloc_wired, kmem_free, kmem_read, kmem_write,
)

PS = 4096


@pytest.fixture
def k():
    kern = Kernel(memory="2MiB")
    yield kern
    invariants.check(kern)
    kern.close()


def test_wired_and_pageable(k):
    """Guide: "All of the kmem_alloc functions except kmem_alloc_pageable allocate wired memory.
    The function kmem_alloc_pageable creates the appropriate VM structures but does not back the
    region with physical memory." ... "kmem_alloc_wired is synonymous with kmem_alloc"."""
    km = kernel_map(k)
    w0 = k.vm_stat()["Pages wired down"]
    a = kmem_alloc(km, 3 * PS)
    b = kmem_alloc_wired(km, 2 * PS + 1)  # rounded up to whole pages
    assert k.vm_stat()["Pages wired down"] == w0 + 6
    assert kmem_read(km, a, 3 * PS) == bytes(3 * PS)
    kmem_write(km, b + 7, b"kernel data")
    free0 = len(k.pm.free)
    p = kmem_alloc_pageable(km, 64 * PS)
    assert len(k.pm.free) == free0 and k.vm_stat()["Pages wired down"] == w0 + 6
    assert k.kmem.physical_frames(p, 64 * PS) == [-1] * 64  # no physical memory behind it
    kmem_write(km, p + 5 * PS, b"touched")  # a fault backs it, pageable
    k.pageout()
    assert kmem_read(km, b + 7, 11) == b"kernel data"  # wired: survived the pageout
    assert kmem_read(km, p + 5 * PS, 7) == b"touched"  # paged out and back in
    invariants.check(k)
    for addr, size in ((a, 3 * PS), (b, 2 * PS + 1), (p, 64 * PS)):
        kmem_free(km, addr, size)
    assert k.vm_stat()["Pages wired down"] == w0 and not k.kmem.allocations


def test_aligned_needs_a_power_of_two(k):
    """Guide: "The function kmem_alloc_aligned allocates memory aligned according to the value
    of the size argument, which must be a power of 2." """
    km = kernel_map(k)
    kmem_alloc(km, PS)  # so the next free address is not already aligned
    for size in (PS, 8 * PS, 32 * PS):
        a = kmem_alloc_aligned(km, size)
        assert a % size == 0
    small = kmem_alloc_aligned(km, 512)
    assert small % PS == 0
    for bad in (3 * PS, 0, -PS, 12288, True):
        with pytest.raises(InvalidArgument, match="power of two"):
            kmem_alloc_aligned(km, bad)


def test_free_needs_the_size(k):
    """Guide: "Unlike the standard C free function, kmem_free requires the length of the
    object." ... "you must free an entire object, not just a portion of one." """
    km = kernel_map(k)
    a = kmem_alloc(km, 4 * PS)
    kmem_write(km, a, b"keep")
    with pytest.raises(InvalidArgument, match="does not match"):
        kmem_free(km, a, PS)
    with pytest.raises(InvalidArgument, match="does not match"):
        kmem_free(km, a, 8 * PS)
    with pytest.raises(InvalidAddress):
        kmem_free(km, a + PS, 3 * PS)
    assert kmem_read(km, a, 4) == b"keep"  # nothing was freed by the bad calls
    invariants.check(k)
    kmem_free(km, a, 4 * PS)
    with pytest.raises(InvalidAddress):
        kmem_free(km, a, 4 * PS)  # a double free is refused too
    t = k.task_create("user")
    with pytest.raises(InvalidArgument, match="kernel_map"):
        kmem_alloc(t.map, PS)


def test_contig_is_contiguous_and_sorts_the_free_list(k):
    """Guide: "The function kmem_alloc_contig attempts to allocate a block of physically
    contiguous memory. This is not always possible, and requires a full sort of the system free
    list even for short allocations." """
    km = kernel_map(k)
    t = k.task_create("churn")
    x = t.vm_allocate(64 * PS)
    t.write(x, bytes(64 * PS))
    t.vm_deallocate(x + 8 * PS, 8 * PS)  # returns frames out of order to the free stack
    sorts = k.kmem.contig_sorts
    a = kmem_alloc_contig(km, 4 * PS)
    frames = k.kmem.physical_frames(a, 4 * PS)
    assert frames == list(range(frames[0], frames[0] + 4))
    assert k.kmem.contig_sorts == sorts + 1
    assert k.pm.free == sorted(k.pm.free, reverse=True), "the free list was not sorted"
    b = kmem_alloc_contig(km, 2 * PS, mask=8 * PS - 1)  # first frame's address aligned to 32 KiB
    fb = k.kmem.physical_frames(b, 2 * PS)
    assert (fb[0] * PS) % (8 * PS) == 0 and fb[1] == fb[0] + 1
    assert kmem_read(km, a, 4 * PS) == bytes(4 * PS)
    kmem_free(km, a, 4 * PS)
    kmem_free(km, b, 2 * PS)


def test_contig_fails_cleanly_when_fragmented(k):
    """"This is not always possible": with the free frames scattered, a contiguous allocation
    fails with a clear error and changes nothing (no entry, no wired page, no frame taken)."""
    km = kernel_map(k)
    t = k.task_create("fragmenter")
    n = len(k.pm.free) - k.free_target - 4
    x = t.vm_allocate(n * PS)
    t.write(x, b"\x01" * (n * PS))
    for i in range(0, n, 2):  # free every other page: no two free frames are neighbours
        t.vm_deallocate(x + i * PS, PS)
    free_before = sorted(k.pm.free)
    wired_before = len(k.pm.wired)
    entries_before = len(km.entries)
    # the frames left free by the task are interleaved with its live pages; only the untouched
    # tail of memory (the pageout reserve) can still hold a run
    with pytest.raises(ResourceShortage, match="contiguous") as ei:
        kmem_alloc_contig(km, (len(k.pm.free) // 2) * PS)
    assert "longest free run" in str(ei.value)
    assert sorted(k.pm.free) == free_before and len(k.pm.wired) == wired_before
    assert len(km.entries) == entries_before and not k.kmem.allocations
    assert k.kmem.contig_failures == 1
    invariants.check(k)
    # a task's pages are intact
    assert t.read(x + PS, 3) == b"\x01\x01\x01"
