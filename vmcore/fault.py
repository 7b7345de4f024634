"""Page faults (vm_fault.c): resolve one access that missed the pmap.

Owns: `vm_fault(kernel, task, addr, write)` and its helpers: the map lookup (through submaps), the
protection check, resolving needs_copy with a shadow object, the walk down the shadow chain, the
pagein through the object's pager (one UPL and one pager request per cluster), zero-fill, the
copy-on-write copy-up, entering the translation in the pmap, deactivate-behind, the counters and the
fault event; and `zero_fill_fast`, the same outcome for the commonest fault (a zero fill in an
unshadowed object no pager can hold the page of) without the general path's layers, which
Task.access calls directly for a miss and vm_fault tries first (it does nothing and returns -1 for
any other fault). Performance (scripts/bench_vmcore.py): single-frame metadata goes through the
memoryview aliases of vmcore.resident / vmcore.map, never numpy scalars.

Kinds (each counted; docs/mach-vm.md#faults, "Paging Virtual Memory In", xnu-792):
  soft       the page is resident in some object of the chain: map it (an inactive page is
             reactivated, "Pages reactivated"); the first touch of a page that came in by
             clustering counts as a pagein
  hard       the pager had the page: "Pageins"; the page goes on the active queue (Memory Management in Mac OS X)
  zero fill  no object in the chain has it: a zero page in the top object ("Pages zero filled")
  cow        a write found the page in a backing object: copy it up ("Pages copy-on-write")
A write to an object that has a copy object (vm_copy's delayed copy) first pushes the page as it
was into the copy object (`copy_push`, "Copy-object pushes"); until a page is pushed, its
translations in the source do not allow writes.
Every call counts one "Translation fault". Errors: InvalidAddress (unmapped, or the pager says
BAD), ProtectionFailure (access not allowed by the entry), PagerIOError (pager ERROR),
ResourceShortage (no frame could be freed).

Pagein clustering (mach policy only, xnu-792's tws_build_cluster), for every pager (Mac OS X
pagers and working set detection: "This occurs for all pagers"): grow forward then backward up to 256 KB, never bridging a resident page or
a page the pager is known not to have, within the map entry; the first `pre_heat` pages are added
blindly (vnode objects in a task's first 45 s of model time, unless a launch profile seeded it:
8/4/2 pages by file size), further pages only when the working set says this task touched them,
or the page one further out, before. The working set is the kernel's TaskWorkingSets
(vmcore.workingset), which every fault here feeds, or another hook the wiring layer sets
(`kernel.working_set`). RANDOM behaviour disables clustering. Reference policies never cluster.
Deactivate-behind follows 5.2 (sequential / rseqntl / default runs of 256).

Submaps: a nested entry (use_pmap true) enters its translation in the submap's shared pmap, so
every task mapping the submap sees it; such a translation allows writes only if every nested parent
does. A copy-on-write submap entry (use_pmap false, needs_copy: the shared region's data) maps the
submap's pages read-only, and its first write turns the submap entry under the address into a
private needs_copy entry of the task (`submap_cow_extract`), then faults again: the write copies
the page into the task's own shadow object.

Caveats: the frame found for a copy-up or a pagein is held busy while frames are grabbed, so the
pageout scan cannot steal it; a reference policy that picks a busy frame is handed it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmcore.errors import InvalidAddress, PagerIOError, ProtectionFailure
from vmcore.pager import PagerKind, PagerResult
from vmcore.resident import ACTIVE, INACTIVE
from vmcore.types import (
    TWS_MAX_CLUSTER_BYTES, VM_DEFAULT_BEHIND, VM_PROT_READ, VM_PROT_WRITE, Behavior, FaultEvent,
    FaultKind, prot_str,
)
from vmcore.upl import UPL, UPL_NO_SYNC, UPL_RET_ONLY_ABSENT

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel

#: model time per fault when the kernel owns its clock (a hard fault adds a disk access)
FAULT_TICK_S = 10e-6
HARD_FAULT_TICK_S = 1e-3
#: the launch window of TWS (xnu-792): blind read-ahead for file objects only while younger
LAUNCH_WINDOW_S = 45.0


def resolve_entry(task, addr: int, write: bool):
    """Map lookup + protection check. Returns (top entry, object entry, slot, entry slot, prot)."""
    e = task.map.lookup(addr)
    if e is None:
        raise InvalidAddress(f"address {addr:#x} is not mapped in task {task.name!r}")
    shift = task.kernel.page_shift
    slot = (addr - e.start) >> shift
    prot = e.protection
    oe, eslot = e, slot
    if e.is_submap:
        saddr = e.offset + (addr - e.start)
        oe = e.object.lookup(saddr)
        if oe is None:
            raise InvalidAddress(
                f"address {addr:#x} (offset {saddr:#x} in submap {e.object.name!r}) is not mapped")
        prot &= oe.protection
        eslot = (saddr - oe.start) >> shift
    need = VM_PROT_WRITE if write else VM_PROT_READ
    if not prot & need:
        raise ProtectionFailure(
            f"{'write' if write else 'read'} at {addr:#x} in task {task.name!r}: region "
            f"{e.start:#x}-{e.end:#x} allows {prot_str(prot)}")
    return e, oe, slot, eslot, prot


def vm_fault(k: "Kernel", task, addr: int, write: bool, e=None) -> int:
    """Resolve a fault at addr; return the frame now mapped there. `e`: the map entry holding
    addr when the caller has just looked it up (saves a second lookup), else None."""
    if e is None:
        e = task.map.lookup(addr)
    if e is not None and not e.is_submap:  # the common case, inline
        f = zero_fill_fast(k, task, e, (addr - e.start) >> k.page_shift, addr, write)
        if f >= 0:
            return f
        oe = e
        slot = eslot = (addr - e.start) >> k.page_shift
        prot = e.protection
        if not prot & (VM_PROT_WRITE if write else VM_PROT_READ):
            resolve_entry(task, addr, write)  # raises the ProtectionFailure
        pe, pslot = e, slot
    else:
        e, oe, slot, eslot, prot = resolve_entry(task, addr, write)
        pe, pslot = e, slot
        if e.is_submap:
            if e.needs_copy:
                if write:  # copy-on-write submap (use_pmap false): take a private copy
                    submap_cow_extract(k, task.map, e, addr)
                    return vm_fault(k, task, addr, write)
                prot &= ~VM_PROT_WRITE  # reads share the submap's page; the write must fault
            elif e.use_pmap:  # nested: the translation goes into the submap's shared pmap
                pe, pslot = e.object, (e.offset >> k.page_shift) + slot
                if prot & VM_PROT_WRITE and not nested_writable(e.object, pslot):
                    prot &= ~VM_PROT_WRITE
    stats = k.stats
    stats.faults += 1
    if k._owns_clock:
        k.clock._now += FAULT_TICK_S
    pm = k.pm
    shift = k.page_shift
    if oe.needs_copy and write:
        k.entry_resolve_needs_copy(oe)
    top = oe.object
    pidx = (oe.offset >> shift) + eslot
    # ---- walk the shadow chain ----
    obj = top
    p = pidx
    level = 0
    kind = FaultKind.SOFT
    f = top.pages.get(pidx)
    if f is None:
        window_lo = pidx  # the entry's window in the current object's page space
        while True:
            f = obj.pages.get(p)
            if f is not None:
                break
            if p in obj.error_pages:
                raise PagerIOError(f"page at offset {p << shift:#x} of object {obj.id} had an I/O error")
            if obj.pager is not None and obj.pager_may_have(p):
                f = _pagein(k, task, oe, obj, p, window_lo - eslot, window_lo - eslot + oe.npages, addr)
                if f is not None:
                    kind = FaultKind.HARD
                    break
            nxt = obj.shadow
            if nxt is None:
                break
            p += obj.shadow_offset
            window_lo += obj.shadow_offset
            obj = nxt
            level += 1
    if write and top.copy is not None:
        copy_push(k, top, pidx, f)  # the copy object keeps the page as it is before this write
    if f is None:
        # zero fill, in the top object
        f = k.page_grab()
        pm.views[f][:] = pm.zero_page
        k.page_insert(top, pidx, f)
        if k.policy is not None:
            k.policy_insert(f)
        obj, p, level = top, pidx, 0
        kind = FaultKind.ZERO_FILL
        stats.zero_fill += 1
    elif kind is FaultKind.SOFT:
        stats.soft_faults += 1
        if pm.special[f] and pm.clustered[f]:
            # the first touch of a page that came in by clustering: a pagein, and the page goes
            # active for the first time (not a reactivation)
            pm.clustered[f] = False
            stats.pageins += 1
            if pm.q_mv[f] == INACTIVE:
                pm.activate(f)
        elif pm.q_mv[f] == INACTIVE:
            pm.activate(f)
            stats.reactivations += 1
        if k.policy is not None and k.tracked[f]:
            k.policy_hit(f)
    if write and level > 0:
        f = _copy_up(k, oe, e, slot, top, pidx, f)
        obj, p, level = top, pidx, 0
        stats.cow_faults += 1
        kind_out = FaultKind.COW
    else:
        kind_out = kind
    if write:
        pm.dirty_mv[f] = True
    pm.ref_mv[f] = True
    writable = level == 0 and bool(prot & VM_PROT_WRITE) and not oe.needs_copy and (
        top.copy is None or copy_has(top, pidx))
    k.pmap_enter(pe, pslot, f, writable)
    tws = k.tws
    if tws is not None and task is not None:  # the working set: this task touched obj's page p
        tws.insert(task, obj.id, p)
    sink = k._sink
    if sink is not None:
        base, boff = obj, p
        while base.shadow is not None:
            boff += base.shadow_offset
            base = base.shadow
        sink(FaultEvent(task, obj.id, p << shift, kind_out, addr & ~(k.page_size - 1), write,
                        base.id, boff << shift))
    if k.policy is None:
        _deactivate_behind(k, e, slot)
    return f


def zero_fill_fast(k: "Kernel", task, e, slot: int, addr: int, write: bool) -> int:
    """vm_fault's most common case, straight through, or -1 (and nothing done) when the fault is
    not that case. `e` is the plain (not submap) map entry holding addr, `slot` addr's page in it.

    The case: the entry allows the access and has no copy to resolve; its object has no shadow,
    no error pages, and no pager that could hold the page (none yet, or an anonymous one whose
    existence map lacks it), and does not hold the page: a zero fill in that object. Exactly what
    the general path does for it (same counters, same order of clock ticks, same queue, policy
    and pmap updates), with the calls inlined and no chain walk. Task.access calls it directly
    for a miss (skipping _touch and vm_fault's lookup)."""
    if not e.protection & (VM_PROT_WRITE if write else VM_PROT_READ) or (write and e.needs_copy):
        return -1
    top = e.object
    if top.shadow is not None or top.error_pages or (write and top.copy is not None):
        return -1
    pidx = (e.offset >> k.page_shift) + slot
    if pidx in top.pages or (top.pager is not None and (
            not top.internal or pidx in top.existence)):
        return -1
    stats = k.stats
    stats.faults += 1
    if k._owns_clock:
        k.clock._now += FAULT_TICK_S
    pm = k.pm
    pol = k.policy
    if pol is None:
        # vm_page_grab: the daemon's wake-up test and the reserve check inline; when either
        # holds, page_grab itself runs (the scan, or the ResourceShortage)
        free = pm.free
        n = len(free)
        d = k.pageout_daemon
        if n < d.free_min or n <= d.free_reserved or (
                n < d.free_target and len(pm.inactive) < (len(pm.active) + len(pm.inactive)) // 3):
            f = k.page_grab()
        else:
            f = free.pop()
    else:
        free = pm.free
        if not free:
            k.pageout_daemon.evict_one()
        f = free.pop()
    pm.views[f][:] = pm.zero_page
    # page_insert
    top.pages[pidx] = f
    pm.owner[f] = top
    pm.objid_mv[f] = top.id
    pm.pidx_mv[f] = pidx
    pm.active[f] = None
    pm.q_mv[f] = ACTIVE
    if pol is not None:  # policy_insert
        tracked = k.tracked
        if not tracked[f] and not pm.wc_mv[f]:
            tracked[f] = True
            k.ntracked += 1
            pol.inserted(f)
    stats.zero_fill += 1
    if write:
        pm.dirty_mv[f] = True
    pm.ref_mv[f] = True
    writable = bool(e.protection & VM_PROT_WRITE) and not e.needs_copy and top.copy is None
    # pmap_enter
    pmv = e.pmv
    old = pmv[slot]
    if old == f:
        e.pwv[slot] = writable
    else:
        if old >= 0:
            k.pv_remove(old, e, slot)
        pmv[slot] = f
        e.pwv[slot] = writable
        pv = pm.pv
        lst = pv[f]
        if lst is None:
            pv[f] = [(e, slot)]
        else:
            lst.append((e, slot))
    if k.tws is not None:  # TaskWorkingSets.insert, through the entry's cached page set
        if e.tws_obj is top:
            e.tws_set.add(pidx)
        else:
            k.tws.insert(task, top.id, pidx)
            e.tws_set = k.tws.touched(task, top)
            e.tws_obj = top
    sink = k._sink
    if sink is not None:
        off = pidx << k.page_shift
        sink(FaultEvent(task, top.id, off, FaultKind.ZERO_FILL, addr & ~(k.page_size - 1), write,
                        top.id, off))
    if pol is None:
        _deactivate_behind(k, e, slot)
    return f


def nested_writable(sub, gslot: int) -> bool:
    """A shared (nested) translation may allow writes only if every nested parent mapping that
    slot allows writes (the hit path trusts the translation)."""
    off = gslot * sub.page_size
    for pe in sub.parents:
        if pe.use_pmap and pe.offset <= off < pe.offset + (pe.end - pe.start) \
                and not pe.protection & VM_PROT_WRITE:
            return False
    return True


def submap_cow_extract(k: "Kernel", vmmap, e, addr: int):
    """A write through a copy-on-write submap entry (use_pmap false, needs_copy): the part of e
    covered by the submap entry under addr becomes a private entry of vmmap over that entry's
    object, needs_copy, so the write copies the page into the task's own shadow object
    (vm_map_lookup_locked's cow_sub_map_parent path). A true_share object (anonymous memory of a
    named region, which other tasks may write) is copied eagerly instead, as fork does.
    Returns the new entry."""
    from vmcore.map import VMMapEntry
    from vmcore.types import Inherit

    sub = e.object
    saddr = e.offset + (addr - e.start)
    se = sub.lookup(saddr)
    if se is None:
        raise InvalidAddress(f"address {addr:#x} (offset {saddr:#x} in submap {sub.name!r}) "
                             f"is not mapped")
    lo = max(e.start, e.start + se.start - e.offset)
    hi = min(e.end, e.start + se.end - e.offset)
    vmmap.clip(k, lo)
    vmmap.clip(k, hi)
    ce = vmmap.lookup(addr)
    assert ce is not None and ce.is_submap and ce.start == lo and ce.end == hi
    k.pmap_remove_range(ce)
    vmmap.remove(ce)
    sub.detach(ce)
    obj = se.object
    obj.ref_count += 1
    ne = VMMapEntry(vmmap, lo, hi, obj, se.offset + (ce.offset - se.start),
                    ce.protection & se.protection, ce.max_protection & se.max_protection,
                    Inherit.COPY, se.behavior, needs_copy=True, tag=ce.tag)
    if obj.true_share:  # others may write the original: copy it now (vm_object_copy_slowly)
        new = object_copy_slowly(k, obj, ne.offset >> k.page_shift, ne.npages)
        obj.ref_count -= 1
        ne.object, ne.offset, ne.needs_copy = new, 0, False
    if ce.wired_count and ce.wired_frames is not None:
        ne.wired_count, ne.wired_frames = ce.wired_count, ce.wired_frames
        ne.user_wired_count = ce.user_wired_count
        if not ne.needs_copy:  # the eager copy holds other frames: move the wirings
            for s_, f in enumerate(ce.wired_frames.tolist()):
                nf = object_page_find(k, ne.object, s_)
                for _ in range(ce.wired_count):
                    k.frame_wire(nf)
                    k.frame_unwire(f)
                ne.wired_frames[s_] = nf
    vmmap.insert(ne)
    k.stats.submap_copies += 1
    return ne


def copy_has(obj, pidx: int) -> bool:
    """Does obj's copy object already hold its own version of obj's page pidx (resident or with
    its pager), or lie outside it? Then a write to that page needs no push."""
    copy = obj.copy
    q = pidx - copy.shadow_offset
    return q < 0 or q >= copy.npages or q in copy.pages or copy.pager_may_have(q)


def copy_push(k: "Kernel", obj, pidx: int, src: int | None) -> None:
    """The copy push of vm_fault_page: a write is about to change page pidx of obj, which has a
    copy object (a delayed copy, vmcore.object.object_copy_delayed): unless the copy object has
    its own version of the page already, give it one holding the page as it is now (frame src,
    found anywhere down obj's chain, or zeros when no object has the page). Translations of src
    are removed: a reader of the copy object must see the pushed page from now on."""
    if copy_has(obj, pidx):
        return
    copy = obj.copy
    pm = k.pm
    if src is not None:
        nf = page_grab_copy(k, src)
        k.pmap_disconnect(src)
    else:
        nf = k.page_grab()
        pm.views[nf][:] = pm.zero_page
    k.page_insert(copy, pidx - copy.shadow_offset, nf)
    pm.dirty_mv[nf] = True
    if k.policy is not None:
        k.policy_insert(nf)
    k.stats.copy_pushes += 1


def page_grab_copy(k: "Kernel", src: int) -> int:
    """A free frame holding a copy of frame src's bytes; src is held busy while the frame is
    grabbed, so that a pageout scan the grab runs cannot take it."""
    pm = k.pm
    was_busy = pm.busy[src]
    pm.busy[src] = True
    pm.special[src] = True
    try:
        nf = k.page_grab()
    finally:
        pm.busy[src] = was_busy
    pm.views[nf][:] = pm.views[src]  # views: src may be a device's fictitious frame
    return nf


def _copy_up(k: "Kernel", oe, e, slot: int, top, pidx: int, src: int) -> int:
    """COW: copy frame src (a backing object's page) into a new page of top at pidx."""
    nf = page_grab_copy(k, src)
    k.page_insert(top, pidx, nf)
    if k.policy is not None:
        k.policy_insert(nf)
    # nobody may keep a translation of the backing page where the new page now shows (entries
    # sharing this object, or a submap, would read stale data): remove them all; other sharers of
    # the backing page soft-fault it back in
    k.pmap_disconnect(src)
    if e.wired_count and e.wired_frames is not None and e.wired_frames[slot] == src:
        for _ in range(e.wired_count):
            k.frame_wire(nf)
            k.frame_unwire(src)
        e.wired_frames[slot] = nf
    if len(top.pages) == top.npages and top.shadow is not None:
        k.collapse(top)
    return nf


def _cluster(k: "Kernel", task, oe, obj, p: int, lo_lim: int, hi_lim: int) -> tuple[int, int]:
    """tws_build_cluster path B: the [lo, hi) page range of obj to request around page p."""
    if k.policy is not None or task is None or oe.behavior == Behavior.RANDOM:
        return p, p + 1
    hook = getattr(k, "cluster_hook", None)  # another cluster rule (vmcore.lab cluster="behavior")
    if hook is not None:
        r = hook(k, task, oe, obj, p, lo_lim, hi_lim)
        if r is not None:
            return r
    ps = k.page_size
    max_pages = max(1, TWS_MAX_CLUSTER_BYTES // ps)
    lo_lim = max(lo_lim, 0)
    hi_lim = min(hi_lim, obj.npages) if obj.internal else hi_lim
    psize = obj.pager.size() if obj.pager is not None else None
    if psize is not None:
        hi_lim = min(hi_lim, (psize + ps - 1) // ps - obj.paging_offset)
    ws = k.working_set
    pre_heat = 0
    if not obj.internal and obj.pager is not None and obj.pager.kind == PagerKind.VNODE:
        age = k.clock.now() - task.created_at
        # no blind read-ahead once a launch profile seeded the task (XNU: a startup cache), nor
        # under another working-set hook (vmcore.lab tws_cluster=True: clusters from it alone)
        if age < LAUNCH_WINDOW_S and (ws is None or ws is k.tws) \
                and getattr(task, "profile", None) is None:
            fsize = psize if psize is not None else obj.size
            pre_heat = 8 if fsize > (1 << 20) else 4 if fsize > (128 << 10) else 2
    # frames we may use without waking the pageout daemon
    spare = len(k.pm.free) - k.free_min - 1
    budget = min(max_pages - 1, spare)
    if budget <= 0:
        return p, p + 1
    pages = obj.pages
    added = 0

    if ws is not None and ws is k.tws:
        touched = ws.touched(task, obj)
        if not touched and not pre_heat:
            return p, p + 1

        def wanted(q: int) -> bool:
            return added < pre_heat or q in touched or (q + 1 if q > p else q - 1) in touched
    else:
        def wanted(q: int) -> bool:
            if added < pre_heat:
                return True
            if ws is None:
                return False
            return ws.contains(task, obj, q) or ws.contains(task, obj, q + (1 if q > p else -1))

    hi = p + 1
    while added < budget and hi < hi_lim and hi not in pages and obj.pager_may_have(hi) \
            and wanted(hi):
        hi += 1
        added += 1
    lo = p
    while added < budget and lo - 1 >= lo_lim and (lo - 1) not in pages \
            and obj.pager_may_have(lo - 1) and wanted(lo - 1):
        lo -= 1
        added += 1
    return lo, hi


def _pagein(k: "Kernel", task, oe, obj, p: int, lo_lim: int, hi_lim: int, addr: int) -> int | None:
    """Ask obj's pager for page p (and a cluster around it). Returns the frame or None (ABSENT)."""
    lo, hi = _cluster(k, task, oe, obj, p, lo_lim, hi_lim)
    stats = k.stats
    pm = k.pm
    upl = UPL(k, obj, lo << k.page_shift, (hi - lo) << k.page_shift,
              UPL_RET_ONLY_ABSENT | UPL_NO_SYNC, _grab_exempt=True)
    try:
        bufs = upl.buffers()
        stats.pagein_requests += 1
        res = obj.pager_request(lo, bufs)
    except BaseException:
        upl.abort()
        raise
    me = p - lo
    f = None
    err = None
    for i, r in enumerate(res):
        if r == PagerResult.OK:
            fr = upl.frame_at(i)
            if i == me:
                upl.commit_range(i << k.page_shift, k.page_size)
                # Memory Management in Mac OS X "Paging Virtual Memory In": the hard-faulted page goes on the active
                # list (the commit saw its reference bit clear and left it inactive)
                if not pm.wc_mv[fr]:
                    pm.activate(fr)
                f = fr
            else:
                upl.commit_range(i << k.page_shift, k.page_size, _speculative=True)
                stats.cluster_pageins += 1
        else:
            upl.abort_range(i << k.page_shift, k.page_size)
            if i == me:
                err = r
    upl.close()
    who = f"task {task.name!r}" if task is not None else "the kernel"
    if f is not None:
        stats.hard_faults += 1
        stats.pageins += 1
        if k._owns_clock:
            k.clock._now += HARD_FAULT_TICK_S
        if k.policy is not None:
            k.policy_insert(f)
        return f
    if err == PagerResult.BAD:
        raise InvalidAddress(
            f"address {addr:#x} in {who}: the pager of object {obj.id} has no page at "
            f"offset {(p + obj.paging_offset) << k.page_shift:#x} (past the end of what it backs)")
    if err == PagerResult.ERROR:
        why = obj.pager.last_error or "pager reported an I/O error"
        raise PagerIOError(f"pagein at {addr:#x} in {who}: {why}")
    if obj.internal:
        obj.existence.discard(p)
    return None


_B_DEFAULT, _B_RANDOM, _B_SEQUENTIAL, _B_RSEQNTL = (
    int(Behavior.DEFAULT), int(Behavior.RANDOM), int(Behavior.SEQUENTIAL), int(Behavior.RSEQNTL))


def _deactivate_behind(k: "Kernel", e, slot: int) -> None:
    """vm_fault_deactivate_behind (xnu-792)."""
    b = e.behavior
    last = e.last_slot
    e.last_slot = slot
    target = -1
    if b == _B_DEFAULT:  # the common case first (module constants: no enum attribute lookups)
        if slot == last + 1:
            run = e.run = e.run + 1 if e.run >= 0 else 1
            if run >= VM_DEFAULT_BEHIND:
                target = slot - VM_DEFAULT_BEHIND
        elif slot == last - 1:
            run = e.run = e.run - 1 if e.run <= 0 else -1
            if -run >= VM_DEFAULT_BEHIND:
                target = slot + VM_DEFAULT_BEHIND
        else:
            e.run = 0
    elif b == _B_RANDOM:
        e.run = 0
        return
    elif b == _B_SEQUENTIAL:
        if slot == last + 1:
            target = slot - 1
    elif b == _B_RSEQNTL:
        if slot == last - 1:
            target = slot + 1
    pmv = e.pmv
    if 0 <= target < len(pmv):
        f = pmv[target]
        if f >= 0:
            pm = k.pm
            q_mv = pm.q_mv
            q = q_mv[f]
            if q != INACTIVE and pm.wc_mv[f] == 0 and not pm.busy_mv[f]:
                # pm.deactivate(f), inline
                if q == ACTIVE:
                    del pm.active[f]
                pm.ref_mv[f] = False
                pm.inactive[f] = None
                q_mv[f] = INACTIVE
                k.stats.deactivate_behind += 1


def object_page_find(k: "Kernel", obj, p: int) -> int | None:
    """The frame holding the page visible at index p of obj (walking the chain, paging in from a
    pager without clustering); None when no object has it (it reads as zeros)."""
    while obj is not None:
        f = obj.pages.get(p)
        if f is not None:
            return f
        if p in obj.error_pages:
            raise PagerIOError(f"page at offset {p << k.page_shift:#x} of object {obj.id} had an I/O error")
        if obj.pager is not None and obj.pager_may_have(p):
            f = _pagein(k, None, None, obj, p, p, p + 1, p << k.page_shift)
            if f is not None:
                return f
        p += obj.shadow_offset
        obj = obj.shadow
    return None


def object_copy_slowly(k: "Kernel", src, first: int, npages: int):
    """vm_object_copy_slowly: a new object holding a copy of src[first:first+npages] now."""
    new = k.object_create(npages * k.page_size, internal=True)
    cands: set[int] = set()
    base = first
    obj = src
    while obj is not None:
        for p in obj.pages:
            if base <= p < base + npages:
                cands.add(p - base)
        if obj.pager is not None:
            if obj.internal:
                cands.update(p - base for p in obj.existence if base <= p < base + npages)
            else:
                cands.update(range(npages))
        base += obj.shadow_offset
        obj = obj.shadow
    pm = k.pm
    try:
        for q in sorted(cands):
            f = object_page_find(k, src, first + q)
            if f is None:
                continue
            nf = page_grab_copy(k, f)
            k.page_insert(new, q, nf)
            pm.dirty[nf] = True
            if k.policy is not None:
                k.policy_insert(nf)
    except BaseException:
        from vmcore.object import object_deallocate

        object_deallocate(k, new)
        raise
    return new
