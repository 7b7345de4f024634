"""Invariant guarded: a named entry (mach_make_memory_entry + vm_map) gives two tasks the same
memory: each sees the other's writes, through pageout and back; a named region (submap) shares
its structure: memory allocated into it later appears in every task that mapped it."""

import pytest

from vmcore import invariants
from vmcore.errors import InvalidArgument, ProtectionFailure
from vmcore.kernel import Kernel

PS = 4096


def test_two_tasks_share_through_a_named_entry():
    k = Kernel(memory="2MiB")
    a = k.task_create("a")
    b = k.task_create("b")
    x = a.vm_allocate(4 * PS)
    a.write(x, b"before")
    h = k.make_memory_entry(a, x, 4 * PS, "rw")
    y = b.vm_map(h)
    assert b.read(y, 6) == b"before"
    b.write(y + PS, b"from b")
    assert a.read(x + PS, 6) == b"from b"
    a.write(x + 3 * PS + 5, b"from a")
    assert b.read(y + 3 * PS + 5, 6) == b"from a"
    k.pageout()
    assert a.read(x + PS, 6) == b"from b" and b.read(y, 6) == b"before"
    assert b.vm_region(y).share_mode == "SHM"
    invariants.check(k)
    # the handle keeps the memory alive after the creator exits
    a.terminate()
    assert b.read(y + 3 * PS + 5, 6) == b"from a"
    h.release()
    invariants.check(k)


def test_named_entry_after_fork_names_the_tasks_own_copy():
    k = Kernel(memory="2MiB")
    p = k.task_create("p")
    x = p.vm_allocate(2 * PS)
    p.write(x, b"orig")
    c = p.fork()
    h = k.make_memory_entry(p, x, 2 * PS, "rw")
    other = k.task_create("o")
    y = other.vm_map(h)
    other.write(y, b"new!")
    assert p.read(x, 4) == b"new!"
    assert c.read(x, 4) == b"orig"
    invariants.check(k)


def test_read_only_handle_and_limits():
    k = Kernel(memory="2MiB")
    a = k.task_create("a")
    b = k.task_create("b")
    x = a.vm_allocate(2 * PS)
    h = k.make_memory_entry(a, x, 2 * PS, "r")
    y = b.vm_map(h)
    with pytest.raises(ProtectionFailure):
        b.write(y, b"no")
    with pytest.raises(ProtectionFailure):
        b.vm_map(h, prot="rw")
    with pytest.raises(ProtectionFailure):
        b.vm_protect(y, PS, "rw")
    with pytest.raises(InvalidArgument):
        b.vm_map(h, size=3 * PS)
    a.vm_protect(x, 2 * PS, "r", set_maximum=True)
    with pytest.raises(ProtectionFailure):
        k.make_memory_entry(a, x, PS, "rw")
    z = a.vm_allocate(PS)
    with pytest.raises(InvalidArgument):
        k.make_memory_entry(a, x, 4 * PS if z == x + 2 * PS else 3 * PS, "r")
    invariants.check(k)


def test_copy_mapping_of_a_shared_object_is_a_snapshot():
    k = Kernel(memory="2MiB")
    a = k.task_create("a")
    x = a.vm_allocate(PS)
    a.write(x, b"one")
    h = k.make_memory_entry(a, x, PS, "rw")
    b = k.task_create("b")
    y = b.vm_map(h, copy=True)
    a.write(x, b"two")
    assert b.read(y, 3) == b"one"
    b.write(y, b"bbb")
    assert a.read(x, 3) == b"two"
    invariants.check(k)


def test_named_region_submap_structure_is_shared():
    k = Kernel(memory="2MiB")
    region = k.make_named_region(16 * PS, name="libs")
    a = k.task_create("a")
    b = k.task_create("b")
    ya = a.vm_map(region)
    yb = b.vm_map(region)
    off = region.vm_allocate(2 * PS)
    a.write(ya + off, b"text")
    assert b.read(yb + off, 4) == b"text"
    off2 = region.vm_allocate(PS)
    b.write(yb + off2, b"later")
    assert a.read(ya + off2, 5) == b"later"
    region.vm_protect(off, 2 * PS, "r")
    with pytest.raises(ProtectionFailure):
        a.write(ya + off, b"x")
    c = a.fork()
    assert c.read(ya + off, 4) == b"text"
    region.vm_deallocate(off2, PS)
    with pytest.raises(Exception) as ei:
        b.read(yb + off2, 1)
    assert "KERN_INVALID_ADDRESS" in str(ei.value)
    assert a.vm_region(ya).is_submap
    invariants.check(k)
    with pytest.raises(InvalidArgument):
        a.vm_inherit(ya, PS, "copy")
