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
        ps, cp = self.page_size, self.cluster_pages
        n = len(pages)
        if offset % ps or offset < 0 or not n:
            raise ValueError(f"unaligned offset {offset} or empty page list")
        pool = self.pool
        with pool._lock:
            if pool.closed or not self.alive:
                self._fail(self._dead())
                return [ERROR] * n
            cb = ps * cp
            p0 = offset // ps
            # fast path: the whole request lies in consecutive, fully valid clusters of one file
            first_ocl = p0 // cp
            loc = self.map.contiguous(first_ocl, (p0 + n - 1) // cp - first_ocl + 1, self._full)
            if loc != NONE:
                f = pool.space.files[loc >> 32]
                try:
                    f.read((loc & 0xFFFFFFFF) * cb + (p0 - first_ocl * cp) * ps, pages)
                except SwapFileDamaged as e:
                    self._fail(str(e))
                    pool._note_damage(f)
                    pool._note_pagein(0, 1, n)
                    return [ERROR] * n
                except OSError as e:
                    self._fail(f"{_errname(e)} reading {f.path}: {e.strerror}")
                    pool._note_pagein(0, 1, n)
                    return [ERROR] * n
                pool._note_pagein(n, 1, 0)
                return [OK] * n
            get = self.map.get
            lost = self.lost
            res = [ABSENT] * n
            # runs of pages whose slots are consecutive in one file: [fno, byte offset, i, count]
            runs: list[list[int]] = []
            cur = None
            i = 0
            while i < n:  # one object cluster at a time
                ocl, slot = divmod(p0 + i, cp)
                k = cp - slot if cp - slot < n - i else n - i
                loc, mask = get(ocl)
                bits = ((1 << k) - 1) << slot
                if mask & bits == bits:  # the common case: every page of the segment is valid
                    fno = loc >> 32
                    off = (loc & 0xFFFFFFFF) * cb + slot * ps
                    if cur is not None and cur[0] == fno and cur[1] + cur[3] * ps == off:
                        cur[3] += k
                    else:
                        cur = [fno, off, i, k]
                        runs.append(cur)
                else:
                    for q in range(k):
                        if (mask >> (slot + q)) & 1:
                            off = (loc & 0xFFFFFFFF) * cb + (slot + q) * ps
                            if cur is not None and cur[0] == loc >> 32 and \
                                    cur[1] + cur[3] * ps == off and cur[2] + cur[3] == i + q:
                                cur[3] += 1
                            else:
                                cur = [loc >> 32, off, i + q, 1]
                                runs.append(cur)
                        else:
                            cur = None
                            if lost and p0 + i + q in lost:
                                res[i + q] = ERROR
                                self._fail(f"page {p0 + i + q} of this object was lost with a "
                                           f"damaged swap file")
                i += k
            files = self._files()
            got = 0
            for fno, off, first, count in runs:
                f = files[fno]
                try:
                    f.read(off, pages[first:first + count])
                except SwapFileDamaged as e:
                    self._fail(str(e))
                    pool._note_damage(f)
                    r = ERROR
                except OSError as e:
                    self._fail(f"{_errname(e)} reading {f.path}: {e.strerror}")
                    r = ERROR
                else:
                    r = OK
                    got += count
                res[first:first + count] = [r] * count
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
            # the range is: a partial head cluster, a span of whole clusters, a partial tail
            partial: list[tuple[int, int, int, int]] = []  # (ocl, index, first slot, count)
            spans: list[tuple[int, int, int]] = []  # (first ocl, index of its first page, count)
            p0 = offset // self.page_size
            ocl, slot = divmod(p0, cp)
            i = 0
            if slot:
                k = min(cp - slot, n)
                partial.append((ocl, 0, slot, k))
                i = k
                ocl += 1
            nfull = (n - i) // cp
            if nfull:
                spans.append((ocl, i, nfull))
                i += nfull * cp
                ocl += nfull
            if i < n:
                partial.append((ocl, i, 0, n - i))
            free_later: list[int] = []
            writes = 0
            for _attempt in range(2):  # a second pass only for clusters hit by a damaged file
                if not spans:
                    break
                spans, unplaced, w = self._write_fresh(spans, pages, res, free_later)
                writes += w
                # no free cluster even after trying to grow: rewrite in place where possible
                for ocl, i, count in unplaced:
                    for q in range(count):
                        partial.append((ocl + q, i + q * cp, 0, cp))
            for ocl, i, count in spans:  # hit by damaged files twice: one cluster at a time
                for q in range(count):
                    partial.append((ocl + q, i + q * cp, 0, cp))
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

    def _write_fresh(self, spans: list[tuple[int, int, int]], pages: Sequence[Buffer],
                     res: list[PagerResult], free_later: list[int]):
        """Write spans of whole object clusters (first ocl, first page index, count) to freshly
        allocated pool clusters, one pwritev per allocated run. Returns (spans to retry because
        their new file turned out damaged, spans that got no pool cluster, writes issued)."""
        pool = self.pool
        cp, ps = self.cluster_pages, self.page_size
        cb = cp * ps
        runs = pool._allocate(sum(s[2] for s in spans))
        retry: list[tuple[int, int, int]] = []
        writes = 0
        spans = list(spans)
        for f, fc, count in runs:
            while count:
                ocl, i, left = spans[0]
                k = min(count, left)
                if k == left:
                    spans.pop(0)
                else:
                    spans[0] = (ocl + k, i + k * cp, left - k)
                count -= k
                piece_fc = fc
                fc += k
                writes += 1
                try:
                    f.write(piece_fc * cb, pages[i:i + k * cp])
                except SwapFileDamaged as e:
                    pool._note_damage(f)
                    self._fail(str(e))
                    f.free(piece_fc, k, punch=False)
                    retry.append((ocl, i, k))
                    continue
                except OSError as e:
                    # keep the clusters written whole before the failure (ENOSPC midway through
                    # a run), give the rest back
                    kept = min(getattr(e, "written", 0) // cb, k)
                    f.free(piece_fc + kept, k - kept)
                    self._write_failed(e, f, i + kept * cp, (k - kept) * cp, res)
                    k = kept
                    if not k:
                        continue
                self._set_run(ocl, k, f, piece_fc, free_later)
        return retry, spans, writes

    def _set_run(self, ocl: int, count: int, f: SwapFile, fc: int, free_later: list[int]) -> None:
        """Map object clusters ocl.. ocl+count-1 to clusters fc.. of file f, all pages valid."""
        cp = self.cluster_pages
        files = self._files()
        for old_loc, old_mask in self.map.set_run(ocl, count, make_loc(f.number, fc), self._full):
            files[old_loc >> 32].used_slots -= popcount(old_mask)
            free_later.append(old_loc)
        f.used_slots += count * cp
        if self.lost:
            self._unlose(ocl * cp, count * cp)

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

