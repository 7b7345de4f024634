"""Invariant guarded: vm_protect never raises a protection above max_protection; set_maximum only
lowers the maximum (and clips the current protection); accesses obey the current protection with
KERN_PROTECTION_FAILURE; a failed vm_protect changes nothing."""

import pytest

from vmcore import invariants
from vmcore.errors import InvalidAddress, ProtectionFailure
from vmcore.kernel import Kernel

PS = 4096


def test_protection_rules():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    t.write(a, b"data")
    t.vm_protect(a, PS, "r")
    with pytest.raises(ProtectionFailure) as ei:
        t.write(a, b"x")
    assert "KERN_PROTECTION_FAILURE" in str(ei.value) and "write" in str(ei.value)
    assert t.read(a, 4) == b"data"
    t.vm_protect(a, PS, "rw")  # raising within the maximum is fine
    t.write(a, b"ok")
    t.vm_protect(a, PS, "r", set_maximum=True)
    r = t.vm_region(a)
    assert (r.protection, r.max_protection) == ("r--", "r--")
    with pytest.raises(ProtectionFailure):
        t.vm_protect(a, PS, "rw")
    with pytest.raises(ProtectionFailure):
        t.vm_protect(a, PS, "rw", set_maximum=True)
    t.vm_protect(a + PS, PS, "")
    with pytest.raises(ProtectionFailure):
        t.read(a + PS, 1)
    # a range crossing the r-- maximum fails as a whole and changes nothing
    with pytest.raises(ProtectionFailure):
        t.vm_protect(a, 3 * PS, "rw")
    assert t.vm_region(a + 2 * PS).protection == "rw-"
    with pytest.raises(InvalidAddress):
        t.vm_protect(a, 8 * PS, "r")
    assert t.vm_region(a + 3 * PS).protection == "rw-"
    invariants.check(k)


def test_write_spanning_a_read_only_page_writes_nothing():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(2 * PS)
    t.vm_protect(a + PS, PS, "r")
    with pytest.raises(ProtectionFailure):
        t.write(a + PS - 2, b"abcd")
    assert t.read(a + PS - 2, 2) == bytes(2)


def test_protect_downgrade_removes_write_translation():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(PS)
    t.write(a, b"1")
    t.vm_protect(a, PS, "r")
    with pytest.raises(ProtectionFailure):
        t.access([a], write=True)
    t.access([a])
