"""Prefetch: bring a range of an object's absent pages in ahead of use (launch-profile seeding).

Owns: `object_prefetch(kernel, obj, first, npages, reserve=None) -> list[int]`, the model side of
eager and lazy seeding (issue 5 item 6): a UPL with UPL_RET_ONLY_ABSENT over [first, first+npages)
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
from vmcore.upl import MAX_UPL_TRANSFER, UPL, UPL_RET_ONLY_ABSENT

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
        upl = UPL(k, obj, pos * ps, n * ps, UPL_RET_ONLY_ABSENT, _grab_exempt=True)
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
