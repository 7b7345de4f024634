"""Small helpers shared by the swapd tests (page buffers)."""

from __future__ import annotations

import os


def pages(n: int, ps: int = 4096, seed: int = 0) -> list[memoryview]:
    """n distinct page buffers: page i starts with (seed, i) so every page is recognisable."""
    out = []
    for i in range(n):
        b = bytearray(os.urandom(ps))
        b[:16] = seed.to_bytes(8, "little") + i.to_bytes(8, "little")
        out.append(memoryview(b))
    return out


def blank(n: int, ps: int = 4096) -> list[memoryview]:
    return [memoryview(bytearray(b"\xa5" * ps)) for _ in range(n)]
