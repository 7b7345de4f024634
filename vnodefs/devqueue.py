"""The modelled device's queue: one head (or a few flash channels), requests served as Linux would.

Owns: `Device` (built from a vnodefs.latency.LatencySpec; `submit(segments, write)` blocks the
calling thread for the request's queueing + service time and returns how that time splits;
`start` / `finish` split it in two so the real host I/O runs inside the modelled time), `Served`. One Device per mount: every FUSE worker, the kernel's readahead and the prefetchers
(vnodefs.prefetch) share it, as programs on one machine share one disk, so seeding never makes
disk time free.

Scheduling:
  * hdd: mq-deadline, Linux's default for a rotational disk: waiting requests are dispatched in
    ascending device address from the head's position (a one-way elevator; after the highest it
    wraps to the lowest), except that a request waiting longer than its expiry (reads 500 ms,
    writes 5 s: mq-deadline's read_expire / write_expire) goes first. The device serves one
    request at a time.
  * ssd / nvme: Linux's `none` scheduler, arrival order; up to `parallelism` requests are in their
    access latency at once (flash channels), their transfers share the device link one after the
    other at the model's rate.
  * flat: arrival order, one at a time.

Times are virtual and exact: a request's start is max(its arrival, the previous one's end), its
end start + service; the requester sleeps until its end (absolute deadlines: oversleeping one
request does not shift the next). `delay_ns` (recorded in the trace) = end - arrival = queueing +
service. `busy_ns` sums service times (for flash, where requests overlap, the trace's service
intervals give the busy time; see vnodefs.devstats).

Invariants: `head` is the end address of the last request served; the device's free time only
moves forward; every submitted request is dispatched exactly once (hdd: by the device's
dispatcher thread, under the lock, once the device is free).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass

from vnodefs.latency import LatencySpec

_mono = time.monotonic_ns
log = logging.getLogger("vnodefs")
READ_EXPIRE_NS = 500_000_000
WRITE_EXPIRE_NS = 5_000_000_000


@dataclass
class Served:
    """How one request's wait splits: `delay_ns` = queueing + seek + rotation + transfer."""

    delay_ns: int
    dev_addr: int
    dev_prev: int
    seek_ns: int
    rot_ns: int
    xfer_ns: int
    segments: int
    seeked: bool


NOTHING = Served(0, -1, -1, 0, 0, 0, 0, False)
_U32 = (1 << 32) - 1
_U16 = (1 << 16) - 1


def _served(segments, prev, seek, rot, xfer, seeked) -> Served:
    """A Served whose parts fit the trace's fields (u32 ns: a part past 4.29 s saturates there;
    delay_ns, an i64, stays exact)."""
    return Served(0, segments[0][0], prev, min(seek, _U32), min(rot, _U32), min(xfer, _U32),
                  min(len(segments), _U16), seeked)


class _Waiter:
    __slots__ = ("arrive", "segments", "write", "event", "served", "end")

    def __init__(self, arrive, segments, write):
        self.arrive, self.segments, self.write = arrive, segments, write
        self.event = threading.Event()
        self.served = None
        self.end = 0


class Device:
    """One modelled device (see the module docstring)."""

    def __init__(self, spec: LatencySpec, address_span: int = 0, sleep=True):
        self.spec = spec
        self.model = spec.service_model()
        if self.model is None:
            raise ValueError("Device needs a device model (not 'none')")
        self.model.set_span(address_span)
        self.elevator = spec.kind == "hdd"
        self._sleep = sleep
        self._lock = threading.Lock()
        self.head = -1
        self._free_at = 0  # hdd / flat: when the device finishes its current request
        self._last_write = True  # the previous request was a write (no read-ahead after it)
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None  # hdd: the dispatcher (started on first use)
        self._pending: list[_Waiter] = []
        k = max(1, spec.parallelism)
        self._chan = [0] * k  # flash: when each channel is free (a heap)
        self._link = 0  # flash: when the link finishes its current transfer
        self.busy_ns = 0
        self.requests = 0

    def set_span(self, address_span: int) -> None:
        self.model.set_span(address_span)

    # -- service -------------------------------------------------------------------------------------
    def _charge(self, segments, start: int = 0, write: bool = False):
        """(seek, rot, xfer, seeked, prev) of a request's segments from the current head, the
        request starting service at `start`; moves the head."""
        svc = self.model.service
        prev = self.head
        seek = rot = xfer = 0
        seeked = False
        head = prev
        idle = max(0, start - self._free_at) if not self._last_write else 0
        self._last_write = write
        for addr, n in segments:
            s, r, x = svc(head, addr, n, idle, write)
            idle = 0
            if addr != head:
                seeked = True
            seek += s
            rot += r
            xfer += x
            head = addr + n
        self.head = head
        return seek, rot, xfer, seeked, prev

    def submit(self, segments, write: bool = False, now: int | None = None) -> Served:
        """Serve one request of device `segments` [(address, bytes)]: block until it completes on
        the device (queueing + service) and return how its time splits. No segments: no I/O."""
        return self.finish(self.start(segments, write, now))

    def start(self, segments, write: bool = False, now: int | None = None):
        """Put a request on the device and return its ticket at once; the caller may do the real
        host I/O meanwhile and then `finish(ticket)` (so the host's own time overlaps the modelled
        time instead of adding to it)."""
        if not segments:
            return None
        arrive = _mono() if now is None else now
        w = _Waiter(arrive, segments, write)
        with self._lock:
            if self.elevator:
                self._pending.append(w)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve_loop, name="vnodefs-device", daemon=True)
                    self._thread.start()
                self._cond.notify()
                return w
            seek, rot, xfer, seeked, prev = self._charge(segments, max(arrive, self._free_at), write)
            service = seek + rot + xfer
            if self.spec.kind == "flash":
                start = max(arrive, self._chan[0])  # the channel free soonest (a min-heap)
                end = max(start + seek, self._link) + xfer
                self._link = end
                heapq.heapreplace(self._chan, end)
            else:
                start = max(arrive, self._free_at)
                end = start + service
                self._free_at = end
            self.busy_ns += service
            self.requests += 1
        w.end = end
        w.served = _served(segments, prev, seek, rot, xfer, seeked)
        return w

    def finish(self, w) -> Served:
        """Block until the request of ticket `w` (from `start`) completes on the device; hdd: then
        dispatch the next waiting request. Returns how its time split."""
        if w is None:
            return NOTHING
        if self.elevator:
            w.event.wait()
        self._wait_until(w.end)
        s = w.served
        s.delay_ns = w.end - w.arrive
        return s

    def _serve_loop(self) -> None:
        """The hdd's dispatcher: when the device is free, pick the next waiting request
        (mq-deadline), fix its start and end in virtual time, and release its requester (who
        sleeps until the end). Waiting until the device is free before choosing lets the requests
        that arrive meanwhile take part in the choice."""
        cond = self._cond
        while True:
            with cond:
                while not self._pending:
                    cond.wait()
                now = _mono()
                if self._sleep and now < self._free_at:
                    cond.wait((self._free_at - now) / 1e9)
                    continue
                w = self._pick(max(now, self._free_at))
                try:
                    self._dispatch(w, max(w.arrive, self._free_at))
                except Exception:  # never strand a requester: serve it at no cost, say so once
                    log.exception("vnodefs device: cannot model a request; served without delay")
                    w.end = max(w.arrive, self._free_at)
                    w.served = Served(0, -1, -1, 0, 0, 0, 0, False)
            w.event.set()

    def _dispatch(self, w: _Waiter, start: int) -> None:
        seek, rot, xfer, seeked, prev = self._charge(w.segments, start, w.write)
        service = seek + rot + xfer
        w.end = start + service
        self._free_at = w.end
        self.busy_ns += service
        self.requests += 1
        w.served = _served(w.segments, prev, seek, rot, xfer, seeked)

    def _pick(self, now: int) -> _Waiter | None:
        """mq-deadline's choice among the waiting requests (under the lock)."""
        p = self._pending
        if not p:
            return None
        oldest = min(p, key=lambda w: w.arrive)
        if now - oldest.arrive > (WRITE_EXPIRE_NS if oldest.write else READ_EXPIRE_NS):
            best = oldest
        else:
            head = self.head
            ahead = [w for w in p if w.segments[0][0] >= head]
            best = min(ahead or p, key=lambda w: w.segments[0][0])
        p.remove(best)
        return best

    def _wait_until(self, end: int) -> None:
        if not self._sleep:
            return
        while True:
            left = end - _mono()
            if left <= 0:
                return
            time.sleep(left / 1e9)

    def describe(self) -> dict:
        return {"model": self.spec.name, "scheduler": self.spec.scheduler,
                "parallelism": self.spec.parallelism, "requests": self.requests,
                "busy_ns": self.busy_ns}
