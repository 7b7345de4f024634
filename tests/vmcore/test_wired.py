"""Invariant guarded: wired pages are never paged out: they survive any memory pressure, sit on
the wired queue ("Pages wired down"), and go back to the paging queues when unwired. A failed
vm_wire leaves nothing wired."""

import pytest

from vmcore import invariants
from vmcore.errors import InvalidArgument, ProtectionFailure, ResourceShortage
from vmcore.kernel import Kernel

PS = 4096


def test_wired_pages_survive_pressure():
    k = Kernel(memory="1MiB")  # 256 frames
    t = k.task_create("t")
    w = t.vm_allocate(8 * PS)
    t.write(w, b"wired data" * 100)
    t.vm_wire(w, 8 * PS)
    assert k.vm_stat()["Pages wired down"] == 8
    frames = t.map.lookup(w).wired_frames.copy()
    big = t.vm_allocate(2048 * PS)
    for i in range(2048):
        t.write(big + i * PS, i.to_bytes(4, "little"))
    k.pageout()
    assert k.vm_stat()["Pageouts"] > 1000
    assert (t.map.lookup(w).wired_frames == frames).all()
    for f in frames:
        assert k.pm.queue[f] == 3 and k.pm.owner[f] is not None
    assert t.read(w, 10) == b"wired data"
    faults = k.vm_stat()["Translation faults"]
    t.read(w, 8 * PS)
    assert k.vm_stat()["Translation faults"] == faults  # still mapped: no fault
    invariants.check(k)
    t.vm_unwire(w, 8 * PS)
    assert k.vm_stat()["Pages wired down"] == 0
    k.pageout()
    assert t.read(w, 10) == b"wired data"
    invariants.check(k)


def test_wire_errors_leave_nothing_wired():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    with pytest.raises(InvalidArgument):
        t.vm_unwire(a, PS)
    t.vm_protect(a + PS, PS, "")
    with pytest.raises(ProtectionFailure):
        t.vm_wire(a, 4 * PS)
    assert k.vm_stat()["Pages wired down"] == 0
    big = t.vm_allocate(400 * PS)
    with pytest.raises(ResourceShortage):
        t.vm_wire(big, 400 * PS)  # more than memory minus the reserve
    assert k.vm_stat()["Pages wired down"] == 0
    invariants.check(k)


def test_deallocate_and_fork_of_wired_memory():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    t.vm_wire(a, 4 * PS)
    t.vm_wire(a + PS, PS)
    c = t.fork()
    c.write(a, b"child")
    t.write(a, b"parent")  # COW copy-up of a wired page keeps it wired
    assert k.vm_stat()["Pages wired down"] == 4
    invariants.check(k)
    t.vm_deallocate(a, 4 * PS)
    assert k.vm_stat()["Pages wired down"] == 0
    assert c.read(a, 5) == b"child"
    invariants.check(k)
