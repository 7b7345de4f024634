"""Invariant guarded: UPLs behave as memory_object_types.h says (xnu-792): RET_ONLY_DIRTY gathers
only dirty/precious pages, RET_ONLY_ABSENT skips resident pages and creates absent busy
placeholders, CLEAN_IN_PLACE leaves pages mapped and resident, PRECIOUS marks created pages,
NOBLOCK leaves busy pages as holes; commit/abort (and their _range forms) settle pages;
FREE_ON_EMPTY frees the UPL when the last page is settled; a freed UPL refuses use."""

import pytest

from vmcore import invariants
from vmcore.errors import InvalidArgument, PagerIOError
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
