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


def test_user_wire_can_be_unwired_from_user_space_a_kernel_wire_cannot():
    """Kernel Programming Guide, "Using Mach Memory Maps": "The functions vm_map_wire and vm_map_unwire can be
    used to wire and unwire portions of an address map. If you set the argument user_wire to
    TRUE, then the page can be unwired from user space. This should be set to FALSE if you are
    about to use the memory for I/O or for some other operation that cannot tolerate paging.\""""
    from vmcore.map import vm_map_unwire, vm_map_wire
    from vmcore.types import VM_PROT_READ

    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    t.write(a, b"io buffer")
    # a kernel wiring (I/O): user space cannot undo it
    vm_map_wire(t.map, a, a + 2 * PS, VM_PROT_READ, user_wire=False)
    assert k.vm_stat()["Pages wired down"] == 2
    with pytest.raises(InvalidArgument, match="wired by the kernel"):
        t.vm_unwire(a, PS)  # vm_unwire is vm_map_unwire(user_wire=True)
    with pytest.raises(InvalidArgument):
        vm_map_unwire(t.map, a, a + PS, user_wire=True)
    assert k.vm_stat()["Pages wired down"] == 2
    # a user wiring on top: user space undoes its own, the kernel's stays
    t.vm_wire(a, 4 * PS)
    t.vm_wire(a, PS)  # user wirings nest
    assert k.vm_stat()["Pages wired down"] == 4
    t.vm_unwire(a, 4 * PS)
    assert k.vm_stat()["Pages wired down"] == 2  # pages 0-1: the kernel's; 2-3 unwired
    assert t.map.lookup(a).user_wired_count == 1  # page 0 has a user wiring left
    t.vm_unwire(a, PS)
    with pytest.raises(InvalidArgument):
        t.vm_unwire(a, PS)  # no user wiring left there
    assert k.vm_stat()["Pages wired down"] == 2
    with pytest.raises(InvalidArgument, match="no kernel wiring"):
        vm_map_unwire(t.map, a + 2 * PS, a + 3 * PS)  # never kernel-wired
    vm_map_unwire(t.map, a, a + 2 * PS, user_wire=False)
    assert k.vm_stat()["Pages wired down"] == 0
    # a user wiring alone cannot be undone as a kernel one
    t.vm_wire(a, PS)
    with pytest.raises(InvalidArgument, match="only user wirings"):
        vm_map_unwire(t.map, a, a + PS, user_wire=False)
    t.vm_unwire(a, PS)
    assert t.read(a, 9) == b"io buffer"
    invariants.check(k)


def test_wire_access_type_is_the_accesses_that_must_not_fault():
    """Kernel Programming Guide, Memory and Virtual Memory: "In vm_map_wire, the argument access_type indicates the types of accesses that
    should not be allowed to generate a page fault."

    Wiring copy-on-write memory for read leaves a later write to fault (the copy is made then);
    wiring it for read and write makes the copy at once, and the write does not fault. An
    access_type the region does not allow is refused and nothing is wired."""
    from vmcore.map import vm_map_unwire, vm_map_wire
    from vmcore.types import VM_PROT_READ, VM_PROT_WRITE

    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(2 * PS)
    t.write(a, b"s" * 2 * PS)
    c = t.fork()  # both sides copy-on-write now
    vm_map_wire(c.map, a, a + PS, VM_PROT_READ)
    faults = k.vm_stat()["Translation faults"]
    c.read(a, 6)
    assert k.vm_stat()["Translation faults"] == faults  # reads do not fault
    c.write(a, b"C")
    assert k.vm_stat()["Translation faults"] == faults + 1  # the write did (copy-on-write)
    vm_map_wire(c.map, a + PS, a + 2 * PS, VM_PROT_READ | VM_PROT_WRITE)
    faults = k.vm_stat()["Translation faults"]
    c.write(a + PS, b"D")
    assert k.vm_stat()["Translation faults"] == faults  # already copied and writable
    assert t.read(a, 1) == b"s" and t.read(a + PS, 1) == b"s"
    assert c.read(a, 1) == b"C" and c.read(a + PS, 1) == b"D"
    ro = t.vm_allocate(PS, prot="r")
    with pytest.raises(ProtectionFailure):
        vm_map_wire(t.map, ro, ro + PS, VM_PROT_READ | VM_PROT_WRITE)
    assert t.map.lookup(ro).wired_count == 0
    invariants.check(k)
    vm_map_unwire(c.map, a, a + 2 * PS)
    assert k.vm_stat()["Pages wired down"] == 0
    invariants.check(k)
