"""Invariant guarded: shadow chains do not grow without bound (vm_object_collapse): when the other user of a
backing object goes away its single-reference backing object is collapsed into the shadower, and
a shadower that covers every page bypasses its backing object. Bound asserted: depth <= 2 after
any number of fork + write + terminate rounds."""

from vmcore import invariants
from vmcore.kernel import Kernel

PS = 4096


def depth_of(task, addr):
    return task.map.lookup(addr).object.depth()


def test_repeated_fork_write_terminate_keeps_chains_short():
    k = Kernel(memory="2MiB")
    p = k.task_create("shell")
    a = p.vm_allocate(8 * PS)
    p.write(a, b"0" * 8 * PS)
    depths = []
    for i in range(50):
        c = p.fork(f"child{i}")
        p.write(a + (i % 8) * PS, str(i).encode())
        c.write(a + ((i + 3) % 8) * PS, b"c")
        c.terminate()
        depths.append(depth_of(p, a))
        invariants.check(k)
    assert max(depths) <= 2, depths
    assert depths[-1] <= 1
    assert k.vm_stat()["Shadow collapses"] > 0
    assert p.read(a + 49 % 8 * PS, 2) == b"49"
    # live objects stay bounded too
    assert len(k.objects) <= 4


def test_chain_of_generations_collapses_when_ancestors_exit():
    k = Kernel(memory="2MiB")
    t = k.task_create("g0")
    a = t.vm_allocate(4 * PS)
    t.write(a, b"g0")
    for i in range(1, 30):
        c = t.fork(f"g{i}")
        c.write(a, f"g{i}".encode())
        t.terminate()
        t = c
        assert depth_of(t, a) <= 2
    assert t.read(a, 3) == b"g29"
    invariants.check(k)


def test_bypass_when_shadow_covers_everything():
    k = Kernel(memory="2MiB")
    p = k.task_create("p")
    a = p.vm_allocate(4 * PS)
    p.write(a, b"x" * 4 * PS)
    c = p.fork()  # the original object stays referenced by the child's entry
    for i in range(4):
        p.write(a + i * PS, b"y")
    # p's shadow now holds every page: it no longer needs the backing object
    assert depth_of(p, a) == 0
    assert k.vm_stat()["Shadow bypasses"] >= 1
    assert c.read(a, 1) == b"x" and p.read(a, 1) == b"y"
    invariants.check(k)
