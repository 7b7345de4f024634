"""Cross-module consistency checks: `check(kernel)` raises AssertionError naming the first breach.

Checks:
  queues      every frame is on exactly one of free / active / inactive / wired and queue[f] says
              which; the queue lengths add up to the number of frames; free frames hold nothing;
              wired frames (and only they) have wire_count > 0; no frame is busy or absent outside
              an open UPL
  objects     every resident page's frame points back to it (owner, pidx); every live object is
              registered, reachable (from a map entry, a named entry, or as a shadow) and has
              ref_count == its counted references; shadowers sets match shadow pointers; no
              object shadows a dead object ("no orphaned shadows"); an anonymous object with
              shadowers is only mapped needs_copy (copy-on-write is never bypassed)
  pmaps       every translation (entry slot -> frame, or nested submap slot -> frame) is in the
              frame's pv list and vice versa; a nested (use_pmap) entry's pmap is a view of its
              submap's nested pmap at its offset; the
              frame holds the page the entry would see at that slot (the first resident page down
              its shadow chain); a writable translation maps a page of the entry's own object
  kmem        kernel_map entries map kernel_object at offset = address - minimum; kernel_object
              holds the kernel's reference plus one per entry; every recorded allocation has its
              entry, wired unless pageable
  device      fictitious frames (past RAM) sit on no queue, belong to device objects only, with
              wire_count 1; retired ones are on the fictitious free list; device objects hold
              only fictitious frames and RAM objects only RAM frames
  wiring      entries' wired frames are resident and wired; a frame's wire_count is at least the
              sum of the wired entries holding it
  policy      under a reference policy, tracked frames are exactly the resident unwired pages
  UPLs        none is open (unless allow_open_upls)
Slow (Python over every frame and entry): for tests, not for hot paths.
"""

from __future__ import annotations

import numpy as np

from vmcore.resident import ACTIVE, FICTITIOUS, FREE, INACTIVE, WIRED


def check(kernel, allow_open_upls: bool = False) -> None:
    k = kernel
    pm = k.pm
    n = k.nframes
    # ---- queues -----------------------------------------------------------------------------
    free = pm.free
    assert len(set(free)) == len(free), "a frame is on the free queue twice"
    seen = np.zeros(n, dtype=np.int8)
    for name, q, code in (("free", free, FREE), ("active", pm.active, ACTIVE),
                          ("inactive", pm.inactive, INACTIVE), ("wired", pm.wired, WIRED)):
        for f in q:
            assert seen[f] == 0, f"frame {f} is on the {name} queue and another"
            seen[f] = 1
            assert pm.queue[f] == code, f"frame {f} on the {name} queue but queue[f]={pm.queue[f]}"
    assert len(free) + len(pm.active) + len(pm.inactive) + len(pm.wired) == n, \
        f"queues hold {len(free)}+{len(pm.active)}+{len(pm.inactive)}+{len(pm.wired)} != {n} frames"
    for f in free:
        assert pm.owner[f] is None and pm.pv[f] is None and pm.wire_count[f] == 0, \
            f"free frame {f} still has an owner, mappings or wirings"
    q, wc = pm.queue[:n], pm.wire_count[:n]
    assert (wc[q != WIRED] == 0).all(), "a frame off the wired queue is wired"
    assert (wc[q == WIRED] > 0).all(), "a frame on the wired queue has wire_count 0"
    nt = pm.ntotal  # RAM frames, then fictitious (device) frames
    assert (pm.queue[n:] == FICTITIOUS).all(), "a fictitious frame is on a page queue"
    for f in range(n, nt):
        o = pm.owner[f]
        if o is not None:
            assert o.pager is not None and o.pager.kind.value == "device", \
                f"fictitious frame {f} belongs to object {o.id}, which is not device memory"
            assert pm.wire_count[f] == 1, f"device frame {f} has wire_count {pm.wire_count[f]}"
        else:
            assert f in pm.fict_free and pm.pv[f] is None, f"retired fictitious frame {f} in use"
    assert k.nwired == len(pm.wired), f"kernel.nwired {k.nwired} != wired queue {len(pm.wired)}"
    if not allow_open_upls:
        assert not k.upls, f"{len(k.upls)} UPL(s) left open"
        assert not getattr(k, "upl_waiters", None), "UPL waits recorded with no open UPL"
        assert not pm.busy.any(), f"frames {np.flatnonzero(pm.busy)[:8]} busy with no open UPL"
        assert not pm.absent.any(), "absent placeholder pages with no open UPL"

    # ---- objects ----------------------------------------------------------------------------
    live = dict(k.objects)
    refs: dict[int, int] = {i: 0 for i in live}
    entries = []
    maps = [t.map for t in k.tasks.values()] + list(k.submaps)
    if getattr(k, "kmem", None) is not None:
        maps.append(k.kmem.map)  # kernel_map: every entry maps kernel_object
    for m in maps:
        prev_end = None
        for e in m.entries:
            assert e.start < e.end and e.start % k.page_size == 0 and e.end % k.page_size == 0, \
                f"entry {e} is empty or unaligned"
            assert prev_end is None or e.start >= prev_end, f"entries overlap at {e.start:#x}"
            prev_end = e.end
            assert e.map is m, f"entry {e} belongs to another map"
            entries.append(e)
            if e.is_submap:
                assert e in e.object.parents, f"submap entry {e} not in its submap's parents"
                continue
            obj = e.object
            assert obj.alive, f"entry {e} maps dead object {obj.id}"
            assert obj.id in live, f"entry {e} maps unregistered object {obj.id}"
            refs[obj.id] += 1
            assert e.offset % k.page_size == 0, f"entry {e} has an unaligned offset"
            if obj.internal:
                assert (e.offset >> k.page_shift) + e.npages <= obj.npages, \
                    f"entry {e} runs past the end of object {obj.id} ({obj.npages} pages)"
            if obj.shadowers and obj.internal and not e.needs_copy:
                lo = e.offset >> k.page_shift
                hi = lo + e.npages
                for sh in obj.shadowers:
                    if sh is obj.copy:
                        continue  # the copy object gets every page before a write (copy push)
                    assert hi <= sh.shadow_offset or lo >= sh.shadow_offset + sh.npages, \
                        (f"entry {e} maps shadowed object {obj.id} writable where object {sh.id} "
                         f"shadows it (COW bypassed)")
    if getattr(k, "kmem", None) is not None:
        refs[k.kmem.object.id] += 1  # the kernel's own reference on kernel_object
        km = k.kmem
        for addr, (size, kind) in km.allocations.items():
            e = km.map.lookup(addr)
            assert e is not None and e.start == addr and e.end - e.start == size, \
                f"kmem allocation {addr:#x}+{size:#x} has no matching kernel_map entry"
            assert (e.wired_count > 0) == (kind != "pageable"), f"kmem {kind} {e} wiring is off"
            assert e.object is km.object and e.offset == addr - km.map.min_address, \
                f"kernel_map entry {e} does not map kernel_object at its address"
    # references held outside maps, entries and shadows: the wiring layer's caches (the file
    # cache keeps one reference on each file object, as the UBC does), one per object listed
    for obj in k.external_object_refs():
        refs[obj.id] += 1
    for c in getattr(k, "map_copies", ()):
        for ce in c.entries:  # a live vm_map_copy holds a reference on each entry's object
            assert ce.object.alive, f"vm_map_copy {c} holds dead object {ce.object.id}"
            refs[ce.object.id] += 1
    for ne in k.named_entries:
        if not ne.is_submap:
            assert ne.object.alive, f"named entry {ne} holds dead object"
            refs[ne.object.id] += 1
    for obj in live.values():
        assert obj.alive, f"registered object {obj.id} is dead"
        if obj.shadow is not None:
            assert obj.shadow.alive, f"object {obj.id} shadows dead object {obj.shadow.id} (orphan)"
            assert obj.shadow.id in live, f"object {obj.id} shadows unregistered {obj.shadow.id}"
            assert obj in obj.shadow.shadowers, f"object {obj.id} missing from its shadow's shadowers"
            refs[obj.shadow.id] += 1
        for s in obj.shadowers:
            assert s.shadow is obj, f"object {s.id} in {obj.id}.shadowers but shadows something else"
        device = obj.pager is not None and obj.pager.kind.value == "device"
        for p, f in obj.pages.items():
            assert (f >= n) == device, \
                f"object {obj.id} page {p}: frame {f} {'is' if f >= n else 'is not'} fictitious"
            assert pm.owner[f] is obj and pm.pidx[f] == p and pm.obj_id[f] == obj.id, \
                f"object {obj.id} page {p} -> frame {f}, which says owner {pm.obj_id[f]} pidx {pm.pidx[f]}"
            assert pm.queue[f] != FREE, f"object {obj.id} page {p} is on free frame {f}"
    for oid, obj in live.items():
        assert obj.ref_count == refs[oid], \
            f"object {oid} ref_count {obj.ref_count} != {refs[oid]} references found"
        assert obj.ref_count > 0, f"object {oid} is registered with no references (orphan)"
    for f in range(nt):
        o = pm.owner[f]
        if o is not None:
            assert o.alive and o.pages.get(int(pm.pidx[f])) == f, \
                f"frame {f} claims page {pm.pidx[f]} of object {o.id}, which does not list it"
    # ---- pmaps --------------------------------------------------------------------------------
    pv_count = 0
    for f in range(nt):
        lst = pm.pv[f]
        if lst:
            for e, s in lst:
                assert e.pmap[s] == f, f"pv of frame {f} says {e} slot {s}, which maps {e.pmap[s]}"
                pv_count += 1
    mapped = 0
    holders = []
    for e in entries:
        if e.map.is_submap:
            assert (e.pmap < 0).all(), "a submap's own entry has translations"
            continue
        if e.nested:
            sub = e.object
            assert sub.pmap is not None, f"nested entry {e} but its submap has no nested pmap"
            want = sub.pmap.__array_interface__["data"][0] + (e.offset >> k.page_shift) * 4
            assert e.pmap.base is not None and e.pmap.__array_interface__["data"][0] == want \
                and len(e.pmap) == e.npages, f"nested entry {e} does not view its submap's pmap"
            continue
        holders.append(e)
    for sub in k.submaps:
        if sub.pmap is not None:
            holders.append(sub)
    for e in holders:
        idx = np.flatnonzero(e.pmap >= 0)
        mapped += idx.size
        for s in idx.tolist():
            f = int(e.pmap[s])
            assert pm.queue[f] != FREE, f"{e} slot {s} maps free frame {f}"
            assert (e, s) in [(pe, ps) for pe, ps in (pm.pv[f] or [])], \
                f"{e} slot {s} -> frame {f} missing from its pv list"
            vis, top = _visible(k, e, s)
            assert vis == f, (f"{e} slot {s} maps frame {f} but the page it should see is frame "
                              f"{vis}")
            if e.pmw[s]:
                assert pm.owner[f] is top, f"{e} slot {s} is writable onto another object's page"
        assert not (e.pmw & (e.pmap < 0)).any(), f"{e} has write permission on unmapped slots"
    assert mapped == pv_count, f"{mapped} translations but {pv_count} pv entries"
    # ---- wiring -------------------------------------------------------------------------------
    need = np.zeros(nt, dtype=np.int64)
    for e in entries:
        if e.wired_count:
            assert e.wired_frames is not None and len(e.wired_frames) == e.npages, \
                f"wired entry {e} has no wired frame list"
            for f in e.wired_frames.tolist():
                assert pm.queue[f] == WIRED or f >= n, \
                    f"{e} wired frame {f} is not on the wired queue"
                need[f] += e.wired_count
        else:
            assert e.wired_frames is None, f"unwired entry {e} still lists wired frames"
    assert (pm.wire_count[:n] >= need[:n]).all(), "a frame is wired fewer times than its entries say"
    # ---- policy -------------------------------------------------------------------------------
    if k.policy is not None:
        resident = (pm.queue[:n] == ACTIVE) | (pm.queue[:n] == INACTIVE)
        resident &= ~pm.absent[:n]
        bad = np.flatnonzero(resident != np.array(k.tracked, dtype=np.bool_))
        assert bad.size == 0, f"frames {bad[:8]} tracked by the policy disagree with residency"
        assert k.ntracked == sum(k.tracked), "ntracked is off"


def _visible(k, e, s: int):
    """(frame the entry (or a submap's nested pmap) sees at slot s, the object owning writes)."""
    shift = k.page_shift
    if getattr(e, "is_submap", False) and not hasattr(e, "start"):  # a VMMap: nested pmap slot
        se = e.lookup(s << shift)
        if se is None:
            return None, None
        e, s = se, ((s << shift) - se.start) >> shift
    elif e.is_submap:
        saddr = e.offset + (s << shift)
        se = e.object.lookup(saddr)
        if se is None:
            return None, None
        e, s = se, (saddr - se.start) >> shift
    obj = e.object
    top = obj
    p = (e.offset >> shift) + s
    while obj is not None:
        f = obj.pages.get(p)
        if f is not None:
            return f, top
        if obj.internal and p in obj.existence:
            return None, top  # paged out: nothing resident may show here
        p += obj.shadow_offset
        obj = obj.shadow
    return None, top
