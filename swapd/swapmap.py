"""The per-object swap map: object cluster -> (swap file, cluster in that file) + valid-page mask.

Owns: `SwapMap` and the location encoding (`make_loc`, `loc_file`, `loc_cluster`, `NONE`). This is
the only code that knows how a location is packed.

Theory of operation (XNU vstruct cluster map, stored FreeBSD swblk style):
  An anonymous object's pages are grouped into *object clusters* of `cluster_pages` consecutive
  pages (object cluster k = pages k*cp .. k*cp + cp - 1). Each object cluster that has anything on
  swap maps to one cluster of one swap file, and page p of the object lives in slot p % cp of that
  cluster. A per-cluster bit mask says which of those slots hold valid data (XNU's per-page bitmap
  within a cluster). Address locality is thus kept inside a cluster, and consecutive object clusters
  written by one pageout get consecutive file clusters (the allocator's job), so a pagein of a
  run of pages is one `preadv`.

  Storage: like FreeBSD's swblk, the map is sparse and made of fixed-size chunks of CHUNK object
  clusters (a dict of chunk number -> arrays), so a huge, mostly unswapped object costs nothing and
  a dense one costs 9 bytes per cluster.

Invariants: a chunk exists iff it maps at least one cluster; `loc == NONE` iff `mask == 0`;
`len(map)` = mapped clusters, `map.pages` = set mask bits.

Who calls: swapd.pager only.
"""

from __future__ import annotations

from array import array
from typing import Iterator

NONE = -1  #: no location
CHUNK = 32  #: object clusters per chunk (FreeBSD SWAP_META_PAGES is 32 pages)
_SHIFT = 32
_POPCOUNT = bytes(bin(i).count("1") for i in range(256))
_MASK_RUNS = [bytes((m,)) * CHUNK for m in range(256)]  # CHUNK copies of each mask byte


def make_loc(file_number: int, cluster: int) -> int:
    """Pack (swap file number, cluster index in that file) into one int."""
    return (file_number << _SHIFT) | cluster


def loc_file(loc: int) -> int:
    return loc >> _SHIFT


def loc_cluster(loc: int) -> int:
    return loc & ((1 << _SHIFT) - 1)


class _Chunk:
    """CHUNK object clusters: locs[i], masks[i], and deltas[i] = locs[i] - i (so a run of
    consecutive locations is a run of equal deltas, checked with one C-level count)."""

    __slots__ = ("locs", "masks", "deltas", "count")

    def __init__(self) -> None:
        self.locs = array("q", [NONE]) * CHUNK
        self.deltas = array("q", [NONE]) * CHUNK
        self.masks = bytearray(CHUNK)
        self.count = 0


class SwapMap:
    """Sparse map object cluster -> (loc, mask). Masks are 8-bit: cluster_pages <= 8."""

    __slots__ = ("_chunks", "_clusters", "pages")

    def __init__(self) -> None:
        self._chunks: dict[int, _Chunk] = {}
        self._clusters = 0
        self.pages = 0  # valid pages mapped (sum of mask popcounts)

    def get(self, ocl: int) -> tuple[int, int]:
        """(loc, mask) of object cluster `ocl`; (NONE, 0) if it has nothing on swap."""
        ch = self._chunks.get(ocl // CHUNK)
        if ch is None:
            return NONE, 0
        i = ocl % CHUNK
        return ch.locs[i], ch.masks[i]

    def set(self, ocl: int, loc: int, mask: int) -> tuple[int, int]:
        """Map `ocl` to (loc, mask) (mask 0 = unmap). Returns the previous (loc, mask)."""
        if not 0 <= mask < 256 or (mask == 0) != (loc == NONE):
            raise ValueError(f"bad swap map entry loc={loc} mask={mask:#x}")
        key, i = divmod(ocl, CHUNK)
        ch = self._chunks.get(key)
        if ch is None:
            if mask == 0:
                return NONE, 0
            ch = self._chunks[key] = _Chunk()
        old_loc, old_mask = ch.locs[i], ch.masks[i]
        ch.locs[i] = loc
        ch.deltas[i] = loc - i
        ch.masks[i] = mask
        self.pages += _POPCOUNT[mask] - _POPCOUNT[old_mask]
        if old_mask == 0 and mask:
            ch.count += 1
            self._clusters += 1
        elif old_mask and mask == 0:
            ch.count -= 1
            self._clusters -= 1
            if ch.count == 0:
                del self._chunks[key]
        return old_loc, old_mask

    def contiguous(self, ocl: int, count: int, mask: int) -> int:
        """The location of `ocl` if object clusters ocl .. ocl+count-1 are all mapped with
        exactly `mask` to consecutive clusters of one file, else NONE. The pagein fast path: one
        comparison per chunk instead of a lookup per cluster."""
        first = NONE
        want = _MASK_RUNS[mask]
        chunks = self._chunks
        while count > 0:
            key, i = divmod(ocl, CHUNK)
            k = CHUNK - i if CHUNK - i < count else count
            ch = chunks.get(key)
            if ch is None or ch.masks[i:i + k] != want[:k]:
                return NONE
            loc = ch.locs[i]
            if first == NONE:
                first = expect = loc
            elif loc != expect:
                return NONE
            if k > 1 and ch.deltas[i:i + k].count(loc - i) != k:
                return NONE
            expect = loc + k
            ocl += k
            count -= k
        if first >> _SHIFT != (expect - 1) >> _SHIFT:
            return NONE
        return first

    def set_run(self, ocl: int, count: int, loc: int, mask: int) -> list[tuple[int, int]]:
        """Map object clusters ocl .. ocl+count-1 to locations loc .. loc+count-1 (consecutive
        clusters of one file), each with `mask` (non-zero). Returns the previous (loc, mask) of
        those that were mapped. The pageout fast path: one slice assignment per chunk."""
        if not 0 < mask < 256 or loc == NONE:
            raise ValueError(f"bad swap map run loc={loc} mask={mask:#x}")
        olds: list[tuple[int, int]] = []
        pc = _POPCOUNT[mask]
        while count > 0:
            key, i = divmod(ocl, CHUNK)
            k = min(CHUNK - i, count)
            ch = self._chunks.get(key)
            if ch is None:
                ch = self._chunks[key] = _Chunk()
            old_masks = ch.masks[i:i + k]
            mapped = k - old_masks.count(0)
            if mapped:
                old_locs = ch.locs[i:i + k]
                for j in range(k):
                    if old_masks[j]:
                        olds.append((old_locs[j], old_masks[j]))
                        self.pages -= _POPCOUNT[old_masks[j]]
            ch.locs[i:i + k] = array("q", range(loc, loc + k))
            ch.deltas[i:i + k] = array("q", (loc - i,)) * k
            ch.masks[i:i + k] = bytes((mask,)) * k
            ch.count += k - mapped
            self._clusters += k - mapped
            self.pages += pc * k
            ocl += k
            loc += k
            count -= k
        return olds

    def clear(self, ocl: int) -> tuple[int, int]:
        """Unmap `ocl`; returns what it mapped to."""
        return self.set(ocl, NONE, 0)

    def __len__(self) -> int:
        return self._clusters

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """(object cluster, loc, mask) for every mapped cluster, in object-cluster order."""
        for key in sorted(self._chunks):
            ch = self._chunks[key]
            base = key * CHUNK
            for i in range(CHUNK):
                if ch.masks[i]:
                    yield base + i, ch.locs[i], ch.masks[i]

    def in_file(self, file_number: int) -> list[tuple[int, int, int]]:
        """Every mapped (ocl, loc, mask) whose cluster lives in swap file `file_number`."""
        return [e for e in self if loc_file(e[1]) == file_number]


def popcount(mask: int) -> int:
    return _POPCOUNT[mask]
