"""The default pager: one `SwapPager` per anonymous VM object (its memory object), storing pages
in the pool's swap files.

Owns: `SwapPager(vmcore.pager.Pager)`, kind DEFAULT: data_request (pagein), data_return
(pageout), has_page, data_discard, terminate, and `transfer_from` (moving this object's clusters
out of a file being emptied: XNU's ps_vstruct_transfer_from_segment / vs_cluster_transfer).

Theory of operation:
  The object's pages are grouped into object clusters of `cluster_pages` pages (swapd.swapmap).
  * data_return of N pages: every *whole* object cluster in the range gets a fresh pool cluster,
    allocated as contiguous runs, and each run is written with ONE `pwritev` (a 64-page pageout of
    fresh clusters is one 256 KiB write). The clusters' old copies are freed afterwards (hole
    punched) - a rewritten page goes to a new cluster and its old slot is released. A *partial*
    cluster is written in place into the cluster it already has (one `pwritev` of the covered
    slots), or into a new cluster if it has none. When the pool has no free cluster, the pool is
    asked to add a file at once (the hi-water mark should have done it already); whole clusters
    then fall back to in-place writes where they already have a cluster.
  * data_request of N pages: consecutive pages whose slots are consecutive in one file are read
    with ONE `preadv`. A page with no valid slot is ABSENT (the kernel zero-fills or looks down the
    shadow chain).
  * Results: OK; AGAIN for a transient shortage (ENOSPC / EDQUOT on write, or no free cluster and
    no room to grow): the kernel keeps the page dirty and retries, and the pager has lost nothing
    (the previous copy stays mapped unless a failed in-place write clobbered it, in which case the
    kernel's dirty page is the only copy, as it should be); ERROR for an I/O error or a damaged
    swap file, with `last_error` naming the file and the errno.

Invariants: a page is valid in at most one slot; a pool cluster belongs to at most one object
cluster; `file.used_slots` sums the valid bits that live in that file; a page returned OK reads
back the same bytes until it is discarded, re-written, or its file is damaged.

Who calls: the vmcore kernel through the PagerFactory made by swapd.pool.SwapPool.pager_factory;
swapd.pool calls transfer_from during swapoff. Every method takes the pool lock.

Caveats: pages whose file was deleted or truncated behind the pool's back are gone; they read as
ERROR (never as zeros) until the kernel discards or re-writes them.
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Sequence

from swapd.swapfile import SwapFile, SwapFileDamaged
from swapd.swapmap import NONE, SwapMap, loc_cluster, loc_file, make_loc, popcount
from vmcore.pager import Buffer, Pager, PagerKind, PagerResult

if TYPE_CHECKING:  # pragma: no cover
    from swapd.pool import SwapPool

#: write errors that mean "no room right now", answered with AGAIN (the kernel retries later)
TRANSIENT_WRITE_ERRNOS = {_errno.ENOSPC, _errno.EDQUOT, _errno.ENOMEM, _errno.EAGAIN}

OK, ABSENT, ERROR, AGAIN = PagerResult.OK, PagerResult.ABSENT, PagerResult.ERROR, PagerResult.AGAIN


class TransferFailed(Exception):
    """swapoff could not move a cluster out of the file being emptied (message says why)."""


def _errname(e: OSError) -> str:
    return _errno.errorcode.get(e.errno or 0, str(e.errno))


class SwapPager(Pager):
    """The memory object of one anonymous VM object, backed by the pool's swap files."""

    kind = PagerKind.DEFAULT

    def __init__(self, pool: "SwapPool", size: int):
        self.pool = pool
        self.page_size = pool.page_size
        self.cluster_pages = pool.cluster_pages
        self.object_size = size
        self.map = SwapMap()
        self.lost: set[int] = set()  # pages whose only copy was in a damaged file
        self.last_error: str | None = None
        self.alive = True
        self._full = (1 << self.cluster_pages) - 1

    # ---- helpers ------------------------------------------------------------------------------

    def _check_args(self, offset: int, pages: Sequence[Buffer]) -> None:
        if offset % self.page_size or offset < 0 or not pages:
            raise ValueError(f"unaligned offset {offset} or empty page list")

    def _dead(self) -> str | None:
        if self.pool.closed:
            return f"swap pool {self.pool.directory} is closed"
        if not self.alive:
            return "swap pager used after terminate()"
        return None

    def _fail(self, msg: str) -> None:
        self.last_error = msg
        self.pool._note_error(msg)

    def _files(self) -> dict[int, SwapFile]:
        return self.pool.space.files

    # ---- pagein -------------------------------------------------------------------------------

    def data_request(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        self._check_args(offset, pages)
        n = len(pages)
        pool = self.pool
        with pool._lock:
            dead = self._dead()
            if dead:
                self._fail(dead)
                return [ERROR] * n
            ps, cp = self.page_size, self.cluster_pages
            cb = ps * cp
            smap, lost = self.map, self.lost
            res = [ABSENT] * n
            runs: list[list] = []  # [file number, byte offset, bufs, indices]
            cur = None
            p = offset // ps
            last_ocl, loc, mask = -1, NONE, 0
            for i in range(n):
                ocl, slot = divmod(p + i, cp)
                if ocl != last_ocl:
                    loc, mask = smap.get(ocl)
                    last_ocl = ocl
                if not (mask >> slot) & 1:
                    if lost and (p + i) in lost:
                        res[i] = ERROR
                    cur = None
                    continue
                fno = loc_file(loc)
                off = loc_cluster(loc) * cb + slot * ps
                if cur is not None and cur[0] == fno and cur[1] + len(cur[2]) * ps == off:
                    cur[2].append(pages[i])
                    cur[3].append(i)
                else:
                    cur = [fno, off, [pages[i]], [i]]
                    runs.append(cur)
            if any(r == ERROR for r in res):
                self._fail(f"page(s) of this object were lost with a damaged swap file "
                           f"(first: page {next(p + i for i in range(n) if res[i] == ERROR)})")
            files = self._files()
            got = 0
            for fno, off, bufs, idx in runs:
                f = files[fno]
                try:
                    f.read(off, bufs)
                except SwapFileDamaged as e:
                    self._fail(str(e))
                    pool._note_damage(f)
                    r = ERROR
                except OSError as e:
                    self._fail(f"{_errname(e)} reading {f.path}: {e.strerror}")
                    r = ERROR
                else:
                    r = OK
                    got += len(idx)
                for i in idx:
                    res[i] = r
            pool._note_pagein(got, len(runs), n - got - res.count(ABSENT))
            return res

    def has_page(self, offset: int) -> bool:
        ps, cp = self.page_size, self.cluster_pages
        with self.pool._lock:
            if self._dead():
                return False
            ocl, slot = divmod(offset // ps, cp)
            loc, mask = self.map.get(ocl)
            if not (mask >> slot) & 1:
                return False
            return self._files()[loc_file(loc)].healthy()

    # ---- pageout ------------------------------------------------------------------------------

    def data_return(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        self._check_args(offset, pages)
        n = len(pages)
        pool = self.pool
        with pool._lock:
            dead = self._dead()
            if dead:
                self._fail(dead)
                return [ERROR] * n
            cp = self.cluster_pages
            res = [OK] * n
            full: list[tuple[int, int]] = []  # (object cluster, index of its first page)
            partial: list[tuple[int, int, int, int]] = []  # (ocl, index, first slot, count)
            p0 = offset // self.page_size
            i = 0
            while i < n:
                ocl, slot = divmod(p0 + i, cp)
                k = min(cp - slot, n - i)
                if k == cp:
                    full.append((ocl, i))
                else:
                    partial.append((ocl, i, slot, k))
                i += k
            free_later: list[int] = []
            writes = 0
            for _attempt in range(2):  # a second pass only for clusters hit by a damaged file
                if not full:
                    break
                full, unplaced, w = self._write_fresh(full, pages, res, free_later)
                writes += w
                if unplaced:
                    # no free cluster even after trying to grow: rewrite in place where possible
                    for ocl, i in unplaced:
                        partial.append((ocl, i, 0, cp))
            for ocl, i, slot, k in partial:
                writes += self._write_partial(ocl, i, slot, k, pages, res, free_later)
            if free_later:
                pool.space.free_locs(free_later)
            pool._note_pageout(res.count(OK), writes, res.count(AGAIN), res.count(ERROR))
            return res

    def _set(self, ocl: int, loc: int, mask: int, free_later: list[int]) -> None:
        """Map ocl -> (loc, mask), keeping the files' used-slot counts; queue the old cluster for
        freeing if the object cluster moved."""
        files = self._files()
        old_loc, old_mask = self.map.set(ocl, loc, mask)
        if old_mask:
            if old_loc == loc:
                files[loc_file(loc)].used_slots += popcount(mask) - popcount(old_mask)
                return
            files[loc_file(old_loc)].used_slots -= popcount(old_mask)
            free_later.append(old_loc)
        if mask:
            files[loc_file(loc)].used_slots += popcount(mask)

    def _unlose(self, first_page: int, count: int) -> None:
        if self.lost:
            for q in range(first_page, first_page + count):
                self.lost.discard(q)

    def _write_fresh(self, full: list[tuple[int, int]], pages: Sequence[Buffer],
                     res: list[PagerResult], free_later: list[int]):
        """Write whole object clusters to freshly allocated pool clusters, one pwritev per run.
        Returns (clusters to retry because their new file turned out damaged, clusters that got
        no pool cluster, number of writes)."""
        pool = self.pool
        cp, ps = self.cluster_pages, self.page_size
        cb = cp * ps
        runs = pool._allocate(len(full))
        retry: list[tuple[int, int]] = []
        writes = 0
        j = 0
        for f, start, count in runs:
            chunk = full[j:j + count]
            j += count
            # split the chunk where page indices are not consecutive (never, in practice)
            sub_start = 0
            for q in range(1, len(chunk) + 1):
                if q < len(chunk) and chunk[q][1] == chunk[q - 1][1] + cp:
                    continue
                sub = chunk[sub_start:q]
                fc = start + sub_start
                sub_start = q
                first_i = sub[0][1]
                bufs = pages[first_i:first_i + len(sub) * cp]
                try:
                    writes += 1
                    f.write(fc * cb, bufs)
                except SwapFileDamaged as e:
                    pool._note_damage(f)
                    self._fail(str(e))
                    f.free(fc, len(sub), punch=False)
                    retry.extend(sub)
                    continue
                except OSError as e:
                    # keep the clusters that were written whole before the failure (ENOSPC
                    # midway through a run), give the rest back
                    kept = min(getattr(e, "written", 0) // cb, len(sub))
                    f.free(fc + kept, len(sub) - kept)
                    self._write_failed(e, f, first_i + kept * cp, (len(sub) - kept) * cp, res)
                    sub = sub[:kept]
                for q2, (ocl, i) in enumerate(sub):
                    self._set(ocl, make_loc(f.number, fc + q2), self._full, free_later)
                    self._unlose(ocl * cp, cp)
        return retry, full[j:], writes

    def _write_partial(self, ocl: int, i: int, slot: int, k: int, pages: Sequence[Buffer],
                       res: list[PagerResult], free_later: list[int]) -> int:
        """Write k pages into slots slot..slot+k-1 of object cluster ocl: in place if it has a
        usable pool cluster, else in a new one. Returns the number of writes issued."""
        pool = self.pool
        cp, ps = self.cluster_pages, self.page_size
        cb = cp * ps
        files = self._files()
        bits = ((1 << k) - 1) << slot
        old_loc, old_mask = self.map.get(ocl)
        writes = 0
        if old_mask:
            f = files[loc_file(old_loc)]
            if not f.going_away and f.healthy():
                writes += 1
                try:
                    f.write(loc_cluster(old_loc) * cb + slot * ps, pages[i:i + k])
                except SwapFileDamaged as e:
                    pool._note_damage(f)
                    self._fail(str(e))
                except OSError as e:
                    # the covered slots are now undefined: the kernel's dirty pages are the copy
                    self._set(ocl, old_loc if old_mask & ~bits else NONE, old_mask & ~bits,
                              free_later)
                    self._write_failed(e, f, i, k, res)
                    return writes
                else:
                    self._set(ocl, old_loc, old_mask | bits, free_later)
                    self._unlose(ocl * cp + slot, k)
                    return writes
        for _attempt in range(2):
            runs = pool._allocate(1)
            if not runs:
                self._no_space(i, k, res)
                return writes
            f, c, _ = runs[0]
            writes += 1
            try:
                f.write(c * cb + slot * ps, pages[i:i + k])
            except SwapFileDamaged as e:
                pool._note_damage(f)
                self._fail(str(e))
                f.free(c, punch=False)
                continue
            except OSError as e:
                f.free(c)
                self._write_failed(e, f, i, k, res)
                return writes
            if old_mask and old_mask & ~bits:  # the rest of the old cluster was in a dead file
                for s in range(cp):
                    if (old_mask & ~bits) >> s & 1:
                        self.lost.add(ocl * cp + s)
            self._set(ocl, make_loc(f.number, c), bits, free_later)
            self._unlose(ocl * cp + slot, k)
            return writes
        for q in range(i, i + k):
            res[q] = ERROR
        return writes

    def _write_failed(self, e: OSError, f: SwapFile, i: int, k: int,
                      res: list[PagerResult]) -> None:
        transient = e.errno in TRANSIENT_WRITE_ERRNOS
        self._fail(f"{_errname(e)} writing {f.path}: {e.strerror}"
                   + ("; the pages stay dirty in memory" if transient else ""))
        if transient:
            self.pool._note_enospc()
        for q in range(i, i + k):
            res[q] = AGAIN if transient else ERROR

    def _no_space(self, i: int, k: int, res: list[PagerResult]) -> None:
        self._fail(f"swap pool {self.pool.directory} is full and cannot grow "
                   f"({self.pool.last_growth_failure or 'no free cluster'}); "
                   f"the pages stay dirty in memory")
        for q in range(i, i + k):
            res[q] = AGAIN

    # ---- discard / terminate ------------------------------------------------------------------

    def data_discard(self, offset: int, npages: int) -> None:
        if npages <= 0:
            return
        cp = self.cluster_pages
        with self.pool._lock:
            if self._dead():
                return
            p = offset // self.page_size
            end = p + npages
            free_later: list[int] = []
            while p < end:
                ocl, slot = divmod(p, cp)
                k = min(cp - slot, end - p)
                loc, mask = self.map.get(ocl)
                if mask:
                    bits = ((1 << k) - 1) << slot
                    if mask & bits:
                        left = mask & ~bits
                        self._set(ocl, loc if left else NONE, left, free_later)
                self._unlose(p, k)
                p += k
            if free_later:
                self.pool.space.free_locs(free_later)
            self.pool._note_change()

    def terminate(self) -> None:
        """The object died: free every cluster it holds (anonymous memory dies with its task)."""
        with self.pool._lock:
            if not self.alive:
                return
            self.alive = False
            if not self.pool.closed:
                free_later: list[int] = []
                files = self._files()
                for ocl, loc, mask in list(self.map):
                    files[loc_file(loc)].used_slots -= popcount(mask)
                    free_later.append(loc)
                if free_later:
                    self.pool.space.free_locs(free_later)
            self.map = SwapMap()
            self.lost.clear()
            self.pool._unregister(self)

    # ---- swapoff ------------------------------------------------------------------------------

    def transfer_from(self, f: SwapFile) -> int:
        """Move every cluster of this object that lives in `f` (going away) to other files: read
        it, write it to a newly allocated cluster, remap, free the old one. Pages that cannot be
        read (damaged file) are recorded as lost. Returns clusters moved; raises TransferFailed
        when no cluster is free elsewhere or a write fails (what was moved stays moved)."""
        cp, ps = self.cluster_pages, self.page_size
        cb = cp * ps
        entries = self.map.in_file(f.number)
        moved = 0
        bufs = [memoryview(bytearray(ps)) for _ in range(cp)]
        for ocl, loc, mask in entries:
            free_later: list[int] = []
            try:
                f.read(loc_cluster(loc) * cb, bufs)
            except (SwapFileDamaged, OSError):
                for s in range(cp):
                    if mask >> s & 1:
                        self.lost.add(ocl * cp + s)
                self._set(ocl, NONE, 0, free_later)
                self.pool.space.free_locs(free_later, punch=False)
                continue
            runs = self.pool.space.allocate(1)
            if not runs:
                raise TransferFailed(f"no free cluster outside {f.path}")
            nf, c, _ = runs[0]
            try:
                if mask == self._full:
                    nf.write(c * cb, bufs)
                else:
                    for s in range(cp):
                        if mask >> s & 1:
                            nf.write(c * cb + s * ps, bufs[s:s + 1])
            except OSError as e:
                nf.free(c)
                raise TransferFailed(f"{_errname(e)} writing {nf.path}: "
                                     f"{getattr(e, 'strerror', e)}") from e
            self._set(ocl, make_loc(nf.number, c), mask, free_later)
            self.pool.space.free_locs(free_later, punch=False)
            moved += 1
        return moved

    # ---- introspection ------------------------------------------------------------------------

    def pages_on_swap(self) -> int:
        return self.map.pages

    def __repr__(self) -> str:
        return (f"SwapPager(size={self.object_size}, {self.map.pages} pages in "
                f"{len(self.map)} clusters)")

