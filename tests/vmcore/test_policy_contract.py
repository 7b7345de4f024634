"""Invariant guarded: every reference replacement policy keeps the vmcore.policy contract.

One shared test mixin (cachetools' CacheTestMixin shape) runs against lru, fifo and clock:
  * the policy never tracks more frames than it has, and len() counts tracked frames;
  * select_victim only returns a frame that is tracked, and stops tracking it;
  * a removed frame is never chosen; removing an untracked frame is a no-op;
  * inserting a tracked frame again, or a frame out of range, is a ContractViolation;
  * referenced() accepts any integer array (int32, int64, uint, views, empty) and ignores
    untracked frames (hits on wired pages);
  * with no tracked frame, select_victim raises ResourceShortage (one line).
Then each policy's own definition (vmcore.policy) is checked on hand-made sequences, and a seeded
differential run with removals compares each policy with a plain-Python model of its definition.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque

import numpy as np
import pytest

from vmcore.errors import ContractViolation, InvalidArgument, ResourceShortage
from vmcore.policy import POLICIES, ClockPolicy, FIFOPolicy, LRUPolicy, ReplacementPolicy, make_policy


class PolicyContractMixin:
    name: str = ""

    def make(self, nframes: int = 8) -> ReplacementPolicy:
        pol = make_policy(self.name, nframes)
        assert isinstance(pol, ReplacementPolicy) and pol.name == self.name and pol.nframes == nframes
        return pol

    def test_empty_policy_has_no_victim(self):
        pol = self.make(4)
        assert len(pol) == 0
        with pytest.raises(ResourceShortage) as ei:
            pol.select_victim()
        assert "\n" not in str(ei.value) and "KERN_RESOURCE_SHORTAGE" in str(ei.value)

    def test_capacity_and_len(self):
        pol = self.make(8)
        for f in range(8):
            pol.inserted(f)
            assert len(pol) == f + 1
        assert sorted(pol.tracked_frames().tolist()) == list(range(8))
        v = pol.select_victim()
        assert 0 <= v < 8 and not pol.tracks(v) and len(pol) == 7
        pol.inserted(v)
        assert len(pol) == 8

    def test_inserting_twice_or_out_of_range_is_a_contract_violation(self):
        pol = self.make(4)
        pol.inserted(2)
        with pytest.raises(ContractViolation):
            pol.inserted(2)
        with pytest.raises(ContractViolation):
            pol.inserted(4)
        with pytest.raises(ContractViolation):
            pol.inserted(-1)
        assert len(pol) == 1

    def test_victims_are_tracked_and_drain_everything(self):
        pol = self.make(16)
        for f in (3, 9, 1, 15, 0, 7):
            pol.inserted(f)
        pol.referenced(np.array([9, 1, 9, 3], dtype=np.int64))
        seen = []
        while len(pol):
            before = set(pol.tracked_frames().tolist())
            v = pol.select_victim()
            assert v in before, f"victim {v} was not tracked"
            assert not pol.tracks(v)
            seen.append(v)
        assert sorted(seen) == [0, 1, 3, 7, 9, 15]

    def test_removed_frames_are_never_chosen(self):
        pol = self.make(10)
        for f in range(10):
            pol.inserted(f)
        pol.referenced(np.arange(10)[::-1])
        for f in (0, 4, 9):
            pol.removed(f)
        assert len(pol) == 7
        pol.removed(4)  # untracked: a no-op
        pol.removed(123)  # out of range: a no-op
        assert len(pol) == 7
        victims = {pol.select_victim() for _ in range(7)}
        assert victims == {1, 2, 3, 5, 6, 7, 8}

    def test_removed_then_reinserted_frame_is_fresh(self):
        pol = self.make(4)
        for f in range(4):
            pol.inserted(f)
        pol.removed(0)
        pol.inserted(0)  # now the newest page
        assert pol.select_victim() == 1

    def test_referenced_accepts_any_integer_array_and_ignores_untracked(self):
        pol = self.make(8)
        for f in range(4):
            pol.inserted(f)
        for arr in (np.array([], dtype=np.int64), np.array([1, 2], dtype=np.int32),
                    np.array([3], dtype=np.uint32), np.arange(4, dtype=np.int16)[::-1],
                    np.array([5, 6, 7, 1]), np.array([2, 2, 2, 2], dtype=np.intp)):
            pol.referenced(arr)
        assert len(pol) == 4
        victims = {pol.select_victim() for _ in range(4)}
        assert victims == {0, 1, 2, 3}, "an untracked frame (5, 6, 7) was chosen after being referenced"
        with pytest.raises(ResourceShortage):
            pol.select_victim()
        # an untracked frame referenced earlier starts fresh when inserted
        pol.inserted(6)
        pol.inserted(7)
        assert pol.select_victim() == 6

    def test_many_evictions_with_removals_keep_bookkeeping_bounded(self):
        pol = self.make(64)
        rng = np.random.default_rng(5)
        for f in range(64):
            pol.inserted(f)
        for step in range(3000):
            pol.referenced(rng.integers(0, 64, 5))
            if step % 3 == 0:
                f = int(rng.integers(0, 64))
                if pol.tracks(f):
                    pol.removed(f)
                    pol.inserted(f)
            v = pol.select_victim()
            pol.inserted(v)
        assert len(pol) == 64
        # lazy structures (heap / deque of keys) are compacted, not left to grow with the run
        for attr in ("_oldest", "_queue", "_ring"):
            lazy = getattr(pol, attr, None)
            assert lazy is None or len(lazy) <= 2 * 64 + 65, attr


class TestLRUContract(PolicyContractMixin):
    name = "lru"


class TestFIFOContract(PolicyContractMixin):
    name = "fifo"


class TestClockContract(PolicyContractMixin):
    name = "clock"


# ---- make_policy ------------------------------------------------------------------------------------

def test_make_policy_names():
    assert POLICIES == ("mach", "lru", "fifo", "clock")
    assert make_policy("mach", 10) is None
    assert isinstance(make_policy("lru", 10), LRUPolicy)
    assert isinstance(make_policy("fifo", 10), FIFOPolicy)
    assert isinstance(make_policy("clock", 10), ClockPolicy)


@pytest.mark.parametrize("bad", ["LRU", "arc", "", None, 3])
def test_make_policy_unknown_name_is_one_clear_line(bad):
    with pytest.raises(InvalidArgument) as ei:
        make_policy(bad, 10)
    msg = str(ei.value)
    assert "\n" not in msg and "mach, lru, fifo, clock" in msg and repr(bad) in msg


@pytest.mark.parametrize("n", [0, -3, 1.5, True])
def test_make_policy_needs_positive_frames(n):
    with pytest.raises(InvalidArgument):
        make_policy("lru", n)


# ---- each definition on hand-made sequences -----------------------------------------------------------

def fill(pol, frames):
    for f in frames:
        pol.inserted(f)
    return pol


def test_lru_evicts_least_recently_accessed():
    pol = fill(LRUPolicy(4), [0, 1, 2, 3])
    pol.referenced(np.array([0, 2]))
    assert pol.select_victim() == 1
    assert pol.select_victim() == 3
    pol.inserted(1)  # an insertion is an access: 1 is now the newest
    assert pol.select_victim() == 0
    assert pol.select_victim() == 2
    assert pol.select_victim() == 1


def test_lru_duplicates_in_a_batch_last_occurrence_wins():
    pol = fill(LRUPolicy(4), [0, 1, 2, 3])
    # 0 occurs first and last: its last access is the newest of the batch
    pol.referenced(np.array([0, 1, 2, 3, 1, 0]))
    assert [pol.select_victim() for _ in range(4)] == [2, 3, 1, 0]
    pol = fill(LRUPolicy(4), [0, 1, 2, 3])
    # a large batch with many repeats (exercises the vectorised path, not the size-1 one)
    batch = np.array([3, 2, 1, 0] * 1000 + [0, 1, 2, 3])
    pol.referenced(batch)
    assert [pol.select_victim() for _ in range(4)] == [0, 1, 2, 3]


def test_fifo_ignores_hits():
    pol = fill(FIFOPolicy(3), [2, 0, 1])
    pol.referenced(np.array([2, 2, 2, 0]))
    assert [pol.select_victim() for _ in range(3)] == [2, 0, 1]


def test_clock_second_chance():
    pol = fill(ClockPolicy(4), [0, 1, 2, 3])
    pol.referenced(np.array([0, 1]))
    # 0 and 1 have their bits set: cleared and moved to the newest position; 2 is evicted
    assert pol.select_victim() == 2
    pol.inserted(2)  # bit clear, after 3, 0, 1
    assert pol.select_victim() == 3
    assert pol.select_victim() == 0  # its bit was cleared on the way round
    pol.referenced(np.array([2]))
    assert pol.select_victim() == 1
    assert pol.select_victim() == 2


def test_clock_all_bits_set_degenerates_to_fifo_after_one_round():
    pol = fill(ClockPolicy(5), range(5))
    pol.referenced(np.arange(5))
    assert pol.select_victim() == 0
    assert pol.select_victim() == 1


# ---- seeded differential run with removals, against plain-Python models -----------------------------------

class RefLRU:
    def __init__(self):
        self.d = OrderedDict()

    def insert(self, f):
        self.d[f] = None

    def hit(self, f):
        if f in self.d:
            self.d.move_to_end(f)

    def remove(self, f):
        self.d.pop(f, None)

    def victim(self):
        return self.d.popitem(last=False)[0]


class RefFIFO:
    def __init__(self):
        self.q = []

    def insert(self, f):
        self.q.append(f)

    def hit(self, f):
        pass

    def remove(self, f):
        if f in self.q:
            self.q.remove(f)

    def victim(self):
        return self.q.pop(0)


class RefClock:
    def __init__(self):
        self.q, self.bit = [], {}

    def insert(self, f):
        self.q.append(f)
        self.bit[f] = 0

    def hit(self, f):
        if f in self.bit:
            self.bit[f] = 1

    def remove(self, f):
        if f in self.bit:
            self.q.remove(f)
            del self.bit[f]

    def victim(self):
        while True:
            f = self.q.pop(0)
            if self.bit[f]:
                self.bit[f] = 0
                self.q.append(f)
            else:
                del self.bit[f]
                return f


@pytest.mark.parametrize("name,ref_cls", [("lru", RefLRU), ("fifo", RefFIFO), ("clock", RefClock)])
@pytest.mark.parametrize("seed,nframes", [(1, 24), (2, 24), (3, 24), (4, 3000)])
def test_differential_with_removals(name, ref_cls, seed, nframes):
    """nframes=3000 makes LRU's oldest-frames batch (nframes / 16) smaller than what it tracks,
    so batches run dry, get rebuilt and are invalidated by hits."""
    rng = random.Random(seed)
    pol, ref = make_policy(name, nframes), ref_cls()
    tracked: set[int] = set()
    for f in range(nframes // 2 if nframes > 100 else 0):
        pol.inserted(f)
        ref.insert(f)
        tracked.add(f)
    for _ in range(4000):
        op = rng.random()
        if op < 0.35:
            f = rng.randrange(nframes)
            if f not in tracked:
                pol.inserted(f)
                ref.insert(f)
                tracked.add(f)
        elif op < 0.75:
            hot = rng.random() < 0.5 and nframes > 100  # sometimes hit the oldest frames
            batch = [rng.randrange(nframes // 8 if hot else nframes) for _ in range(rng.randint(1, 12))]
            pol.referenced(np.array(batch))
            for f in batch:
                ref.hit(f)
        elif op < 0.85:
            f = rng.randrange(nframes)
            pol.removed(f)
            ref.remove(f)
            tracked.discard(f)
        elif tracked:
            v = pol.select_victim()
            assert v == ref.victim(), f"{name}: victim differs from the reference model"
            tracked.remove(v)
        assert len(pol) == len(tracked)
