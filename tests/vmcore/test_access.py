"""Invariant guarded: Task.access(addrs, write) is exactly a sequence of one-byte reads (or writes):
the same faults, the same modified bits, the same errors; hits go to the replacement policy as
batches; under a reference policy the kernel's misses (zero fill + hard faults) equal a plain cache
simulation with memory / page_size frames (clustering off, every frame usable)."""

import numpy as np
import pytest

from vmcore import invariants
from vmcore.errors import InvalidAddress
from vmcore.kernel import Kernel

PS = 4096


class TinyFIFO:
    """A trivial FIFO policy (test-only) that records every call the kernel makes."""

    name = "tinyfifo"

    def __init__(self):
        self.queue = []
        self.calls = []

    def inserted(self, frame):
        assert frame not in self.queue
        self.queue.append(frame)
        self.calls.append(("inserted", frame))

    def referenced(self, frames):
        assert isinstance(frames, np.ndarray)
        self.calls.append(("referenced", len(frames)))

    def removed(self, frame):
        if frame in self.queue:
            self.queue.remove(frame)
        self.calls.append(("removed", frame))

    def select_victim(self):
        self.calls.append(("select",))
        return self.queue.pop(0)


def fifo_misses(pages, cap):
    res, order, miss = set(), [], 0
    for p in pages:
        if p not in res:
            miss += 1
            if len(res) == cap:
                res.discard(order.pop(0))
            res.add(p)
            order.append(p)
    return miss


def test_reference_policy_miss_counts_equal_a_cache_simulation():
    rng = np.random.default_rng(7)
    pol = TinyFIFO()
    k = Kernel(memory=16 * PS, policy=pol)
    t = k.task_create("replay")
    base = t.vm_allocate(64 * PS)
    pages = np.concatenate([rng.integers(0, 40, 3000), np.arange(64), rng.integers(0, 12, 500)])
    writes = rng.random(pages.size) < 0.3
    t.access(base + pages * PS + rng.integers(0, PS, pages.size), write=writes)
    st = k.vm_stat()
    assert st["Pages zero filled"] + st["Hard faults"] == fifo_misses(pages.tolist(), 16)
    assert st["Pageins"] == st["Hard faults"]
    assert any(c[0] == "referenced" and c[1] > 1 for c in pol.calls)  # batched hits
    invariants.check(k)


def test_real_reference_policies_match_simulate():
    policy = pytest.importorskip("vmcore.policy")
    rng = np.random.default_rng(3)
    pages = np.concatenate([rng.zipf(1.3, 20000) % 300, np.tile(np.arange(50), 20)])
    for name in ("lru", "fifo", "clock"):
        k = Kernel(memory=32 * PS, policy=name)
        t = k.task_create("r")
        base = t.vm_allocate(300 * PS)
        t.access(base + pages * PS)
        st = k.vm_stat()
        assert st["Pages zero filled"] + st["Hard faults"] == policy.simulate(name, pages, 32), name
        invariants.check(k)


def test_access_equals_one_byte_accesses_under_mach():
    rng = np.random.default_rng(5)
    pages = rng.integers(0, 300, 4000)
    writes = rng.random(pages.size) < 0.5

    def run(batch):
        k = Kernel(memory="1MiB")
        t = k.task_create("t")
        base = t.vm_allocate(300 * PS)
        addrs = base + pages * PS
        if batch:
            t.access(addrs, write=writes)
        else:
            for a, w in zip(addrs.tolist(), writes.tolist()):
                if w:
                    t.write(a, b"\0")
                else:
                    t.read(a, 1)
        invariants.check(k)
        st = k.vm_stat()
        return {key: st[key] for key in ("Translation faults", "Pages zero filled", "Hard faults",
                                           "Pageouts", "Soft faults")}

    assert run(True) == run(False)


def test_access_errors_and_wired_hits():
    pol = TinyFIFO()
    k = Kernel(memory=8 * PS, policy=pol)
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    t.vm_wire(a, PS)
    assert ("removed", int(t.map.lookup(a).wired_frames[0])) in pol.calls
    t.access(np.array([a, a, a + PS, a]))
    with pytest.raises(InvalidAddress):
        t.access(np.array([a, a + 100 * PS]))
    t.access(np.array([], dtype=np.int64))
    t.vm_unwire(a, PS)
    invariants.check(k)
