"""Invariant guarded: UPLs behave as memory_object_types.h says (xnu-792): RET_ONLY_DIRTY gathers
only dirty/precious pages, RET_ONLY_ABSENT skips resident pages and creates absent busy
placeholders, CLEAN_IN_PLACE leaves pages mapped and resident, PRECIOUS marks created pages,
NOBLOCK leaves busy pages as holes (without it a request waits for them); commit/abort (and their _range forms) settle pages;
FREE_ON_EMPTY frees the UPL when the last page is settled; a freed UPL refuses use."""

import pytest

from vmcore import invariants
from vmcore.errors import InvalidAddress, InvalidArgument, PagerIOError
from vmcore.kernel import Kernel
from vmcore.upl import (
    UPL, UPL_ABORT_ERROR, UPL_ABORT_FREE_ON_EMPTY, UPL_CLEAN_IN_PLACE, UPL_COMMIT_FREE_ON_EMPTY,
    UPL_COMMIT_SET_DIRTY, UPL_COPYOUT_FROM, UPL_NOBLOCK, UPL_PRECIOUS, UPL_RET_ONLY_ABSENT,
    UPL_RET_ONLY_DIRTY,
)

PS = 4096


@pytest.fixture
def setup():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(8 * PS)
    obj = t.map.lookup(a).object
    return k, t, a, obj


def test_ret_only_dirty_and_clean_in_place(setup):
    k, t, a, obj = setup
    for i in (0, 1, 3):
        t.write(a + i * PS, bytes([i + 1]) * 10)
    t.read(a + 2 * PS, 1)  # resident, clean (zero fill)
    upl = UPL(k, obj, 0, 4 * PS, UPL_COPYOUT_FROM | UPL_RET_ONLY_DIRTY | UPL_CLEAN_IN_PLACE)
    assert [i for i, *_ in upl.page_list()] == [0, 1, 3]
    assert [(f, d) for _, f, d, _, _ in upl.page_list()] == [(int(obj.pages[i]), True) for i in (0, 1, 3)]
    assert [first for first, _ in upl.runs()] == [0, 3]
    assert not k.pm.busy[obj.pages[0]]  # clean in place: not busy, still mapped
    assert t.map.lookup(a).pmap[0] >= 0
    upl.commit()
    assert upl.closed and not k.upls
    assert not k.pm.dirty[obj.pages[0]] and obj.pages[0] is not None
    assert t.read(a, 1) == b"\x01"
    invariants.check(k)


def test_pageout_direction_frees_on_commit_and_keeps_on_abort(setup):
    k, t, a, obj = setup
    t.write(a, b"x" * 2 * PS)
    f0, f1 = obj.pages[0], obj.pages[1]
    upl = UPL(k, obj, 0, 2 * PS, UPL_COPYOUT_FROM | UPL_RET_ONLY_DIRTY)
    assert k.pm.busy[f0] and t.map.lookup(a).pmap[0] == -1  # busy, disconnected
    with pytest.raises(Exception):
        invariants.check(k)  # an open UPL is a breach of the closed-UPL invariant
    invariants.check(k, allow_open_upls=True)
    assert upl.commit_range(0, PS) is False
    assert 0 not in obj.pages and k.vm_stat()["Pageouts"] == 1
    assert upl.abort_range(PS, PS, UPL_ABORT_FREE_ON_EMPTY) is True
    assert upl.closed and obj.pages[1] == f1 and k.pm.dirty[f1]
    with pytest.raises(InvalidArgument):
        upl.commit_range(0, PS)
    invariants.check(k)


def test_ret_only_absent_precious_and_commit(setup):
    k, t, a, obj = setup
    t.write(a + PS, b"resident")
    upl = UPL(k, obj, 0, 3 * PS, UPL_RET_ONLY_ABSENT | UPL_PRECIOUS)
    held = [i for i, *_ in upl.page_list()]
    assert held == [0, 2]
    for _, f, d, absent, precious in upl.page_list():
        assert absent and precious and k.pm.busy[f]
    bufs = upl.buffers()
    bufs[0][:4] = b"page"
    upl.commit_range(0, PS, UPL_COMMIT_SET_DIRTY)
    upl.commit(UPL_COMMIT_FREE_ON_EMPTY)
    assert t.read(a, 4) == b"page" and t.read(a + PS, 8) == b"resident"
    f2 = obj.pages[2]
    assert k.pm.precious[f2] and not k.pm.absent[f2]
    invariants.check(k)
    # a precious clean page is written back by pageout even though it is clean
    k.pageout()
    assert obj.existence >= {0, 2}
    invariants.check(k)


def test_abort_error_makes_an_error_page(setup):
    k, t, a, obj = setup
    upl = UPL(k, obj, 4 * PS, PS, UPL_RET_ONLY_ABSENT)
    upl.abort(UPL_ABORT_ERROR)
    assert 4 not in obj.pages
    with pytest.raises(PagerIOError):
        t.read(a + 4 * PS, 1)
    invariants.check(k)


def test_noblock_busy_pages_are_holes_and_bad_arguments(setup):
    k, t, a, obj = setup
    t.write(a, b"z" * 2 * PS)
    first = UPL(k, obj, 0, PS, UPL_COPYOUT_FROM | UPL_RET_ONLY_DIRTY)
    second = UPL(k, obj, 0, 2 * PS, UPL_COPYOUT_FROM | UPL_RET_ONLY_DIRTY | UPL_NOBLOCK)
    assert [i for i, *_ in second.page_list()] == [1]
    second.abort()
    first.abort()
    for bad in [dict(offset=1, size=PS), dict(offset=0, size=0), dict(offset=0, size=PS, flags=1 << 30)]:
        with pytest.raises(InvalidArgument):
            UPL(k, obj, bad["offset"], bad["size"], bad.get("flags", 0))
    big = UPL(k, obj, 0, 1000 * PS, UPL_COPYOUT_FROM)
    assert big.npages == 256  # MAX_UPL_TRANSFER
    big.abort()
    with UPL(k, obj, 0, PS, UPL_COPYOUT_FROM) as u:
        assert u.held == 1
    assert u.closed
    invariants.check(k)


def test_without_noblock_a_request_waits_for_a_busy_page_with_it_skips(setup):
    """Kernel Programming Guide, "Universal Page Lists (UPLs)": "If a given page is marked as BUSY in the UPL, a
    request for information on that page would normally block. If the pager is doing prefetching
    or preflushing, this is not desirable, since it might be blocking on itself or on some other
    pager that is blocked waiting for the current transaction to complete. To avoid such
    deadlock, the UPL mechanism provides the UPL_NOBLOCK flag."

    Pages 0-1 are busy in a first UPL. A second request over pages 0-3 without NOBLOCK waits:
    it is not usable until the first UPL settles those pages, then it holds all four. With
    NOBLOCK it takes pages 2-3 at once and leaves 0-1 as holes. (The model has no threads: the
    wait is the request's state, not a sleep.)"""
    from vmcore.upl import UPL_COMMIT_FREE_ON_EMPTY

    k, t, a, obj = setup
    t.write(a, b"d" * 4 * PS)
    first = UPL(k, obj, 0, 2 * PS, UPL_COPYOUT_FROM | UPL_CLEAN_IN_PLACE | UPL_RET_ONLY_DIRTY)
    for i in range(2):  # CLEAN_IN_PLACE leaves pages usable; make them busy as a pageout would
        k.pm.busy[first.frames[i]] = True
        k.pm.special[first.frames[i]] = True
    # with NOBLOCK: the busy pages are holes, the UPL is usable at once
    skip = UPL(k, obj, 0, 4 * PS, UPL_COPYOUT_FROM | UPL_NOBLOCK)
    assert skip.ready and [i for i, *_ in skip.page_list()] == [2, 3]
    skip.abort()
    # without: it waits for pages 0 and 1
    wait = UPL(k, obj, 0, 4 * PS, UPL_COPYOUT_FROM | UPL_CLEAN_IN_PLACE)
    assert not wait.ready and wait.waiting == 2 and wait.held == 2
    with pytest.raises(InvalidArgument, match="waiting"):
        wait.buffers()
    with pytest.raises(InvalidArgument, match="waiting"):
        wait.commit()
    first.commit_range(0, PS)  # page 0 is settled: the waiter takes it
    assert wait.waiting == 1 and wait.held == 3
    first.commit_range(PS, PS, UPL_COMMIT_FREE_ON_EMPTY)
    assert first.closed and wait.ready and wait.held == 4
    assert len(wait.buffers()) == 4
    wait.commit()
    # a pagein-direction request waits the same way, and gets the page the holder filled
    absent = UPL(k, obj, 4 * PS, PS, UPL_RET_ONLY_ABSENT)  # page 4: an absent busy placeholder
    fill = UPL(k, obj, 4 * PS, 2 * PS, 0)
    assert fill.waiting == 1 and fill.held == 1  # waits for page 4, created page 5
    absent.buffers()[0][:5] = b"hello"
    absent.commit()
    assert fill.ready and fill.held == 2 and bytes(fill.buffers()[0][:5]) == b"hello"
    fill.commit()
    # giving up a waiting request leaves nothing behind
    holder = UPL(k, obj, 0, PS, UPL_COPYOUT_FROM)
    waiter = UPL(k, obj, 0, PS, UPL_COPYOUT_FROM)
    assert waiter.waiting == 1
    waiter.abort()
    assert not k.upl_waiters
    holder.abort()
    invariants.check(k)


def test_vm_map_get_upl_returns_the_first_objects_upl_and_what_it_covers():
    """Kernel Programming Guide, Memory and Virtual Memory: "the function vm_map_get_upl is frequently used in file systems. It gets the
    underlying VM object associated with a given range within an address space. Since this
    returns only the first object in that range, it is your responsibility to determine whether
    the entire range is covered by the resulting UPL and, if not, to make additional calls to
    get UPLs for other objects.\""""
    from vmcore.upl import vm_map_get_upl

    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(3 * PS)
    b = t.vm_allocate(2 * PS, address=a + 3 * PS)  # adjacent: one range, two objects
    t.write(a, b"A" * 3 * PS)
    t.write(b, b"B" * 2 * PS)
    r = vm_map_get_upl(t.map, a + PS, 4 * PS, UPL_COPYOUT_FROM)
    assert r.upl.object is t.map.lookup(a).object and r.size == 2 * PS  # stops at a's end
    assert bytes(r.upl.buffers()[0][:1]) == b"A"
    r.upl.abort()
    # the caller covers the rest with another call
    r2 = vm_map_get_upl(t.map, a + PS + r.size, 4 * PS - r.size, UPL_COPYOUT_FROM)
    assert r2.upl.object is t.map.lookup(b).object and r2.size == 2 * PS
    assert bytes(r2.upl.buffers()[1][:1]) == b"B"
    r2.upl.abort()
    with pytest.raises(InvalidAddress):
        vm_map_get_upl(t.map, b + 8 * PS, PS)
    # a fill through a copy-on-write entry lands in the entry's own shadow object
    c = t.fork()
    ce = c.map.lookup(a)
    shared = ce.object
    r3 = vm_map_get_upl(c.map, a, PS, UPL_COPYOUT_FROM)  # read direction: the shared object
    assert r3.upl.object is shared
    r3.upl.abort()
    r4 = vm_map_get_upl(c.map, a, PS, UPL_RET_ONLY_ABSENT)  # fill direction: a shadow of it
    assert r4.upl.object is not shared and r4.upl.object.shadow is shared
    assert c.map.lookup(a).object is r4.upl.object and not c.map.lookup(a).needs_copy
    r4.upl.abort()
    assert c.read(a, 1) == b"A"  # the placeholder went; the shared page shows through
    invariants.check(k)


def test_query_object_type_and_set_internal():
    """Kernel Programming Guide, Memory and Virtual Memory: "The flag QUERY_OBJECT_TYPE can be used to determine if an object is physically
    contiguous and to get other properties of the underlying object." and "The flag SET_INTERNAL
    is used by the BSD subsystem to cause all information about a UPL to be contained in a single
    memory object so that it can be passed around more easily. It can only be used if your code
    is running in the kernel's address space." (Every UPL call of the model is in the kernel.)"""
    import numpy as np

    from vmcore.device_pager import DevicePager
    from vmcore.upl import (
        UPL_DEV_MEMORY, UPL_PHYS_CONTIG, UPL_QUERY_OBJECT_TYPE, UPL_SET_INTERNAL,
        upl_get_internal_page_list, vm_map_get_upl,
    )

    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(2 * PS)
    t.write(a, b"x")
    dev = t.vm_map_object(DevicePager(np.zeros(2 * PS, dtype=np.uint8), wimg="io", name="fb"))
    q = vm_map_get_upl(t.map, dev, 2 * PS, UPL_QUERY_OBJECT_TYPE)
    assert q.upl is None and q.flags == UPL_DEV_MEMORY | UPL_PHYS_CONTIG
    assert q.object_type.phys_contiguous and q.object_type.pager_kind == "device"
    assert not k.upls  # a query makes no UPL
    q = vm_map_get_upl(t.map, a, 2 * PS, UPL_QUERY_OBJECT_TYPE)
    assert q.upl is None and q.flags == 0 and not q.object_type.phys_contiguous
    assert q.object_type.internal and q.object_type.resident_pages == 1 and q.size == 2 * PS
    # SET_INTERNAL: the page list travels inside the UPL
    r = vm_map_get_upl(t.map, a, PS, UPL_COPYOUT_FROM | UPL_SET_INTERNAL)
    assert r.page_list is None and r.upl.internal
    assert [i for i, *_ in upl_get_internal_page_list(r.upl)] == [0]
    r.upl.abort()
    # without it the page list is the caller's; the UPL keeps none to hand on
    r = vm_map_get_upl(t.map, a, PS, UPL_COPYOUT_FROM)
    assert [i for i, *_ in r.page_list] == [0]
    with pytest.raises(InvalidArgument, match="SET_INTERNAL"):
        upl_get_internal_page_list(r.upl)
    r.upl.abort()
    invariants.check(k)
