"""The pageout daemon (vm_pageout.c), step-driven: thresholds, the scan, clustered pageout via UPLs.

Owns: `PageoutDaemon` with the 10.4 thresholds (in pages; docs/mach-vm.md#the-pageout-daemon):
    free_reserved   = 6 * VM_PAGE_LAUNDRY_MAX(16) + ncpu = 96 + ncpu
    free_min        = reserved + 10 + F/100       (F = frames - reserved at start)
    free_target     = max(reserved + 15 + F/80, free_min + 5)
    inactive_target = (active + inactive) / 3, recomputed every pass
and `scan(target)`, one run of vm_pageout_scan (xnu-792): move pages from the active head to the
inactive tail (clearing the reference bit) while inactive < inactive_target; then take victims from
the inactive head: busy -> rotate; referenced -> reactivate (counted); else disconnect it from every
pmap; clean and not precious -> free it; dirty or precious -> page it out in a cluster: a UPL
(COPYOUT_FROM | RET_ONLY_DIRTY | FOR_PAGEOUT | NOBLOCK) over the 256 KB block of the object around
the victim takes the victim and its dirty, unreferenced, inactive neighbours; each contiguous run is
one data_return; OK pages are committed (freed, "Pageouts"), AGAIN/ERROR pages are aborted (kept
dirty and resident, reactivated, "Pageout failures"). Wired pages are never on these queues.
An anonymous object gets its pager from the kernel's default pager factory at its first pageout.

Also `evict_one()`: the reference policies' on-demand eviction (the policy picks the victim; a dirty
victim is paged out alone first) and `flush_object()` (write back dirty pages, keep them resident).

With wired accounting on (vmcore.wired), a scan that starts below free_min first garbage-collects
the wired kernel-resource pages no longer needed (Apple's lazy reclaim).

No threads: the kernel calls scan() when vm_page_grab's wake-up condition holds
(free < free_min, or free < free_target and inactive < inactive_target), and Kernel.pageout() runs
a forced scan. A scan stops at the target, or after examining 3x the pageable pages (the model's
stand-in for the daemon's throttle sleeps), so it always terminates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmcore.errors import ResourceShortage
from vmcore.pager import PagerResult
from vmcore.resident import ACTIVE, FREE, INACTIVE, WIRED
from vmcore.types import VM_SUPER_CLUSTER_BYTES
from vmcore.upl import (
    UPL, UPL_CLEAN_IN_PLACE, UPL_COPYOUT_FROM, UPL_FOR_PAGEOUT, UPL_NOBLOCK, UPL_RET_ONLY_DIRTY,
)

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel

VM_PAGE_LAUNDRY_MAX = 16
VM_PAGEOUT_BURST_ACTIVE_THROTTLE = 10000
#: model time charged per scan pass (the daemon's 10 ms idle recheck in xnu-792)
SCAN_TICK_S = 0.010


def thresholds(nframes: int, ncpu: int = 1) -> tuple[int, int, int]:
    """(free_reserved, free_min, free_target) for a memory of nframes pages (xnu-792's formulas)."""
    reserved = 6 * VM_PAGE_LAUNDRY_MAX + ncpu
    f = max(0, nframes - reserved)
    free_min = reserved + 10 + f // 100
    free_target = max(reserved + 15 + f // 80, free_min + 5)
    return reserved, free_min, free_target


class PageoutDaemon:
    def __init__(self, kernel: "Kernel", ncpu: int = 1):
        self.kernel = kernel
        self.free_reserved, self.free_min, self.free_target = thresholds(kernel.nframes, ncpu)
        self.running = False

    def inactive_target(self) -> int:
        pm = self.kernel.pm
        return (len(pm.active) + len(pm.inactive)) // 3

    def should_wake(self) -> bool:
        pm = self.kernel.pm
        free = len(pm.free)
        return free < self.free_min or (free < self.free_target
                                        and len(pm.inactive) < self.inactive_target())

    # ---- the scan -------------------------------------------------------------------------------
    def scan(self, target: int | None = None) -> int:
        """One vm_pageout_scan run; returns the number of frames freed."""
        if self.running:
            return 0
        k = self.kernel
        pm = k.pm
        stats = k.stats
        target = self.free_target if target is None else min(target, k.nframes)
        stats.scans += 1
        if hasattr(k.clock, "advance") and k._owns_clock:
            k.clock.advance(SCAN_TICK_S)
        self.running = True
        freed = 0
        active, inactive, free = pm.active, pm.inactive, pm.free
        busy, referenced, dirty, precious = pm.busy_mv, pm.ref_mv, pm.dirty_mv, pm.precious_mv
        pv, owner, pidx, wc, tracked = pm.pv, pm.owner, pm.pidx_mv, pm.wc_mv, k.tracked
        q_mv, objid, special = pm.q_mv, pm.objid_mv, pm.special
        examined = 0
        limit = 3 * (len(active) + len(inactive)) + 16
        try:
            wa = k.wired_acct
            if wa is not None and len(free) < self.free_min:
                # Memory Management in Mac OS X: wired memory is "garbage collected when the free-page count falls
                # below the threshold that triggers page out events"
                freed += wa.collect()
            while len(free) < target and examined < limit:
                # 1. active -> inactive
                itarget = (len(active) + len(inactive)) // 3
                moved = 0
                while (len(inactive) < itarget or not inactive) and active \
                        and moved < VM_PAGEOUT_BURST_ACTIVE_THROTTLE:
                    f = next(iter(active))
                    moved += 1
                    if busy[f]:
                        active.move_to_end(f)
                        examined += 1
                        if examined >= limit:
                            break
                        continue
                    # pm.deactivate(f), inline (f is at the active head)
                    del active[f]
                    referenced[f] = False
                    inactive[f] = None
                    q_mv[f] = INACTIVE
                    stats.deactivations += 1
                if not inactive:
                    break
                # 4. victim from the inactive head
                f = next(iter(inactive))
                examined += 1
                if busy[f]:
                    inactive.move_to_end(f)
                    continue
                if referenced[f]:
                    pm.activate(f)
                    stats.reactivations += 1
                    continue
                # pmap_disconnect(f), inline
                lst = pv[f]
                if lst:
                    for e, s in lst:
                        e.pmv[s] = -1
                        e.pwv[s] = False
                    pv[f] = None
                    k.pmap_epoch += 1
                if not dirty[f] and not precious[f]:
                    # page_free(f), inline (its translations are gone)
                    obj = owner[f]
                    if obj is not None:
                        p = pidx[f]
                        pages = obj.pages
                        if pages.get(p) == f:
                            del pages[p]
                    if tracked[f]:
                        tracked[f] = False
                        k.ntracked -= 1
                        k.policy.removed(f)
                    if special[f]:
                        if wc[f]:
                            k.nwired -= 1
                        pm.release(f)
                    else:  # pm.release(f), inline: not wired, no busy/absent/precious/... bits;
                        del inactive[f]  # f is the inactive head
                        q_mv[f] = FREE
                        referenced[f] = False
                        dirty[f] = False
                        objid[f] = -1
                        owner[f] = None
                        free.append(f)
                    stats.clean_frees += 1
                    freed += 1
                    continue
                freed += self.pageout_cluster(f)
        finally:
            self.running = False
        return freed

    def _ensure_pager(self, obj) -> bool:
        if obj.pager is None:
            if not obj.internal:
                return False
            obj.pager = self.kernel.default_pager(obj.size)
        return True

    def pageout_cluster(self, f: int, single: bool = False) -> int:
        """vm_pageout_cluster + the pager's data_return for victim f. Returns frames freed."""
        k = self.kernel
        pm = k.pm
        obj = pm.owner[f]
        p = int(pm.pidx[f])
        stats = k.stats
        if not self._ensure_pager(obj):
            stats.pageout_failures += 1
            pm.activate(f)
            return 0
        if single:
            lo, hi = p, p + 1
        else:
            span = max(1, VM_SUPER_CLUSTER_BYTES // k.page_size)
            lo = p - p % span
            hi = min(lo + span, obj.npages) if obj.internal else lo + span
            hi = max(hi, p + 1)
        upl = UPL(k, obj, lo * k.page_size, (hi - lo) * k.page_size,
                  UPL_COPYOUT_FROM | UPL_RET_ONLY_DIRTY | UPL_FOR_PAGEOUT | UPL_NOBLOCK, anchor=p)
        freed = 0
        ps = k.page_size
        try:
            for first, idxs in upl.runs():
                bufs = [memoryview(pm.frames[upl.frames[i]]) for i in idxs]
                stats.pageout_requests += 1
                res = obj.pager_return(first, bufs)
                for i, r in zip(idxs, res):
                    fr = upl.frames[i]
                    if r == PagerResult.OK:
                        upl.commit_range(i * ps, ps)
                        freed += 1
                    else:
                        upl.abort_range(i * ps, ps)
                        stats.pageout_failures += 1
                        k.last_pageout_error = obj.pager.last_error or r.name
                        if pm.wire_count[fr] == 0:
                            pm.activate(fr)
        finally:
            upl.close()
        return freed

    def flush_object(self, obj, start: int = 0, end: int | None = None) -> int:
        """Write back the dirty pages of obj[start:end) and keep them resident (CLEAN_IN_PLACE,
        as msync and object termination do). Returns pages written; failures are counted."""
        k = self.kernel
        pm = k.pm
        end = obj.npages if end is None else end
        dirty = sorted(p for p, f in obj.pages.items()
                       if start <= p < end and (pm.dirty[f] or pm.precious[f]))
        if not dirty or not self._ensure_pager(obj):
            return 0
        written = 0
        ps = k.page_size
        i = 0
        while i < len(dirty):
            lo = dirty[i]
            hi = lo + 1
            while i + 1 < len(dirty) and dirty[i + 1] == hi and hi - lo < 256:
                hi += 1
                i += 1
            i += 1
            # NOBLOCK: a kernel operation cannot wait inside the model (no threads); a page an
            # open UPL holds busy is its holder's to write back
            upl = UPL(k, obj, lo * ps, (hi - lo) * ps,
                      UPL_COPYOUT_FROM | UPL_RET_ONLY_DIRTY | UPL_CLEAN_IN_PLACE | UPL_NOBLOCK)
            try:
                for first, idxs in upl.runs():
                    bufs = [memoryview(pm.frames[upl.frames[j]]) for j in idxs]
                    k.stats.pageout_requests += 1
                    res = obj.pager_return(first, bufs)
                    for j, r in zip(idxs, res):
                        if r == PagerResult.OK:
                            upl.commit_range(j * ps, ps)
                            written += 1
                        else:
                            upl.abort_range(j * ps, ps)
                            k.stats.pageout_failures += 1
                            k.last_pageout_error = obj.pager.last_error or r.name
            finally:
                upl.close()
        return written

    # ---- reference policies -------------------------------------------------------------------
    def evict_one(self) -> None:
        """Free one frame chosen by the replacement policy (a dirty victim is paged out first)."""
        k = self.kernel
        pm = k.pm
        pol = k.policy
        tracked, owner, special = k.tracked, pm.owner, pm.special
        attempts = k.ntracked + 1
        while attempts > 0 and k.ntracked > 0:
            attempts -= 1
            v = pol.select_victim()
            tracked[v] = False
            k.ntracked -= 1
            obj = owner[v]
            if obj is None or (special[v] and (pm.busy_mv[v] or pm.wc_mv[v])):
                k.policy_insert(v)
                continue
            # pmap_disconnect(v), inline
            pv = pm.pv
            lst = pv[v]
            if lst:
                for e, s in lst:
                    e.pmv[s] = -1
                    e.pwv[s] = False
                pv[v] = None
                k.pmap_epoch += 1
            if pm.dirty_mv[v] or (special[v] and pm.precious_mv[v]):
                if self.pageout_cluster(v, single=True) == 0:
                    k.policy_insert(v)
                    continue
            else:
                # page_free(v), inline: no translation left, untracked, not wired (checked above)
                p = pm.pidx_mv[v]
                pages = obj.pages
                if pages.get(p) == v:
                    del pages[p]
                if special[v]:
                    pm.release(v)
                else:  # pm.release(v), inline for a frame with no busy/absent/precious/... bits
                    q_mv = pm.q_mv
                    q = q_mv[v]
                    if q == ACTIVE:
                        del pm.active[v]
                    elif q == INACTIVE:
                        del pm.inactive[v]
                    elif q == WIRED:
                        del pm.wired[v]
                    q_mv[v] = FREE
                    pm.ref_mv[v] = False
                    pm.dirty_mv[v] = False
                    pm.objid_mv[v] = -1
                    owner[v] = None
                    pm.free.append(v)
            k.stats.evictions += 1
            return
        raise ResourceShortage(
            "no page can be evicted: every resident page is wired, busy, or its pager refused it"
            + (f" ({k.last_pageout_error})" if k.last_pageout_error else ""))
