"""The set of swap files and cluster allocation across them (XNU's paging segments / FreeBSD blist).

Owns: `SwapSpace`: the live `SwapFile`s by number, cluster allocation in contiguous runs across
files, freeing (coalesced into one hole punch per run), and the free / total counts the watermark
logic reads.

Theory of operation:
  `allocate(n)` hands out up to n clusters as a few contiguous runs `(file, first, count)`. It
  prefers the *oldest* file with room (swapfile0 first) and, inside a file, next-fit from that
  file's rotor, so a pageout of many clusters lands as one sequential run. XNU round-robined
  between segments every ALLOC_STRIDE (1 GiB); preferring old files is a deliberate difference:
  it leaves the newest file emptiest, which is the one the low-water mark removes, so swapoff moves
  little. Files being emptied (`going_away`) or damaged are never allocated from.

Invariants: file numbers are unique; `free_clusters()` counts only allocatable files' free clusters
(what XNU's dp_pages_free counts); every location handed out is freed exactly once.

Who calls: swapd.pool (add / remove files, counts) and swapd.pager (allocate / free), always under
the pool lock.
"""

from __future__ import annotations

from typing import Iterable

from swapd.swapfile import SwapFile
from swapd.swapmap import loc_cluster, loc_file, make_loc


class SwapSpace:
    def __init__(self, page_size: int, cluster_pages: int):
        self.page_size = page_size
        self.cluster_pages = cluster_pages
        self.cluster_bytes = page_size * cluster_pages
        self.files: dict[int, SwapFile] = {}

    # ---- the set of files ---------------------------------------------------------------------

    def add(self, f: SwapFile) -> None:
        if f.number in self.files:
            raise ValueError(f"swap file number {f.number} already in the pool")
        self.files[f.number] = f

    def remove(self, number: int) -> SwapFile:
        f = self.files.pop(number)
        return f

    def newest(self) -> SwapFile | None:
        return self.files[max(self.files)] if self.files else None

    def file(self, number: int) -> SwapFile:
        return self.files[number]

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self):
        return iter([self.files[n] for n in sorted(self.files)])

    # ---- counts -------------------------------------------------------------------------------

    def total_clusters(self) -> int:
        return sum(f.nclusters for f in self.files.values())

    def free_clusters(self, exclude: SwapFile | None = None) -> int:
        """Free clusters that can be allocated (not in going-away or damaged files)."""
        return sum(f.free_clusters for f in self.files.values()
                   if f is not exclude and not f.going_away and f.damaged is None)

    def free_bytes(self) -> int:
        return self.free_clusters() * self.cluster_bytes

    # ---- allocation ---------------------------------------------------------------------------

    def allocate(self, want: int) -> list[tuple[SwapFile, int, int]]:
        """Up to `want` clusters as runs (file, first cluster, count); fewer (maybe none) when the
        pool is short. The caller frees what it does not use."""
        runs: list[tuple[SwapFile, int, int]] = []
        for n in sorted(self.files):
            f = self.files[n]
            while want > 0 and f.allocatable:
                got = f.allocate(want)
                if got is None:
                    break
                start, count = got
                if runs and runs[-1][0] is f and runs[-1][1] + runs[-1][2] == start:
                    prev = runs.pop()
                    start, count = prev[1], prev[2] + count
                runs.append((f, start, count))
                want -= got[1]
            if want == 0:
                break
        return runs

    def free_locs(self, locs: Iterable[int], punch: bool = True) -> None:
        """Free clusters by location, coalescing adjacent clusters of one file into one punch."""
        by_file: dict[int, list[int]] = {}
        for loc in locs:
            by_file.setdefault(loc_file(loc), []).append(loc_cluster(loc))
        for number, clusters in by_file.items():
            f = self.files[number]
            clusters.sort()
            first = prev = clusters[0]
            for c in clusters[1:]:
                if c == prev + 1:
                    prev = c
                    continue
                f.free(first, prev - first + 1, punch=punch)
                first = prev = c
            f.free(first, prev - first + 1, punch=punch)

    @staticmethod
    def loc(f: SwapFile, cluster: int) -> int:
        return make_loc(f.number, cluster)
