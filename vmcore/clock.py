"""Time for the model: a Clock protocol and ManualClock (no threads, no real time inside the model).

Owns: `Clock` (anything with `.now() -> float` seconds), `ManualClock` (advanced explicitly by the
model or a test), and `MonotonicClock` (real time, for command-line drivers only, never used by the
model by default).

Invariants: ManualClock never goes backwards (advance() refuses negative steps).
Caveats: the kernel advances its default ManualClock by a fixed tick per fault and per pageout scan
so that "task age" (TWS's 45 s launch window) means model time, not wall time.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from vmcore.errors import InvalidArgument


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Seconds since an arbitrary origin."""


class ManualClock:
    """A clock that moves only when told to (trio.testing.MockClock in spirit)."""

    def __init__(self, start: float = 0.0):
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise InvalidArgument(f"clock cannot go backwards (advance by {seconds})")
        self._now += seconds
        return self._now

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now:.6f})"


class MonotonicClock:
    """Real elapsed time (time.monotonic); for drivers outside the model."""

    def now(self) -> float:
        return time.monotonic()
