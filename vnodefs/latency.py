"""The disk latency model: how long a request would have taken on a real disk.

Owns: `LatencyModel` (seek cost + transfer time, with a per-file head position), `PRESETS`,
`parse_latency(text)`. Called by the FUSE dispatcher (vnodefs.fuseops) for every read and write;
the dispatcher sleeps for the returned delay in the requesting FUSE worker thread (so only the
requesting process waits, never the whole mount) and records it in the trace (`delay_ns`).

Model, per request of `length` bytes at `offset` on file F:
    delay = (seek_us if offset != end of the previous read/write on F else 0) + length / bandwidth
The first request on a file pays a seek. Figures of the presets (documented in `vnodefs --help`
and docs/vnodefs-trace-format.md):
    none   no delay (default)
    ssd    100 us per seek, 500 MB/s  (a SATA SSD: ~10 k random 4 KiB reads/s, ~0.5 GB/s sequential)
    hdd    8 ms per seek, 120 MB/s    (a 7200 rpm disk: ~4 ms seek + ~4 ms half a rotation)
    SEEK_US:MBPS  custom (e.g. 2000:200), MB = 10**6 bytes

One device per mount: requests are served one at a time, as one disk serves them. `queue(service)`
puts a request's modelled service time behind the work already queued on the device and returns
how long its requester waits (queueing + service); that wait is what the dispatcher sleeps and
records as `delay_ns`. Without the queue, 16 FUSE worker threads (or the kernel's async readahead,
or a prefetcher running beside the program) would sleep 16 seeks at once, like 16 disks.

Invariants: delays are >= 0 integers of ns; the per-file head position is updated even when the
model is `none` (cheap), so the `FLAG_SEEK` bit in the trace means the same thing in every mode;
the device's busy-until time only moves forward.
Caveats: the head position is per file, not per device (files are assumed laid out apart), and
concurrent requests on one file race for it like real requests race for a disk head; updates are
single dict stores (atomic under the GIL), no lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

#: name -> (seek_us, MB/s); "none" has no delay
PRESETS: dict[str, tuple[float, float]] = {
    "ssd": (100.0, 500.0),
    "hdd": (8000.0, 120.0),
}

HELP = ("disk latency model: none (default), ssd (100 us seek + 500 MB/s), hdd (8 ms seek + 120 MB/s), "
        "or SEEK_US:MBPS (e.g. 2000:200); a seek is charged when a request does not continue the "
        "previous one on that file")


class LatencyError(ValueError):
    """A latency specification that cannot be parsed (one clear line)."""


@dataclass(frozen=True)
class LatencySpec:
    name: str  # "none", "ssd", "hdd" or "custom"
    seek_us: float
    mbps: float  # 0 = infinite bandwidth

    def describe(self) -> dict:
        return {"model": self.name, "seek_us": self.seek_us, "mbps": self.mbps}


def parse_latency(text: str | None) -> LatencySpec:
    """'none' | 'ssd' | 'hdd' | 'SEEK_US:MBPS' -> LatencySpec; LatencyError otherwise."""
    if text is None or text == "none":
        return LatencySpec("none", 0.0, 0.0)
    if text in PRESETS:
        seek, mbps = PRESETS[text]
        return LatencySpec(text, seek, mbps)
    if ":" in text:
        a, _, b = text.partition(":")
        try:
            seek, mbps = float(a), float(b)
        except ValueError:
            raise LatencyError(f"bad latency {text!r}: SEEK_US and MBPS must be numbers (e.g. 2000:200)") from None
        if not (seek >= 0 and mbps > 0) or seek != seek or mbps == float("inf"):
            raise LatencyError(f"bad latency {text!r}: need SEEK_US >= 0 and MBPS > 0")
        return LatencySpec("custom", seek, mbps)
    raise LatencyError(f"unknown latency preset {text!r}: use none, ssd, hdd or SEEK_US:MBPS")


class LatencyModel:
    """Per-file head positions and the delay of each request."""

    def __init__(self, spec: LatencySpec):
        self.spec = spec
        self.active = spec.name != "none"
        self._seek_ns = int(spec.seek_us * 1000)
        # ns per byte = 1e9 / (mbps * 1e6)
        self._ns_per_byte = (1000.0 / spec.mbps) if spec.mbps > 0 else 0.0
        #: file id -> end of the previous read/write on it (the "head"); the FUSE dispatcher
        #: updates it inline, exactly as charge() does
        self.heads: dict[int, int] = {}
        self._device = threading.Lock()
        self._busy_until = 0  # CLOCK_MONOTONIC ns at which the device finishes its queued work

    def charge(self, file: int, offset: int, length: int) -> tuple[int, bool]:
        """(service_ns, seeked) for a request, and move the file's head to its end. The requester's
        wait is `queue(service_ns)` (the dispatcher inlines both)."""
        seeked = self.heads.get(file) != offset
        self.heads[file] = offset + length
        if not self.active:
            return 0, seeked
        return self.delay_ns(seeked, length), seeked

    def queue(self, service_ns: int) -> int:
        """Queue `service_ns` of device time behind the requests already on the device; returns the
        ns from now until this request completes (its wait: queueing + service)."""
        now = time.monotonic_ns()
        with self._device:
            end = (self._busy_until if self._busy_until > now else now) + service_ns
            self._busy_until = end
        return end - now

    def wait_ns(self, seeked: bool, length: int) -> int:
        """delay_ns() of a request, queued on the device: what its requester sleeps."""
        return self.queue(self.delay_ns(seeked, length))

    def delay_ns(self, seeked: bool, length: int) -> int:
        """The modelled time of a request of `length` bytes that did / did not seek."""
        return (self._seek_ns if seeked else 0) + int(length * self._ns_per_byte)
