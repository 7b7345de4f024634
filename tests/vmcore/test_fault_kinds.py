"""Invariant guarded: every fault is classified and counted once (zero fill, soft, hard, cow; each
a "Translation fault"), the event sink sees each one with its object, offset, kind and address,
pmap hits are not faults, an inactive page touched by a fault is reactivated, and behaviour drives
deactivate-behind as in 10.4 (xnu-792)."""

from vmcore import invariants
from vmcore.clock import ManualClock
from vmcore.kernel import Kernel
from vmcore.resident import INACTIVE
from vmcore.types import FaultKind

PS = 4096


def test_counts_and_events():
    events = []
    k = Kernel(memory="1MiB", event_sink=events.append)
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    t.write(a, b"1")  # zero fill
    t.write(a, b"2")  # hit: no fault
    st = k.vm_stat()
    assert (st["Translation faults"], st["Pages zero filled"]) == (1, 1)
    e = events[-1]
    assert e.kind is FaultKind.ZERO_FILL and e.address == a and e.offset == 0 and e.task is t
    c = t.fork()
    c.read(a, 1)  # soft: resident in the shared object
    assert events[-1].kind is FaultKind.SOFT
    c.write(a, b"3")  # cow
    assert events[-1].kind is FaultKind.COW and events[-1].write
    assert events[-1].base_object_id != events[-1].object_id
    k.pageout()
    t.read(a, 1)  # hard
    assert events[-1].kind is FaultKind.HARD
    st = k.vm_stat()
    assert st["Soft faults"] >= 1 and st["Hard faults"] == 1 and st["Pages copy-on-write"] == 1
    assert st["Pageins"] == 1
    assert st["Translation faults"] == len(events)
    invariants.check(k)


def test_sink_object_with_fault_method():
    class Sink:
        def __init__(self):
            self.n = 0

        def fault(self, ev):
            self.n += 1

    s = Sink()
    k = Kernel(memory="1MiB", event_sink=s)
    t = k.task_create("t")
    a = t.vm_allocate(3 * PS)
    t.read(a, 3 * PS)
    assert s.n == 3


def test_soft_fault_reactivates_inactive_page():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(PS)
    t.write(a, b"x")
    f = int(t.map.lookup(a).pmap[0])
    k.pmap_disconnect(f)
    k.pm.deactivate(f)
    before = k.vm_stat()["Pages reactivated"]
    t.read(a, 1)
    assert k.pm.queue[f] != INACTIVE and k.vm_stat()["Pages reactivated"] == before + 1


def test_deactivate_behind_sequential_and_random():
    k = Kernel(memory="4MiB")
    t = k.task_create("t")
    a = t.vm_allocate(32 * PS)
    t.vm_behavior_set(a, 32 * PS, "sequential")
    for i in range(32):
        t.read(a + i * PS, 1)
    assert k.vm_stat()["Deactivate behind"] == 31
    assert len(k.pm.inactive) == 31
    b = t.vm_allocate(32 * PS)
    t.vm_behavior_set(b, 32 * PS, "random")
    for i in range(32):
        t.read(b + i * PS, 1)
    assert k.vm_stat()["Deactivate behind"] == 31
    c = t.vm_allocate(32 * PS)
    t.vm_behavior_set(c, 32 * PS, "rseqntl")
    for i in reversed(range(32)):
        t.read(c + i * PS, 1)
    assert k.vm_stat()["Deactivate behind"] == 62
    assert t.vm_region(c).behavior == "rseqntl"


def test_clock_is_model_time():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    t0 = k.clock.now()
    a = t.vm_allocate(10 * PS)
    t.read(a, 10 * PS)
    assert k.clock.now() > t0
    mc = ManualClock(100.0)
    k2 = Kernel(memory="1MiB", clock=mc)
    t2 = k2.task_create("t")
    b = t2.vm_allocate(PS)
    t2.read(b, 1)
    assert mc.now() == 100.0  # an injected clock is never advanced by the model


def test_hard_fault_puts_the_page_on_the_active_list():
    """Memory Management in Mac OS X, "Paging Virtual Memory In": "For hard faults, the VM object's pager finds the page
    in the backing store or from the file-mapped file, depending on the type of pager. After making
    the appropriate adjustments to the map information, the pager moves the page into physical
    memory and places the page on the active list."

    300 pages written, paged out, then read back once each: every read-back is a hard fault whose
    page is active, and the pageout scan never counts one of them as reactivated."""
    from vmcore.resident import ACTIVE

    k = Kernel(memory="4MiB")
    t = k.task_create("t")
    n = 300
    a = t.vm_allocate(n * PS)
    for i in range(n):
        t.write(a + i * PS, i.to_bytes(4, "little"))
    k.pageout()
    e = t.map.lookup(a)
    assert not (e.pmap >= 0).any()  # every page is out
    before = k.vm_stat()
    for i in range(n):
        assert int.from_bytes(t.read(a + i * PS, 4), "little") == i
        f = int(e.pmap[i])
        assert k.pm.queue[f] == ACTIVE, f"page {i} went to queue {k.pm.queue[f]}"
    k.pageout_step()
    after = k.vm_stat()
    assert after["Hard faults"] - before["Hard faults"] >= 1
    assert after["Pageins"] - before["Pageins"] == n  # each page came in (hard or clustered)
    assert after["Pages reactivated"] == before["Pages reactivated"]
    invariants.check(k)
