"""Physical memory: page frames, per-frame metadata, and the free / active / inactive / wired queues.

Owns (vm_resident.c): `PhysicalMemory` with
  * `frames`: ONE mmap-backed numpy array `frames[nframes, page_size]` (uint8) holding every byte of
    every resident page;
  * per-frame metadata in numpy arrays: `queue` (FREE/ACTIVE/INACTIVE/WIRED), `referenced` (the
    reference bit, hardware and software merged), `dirty` (the modify bit), `wire_count`, `busy`
    (held by an open UPL), `absent` (a UPL placeholder not yet filled), `precious`, `clustered`
    (came in by pagein clustering, not yet touched), `obj_id` and `pidx` (which VM object page the
    frame holds, -1 when free);
  * `owner[f]`: the VMObject holding frame f (a Python list: the hot paths read it per fault);
  * the page queues. Active and inactive are OrderedDicts of frame -> None (head = oldest, O(1)
    append / remove / move), the free queue is a list used as a stack, the wired queue a dict;
  * `pv[f]`: the physical-to-virtual list (pmap "pv entries") of (map entry, slot) that map f.

Invariants (checked by vmcore.invariants): every frame is on exactly one queue and `queue[f]` says
which; a frame is free iff `owner[f] is None`; wired frames have wire_count > 0 and sit only on the
wired queue; a free frame has no pv entries.
Who calls: the kernel, fault.py, pageout.py, upl.py, object.py. Nothing here knows about tasks.
Fictitious frames (device memory, vmcore.device_pager): frame numbers >= nframes, added by
`add_fictitious(buffers)`; their bytes are the device buffer (only `views[f]` reaches them, not
`frames`), their metadata extends the numpy arrays, they sit on no queue (queue == FICTITIOUS) and
carry wire_count 1 so no pageout, deactivation or policy ever takes them; `release_fictitious`
retires them (their numbers are reused). `ntotal` counts RAM + fictitious frame numbers.

Fast scalar access: the hot paths (one fault at a time) read and write single frames' metadata
through `memoryview`s of the same numpy arrays (`q_mv`, `ref_mv`, `dirty_mv`, `busy_mv`,
`precious_mv`, `wc_mv`, `objid_mv`, `pidx_mv`): aliases of the very same memory, not copies, so
there is nothing to keep in sync; a memoryview item is a plain Python int/bool and costs a third of
a numpy scalar access. `_alias()` rebinds them whenever an array is replaced (add_fictitious).

Caveats: the reference bit is one bit for both the pmap and the vm_page (the model has no separate
hardware bit); queue moves do not touch pmap state.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict

import numpy as np

FREE = 0
ACTIVE = 1
INACTIVE = 2
WIRED = 3
#: a fictitious frame (vm_page_grab_fictitious): device memory outside RAM, on no page queue
FICTITIOUS = 4
QUEUE_NAMES = {FREE: "free", ACTIVE: "active", INACTIVE: "inactive", WIRED: "wired",
               FICTITIOUS: "fictitious"}


class PhysicalMemory:
    """A fixed set of page frames and the page queues over them."""

    def __init__(self, nframes: int, page_size: int):
        self.nframes = nframes
        self.page_size = page_size
        self._mm = mmap.mmap(-1, nframes * page_size)
        self.frames = np.frombuffer(self._mm, dtype=np.uint8).reshape(nframes, page_size)
        self.queue = np.zeros(nframes, dtype=np.int8)
        self.referenced = np.zeros(nframes, dtype=np.bool_)
        self.dirty = np.zeros(nframes, dtype=np.bool_)
        self.busy = np.zeros(nframes, dtype=np.bool_)
        self.absent = np.zeros(nframes, dtype=np.bool_)
        self.precious = np.zeros(nframes, dtype=np.bool_)
        self.clustered = np.zeros(nframes, dtype=np.bool_)
        self.wire_count = np.zeros(nframes, dtype=np.int32)
        self.obj_id = np.full(nframes, -1, dtype=np.int64)
        self.pidx = np.full(nframes, -1, dtype=np.int64)
        self.owner: list = [None] * nframes
        #: one writable memoryview per frame (pager buffers, fast zero fill)
        self.views: list[memoryview] = [memoryview(self.frames[f]) for f in range(nframes)]
        self.zero_page = bytes(page_size)
        self.pv: list = [None] * nframes
        #: True once any of busy / absent / precious / clustered / wire_count was set on the frame
        #: since it was last freed (a Python list: lets release() skip five numpy writes)
        self.special: list[bool] = [False] * nframes
        # queues
        self.free: list[int] = list(range(nframes - 1, -1, -1))  # pop() gives frame 0 first
        self.active: OrderedDict[int, None] = OrderedDict()
        self.inactive: OrderedDict[int, None] = OrderedDict()
        self.wired: dict[int, None] = {}
        self.ntotal = nframes
        self.fict_free: list[int] = []
        self._alias()

    def _alias(self) -> None:
        """(Re)bind the memoryview aliases of the per-frame numpy arrays (see the module doc)."""
        self.q_mv = memoryview(self.queue)
        self.ref_mv = memoryview(self.referenced)
        self.dirty_mv = memoryview(self.dirty)
        self.busy_mv = memoryview(self.busy)
        self.precious_mv = memoryview(self.precious)
        self.wc_mv = memoryview(self.wire_count)
        self.objid_mv = memoryview(self.obj_id)
        self.pidx_mv = memoryview(self.pidx)

    # ---- fictitious frames (device memory) -------------------------------------------------------
    def add_fictitious(self, bufs: list[memoryview]) -> list[int]:
        """Frame numbers for device pages whose bytes are `bufs` (one page each)."""
        need = len(bufs) - len(self.fict_free)
        if need > 0:
            base = self.ntotal
            self.ntotal += need
            grow = need

            def ext(a, fill):
                return np.concatenate([a, np.full(grow, fill, dtype=a.dtype)])

            self.queue = ext(self.queue, FICTITIOUS)
            self.referenced = ext(self.referenced, False)
            self.dirty = ext(self.dirty, False)
            self.busy = ext(self.busy, False)
            self.absent = ext(self.absent, False)
            self.precious = ext(self.precious, False)
            self.clustered = ext(self.clustered, False)
            self.wire_count = ext(self.wire_count, 0)
            self.obj_id = ext(self.obj_id, -1)
            self.pidx = ext(self.pidx, -1)
            self.owner.extend([None] * grow)
            self.views.extend([memoryview(b"")] * grow)
            self.pv.extend([None] * grow)
            self.special.extend([True] * grow)
            self.fict_free.extend(range(base + grow - 1, base - 1, -1))
            self._alias()
        out = []
        for buf in bufs:
            f = self.fict_free.pop()
            self.views[f] = buf
            self.queue[f] = FICTITIOUS
            self.wire_count[f] = 1
            self.special[f] = True
            out.append(f)
        return out

    def release_fictitious(self, f: int) -> None:
        assert f >= self.nframes and self.pv[f] is None
        self.owner[f] = None
        self.obj_id[f] = -1
        self.pidx[f] = -1
        self.referenced[f] = False
        self.dirty[f] = False
        self.wire_count[f] = 0
        self.views[f] = memoryview(b"")
        self.fict_free.append(f)

    # ---- counts -------------------------------------------------------------------------------
    @property
    def free_count(self) -> int:
        return len(self.free)

    @property
    def active_count(self) -> int:
        return len(self.active)

    @property
    def inactive_count(self) -> int:
        return len(self.inactive)

    @property
    def wire_count_total(self) -> int:
        return len(self.wired)

    # ---- queue moves (vm_page_activate / deactivate / wire / unwire / free) ----------------------
    def _unlink(self, f: int) -> None:
        q = self.q_mv[f]  # queue[f] names the one queue f is on (invariant)
        if q == ACTIVE:
            del self.active[f]
        elif q == INACTIVE:
            del self.inactive[f]
        elif q == WIRED:
            del self.wired[f]

    def activate(self, f: int) -> None:
        """Put f at the tail of the active queue (from wherever it was, except wired)."""
        q = self.q_mv[f]
        if q == ACTIVE:
            self.active.move_to_end(f)
            return
        if q == INACTIVE:
            del self.inactive[f]
        self.active[f] = None
        self.q_mv[f] = ACTIVE

    def deactivate(self, f: int) -> None:
        """vm_page_deactivate: clear the reference bit, put f at the inactive tail."""
        q_mv = self.q_mv
        q = q_mv[f]
        if q == ACTIVE:
            del self.active[f]
        elif q == INACTIVE:
            del self.inactive[f]
        self.ref_mv[f] = False
        self.inactive[f] = None
        q_mv[f] = INACTIVE

    def wire(self, f: int) -> None:
        self.special[f] = True
        if self.wire_count[f] == 0:
            self._unlink(f)
            self.wired[f] = None
            self.queue[f] = WIRED
        self.wire_count[f] += 1

    def unwire(self, f: int) -> None:
        """Drop one wiring; at zero the page goes to the active queue."""
        self.wire_count[f] -= 1
        if self.wire_count[f] == 0:
            del self.wired[f]
            self.active[f] = None
            self.queue[f] = ACTIVE

    def grab(self) -> int:
        """Take a frame off the free queue (the caller has made sure one is there)."""
        return self.free.pop()

    def release(self, f: int) -> None:
        """Return a frame, already detached from its object and pmaps, to the free queue."""
        q_mv = self.q_mv
        q = q_mv[f]
        if q == ACTIVE:
            del self.active[f]
        elif q == INACTIVE:
            del self.inactive[f]
        elif q == WIRED:
            del self.wired[f]
        q_mv[f] = FREE
        self.ref_mv[f] = False
        self.dirty_mv[f] = False
        if self.special[f]:  # rarely set: busy / absent / precious / clustered / wired
            self.busy[f] = False
            self.absent[f] = False
            self.precious[f] = False
            self.clustered[f] = False
            self.wire_count[f] = 0
            self.special[f] = False
        self.objid_mv[f] = -1
        self.owner[f] = None
        self.free.append(f)

    def page_view(self, f: int) -> memoryview:
        """The frame's bytes as a writable one-page buffer (for pager I/O)."""
        return memoryview(self.frames[f])

    def close(self) -> None:
        try:
            self.frames = None  # type: ignore[assignment]
            self._mm.close()
        except (BufferError, ValueError):
            pass  # a caller still holds a view; the mapping goes with the last reference
