"""Prefetch: bring a range of an object's absent pages in ahead of use (launch-profile seeding).

Owns: `object_prefetch(kernel, obj, first, npages, reserve=None) -> list[int]`, the model side of
eager and lazy seeding: a UPL with UPL_RET_ONLY_ABSENT over [first, first+npages)
of `obj` (resident pages are holes: never read again, never disturbed), ONE pager request per
contiguous run of held pages (one run when the caller filtered resident pages out first, as the
seeding code does), each page the pager returns OK committed as a *clustered speculative* page:
reference bit clear, on the inactive queue, `clustered` set so its first touch counts as a pagein
and a soft fault (exactly like the extra pages of a fault's pagein cluster, vmcore.fault).
ABSENT / BAD / ERROR pages are aborted (freed): prefetch never fails a task, a later fault on such
a page reports the error the usual way.

Memory: a prefetch never makes the pageout daemon evict to make room: it stops (returns what it
brought in so far) when taking the run would push free memory below `reserve` pages (default: the
kernel's free_target plus the run). Under a reference policy the pages are handed to the policy
as inserted.

Who calls it: the wiring layer's seeding (vmcore.lab_profiles). Model-side only: imports no
backing store; the object's pager does the I/O.

Counters: each pager request counts in "Pagein requests"; `kernel.prefetch_counts` (a dict made on
first use: "requests", "pages") counts prefetch requests and pages landed (vmcore.lab adds them to
vm_stat). A prefetched page's first touch is counted as a pagein by the fault path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmcore.errors import InvalidArgument
from vmcore.pager import PagerResult
from vmcore.upl import MAX_UPL_TRANSFER, UPL, UPL_NO_SYNC, UPL_RET_ONLY_ABSENT

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel


def object_prefetch(k: "Kernel", obj, first: int, npages: int, reserve: int | None = None) -> list[int]:
    """Page in the absent pages of obj[first:first+npages] (see module doc). Returns the page
    indexes that landed (now resident, speculative)."""
    if not isinstance(first, int) or not isinstance(npages, int) or first < 0 or npages <= 0:
        raise InvalidArgument(f"prefetch range first={first!r} npages={npages!r} is not a page range")
    if obj.pager is None or not obj.alive:
        return []
    ps = k.page_size
    landed: list[int] = []
    pos = first
    end = first + npages
    stats = k.stats
    counts = k.__dict__.setdefault("prefetch_counts", {"requests": 0, "pages": 0})
    while pos < end:
        n = min(end - pos, MAX_UPL_TRANSFER)
        # skip leading resident pages so the UPL starts at an absent page
        while n > 0 and pos in obj.pages:
            pos += 1
            n = min(end - pos, MAX_UPL_TRANSFER)
        if n <= 0:
            break
        if k.policy is None:
            floor = (k.free_target if reserve is None else reserve) + n
            if len(k.pm.free) < floor:
                break
        upl = UPL(k, obj, pos * ps, n * ps, UPL_RET_ONLY_ABSENT | UPL_NO_SYNC, _grab_exempt=True)
        try:
            for start, idxs in upl.runs():
                bufs = [memoryview(k.pm.frames[upl.frames[i]]) for i in idxs]
                stats.pagein_requests += 1
                counts["requests"] += 1
                res = obj.pager_request(start, bufs)
                for i, r in zip(idxs, res):
                    if r == PagerResult.OK:
                        upl.commit_range(i * ps, ps, _speculative=True)
                        landed.append(upl.first + i)
                    else:
                        upl.abort_range(i * ps, ps)
        finally:
            upl.close()
        pos += n
    counts["pages"] += len(landed)
    return landed


# ---- 10.5-style behaviour clustering (an explicit kernel option) ---------------------------------
#: vm_object_cluster_size's default pre-heat window (xnu-1228: 32 pages while an object is young)
PRE_HEAT_PAGES = 32
#: a detected sequential run of at least this many pages switches DEFAULT to run-based pre-heat
SEQ_RUN_MIN = 3


def behavior_cluster(k: "Kernel", task, oe, obj, p: int, lo_lim: int, hi_lim: int):
    """xnu-1228 `vm_object_cluster_size` for file objects, a hook for
    vmcore.fault._cluster (`kernel.cluster_hook`, set by vmcore.lab's `cluster="behavior"`);
    returns the [lo, hi) page range to request around page p, or None for anonymous objects (the
    10.4 rule then applies). RANDOM never gets here (fault: no cluster).

      SEQUENTIAL  run + 1 pages ahead only        RSEQNTL  run + 1 pages behind only
      DEFAULT     a sequential run of >= 3 pages: run + 1 pages in the run's direction;
                  otherwise a PRE_HEAT_PAGES window aligned to its size around the fault,
                  halved while free memory is below the free target
    The run is detected per object from hard faults: a fault at the page right after the previous
    request (or right before it) extends the run by that request's length. Capped at
    MAX_UPL_TRANSFER pages and by free frames; never bridges a resident page, never goes past EOF
    or outside the map entry. Simplification: XNU's adaptive 128/64/32/16 sizing by the fraction of
    unused pre-heated pages is not modelled (always 32)."""
    if obj.internal or obj.pager is None:
        return None
    from vmcore.types import Behavior

    ps = k.page_size
    lo_lim = max(lo_lim, 0)
    psize = obj.pager.size()
    if psize is not None:
        hi_lim = min(hi_lim, (psize + ps - 1) // ps - obj.paging_offset)
    runs = k.__dict__.setdefault("_seq_runs", {})
    plo, phi, run = runs.get(obj.id, (-2, -2, 0))
    if p == phi:
        run = run + (phi - plo) if run > 0 else (phi - plo)
    elif p == plo - 1:
        run = run - (phi - plo) if run < 0 else -(phi - plo)
    else:
        run = 0
    b = oe.behavior
    ahead = behind = 0
    if b == Behavior.SEQUENTIAL:
        ahead = max(run, 0) + 1
    elif b == Behavior.RSEQNTL:
        behind = max(-run, 0) + 1
    elif abs(run) >= SEQ_RUN_MIN:
        if run > 0:
            ahead = run + 1
        else:
            behind = -run + 1
    else:
        size = PRE_HEAT_PAGES
        if len(k.pm.free) < k.free_target:
            size //= 2
        base = p - p % size
        behind, ahead = p - base, base + size - p - 1
    cap = min(MAX_UPL_TRANSFER - 1, len(k.pm.free) - k.free_min - 1)
    pages = obj.pages
    hi = p + 1
    lo = p
    added = 0
    while added < cap and hi - p - 1 < ahead and hi < hi_lim and hi not in pages:
        hi += 1
        added += 1
    while added < cap and p - lo < behind and lo - 1 >= lo_lim and (lo - 1) not in pages:
        lo -= 1
        added += 1
    runs[obj.id] = (lo, hi, run)
    return lo, hi
