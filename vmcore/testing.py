"""Reusable testing pieces: the in-memory pager and the pager conformance suite.

Owns: `MemoryPager` (the default pager of kernels built without swap, and the reference pager in
tests) and `check_pager(make_pager)`, the contract of vmcore.pager run against any implementation
(MemoryPager here, swapd's default pager, vnodefs' vnode pager in their own test suites).
Imports only vmcore.pager, numpy and the standard library.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from vmcore.pager import Buffer, Pager, PagerKind, PagerResult


class MemoryPager(Pager):
    """Backing store in a Python dict of page offset -> bytes. Never fails; a hole is ABSENT."""

    kind = PagerKind.DEFAULT

    def __init__(self, size: int = 0, page_size: int = 4096):
        self.page_size = page_size
        self._store: dict[int, bytes] = {}
        self.requests = 0  # backing-store requests served (one per call)
        self.pages_in = 0
        self.pages_out = 0

    def _check(self, offset: int, pages: Sequence[Buffer]) -> None:
        if offset % self.page_size or not pages:
            raise ValueError(f"unaligned offset {offset} or empty page list")

    def data_request(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        self._check(offset, pages)
        self.requests += 1
        out = []
        for i, buf in enumerate(pages):
            data = self._store.get(offset + i * self.page_size)
            if data is None:
                out.append(PagerResult.ABSENT)
            else:
                buf[:] = data
                self.pages_in += 1
                out.append(PagerResult.OK)
        return out

    def data_return(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        self._check(offset, pages)
        self.requests += 1
        for i, buf in enumerate(pages):
            self._store[offset + i * self.page_size] = bytes(buf)
        self.pages_out += len(pages)
        return [PagerResult.OK] * len(pages)

    def has_page(self, offset: int) -> bool:
        return offset in self._store

    def data_discard(self, offset: int, npages: int) -> None:
        for i in range(npages):
            self._store.pop(offset + i * self.page_size, None)

    def terminate(self) -> None:
        self._store.clear()

    @property
    def resident_in_store(self) -> int:
        return len(self._store)


def memory_pager_factory(page_size: int = 4096) -> Callable[[int], Pager]:
    """A PagerFactory that makes one MemoryPager per anonymous object."""
    return lambda size: MemoryPager(size, page_size)


def _pages(n: int, page_size: int, fill: Callable[[int], bytes] | None = None) -> list[memoryview]:
    bufs = [memoryview(bytearray(page_size)) for _ in range(n)]
    if fill:
        for i, b in enumerate(bufs):
            b[:] = fill(i)
    return bufs


def check_pager(make_pager: Callable[[], Pager], *, npages: int = 64, seed: int = 1,
                writable: bool = True) -> None:
    """Run the vmcore.pager contract against a fresh pager from `make_pager()`; raise AssertionError
    naming the first broken rule. `writable=False` skips the data_return rules (read-only pagers)."""
    pager = make_pager()
    ps = pager.page_size
    assert ps > 0 and ps % 512 == 0, f"page_size {ps} is not a multiple of 512"
    rng = random.Random(seed)

    # one result per page, for clusters of every size
    for n in (1, 2, 4, 7):
        res = pager.data_request(0, _pages(n, ps))
        assert len(res) == n, f"data_request returned {len(res)} results for {n} pages"
        assert all(isinstance(r, PagerResult) for r in res), f"non-PagerResult in {res!r}"
        for i, r in enumerate(res):
            assert (r == PagerResult.OK) == pager.has_page(i * ps), \
                f"has_page({i * ps}) disagrees with data_request result {r.name}"
    if not writable:
        pager.terminate()
        return

    # write / read back, in clusters, at scattered offsets
    model: dict[int, bytes] = {}
    for _ in range(24):
        first = rng.randrange(npages)
        n = rng.randint(1, 8)
        pattern = [rng.randbytes(ps) for _ in range(n)]
        res = pager.data_return(first * ps, _pages(n, ps, lambda i: pattern[i]))
        assert len(res) == n, f"data_return returned {len(res)} results for {n} pages"
        for i, r in enumerate(res):
            if r == PagerResult.OK:
                model[first + i] = pattern[i]
            else:
                assert r in (PagerResult.AGAIN, PagerResult.ERROR), f"data_return gave {r.name}"
    for page, data in model.items():
        buf = _pages(1, ps)
        (r,) = pager.data_request(page * ps, buf)
        assert r == PagerResult.OK, f"page {page} returned OK then read back as {r.name}"
        assert bytes(buf[0]) == data, f"page {page} read back different bytes"
        assert pager.has_page(page * ps), f"has_page false for stored page {page}"

    # a cluster read spanning stored pages returns each page's own data, in order
    if model:
        page = min(model)
        bufs = _pages(4, ps)
        res = pager.data_request(page * ps, bufs)
        for i in range(4):
            if page + i in model:
                assert res[i] == PagerResult.OK and bytes(bufs[i]) == model[page + i], \
                    f"cluster read of page {page + i} wrong"

    # discard forgets
    for page in list(model)[: max(1, len(model) // 2)]:
        pager.data_discard(page * ps, 1)
        if pager.kind != PagerKind.VNODE:
            assert not pager.has_page(page * ps), f"page {page} still present after data_discard"
            (r,) = pager.data_request(page * ps, _pages(1, ps))
            assert r == PagerResult.ABSENT, f"discarded page {page} read back as {r.name}"
        model.pop(page)
    for page, data in model.items():
        buf = _pages(1, ps)
        (r,) = pager.data_request(page * ps, buf)
        assert r == PagerResult.OK and bytes(buf[0]) == data, \
            f"page {page} damaged by discarding other pages"

    pager.terminate()
