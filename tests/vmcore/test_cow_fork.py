"""Invariant guarded: after fork, copy-inherited memory is copy-on-write: parent and child each see
their own writes only, unwritten pages stay shared (one frame), and each first write to a shared
page copies it up the shadow chain exactly once ("Pages copy-on-write"). Holds for forks of forks."""

import pytest

from vmcore import invariants
from vmcore.kernel import Kernel

PS = 4096


@pytest.fixture
def k():
    kern = Kernel(memory="4MiB")
    yield kern
    kern.close()


def test_parent_and_child_writes_are_private(k):
    p = k.task_create("parent")
    a = p.vm_allocate(8 * PS)
    for i in range(8):
        p.write(a + i * PS, bytes([i + 1]) * PS)
    c = p.fork("child")
    cow0 = k.vm_stat()["Pages copy-on-write"]
    c.write(a, b"child!")
    p.write(a + PS, b"parent")
    assert p.read(a, 6) == bytes([1]) * 6
    assert c.read(a, 6) == b"child!"
    assert p.read(a + PS, 6) == b"parent"
    assert c.read(a + PS, 6) == bytes([2]) * 6
    assert k.vm_stat()["Pages copy-on-write"] - cow0 == 2
    # an unwritten page is one frame seen by both
    fp = p.map.lookup(a + 2 * PS)
    p.read(a + 2 * PS, 1)
    c.read(a + 2 * PS, 1)
    fc = c.map.lookup(a + 2 * PS)
    assert fp.pmap[2] == fc.pmap[2] >= 0
    # a second write to the same page copies nothing
    c.write(a + 10, b"x")
    assert k.vm_stat()["Pages copy-on-write"] - cow0 == 2
    invariants.check(k)


def test_fork_of_fork(k):
    t0 = k.task_create("gen0")
    a = t0.vm_allocate(4 * PS)
    t0.write(a, b"A" * (4 * PS))
    t1 = t0.fork("gen1")
    t1.write(a, b"B")
    t2 = t1.fork("gen2")
    t2.write(a + 1, b"C")
    t0.write(a + 2, b"Z")
    assert t0.read(a, 3) == b"AAZ"
    assert t1.read(a, 3) == b"BAA"
    assert t2.read(a, 3) == b"BCA"
    assert t2.read(a + 3 * PS, 4) == b"AAAA"
    invariants.check(k)
    for r in t2.regions():
        assert r.share_mode == "COW"


def test_child_sees_snapshot_after_pageout(k):
    p = k.task_create("p")
    a = p.vm_allocate(16 * PS)
    p.write(a, bytes(range(256)) * 16 * 16)
    c = p.fork()
    k.pageout()
    p.write(a, b"\xff" * PS)
    assert c.read(a, 256) == bytes(range(256))
    assert p.read(a, 4) == b"\xff" * 4
    invariants.check(k)


def test_inherit_none_and_shared(k):
    p = k.task_create("p")
    a = p.vm_allocate(3 * PS)
    p.vm_inherit(a, PS, "none")
    p.vm_inherit(a + PS, PS, "shared")
    c = p.fork()
    with pytest.raises(Exception) as ei:
        c.read(a, 1)
    assert "KERN_INVALID_ADDRESS" in str(ei.value)
    c.write(a + PS, b"shared!")
    assert p.read(a + PS, 7) == b"shared!"
    c.write(a + 2 * PS, b"copy")
    assert p.read(a + 2 * PS, 4) == bytes(4)
    invariants.check(k)
