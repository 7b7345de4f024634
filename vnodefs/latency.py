"""The device models: how long a request would take on a real disk, from where its bytes lie.

Owns: `LatencySpec` (a parsed `--latency` model and its figures), `PRESETS`, `parse_latency(text)`,
`SeekCurve` (an HDD seek-time curve fitted to spec-sheet figures), and `service(spec, ...)`-style
service-time calculators (`HDDService`, `FlashService`, `FlatService`, built by
`LatencySpec.service_model()`). Pure arithmetic: no threads, no I/O. The device queue that
serves requests one at a time (or a few in parallel on flash) is vnodefs.devqueue; where a file's
bytes lie on the device is vnodefs.layout. vmcore's file mappings go through a vnodefs mount, so
the model's page-ins are timed by the same device.

Models (figures also in `vnodefs --help` and docs/vnodefs-trace-format.md):

  none   no device: no delay, no device addresses (the default).
  hdd    a 7200 rpm 1 TB desktop drive (the class of the WD Blue WD10EZEX / Seagate Barracuda
         7200.12 spec sheets): 1,000,204,886,016 bytes, 2 heads, track-to-track seek 1.0 ms,
         average seek 8.5 ms, full-stroke seek 17 ms, 4.17 ms average rotational latency (half a
         revolution at 7200 rpm), media rate 150 MB/s at the outer edge falling to 75 MB/s at the
         inner edge. Served in mq-deadline order (vnodefs.devqueue).
  ssd    a SATA SSD (the class of a Samsung 860 EVO): 90 us read latency, 500 MB/s on the SATA
         link, 4 requests in service at once, no distance cost. Served in arrival order.
  nvme   an NVMe SSD (the class of a Samsung 970 EVO): 20 us, 3000 MB/s, 32 at once.
  flat   `SEEK_US:MBPS` (e.g. 2000:200): a constant SEEK_US whenever a request does not continue
         where the previous one on the device ended, plus length / MBPS; one at a time, arrival
         order. MB = 10**6 bytes throughout.

Any preset takes overrides: `hdd,capacity=1GiB,rpm=5400`, `ssd,latency_us=60,parallelism=8`
(keys in `OVERRIDES`); a smaller `capacity` keeps the mechanics (the same seek curve end to end)
over fewer cylinders: a short-stroked or smaller drive.

HDD request of `length` bytes at device address `a`, the head at `h` (the end of the previous
request the device served):
    a == h:  transfer only (length / media rate at a): no seek, no rotation.
    h < a < h + one track's bytes: no seek; the platter carries the head over the skipped bytes
             (rotation = (a - h) / media rate), then the transfer.
    else:    seek(|cyl(a) - cyl(h)|) + rotational latency (T_rev / 2, the mean; the platter's
             angle is not modelled) + length / media rate at a.
Zoned recording: with constant linear density the bytes per track grow with the radius, so the
media rate falls linearly with the radius from outer to inner; `cyl(a)` inverts the
bytes-below-radius integral (a quadratic), so addresses map to cylinders as on a real zoned
drive. Seek curve (Ruemmler & Wilkes, "An introduction to disk drive modeling", 1994):
    seek(d) = settle + a * sqrt(d)   for 1 <= d < d0  (the arm accelerates and coasts)
            = b + c * d              for d >= d0      (the arm reaches full speed)
with value and slope continuous at d0; settle + a = track-to-track, seek(N - 1) = full stroke,
and the mean over uniformly random pairs of device addresses = average seek (the spec sheet's
figure, what random I/O over the whole device sees); d0 is solved for by bisection.
Drive read-ahead (the segment buffer): while the drive is idle after a read it keeps reading on
from where that read ended, up to `readahead_kib` (2 MiB for hdd); a read continuing there finds
that much (idle time x media rate, at most the buffer) already read and pays transfer for the rest
only. So a program reading sequentially with gaps between its requests still streams at the media
rate, as on a real drive. Any other request drops the buffer.
Absent (said plainly): a cache of earlier data (a re-read of bytes served before pays again) and
the write cache (a write costs what a read costs), head-switch
and track-switch times within a sequential transfer, bad-block remapping, and rotational position
after a seek (the mean half revolution is charged instead of the true angle to the target sector).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace

MB = 10**6

HELP = ("device model: none (default); hdd (7200 rpm 1 TB desktop drive: seek 1.0 ms track-to-track / "
        "8.5 ms average / 17 ms full stroke by distance, 4.17 ms rotational latency, 150 -> 75 MB/s "
        "outer to inner, mq-deadline queue); ssd (SATA: 90 us, 500 MB/s, 4 in parallel); nvme (20 us, "
        "3000 MB/s, 32 in parallel); SEEK_US:MBPS (flat: a constant seek when a request does not "
        "continue the previous one on the device, e.g. 2000:200); presets take overrides, e.g. "
        "hdd,capacity=1GiB or ssd,latency_us=60")


class LatencyError(ValueError):
    """A device model specification that cannot be parsed (one clear line)."""


@dataclass(frozen=True)
class LatencySpec:
    """A device model: `name` (none, hdd, ssd, nvme, flat), `kind` (none, hdd, flash, flat) and
    its figures. `seek_us` / `mbps` are the figures a prefetch planner weighs a hole against
    (positioning cost of a short seek and the best transfer rate): for hdd, track-to-track seek +
    mean rotational latency and the outer media rate."""

    name: str
    kind: str
    seek_us: float = 0.0
    mbps: float = 0.0
    capacity: int = 0
    rpm: float = 0.0
    heads: int = 0
    track_to_track_ms: float = 0.0
    avg_seek_ms: float = 0.0
    full_stroke_ms: float = 0.0
    outer_mbps: float = 0.0
    inner_mbps: float = 0.0
    latency_us: float = 0.0
    readahead_kib: float = 0.0
    parallelism: int = 1
    scheduler: str = "none"
    overrides: tuple = field(default=())

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def describe(self) -> dict:
        """The figures in force (what the trace header's `latency` and `device` record)."""
        d = {"model": self.name, "kind": self.kind, "seek_us": self.seek_us, "mbps": self.mbps,
             "scheduler": self.scheduler, "parallelism": self.parallelism}
        if self.kind == "hdd":
            d.update(capacity=self.capacity, rpm=self.rpm, heads=self.heads,
                     track_to_track_ms=self.track_to_track_ms, avg_seek_ms=self.avg_seek_ms,
                     full_stroke_ms=self.full_stroke_ms, rotational_latency_ms=round(30000.0 / self.rpm, 4),
                     outer_mbps=self.outer_mbps, inner_mbps=self.inner_mbps,
                     cylinders=cylinders(self), readahead_kib=self.readahead_kib)
            c = seek_curve(self)
            d["seek_curve"] = {"form": "settle + a*sqrt(d) below d0 cylinders, b + c*d above",
                               "settle_ms": c.settle_ns / 1e6, "a_ms": c.a_ns / 1e6, "d0": c.d0,
                               "b_ms": c.b_ns / 1e6, "c_ms": c.c_ns / 1e6}
        elif self.kind == "flash":
            d.update(latency_us=self.latency_us, capacity=self.capacity)
        if self.overrides:
            d["overrides"] = dict(self.overrides)
        return d

    def service_model(self):
        """The service-time calculator of this model (None for `none`)."""
        if self.kind == "hdd":
            return HDDService(self)
        if self.kind == "flash":
            return FlashService(self)
        if self.kind == "flat":
            return FlatService(self)
        return None


PRESETS: dict[str, LatencySpec] = {
    "hdd": LatencySpec("hdd", "hdd", seek_us=1000.0 + 30e6 / 7200 / 1000, mbps=150.0,
                       capacity=1_000_204_886_016, rpm=7200.0, heads=2, track_to_track_ms=1.0,
                       avg_seek_ms=8.5, full_stroke_ms=17.0, outer_mbps=150.0, inner_mbps=75.0,
                       readahead_kib=2048, parallelism=1, scheduler="mq-deadline"),
    "ssd": LatencySpec("ssd", "flash", seek_us=90.0, mbps=500.0, capacity=500_107_862_016,
                       latency_us=90.0, parallelism=4, scheduler="none (arrival order)"),
    "nvme": LatencySpec("nvme", "flash", seek_us=20.0, mbps=3000.0, capacity=1_000_204_886_016,
                        latency_us=20.0, parallelism=32, scheduler="none (arrival order)"),
}
NONE = LatencySpec("none", "none")

#: override keys per model kind -> (type, lower bound, upper bound)
OVERRIDES = {
    "hdd": {"capacity": ("size", 1 << 20, 1 << 60), "rpm": (float, 1000.0, 30000.0),
            "heads": (int, 1, 64), "track_to_track_ms": (float, 0.01, 100.0),
            "avg_seek_ms": (float, 0.01, 1000.0), "full_stroke_ms": (float, 0.01, 1000.0),
            "outer_mbps": (float, 0.1, 1e5), "inner_mbps": (float, 0.1, 1e5),
            "readahead_kib": (float, 0.0, 1 << 20)},
    "flash": {"capacity": ("size", 1 << 20, 1 << 60), "latency_us": (float, 0.0, 1e6),
              "mbps": (float, 0.1, 1e6), "parallelism": (int, 1, 1024)},
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(i?)B?\s*$", re.I)


def _size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise ValueError(text)
    scale = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}[m.group(2).upper()]
    base = 1024 if m.group(3) or not m.group(2) else 1000
    return int(float(m.group(1)) * base ** scale)


def parse_latency(text: str | None) -> LatencySpec:
    """'none' | 'hdd' | 'ssd' | 'nvme' (each with optional ',key=value' overrides) |
    'SEEK_US:MBPS' -> LatencySpec; LatencyError (one line) otherwise."""
    if text is None or text == "none":
        return NONE
    text = str(text).strip()
    name, *pairs = [p.strip() for p in text.split(",")]
    if name in PRESETS:
        spec = PRESETS[name]
        if not pairs:
            return spec
        allowed = OVERRIDES[spec.kind]
        changes = {}
        for pair in pairs:
            key, eq, val = pair.partition("=")
            if not eq or key not in allowed:
                raise LatencyError(f"bad device model {text!r}: {pair!r} is not KEY=VALUE with KEY one of "
                                   f"{', '.join(allowed)}")
            typ, lo, hi = allowed[key]
            try:
                v = _size(val) if typ == "size" else typ(val)
            except ValueError:
                raise LatencyError(f"bad device model {text!r}: {key}={val!r} is not "
                                   f"{'a size (e.g. 1GiB)' if typ == 'size' else 'a number'}") from None
            if not (lo <= v <= hi):
                raise LatencyError(f"bad device model {text!r}: {key} must be in [{lo}, {hi}]")
            changes[key] = v
        if "latency_us" in changes:
            changes["seek_us"] = changes["latency_us"]
        spec = replace(spec, overrides=tuple(sorted(changes.items())), **changes)
        if spec.kind == "hdd":
            if "outer_mbps" in changes:
                spec = replace(spec, mbps=spec.outer_mbps)
            spec = replace(spec, seek_us=spec.track_to_track_ms * 1000 + 30e6 / spec.rpm / 1000)
            if not (spec.track_to_track_ms < spec.avg_seek_ms < spec.full_stroke_ms):
                raise LatencyError(f"bad device model {text!r}: need track_to_track_ms < avg_seek_ms < "
                                   f"full_stroke_ms")
            if spec.inner_mbps > spec.outer_mbps:
                raise LatencyError(f"bad device model {text!r}: inner_mbps must be <= outer_mbps")
            try:
                seek_curve(spec)
            except ValueError as e:
                raise LatencyError(f"bad device model {text!r}: {e}") from None
        return spec
    if ":" in text and not pairs:
        a, _, b = text.partition(":")
        try:
            seek, mbps = float(a), float(b)
        except ValueError:
            raise LatencyError(f"bad device model {text!r}: SEEK_US and MBPS must be numbers (e.g. 2000:200)") from None
        if not (0 <= seek <= 4e6 and 0 < mbps < float("inf")):
            raise LatencyError(f"bad device model {text!r}: need 0 <= SEEK_US <= 4000000 and MBPS > 0")
        return LatencySpec("flat", "flat", seek_us=seek, mbps=mbps, parallelism=1, scheduler="none (arrival order)")
    raise LatencyError(f"unknown device model {text!r}: use none, hdd, ssd, nvme (with optional ,KEY=VALUE "
                       f"overrides) or SEEK_US:MBPS")


# ---- HDD geometry and seek curve ----------------------------------------------------------------

def _k(spec: LatencySpec) -> float:
    """Fractional fall of the media rate (and bytes per track) from the outer to the inner edge."""
    return 1.0 - spec.inner_mbps / spec.outer_mbps


def rev_ns(spec: LatencySpec) -> float:
    return 60e9 / spec.rpm


def cylinders(spec: LatencySpec) -> int:
    """Cylinders of the drive: capacity / mean bytes per cylinder (heads x one revolution of the
    mean media rate)."""
    mean_rate = (spec.outer_mbps + spec.inner_mbps) / 2 * MB
    per_cyl = spec.heads * mean_rate * rev_ns(spec) / 1e9
    return max(2, int(spec.capacity / per_cyl))


def radial_position(spec: LatencySpec, frac):
    """Radial position x in [0, 1] (0 = outer edge) of the byte at fraction `frac` of the
    capacity (scalar or numpy array): bytes below x are proportional to x - k x^2 / 2."""
    k = _k(spec)
    if k <= 1e-12:
        return frac
    import numpy as np

    f = np.clip(frac, 0.0, 1.0)
    return (1.0 - np.sqrt(1.0 - 2.0 * k * f * (1.0 - k / 2.0))) / k


@dataclass(frozen=True)
class SeekCurve:
    """seek(d cylinders) in ns: 0 for d = 0, settle + a*sqrt(d) below d0, b + c*d from d0."""

    settle_ns: float
    a_ns: float
    d0: float
    b_ns: float
    c_ns: float
    n_cyl: int

    def __call__(self, d):
        import numpy as np

        d = np.asarray(d, dtype=np.float64)
        t = np.where(d < self.d0, self.settle_ns + self.a_ns * np.sqrt(d), self.b_ns + self.c_ns * d)
        return np.where(d <= 0, 0.0, t)

    def scalar(self, d: float) -> float:
        if d <= 0:
            return 0.0
        if d < self.d0:
            return self.settle_ns + self.a_ns * math.sqrt(d)
        return self.b_ns + self.c_ns * d


def _curve_for(d0: float, tt: float, full: float, n: int) -> SeekCurve:
    # slope continuity: c = a / (2 sqrt d0); value continuity: b = settle + a sqrt(d0) / 2;
    # seek(1) = settle + a = tt; seek(n - 1) = b + c (n - 1) = full
    dn = n - 1
    a = (full - tt) / (math.sqrt(d0) / 2 + dn / (2 * math.sqrt(d0)) - 1)
    settle = tt - a
    return SeekCurve(settle, a, d0, settle + a * math.sqrt(d0) / 2, a / (2 * math.sqrt(d0)), n)


@functools.lru_cache(maxsize=64)
def _pair_distances(spec_key: tuple) -> "object":
    """Cylinder distances of uniformly random address pairs (a fixed midpoint grid, no RNG)."""
    import numpy as np

    spec = LatencySpec("hdd", "hdd", capacity=spec_key[0], rpm=spec_key[1], heads=spec_key[2],
                       outer_mbps=spec_key[3], inner_mbps=spec_key[4])
    m = 600
    f = (np.arange(m) + 0.5) / m
    x = radial_position(spec, f)
    d = np.abs(x[:, None] - x[None, :]) * (cylinders(spec) - 1)
    return d[~np.eye(m, dtype=bool)]


def mean_seek_ns(spec: LatencySpec, curve: SeekCurve) -> float:
    """Mean seek time over uniformly random pairs of device addresses."""
    d = _pair_distances((spec.capacity, spec.rpm, spec.heads, spec.outer_mbps, spec.inner_mbps))
    return float(curve(d).mean())


@functools.lru_cache(maxsize=64)
def _fit(capacity, rpm, heads, outer, inner, tt_ms, avg_ms, full_ms) -> SeekCurve:
    spec = LatencySpec("hdd", "hdd", capacity=capacity, rpm=rpm, heads=heads, outer_mbps=outer,
                       inner_mbps=inner)
    n = cylinders(spec)
    tt, avg, full = tt_ms * 1e6, avg_ms * 1e6, full_ms * 1e6
    lo, hi = 1.0 + 1e-9, float(n - 1)
    m_lo, m_hi = mean_seek_ns(spec, _curve_for(lo, tt, full, n)), mean_seek_ns(spec, _curve_for(hi, tt, full, n))
    if not (min(m_lo, m_hi) <= avg <= max(m_lo, m_hi)):
        raise ValueError(f"no seek curve of this form has average seek {avg_ms} ms with track-to-track "
                         f"{tt_ms} ms and full stroke {full_ms} ms (reachable: {min(m_lo, m_hi) / 1e6:.2f}"
                         f"..{max(m_lo, m_hi) / 1e6:.2f} ms)")
    for _ in range(80):  # the mean grows with d0 (more of the concave sqrt part)
        mid = math.sqrt(lo * hi)
        if (mean_seek_ns(spec, _curve_for(mid, tt, full, n)) < avg) == (m_lo < m_hi):
            lo = mid
        else:
            hi = mid
    return _curve_for(math.sqrt(lo * hi), tt, full, n)


def seek_curve(spec: LatencySpec) -> SeekCurve:
    """The seek curve of an hdd spec, fitted to its three spec-sheet figures (cached)."""
    return _fit(spec.capacity, spec.rpm, spec.heads, spec.outer_mbps, spec.inner_mbps,
                spec.track_to_track_ms, spec.avg_seek_ms, spec.full_stroke_ms)


# ---- service time calculators ---------------------------------------------------------------------

class HDDService:
    """Service time of one request on the modelled HDD. `address_span` (bytes) is the extent of
    the address space the layout hands out (the host file system's device, or the synthetic
    layout's total): addresses are placed on the drive as fraction address / max(span, capacity)."""

    kind = "hdd"

    def __init__(self, spec: LatencySpec, address_span: int = 0):
        self.spec = spec
        self.curve = seek_curve(spec)
        self.n_cyl = self.curve.n_cyl
        self.k = _k(spec)
        self.rot_ns = int(rev_ns(spec) / 2)
        self.set_span(address_span)
        self._outer_ns_per_byte = 1e9 / (spec.outer_mbps * MB)
        self._rev_s = rev_ns(spec) / 1e9
        self._ra_bytes = int(spec.readahead_kib * 1024)

    def set_span(self, address_span: int) -> None:
        self.span = float(max(int(address_span or 0), self.spec.capacity))

    def position(self, addr: int) -> float:
        """Radial position in [0, 1] of device address `addr`."""
        f = min(max(addr / self.span, 0.0), 1.0)
        k = self.k
        if k <= 1e-12:
            return f
        return (1.0 - math.sqrt(1.0 - 2.0 * k * f * (1.0 - k / 2.0))) / k

    def cylinder(self, addr: int) -> float:
        return self.position(addr) * (self.n_cyl - 1)

    def rate_mbps(self, addr: int) -> float:
        """Media rate (MB/s) at `addr`: falls linearly with the radius from outer to inner."""
        return self.spec.outer_mbps * (1.0 - self.k * self.position(addr))

    def service(self, head: int, addr: int, length: int, idle_ns: int = 0, write: bool = False
                ) -> tuple[int, int, int]:
        """(seek_ns, rot_ns, xfer_ns) of `length` bytes at `addr` with the head at `head`, the
        drive idle for `idle_ns` since its previous request (a read continuing it finds up to
        `readahead_kib` of it already in the drive's buffer)."""
        x = self.position(addr)
        ns_per_byte = self._outer_ns_per_byte / (1.0 - self.k * x)
        if addr == head:
            if not write and idle_ns > 0:
                length = max(0, length - min(int(idle_ns / ns_per_byte), self._ra_bytes))
            return 0, 0, int(length * ns_per_byte)
        xfer = int(length * ns_per_byte)
        skip = addr - head
        if 0 < skip < self.track_bytes(x) and head >= 0:  # further along the same track: the
            return 0, int(skip * ns_per_byte), xfer  # platter carries the head there, no seek
        d = abs(x - (self.position(head) if head >= 0 else 0.0)) * (self.n_cyl - 1)
        return int(self.curve.scalar(round(d))), self.rot_ns, xfer

    def track_bytes(self, x: float) -> float:
        """Bytes on one track at radial position x (one revolution at the media rate there)."""
        return self.spec.outer_mbps * MB * (1.0 - self.k * x) * self._rev_s


class FlashService:
    """Service time on a flash device: access latency + transfer, no distance cost."""

    kind = "flash"

    def __init__(self, spec: LatencySpec, address_span: int = 0):
        self.spec = spec
        self.lat_ns = int(spec.latency_us * 1000)
        self.ns_per_byte = 1e9 / (spec.mbps * MB)

    def set_span(self, address_span: int) -> None:
        pass

    def service(self, head: int, addr: int, length: int, idle_ns: int = 0, write: bool = False
                ) -> tuple[int, int, int]:
        return self.lat_ns, 0, int(length * self.ns_per_byte)


class FlatService:
    """The flat model: a constant seek unless the request continues the previous one."""

    kind = "flat"

    def __init__(self, spec: LatencySpec, address_span: int = 0):
        self.spec = spec
        self.seek_ns = int(spec.seek_us * 1000)
        self.ns_per_byte = 1e9 / (spec.mbps * MB)

    def set_span(self, address_span: int) -> None:
        pass

    def service(self, head: int, addr: int, length: int, idle_ns: int = 0, write: bool = False
                ) -> tuple[int, int, int]:
        return (0 if addr == head else self.seek_ns), 0, int(length * self.ns_per_byte)
