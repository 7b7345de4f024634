"""Invariant guarded: every bad input gets one clear VMError (a one-line message
naming what was wrong) and changes nothing: unaligned or overlapping fixed allocations, zero or
absurd sizes, unknown policy, memory below the kernel's reserve, bad protections / inheritance /
behaviours, bad addresses."""

import numpy as np
import pytest

from vmcore import invariants
from vmcore.errors import InvalidAddress, InvalidArgument, NoSpace, VMError
from vmcore.kernel import Kernel

PS = 4096


@pytest.fixture
def kt():
    k = Kernel(memory="1MiB")
    return k, k.task_create("t")


def one_line(e):
    s = str(e)
    assert "\n" not in s and len(s) > 10
    return s


def test_kernel_arguments():
    for kwargs, word in [
        (dict(memory="lots"), "memory"),
        (dict(memory=0), "memory"),
        (dict(memory=-5), "memory"),
        (dict(memory="3TiB"), "absurd"),
        (dict(memory="64KiB"), "minimum"),
        (dict(memory="1MiB", page_size=1000), "page_size"),
        (dict(memory="1MiB", page_size=256), "page_size"),
        (dict(memory="1MiB", ncpu=0), "ncpu"),
        (dict(memory="1MiB", policy="optimal"), "optimal"),
        (dict(memory="1MiB", clock=object()), "clock"),
        (dict(memory="1MiB", default_pager=3), "default_pager"),
        (dict(memory="1MiB", event_sink=5), "sink"),
    ]:
        with pytest.raises(InvalidArgument) as ei:
            Kernel(**kwargs)
        assert word in one_line(ei.value), (kwargs, str(ei.value))
    with pytest.raises(InvalidArgument) as ei:
        Kernel(memory="256KiB")
    assert "129 pages" in str(ei.value)
    Kernel(memory=129 * PS)  # exactly the minimum works


def test_allocation_errors(kt):
    k, t = kt
    a = t.vm_allocate(4 * PS, address=0x100000)
    with pytest.raises(InvalidArgument):
        t.vm_allocate(PS, address=0x100001)
    with pytest.raises(NoSpace):
        t.vm_allocate(4 * PS, address=0x100000 + 2 * PS)
    with pytest.raises(InvalidArgument):
        t.vm_allocate(0)
    with pytest.raises(InvalidArgument):
        t.vm_allocate(-PS)
    with pytest.raises(InvalidArgument):
        t.vm_allocate(1 << 60)
    with pytest.raises(InvalidArgument):
        t.vm_allocate("4096")
    with pytest.raises(InvalidAddress):
        t.vm_allocate(PS, address=1 << 50)
    with pytest.raises(InvalidArgument):
        t.vm_allocate(PS, prot="rwz")
    assert len(t.regions()) == 1 and t.regions()[0].start == a
    invariants.check(k)


def test_attribute_errors(kt):
    k, t = kt
    a = t.vm_allocate(2 * PS)
    with pytest.raises(InvalidArgument):
        t.vm_inherit(a, PS, "sometimes")
    with pytest.raises(InvalidArgument):
        t.vm_behavior_set(a, PS, "chaotic")
    with pytest.raises(InvalidAddress):
        t.vm_behavior_set(a, 4 * PS, "random")
    with pytest.raises(InvalidArgument):
        t.vm_deallocate(a, 0)
    with pytest.raises(InvalidArgument):
        t.read(a, -1)
    with pytest.raises(InvalidArgument):
        t.write(a, 12345)
    with pytest.raises(InvalidAddress):
        t.read(0x7000_0000, 4)
    with pytest.raises(InvalidAddress):
        t.vm_region(1 << 46)
    with pytest.raises(InvalidArgument):
        t.access(np.array([1.5]))
    with pytest.raises(InvalidArgument):
        t.access(np.array([a, a]), write=np.array([True]))
    with pytest.raises(InvalidArgument):
        k.pageout(-1)
    assert len(t.regions()) == 1
    invariants.check(k)


def test_terminated_task_refuses_calls(kt):
    k, t = kt
    a = t.vm_allocate(PS)
    t.terminate()
    with pytest.raises(InvalidArgument):
        t.read(a, 1)
    t.terminate()  # idempotent
    invariants.check(k)


def test_errors_are_vmerrors_with_mach_names(kt):
    k, t = kt
    with pytest.raises(VMError) as ei:
        t.read(0x5000, 1)
    assert str(ei.value).startswith("KERN_INVALID_ADDRESS: ")
