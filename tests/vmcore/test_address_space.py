"""Invariant guarded: a task's address space is 32-bit or 64-bit, as the Apple documents says, and a 32-bit
task's map ends at 4 GiB whatever it maps: allocation anywhere fails with NoSpace once the 4 GiB
are used, fixed addresses at or past 4 GiB are outside its space, and fork keeps the width."""

import pytest

from vmcore import invariants
from vmcore.errors import InvalidAddress, InvalidArgument, NoSpace
from vmcore.kernel import USER32_MAX_ADDRESS, USER_MAX_ADDRESS, Kernel

PS = 4096
GIB = 1 << 30


def test_32_bit_task_grows_to_four_gigabytes_and_no_further():
    """Memory Management in Mac OS X, "Mac OS X Virtual Memory": "For 32-bit processes, each process has an address
    space that can grow dynamically up to a limit of four gigabytes. For 64-bit processes, the
    address space can grow dynamically up to a limit of approximately 18 exabytes."

    (The model's 64-bit map ends at 2^47, XNU's x86_64 user limit, far above 4 GiB; see
    vmcore.kernel.USER_MAX_ADDRESS.)"""
    k = Kernel(memory="1MiB")
    t32 = k.task_create("app32", is64=False)
    t64 = k.task_create("app64")
    assert not t32.is64 and t64.is64
    assert t32.map.max_address == USER32_MAX_ADDRESS == 4 * GIB
    assert t64.map.max_address == USER_MAX_ADDRESS > 1 << 40
    # three 1 GiB regions fit below 4 GiB (the first page is never mapped) ...
    got = [t32.vm_allocate(GIB) for _ in range(3)]
    assert all(a + GIB <= 4 * GIB for a in got)
    # ... a fourth does not, nor does anything larger than what is left
    with pytest.raises(NoSpace):
        t32.vm_allocate(GIB)
    left = 4 * GIB - (got[-1] + GIB)
    assert left == GIB - PS
    a = t32.vm_allocate(left)  # exactly what is left
    with pytest.raises(NoSpace):
        t32.vm_allocate(PS)
    with pytest.raises(InvalidAddress):
        t32.vm_allocate(PS, address=4 * GIB)
    with pytest.raises(InvalidArgument):
        t32.vm_allocate(4 * GIB)  # larger than the whole 32-bit space
    t32.write(a + left - 1, b"!")  # the last byte below 4 GiB works
    assert t32.read(a + left - 1, 1) == b"!"
    with pytest.raises(InvalidAddress):
        t32.read(4 * GIB - 1, 2)
    # the 64-bit task takes the same 4 GiB and more, above 4 GiB too
    for _ in range(5):
        t64.vm_allocate(GIB)
    assert t64.vm_allocate(PS, address=8 * GIB) == 8 * GIB
    # fork keeps the width
    c = t32.fork()
    assert not c.is64 and c.map.max_address == 4 * GIB
    assert c.read(a + left - 1, 1) == b"!"
    # freeing a region gives its space back
    t32.vm_deallocate(got[1], GIB)
    assert t32.vm_allocate(GIB) == got[1]
    with pytest.raises(InvalidArgument):
        k.task_create("bad", is64="no")
    invariants.check(k)
    k.close()
