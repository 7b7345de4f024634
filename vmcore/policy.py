"""Reference page-replacement policies (lru, fifo, clock) for comparison with Mach's own queues.

Owns: `POLICIES`, `make_policy(name, nframes)`, the `ReplacementPolicy` base class and its three
reference subclasses `LRUPolicy`, `FIFOPolicy`, `ClockPolicy`, and `simulate()`, a plain cache
simulator over any of them (used by benchmarks and tests, and as the yardstick the kernel's miss
counts must equal).

Theory of operation (mechanism / policy split, as cachetools' `popitem` hook and libCacheSim's
`to_evict` vs `evict`): the kernel owns the page frames and does every eviction itself (pageout,
pmap removal, free queue); a policy only *chooses*. The kernel tells the policy what happened to
each frame and asks it for one victim when it needs a frame and none is free:

    inserted(frame)       frame now holds a newly faulted-in page; that access is its first.
    referenced(frames)    hits, in access order, as ONE numpy array (vectorised: no Python per hit).
    removed(frame)        frame freed for another reason (deallocate, wire, terminate).
    select_victim()       choose the frame to evict AND stop tracking it; the kernel then pages
                          the page out and frees the frame.

`mach` is not a policy object: it is the model's own active / inactive queues with reference bits
(vmcore.pageout); `make_policy("mach", n)` returns None to say so.

Definitions:
  lru    evicts the least recently accessed page (an insertion counts as an access).
  fifo   evicts the page resident longest, regardless of hits.
  clock  second-chance FIFO: a page brought in starts with its reference bit clear, a hit sets it;
         to evict, look at the oldest page: if its bit is set, clear it and move it to the newest
         position, else evict it.

Invariants: a frame is tracked from `inserted` until `select_victim` returns it or `removed` is
called; `select_victim` only ever returns a tracked frame; `len(policy)` is the number of tracked
frames and never exceeds `nframes`.

Implementation: per-frame numpy arrays (LRU: last-access stamp; clock: reference bit), so
`referenced` is one or two numpy calls per batch (fifo: none); the insertion generation of each
frame (-1 when untracked) is a plain list, read one frame at a time on the eviction path. LRU
evicts from a sorted batch of the k oldest frames built with one np.argpartition over the stamps
and checked lazily against them (see LRUPolicy), so neither hits nor evictions cost a Python-level
heap operation. FIFO and clock keep a deque of `generation << 32 | frame` keys; keys of removed
frames are skipped when they surface and compacted when they pile up.

Caveats:
  * `referenced` ignores frames that are not tracked (e.g. hits on wired pages, which the kernel
    removed from the policy when it wired them), and `removed` of an untracked frame is a no-op,
    so the kernel need not filter. `inserted` of a frame already tracked is a ContractViolation.
  * LRU duplicates within one `referenced` batch: the last occurrence wins (np.maximum.at over
    increasing stamps; never numpy's unspecified fancy-assignment order).
  * LRU: if the hits between two evictions touch every frame of the oldest batch, each eviction
    rebuilds the batch (O(nframes) numpy work, comparable to those hits' own vectorised cost).
  * clock rotation is O(number of set bits passed over); every bit cleared was set by a hit, so
    this is amortised O(1) per hit, but one eviction may rotate many frames.
  * Frames are ints in [0, nframes) with nframes < 2**32.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from vmcore.errors import ContractViolation, InvalidArgument, ResourceShortage

POLICIES = ("mach", "lru", "fifo", "clock")

_SHIFT = 32
_MASK = (1 << _SHIFT) - 1


class ReplacementPolicy:
    """Base class: the bookkeeping every reference policy shares (which frames are tracked).

    Subclasses implement `referenced` and the hooks `_on_insert`, `_on_removed` and `_pick`."""

    name: str = "?"

    def __init__(self, nframes: int):
        if not isinstance(nframes, (int, np.integer)) or isinstance(nframes, bool) or nframes < 1:
            raise InvalidArgument(f"replacement policy needs a positive number of frames, got {nframes!r}")
        if nframes >= 1 << _SHIFT:
            raise InvalidArgument(f"replacement policy supports at most {(1 << _SHIFT) - 1} frames")
        self.nframes = int(nframes)
        #: insertion generation of each frame, -1 when the frame is not tracked (a list: the
        #: per-eviction paths read it one frame at a time, which is cheaper than numpy scalars)
        self._gen: list[int] = [-1] * self.nframes
        self._next_gen = 0
        self._count = 0

    # ---- the contract ---------------------------------------------------------------------------
    def inserted(self, frame: int) -> None:
        """`frame` now holds a newly faulted-in page; that access counts as its first."""
        frame = int(frame)
        if not 0 <= frame < self.nframes:
            raise ContractViolation(f"{self.name}: inserted frame {frame} outside 0..{self.nframes - 1}")
        if self._gen[frame] >= 0:
            raise ContractViolation(f"{self.name}: frame {frame} inserted twice without eviction or removal")
        gen = self._next_gen
        self._next_gen = gen + 1
        self._gen[frame] = gen
        self._count += 1
        self._on_insert(frame, gen)

    def referenced(self, frames: np.ndarray) -> None:
        """Hits on `frames`, in access order, as one numpy integer array (untracked frames are
        ignored). Vectorised: a handful of numpy calls per batch, never Python per hit."""
        raise NotImplementedError

    def removed(self, frame: int) -> None:
        """`frame` was freed for a reason other than eviction; stop tracking it (no-op if untracked)."""
        frame = int(frame)
        if 0 <= frame < self.nframes and self._gen[frame] >= 0:
            self._gen[frame] = -1
            self._count -= 1
            self._on_removed(frame)

    def select_victim(self) -> int:
        """Choose the frame to evict and stop tracking it; the kernel then pages it out and frees it."""
        if self._count == 0:
            raise ResourceShortage(f"{self.name}: no evictable frame (every page is wired or none is resident)")
        frame = self._pick()
        self._gen[frame] = -1
        self._count -= 1
        return frame

    # ---- introspection ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def tracks(self, frame: int) -> bool:
        return 0 <= frame < self.nframes and self._gen[frame] >= 0

    def tracked_frames(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self._gen, dtype=np.int64) >= 0)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self._count}/{self.nframes} frames>"

    # ---- hooks ----------------------------------------------------------------------------------
    def _on_insert(self, frame: int, gen: int) -> None:
        raise NotImplementedError

    def _on_removed(self, frame: int) -> None:
        """Called after the frame's generation was reset; lazy structures skip it later."""

    def _pick(self) -> int:
        """Return the victim; the caller then marks it untracked."""
        raise NotImplementedError

    def _compact_keys(self, keys) -> list[int]:
        """The keys `gen << 32 | frame` of `keys` whose frame is still tracked with that generation."""
        gen = self._gen
        return [k for k in keys if gen[k & _MASK] == k >> _SHIFT]


class LRUPolicy(ReplacementPolicy):
    """Least recently used: a last-access stamp per frame, and a sorted batch of the oldest frames.

    `_stamp[f]` is the stamp of f's last access (UNTRACKED while f holds no tracked page; hits on
    untracked frames leave it so, because `np.maximum.at` never lowers it). Victims come from
    `_oldest`, a deque of `stamp << 32 | frame` keys: the k smallest stamps at the moment it was
    built, in increasing order. A key whose frame has been accessed (or evicted, or removed) since
    then no longer matches `_stamp` and is skipped. The first matching key is the true LRU frame:
    every frame outside the batch had a larger stamp when it was built, stamps only grow, and
    frames inserted later are newer still. When the batch runs dry it is rebuilt with one
    `np.argpartition` over the stamps (O(nframes), once per up to k evictions, k = nframes / 16)."""

    name = "lru"
    UNTRACKED = np.iinfo(np.int64).max

    def __init__(self, nframes: int):
        super().__init__(nframes)
        self._stamp = np.full(self.nframes, self.UNTRACKED, dtype=np.int64)
        self._stamp_mv = memoryview(self._stamp)  # the same memory: cheap one-frame access
        self._clock = 0  # next stamp
        self._oldest: deque[int] = deque()
        self._batch = max(64, self.nframes // 16)

    def inserted(self, frame: int) -> None:
        # the base class's inserted with _on_insert inlined (one call per fault saved)
        frame = int(frame)
        if not 0 <= frame < self.nframes:
            raise ContractViolation(f"{self.name}: inserted frame {frame} outside 0..{self.nframes - 1}")
        gens = self._gen
        if gens[frame] >= 0:
            raise ContractViolation(f"{self.name}: frame {frame} inserted twice without eviction or removal")
        gens[frame] = self._next_gen
        self._next_gen += 1
        self._count += 1
        stamp = self._clock
        self._clock = stamp + 1
        self._stamp_mv[frame] = stamp

    def _on_insert(self, frame: int, gen: int) -> None:
        stamp = self._clock
        self._clock = stamp + 1
        self._stamp_mv[frame] = stamp

    def _on_removed(self, frame: int) -> None:
        self._stamp_mv[frame] = self.UNTRACKED

    def referenced(self, frames: np.ndarray) -> None:
        n = len(frames)
        if n == 0:
            return
        base = self._clock
        self._clock = base + n
        # duplicates: the last occurrence carries the largest stamp, and maximum.at is order-free;
        # untracked frames stay UNTRACKED (the maximum)
        if n == 1:
            f = frames[0]
            if self._stamp[f] != self.UNTRACKED:
                self._stamp[f] = base
        else:
            np.maximum.at(self._stamp, frames, np.arange(base, base + n, dtype=np.int64))

    def _refill(self) -> None:
        stamp = self._stamp
        k = min(self._batch, self._count)
        if k >= self.nframes:
            idx = np.arange(self.nframes)
        else:
            idx = np.argpartition(stamp, k - 1)[:k]
        keys = (stamp[idx] << _SHIFT) | idx
        keys = keys[stamp[idx] != self.UNTRACKED]
        keys.sort()
        self._oldest = deque(keys.tolist())

    def _pick(self) -> int:
        stamp_of = self._stamp_mv
        while True:
            oldest = self._oldest
            while oldest:
                key = oldest.popleft()
                frame = key & _MASK
                if stamp_of[frame] == key >> _SHIFT:
                    stamp_of[frame] = self.UNTRACKED
                    return frame
            self._refill()

    def select_victim(self) -> int:
        # the base class's select_victim with _pick inlined
        if self._count == 0:
            raise ResourceShortage(f"{self.name}: no evictable frame (every page is wired or none is resident)")
        stamp_of = self._stamp_mv
        while True:
            oldest = self._oldest
            while oldest:
                key = oldest.popleft()
                frame = key & _MASK
                if stamp_of[frame] == key >> _SHIFT:
                    stamp_of[frame] = self.UNTRACKED
                    self._gen[frame] = -1
                    self._count -= 1
                    return frame
            self._refill()


class FIFOPolicy(ReplacementPolicy):
    """First in, first out: a deque of insertion keys; hits change nothing."""

    name = "fifo"

    def __init__(self, nframes: int):
        super().__init__(nframes)
        self._queue: deque[int] = deque()

    def _on_insert(self, frame: int, gen: int) -> None:
        if len(self._queue) > 2 * self._count + 64:
            self._queue = deque(self._compact_keys(self._queue))
        self._queue.append((gen << _SHIFT) | frame)

    def inserted(self, frame: int) -> None:
        # the base class's inserted with _on_insert inlined (one call per fault saved)
        frame = int(frame)
        if not 0 <= frame < self.nframes:
            raise ContractViolation(f"{self.name}: inserted frame {frame} outside 0..{self.nframes - 1}")
        gens = self._gen
        if gens[frame] >= 0:
            raise ContractViolation(f"{self.name}: frame {frame} inserted twice without eviction or removal")
        gen = self._next_gen
        self._next_gen = gen + 1
        gens[frame] = gen
        self._count += 1
        queue = self._queue
        if len(queue) > 2 * self._count + 64:
            queue = self._queue = deque(self._compact_keys(queue))
        queue.append((gen << _SHIFT) | frame)

    def select_victim(self) -> int:
        # the base class's select_victim with _pick inlined
        if self._count == 0:
            raise ResourceShortage(f"{self.name}: no evictable frame (every page is wired or none is resident)")
        queue = self._queue
        gens = self._gen
        while True:
            key = queue.popleft()
            frame = key & _MASK
            if gens[frame] == key >> _SHIFT:
                gens[frame] = -1
                self._count -= 1
                return frame

    def referenced(self, frames: np.ndarray) -> None:
        pass  # fifo ignores hits

    def _pick(self) -> int:
        queue = self._queue
        gen = self._gen
        while True:
            key = queue.popleft()
            frame = key & _MASK
            if gen[frame] == key >> _SHIFT:
                return frame


class ClockPolicy(ReplacementPolicy):
    """Second-chance FIFO: a reference bit per frame, set by hits, cleared on the way round."""

    name = "clock"

    def __init__(self, nframes: int):
        super().__init__(nframes)
        self._bit = np.zeros(self.nframes, dtype=np.bool_)
        self._bit_mv = memoryview(self._bit)  # the same memory: cheap one-frame access
        self._ring: deque[int] = deque()

    def _on_insert(self, frame: int, gen: int) -> None:
        self._bit_mv[frame] = False  # a page brought in starts with its bit clear
        if len(self._ring) > 2 * self._count + 64:
            self._ring = deque(self._compact_keys(self._ring))
        self._ring.append((gen << _SHIFT) | frame)

    def inserted(self, frame: int) -> None:
        # the base class's inserted with _on_insert inlined (one call per fault saved)
        frame = int(frame)
        if not 0 <= frame < self.nframes:
            raise ContractViolation(f"{self.name}: inserted frame {frame} outside 0..{self.nframes - 1}")
        gens = self._gen
        if gens[frame] >= 0:
            raise ContractViolation(f"{self.name}: frame {frame} inserted twice without eviction or removal")
        gen = self._next_gen
        self._next_gen = gen + 1
        gens[frame] = gen
        self._count += 1
        self._bit_mv[frame] = False  # a page brought in starts with its bit clear
        ring = self._ring
        if len(ring) > 2 * self._count + 64:
            ring = self._ring = deque(self._compact_keys(ring))
        ring.append((gen << _SHIFT) | frame)

    def select_victim(self) -> int:
        # the base class's select_victim with _pick inlined
        if self._count == 0:
            raise ResourceShortage(f"{self.name}: no evictable frame (every page is wired or none is resident)")
        ring = self._ring
        gens = self._gen
        bit = self._bit_mv
        while True:
            key = ring.popleft()
            frame = key & _MASK
            if gens[frame] != key >> _SHIFT:
                continue  # removed since
            if bit[frame]:
                bit[frame] = False
                ring.append(key)  # second chance: to the newest position
                continue
            gens[frame] = -1
            self._count -= 1
            return frame

    def referenced(self, frames: np.ndarray) -> None:
        # untracked frames get their bit set too; harmless, `inserted` clears it
        self._bit[frames] = True

    def _pick(self) -> int:
        ring = self._ring
        gen = self._gen
        bit = self._bit_mv
        while True:
            key = ring.popleft()
            frame = key & _MASK
            if gen[frame] != key >> _SHIFT:
                continue  # removed since
            if bit[frame]:
                bit[frame] = False
                ring.append(key)  # second chance: to the newest position
                continue
            return frame


_CLASSES = {"lru": LRUPolicy, "fifo": FIFOPolicy, "clock": ClockPolicy}


def make_policy(name: str, nframes: int) -> ReplacementPolicy | None:
    """The policy object for `name`, or None for "mach" (the model's own active/inactive queues)."""
    if name == "mach":
        return None
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise InvalidArgument(f"unknown replacement policy {name!r} (valid: {', '.join(POLICIES)})")
    return cls(nframes)


def simulate(policy: str | ReplacementPolicy, pages: np.ndarray, nframes: int | None = None,
             *, window: int = 64) -> int:
    """Run a plain cache of `nframes` pages over the page-number sequence `pages` with a reference
    policy and return the number of misses (the first access to a page is a miss).

    The driver is the same shape as the kernel's batch access path: hits are found with numpy in
    growing look-ahead windows and handed to `referenced` as one array; each miss takes a free
    frame or asks the policy for a victim. Pages are any non-negative integers."""
    pages = np.asarray(pages, dtype=np.int64)
    if isinstance(policy, str):
        if nframes is None:
            raise InvalidArgument("simulate(name, pages) needs nframes")
        pol = make_policy(policy, nframes)
        if pol is None:
            raise InvalidArgument("simulate() runs the reference policies only (lru, fifo, clock), not mach")
    else:
        pol = policy
    nframes = pol.nframes
    if pages.size == 0:
        return 0
    if pages.min() < 0:
        raise InvalidArgument("simulate(): page numbers must be non-negative")
    # dense page ids so the page -> frame table is a flat array
    uniq, dense = np.unique(pages, return_inverse=True)
    frame_of = np.full(uniq.size, -1, dtype=np.int64)
    page_in = np.full(nframes, -1, dtype=np.int64)
    free = list(range(nframes - 1, -1, -1))
    misses = 0
    i, n, w = 0, dense.size, window
    while i < n:
        seg = dense[i:i + w]
        fr = frame_of[seg]
        miss_at = np.flatnonzero(fr < 0)
        if miss_at.size == 0:
            pol.referenced(fr)
            i += seg.size
            w = min(w * 2, 1 << 16)
            continue
        j = int(miss_at[0])
        if j:
            pol.referenced(fr[:j])
        p = int(seg[j])
        if free:
            f = free.pop()
        else:
            f = pol.select_victim()
            frame_of[page_in[f]] = -1
        frame_of[p] = f
        page_in[f] = p
        pol.inserted(f)
        misses += 1
        i += j + 1
        w = max(window, 2 * j)
    return misses
