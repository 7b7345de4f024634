"""VM objects (vm_object.c): resident pages, size, pager, shadow, copy, attributes; collapse and bypass.

Owns: `VMObject` and the object-level operations that need the kernel: `object_deallocate`
(reference drop; at zero: free pages, terminate the pager, drop the shadow), `object_collapse`
(xnu-792's vm_object_collapse: collapse a backing object with a single reference into its shadower, or bypass it when
the shadower covers every page that could show through), `object_shadow` (make the shadow object a
copy-on-write write needs), `object_copy_delayed` (vm_copy's copy object) and
`object_page_remove` (free a range of an object nobody else sees).

Every pager call goes through `VMObject.pager_request` / `pager_return` / `pager_discard` (one
dispatcher, memory_object.c style), which also checks the pager kept the vmcore.pager contract.

Fields (the VM object table of "Memory Management in Mac OS X"):
  pages          dict page index -> frame: the resident pages
  size, npages   the object's size in bytes / pages
  pager          the memory object (a vmcore.pager.Pager), None until first needed (anonymous
                 objects get one lazily from the kernel's default pager factory at first pageout)
  shadow, shadow_offset   the object this one shadows, and this object's page 0's index in it
  copy           the copy object: the delayed copy of this one made by vm_copy / vm_map_copyin
                 (object_copy_delayed); it shadows this object, and a write here first pushes
                 the page's old contents into it (vmcore.fault)
  ref_count      map entries + shadowers + named entries + UPLs holding the object
  internal       anonymous memory (default pager) vs external (a file: vnode pager)
  true_share     shared by a named entry or shared inheritance: copies of it are made eagerly
                 (vm_object_copy_slowly) instead of by symmetric shadowing
  existence      the pages the pager holds (the existence map), for internal objects
  paging_offset  pager offset of page 0, in pages (changes when a collapse adopts a pager)

Invariants: a resident page's frame has owner == this object and pidx == its key; `shadowers` is
exactly the set of live objects whose shadow is this object; ref_count >= len(shadowers).
Who calls: the kernel, fault.py, pageout.py, upl.py, map.py.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Sequence

from vmcore.errors import ContractViolation
from vmcore.pager import Pager, PagerKind, PagerResult

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel

_ids = itertools.count(1)


class VMObject:
    __slots__ = ("id", "size", "npages", "pages", "pager", "internal", "shadow", "shadow_offset",
                 "copy", "ref_count", "true_share", "existence", "paging_offset", "shadowers",
                 "name", "alive", "paging_in_progress", "error_pages", "page_size", "cow_hint",
                 "__weakref__")

    def __init__(self, size: int, page_size: int, pager: Pager | None = None, internal: bool = True,
                 name: str = ""):
        self.id = next(_ids)
        self.page_size = page_size
        self.size = size
        self.npages = (size + page_size - 1) // page_size
        self.pages: dict[int, int] = {}
        self.pager = pager
        self.internal = internal
        self.shadow: VMObject | None = None
        self.shadow_offset = 0
        self.copy: VMObject | None = None
        self.ref_count = 1
        self.true_share = False
        self.existence: set[int] = set()
        self.paging_offset = 0
        self.shadowers: set[VMObject] = set()
        self.name = name
        self.alive = True
        self.paging_in_progress = 0
        self.error_pages: set[int] = set()
        self.cow_hint = 0

    def __repr__(self) -> str:
        sh = f" shadow={self.shadow.id}+{self.shadow_offset}" if self.shadow else ""
        return f"<VMObject {self.id} {self.npages}p res={len(self.pages)} ref={self.ref_count}{sh}>"

    # ---- the pager dispatcher -------------------------------------------------------------------
    def pager_may_have(self, pidx: int) -> bool:
        """Could a data_request of page pidx return data? (existence map / file size)"""
        if self.pager is None:
            return False
        if self.internal:
            return pidx in self.existence
        return True  # an external pager answers for itself (BAD past the end of a file)

    def pager_request(self, pidx: int, bufs: Sequence[memoryview]) -> list[PagerResult]:
        res = self.pager.data_request((pidx + self.paging_offset) * self.page_size, bufs)
        self._check(res, len(bufs), "data_request", (PagerResult.OK, PagerResult.ABSENT,
                                                     PagerResult.BAD, PagerResult.ERROR))
        return res

    def pager_return(self, pidx: int, bufs: Sequence[memoryview]) -> list[PagerResult]:
        res = self.pager.data_return((pidx + self.paging_offset) * self.page_size, bufs)
        self._check(res, len(bufs), "data_return", (PagerResult.OK, PagerResult.AGAIN,
                                                    PagerResult.ERROR))
        if self.internal:
            for i, r in enumerate(res):
                if r == PagerResult.OK:
                    self.existence.add(pidx + i)
        return res

    def pager_discard(self, pidx: int, n: int) -> None:
        """Tell the pager to forget pages [pidx, pidx+n) (internal objects only)."""
        if self.pager is None or not self.internal or n <= 0:
            return
        ex = self.existence
        if not ex:
            return
        if n < len(ex):
            hit = [p for p in range(pidx, pidx + n) if p in ex]
        else:
            hit = sorted(p for p in ex if pidx <= p < pidx + n)
        # one call per contiguous run
        run_start = prev = None
        for p in hit:
            ex.discard(p)
            if run_start is None:
                run_start = prev = p
            elif p == prev + 1:
                prev = p
            else:
                self.pager.data_discard((run_start + self.paging_offset) * self.page_size,
                                        prev - run_start + 1)
                run_start = prev = p
        if run_start is not None:
            self.pager.data_discard((run_start + self.paging_offset) * self.page_size,
                                    prev - run_start + 1)

    def _check(self, res, n: int, call: str, allowed) -> None:
        if not isinstance(res, list) or len(res) != n:
            raise ContractViolation(
                f"pager {type(self.pager).__name__}.{call} returned {res!r} for {n} pages")
        for r in res:
            if r not in allowed:
                raise ContractViolation(
                    f"pager {type(self.pager).__name__}.{call} returned {r!r}, not one of "
                    f"{[a.name for a in allowed]}")

    @property
    def kind(self) -> PagerKind:
        if self.pager is not None:
            return self.pager.kind
        return PagerKind.DEFAULT if self.internal else PagerKind.VNODE

    def chain(self):
        """(object, page offset of this object's page 0 in it) down the shadow chain."""
        obj, off = self, 0
        while obj is not None:
            yield obj, off
            off += obj.shadow_offset
            obj = obj.shadow

    def depth(self) -> int:
        d, obj = 0, self.shadow
        while obj is not None:
            d += 1
            obj = obj.shadow
        return d


# ---- object operations that need the kernel ------------------------------------------------------

def object_reference(obj: VMObject) -> None:
    obj.ref_count += 1


def set_shadow(obj: VMObject, backing: VMObject | None, offset: int) -> None:
    """Point obj at backing (the caller has already taken the reference on backing)."""
    if obj.shadow is not None:
        obj.shadow.shadowers.discard(obj)
    obj.shadow = backing
    obj.shadow_offset = offset if backing is not None else 0
    if backing is not None:
        backing.shadowers.add(obj)


def object_shadow(kernel: "Kernel", obj: VMObject, offset_pages: int, npages: int) -> VMObject:
    """vm_object_shadow: a new empty object of npages whose shadow is obj at offset_pages.
    The entry's reference on obj becomes the new object's shadow reference."""
    new = kernel.object_create(npages * kernel.page_size, internal=True)
    set_shadow(new, obj, offset_pages)
    return new


def object_copy_delayed(kernel: "Kernel", src: VMObject, npages: int | None = None) -> VMObject:
    """vm_object_copy_delayed: a copy object of src (the copy-on-write half of vm_copy; Memory
    Management in Mac OS X and the Kernel Programming Guide: "the shadow and copy fields may point to other VM objects").

    The new object shadows src from offset 0 over `npages` pages (the copied range's end; a
    previous copy object's size if larger) and becomes `src.copy`; src keeps
    being written in place, and the fault path pushes a page into the copy object before a write
    changes it there (vmcore.fault, "copy push"), so the copy object always shows src as it was
    now. Every resident page of src the copy object covers is write-protected in every pmap, so
    that the next write to each faults and pushes. A previous copy object of src stops receiving pushes and shadows the
    new one instead (it still sees src's pages as of its own copy through it), the chain XNU's
    collapse rule "backing is its shadow's copy object" guards (_collapse_blocked).
    Returns the copy object with one reference, the caller's (XNU: "caller must set needs_copy":
    whoever maps it maps it needs_copy, so only pushes write it)."""
    old = src.copy
    n = src.npages if npages is None else max(1, npages)
    if old is not None and old.alive and old.shadow is src:
        n = max(n, old.shadow_offset + old.npages)
    new = kernel.object_create(n * kernel.page_size, internal=True)
    if old is not None and old.alive and old.shadow is src:
        # the old copy object now shadows the new one; its reference moves from src to new
        new.ref_count += 1
        set_shadow(old, new, old.shadow_offset)
        src.ref_count -= 1
    src.ref_count += 1
    set_shadow(new, src, 0)
    src.copy = new
    for p, f in src.pages.items():
        if p < n:  # pages past the copy object need no push
            kernel.pmap_write_protect(f)
    return new


def object_page_remove(kernel: "Kernel", obj: VMObject, start: int, end: int) -> None:
    """Free the resident pages of [start, end) and discard the pager's copies (for a range nobody
    else can see: the caller checked obj.ref_count == 1 and no shadowers)."""
    if end - start < len(obj.pages):
        victims = [obj.pages[p] for p in range(start, end) if p in obj.pages]
    else:
        victims = [f for p, f in obj.pages.items() if start <= p < end]
    for f in victims:
        if kernel.pm.wire_count[f] == 0 and not kernel.pm.busy[f]:
            kernel.page_free(f)
    obj.pager_discard(start, end - start)
    obj.error_pages.difference_update(range(start, end)) if obj.error_pages else None


def object_deallocate(kernel: "Kernel", obj: VMObject | None) -> None:
    """Drop one reference. At zero the object dies: its pages are freed (an external object's
    dirty pages are written back first), its pager is terminated (freeing swap), and the reference
    it held on its shadow is dropped, which may let the surviving shadower collapse."""
    while obj is not None:
        obj.ref_count -= 1
        if obj.ref_count > 0:
            if obj.ref_count == 1 and len(obj.shadowers) == 1 and obj.internal:
                (top,) = obj.shadowers
                object_collapse(kernel, top)
            return
        # terminate
        if obj.pager is not None and obj.pager.kind is PagerKind.DEVICE:
            from vmcore.device_pager import device_object_release

            device_object_release(kernel, obj)  # fictitious frames: nothing to write back
        elif not obj.internal and obj.pager is not None:
            kernel.pageout_daemon.flush_object(obj)
        for f in list(obj.pages.values()):
            kernel.page_free(f, force=True)
        obj.alive = False
        if obj.pager is not None:
            obj.pager.terminate()
            obj.existence.clear()
        kernel.objects.pop(obj.id, None)
        backing = obj.shadow
        if backing is not None and backing.copy is obj:
            backing.copy = None  # a dead copy object takes no more pushes
        obj.copy = None
        set_shadow(obj, None, 0)
        obj = backing


def _collapse_blocked(obj: VMObject, backing: VMObject) -> bool:
    """vm_object_collapse step 1: reasons to skip this level."""
    return (obj.paging_in_progress > 0 or backing.paging_in_progress > 0
            or not backing.internal or not obj.internal
            or (backing.shadow is not None and backing.shadow.copy is backing))


def object_collapse(kernel: "Kernel", obj: VMObject) -> None:
    """vm_object_collapse: walk down from obj, collapsing or bypassing backing objects."""
    while obj is not None and obj.alive:
        backing = obj.shadow
        if backing is None:
            return
        if _collapse_blocked(obj, backing):
            obj = backing
            continue
        if backing.ref_count == 1 and (obj.pager is None or backing.pager is None):
            _do_collapse(kernel, obj, backing)
            kernel.stats.collapses += 1
            continue  # retry at the same level
        if _can_bypass(obj, backing):
            _do_bypass(kernel, obj, backing)
            kernel.stats.bypasses += 1
            continue
        obj = backing


def _do_collapse(kernel: "Kernel", obj: VMObject, backing: VMObject) -> None:
    off = obj.shadow_offset
    n = obj.npages
    pm = kernel.pm
    own = set(obj.pages)  # pages obj had before the move: the only ones newer than backing's pager
    # pages the parent already has (resident, or in its pager) win
    for p, f in list(backing.pages.items()):
        q = p - off
        if q < 0 or q >= n or q in obj.pages or q in obj.existence:
            kernel.page_free(f, force=True)
            continue
        del backing.pages[p]
        obj.pages[q] = f
        pm.owner[f] = obj
        pm.obj_id[f] = obj.id
        pm.pidx[f] = q
    backing.pages.clear()
    if backing.pager is not None:
        if obj.pager is None:
            # adopt the backing object's pager; drop what lies outside obj's window or is shadowed
            obj.pager = backing.pager
            obj.paging_offset = backing.paging_offset + off
            keep = set()
            stale = []
            for p in backing.existence:
                q = p - off
                if 0 <= q < n and q not in own:
                    keep.add(q)
                else:  # outside obj's window, or shadowed by obj's own newer page
                    stale.append(p)
            obj.existence = keep
            for p in stale:
                obj.pager.data_discard((p + backing.paging_offset) * kernel.page_size, 1)
            backing.pager = None
            backing.existence = set()
        # (both have pagers: not collapsed, see object_collapse)
    if backing.error_pages:
        for p in backing.error_pages:
            if 0 <= p - off < n:
                obj.error_pages.add(p - off)
    # obj now shadows backing's shadow; backing's reference on it moves to obj
    new_shadow = backing.shadow
    new_off = off + backing.shadow_offset
    set_shadow(backing, None, 0)
    set_shadow(obj, new_shadow, new_off)
    backing.alive = False
    backing.ref_count = 0
    kernel.objects.pop(backing.id, None)
    kernel.pmap_epoch += 1


def _can_bypass(obj: VMObject, backing: VMObject) -> bool:
    """vm_object_collapse step 3 (bypass): no page of backing can show through obj."""
    off = obj.shadow_offset
    n = obj.npages
    if len(obj.pages) == n:
        return True
    if (obj.pager is not None and not obj.internal) or (backing.pager is not None and not backing.internal):
        return False
    covered = obj.pages.keys() | obj.existence
    for p in itertools.chain(backing.pages.keys(), backing.existence):
        q = p - off
        if 0 <= q < n and q not in covered:
            return False
    # pages further down the chain could show through too, unless obj covers the whole window
    if backing.shadow is not None:
        # bypassing keeps them reachable at the same offsets: obj -> backing.shadow (offsets summed)
        return True
    return True


def _do_bypass(kernel: "Kernel", obj: VMObject, backing: VMObject) -> None:
    new_shadow = backing.shadow
    new_off = obj.shadow_offset + backing.shadow_offset
    if new_shadow is not None:
        new_shadow.ref_count += 1
    set_shadow(obj, new_shadow, new_off)
    if backing.copy is obj:
        backing.copy = None
    kernel.pmap_epoch += 1
    object_deallocate(kernel, backing)
