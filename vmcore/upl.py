"""Universal page lists (docs/mach-vm.md#universal-page-lists, xnu-792): a bounded list of an object's
pages handed to a pager for one pagein or pageout transaction, then committed or aborted.

Owns: `UPL` and the flag values of osfmk/mach/memory_object_types.h that the model implements.

Life cycle: `UPL(kernel, obj, offset, size, flags)` gathers pages (creation), the pager reads or
writes their buffers (`buffers()`, `runs()`), then `commit_range` / `abort_range` settle parts and
`commit` / `abort` settle the rest and free the UPL. With COMMIT_FREE_ON_EMPTY /
ABORT_FREE_ON_EMPTY, the range call that settles the last page frees the UPL; using a freed UPL
raises InvalidArgument.

Creation flags:
  UPL_COPYOUT_FROM     pageout direction: gather the resident pages of the range; missing, absent,
                       wired or busy pages leave a hole
  UPL_RET_ONLY_DIRTY   with COPYOUT_FROM: only dirty or precious pages; with UPL_FOR_PAGEOUT the
                       neighbours of the anchor page must also be unreferenced and inactive
  UPL_RET_ONLY_ABSENT  pagein: skip resident pages (hole); create absent busy placeholders elsewhere
  UPL_NOBLOCK          do not wait on busy pages: leave a hole (the model never waits, so a busy page
                       is always a hole; the flag is accepted and recorded)
  UPL_CLEAN_IN_PLACE   pageout: the pages stay mapped and usable, and are not freed on commit
  UPL_PRECIOUS         pagein: created pages are precious (must be returned even if clean)
Commit flags: COMMIT_FREE_ON_EMPTY, CLEAR_DIRTY, SET_DIRTY, INACTIVATE.
Abort flags: ABORT_RESTART, UNAVAILABLE, ERROR (the page becomes an error page: later faults raise
PagerIOError), FREE_ON_EMPTY, DUMP_PAGES (free the pages).

Invariants: while open, every gathered page is busy unless CLEAN_IN_PLACE, and its object's
paging_in_progress counts the UPL (which blocks collapse); the kernel's `upls` set holds exactly
the open UPLs (vmcore.invariants checks it is empty between operations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmcore.errors import InvalidArgument
from vmcore.resident import INACTIVE

if TYPE_CHECKING:  # pragma: no cover
    from vmcore.kernel import Kernel

UPL_COPYOUT_FROM = 0x1
UPL_PRECIOUS = 0x2
UPL_NO_SYNC = 0x4
UPL_CLEAN_IN_PLACE = 0x8
UPL_NOBLOCK = 0x10
UPL_RET_ONLY_DIRTY = 0x20
UPL_SET_INTERNAL = 0x40
UPL_RET_ONLY_ABSENT = 0x100
UPL_SET_LITE = 0x400
UPL_FOR_PAGEOUT = 0x2000
UPL_VALID_FLAGS = 0x00FFFFFF

UPL_COMMIT_FREE_ON_EMPTY = 0x1
UPL_COMMIT_CLEAR_DIRTY = 0x2
UPL_COMMIT_SET_DIRTY = 0x4
UPL_COMMIT_INACTIVATE = 0x8
UPL_COMMIT_NOTIFY_EMPTY = 0x10
UPL_COMMIT_ALLOW_ACCESS = 0x20

UPL_ABORT_RESTART = 0x1
UPL_ABORT_UNAVAILABLE = 0x2
UPL_ABORT_ERROR = 0x4
UPL_ABORT_FREE_ON_EMPTY = 0x8
UPL_ABORT_DUMP_PAGES = 0x10
UPL_ABORT_NOTIFY_EMPTY = 0x20
UPL_ABORT_ALLOW_ACCESS = 0x40

MAX_UPL_TRANSFER = 256

_HOLE, _HELD, _DONE = 0, 1, 2


class UPL:
    """One page list over [offset, offset+size) of a VM object."""

    def __init__(self, kernel: "Kernel", obj, offset: int, size: int, flags: int = 0,
                 anchor: int | None = None, _grab_exempt: bool = False):
        ps = kernel.page_size
        if flags & ~UPL_VALID_FLAGS:
            raise InvalidArgument(f"UPL flags {flags:#x} has bits outside UPL_VALID_FLAGS")
        if offset % ps or size % ps or size <= 0 or offset < 0:
            raise InvalidArgument(
                f"UPL range offset={offset:#x} size={size:#x} is not page aligned and non-empty")
        if not obj.alive:
            raise InvalidArgument(f"UPL over dead object {obj.id}")
        n = min(size // ps, MAX_UPL_TRANSFER)
        self.kernel = kernel
        self.object = obj
        self.flags = flags
        self.first = offset // ps  # first page index in the object
        self.npages = n
        self.size = n * ps
        self.frames = [-1] * n
        self.state = [_HOLE] * n
        self.created = [False] * n
        self.was_dirty = [False] * n
        self.closed = False
        pm = kernel.pm
        pageout = bool(flags & UPL_COPYOUT_FROM)
        try:
            for i in range(n):
                p = self.first + i
                f = obj.pages.get(p)
                if pageout:
                    if f is None or pm.absent[f] or pm.busy[f] or pm.wire_count[f] > 0:
                        continue
                    if flags & UPL_RET_ONLY_DIRTY and not (pm.dirty[f] or pm.precious[f]):
                        continue
                    if flags & UPL_FOR_PAGEOUT and p != anchor and (
                            pm.referenced[f] or pm.queue[f] != INACTIVE):
                        continue
                    self._hold(i, f, busy=not flags & UPL_CLEAN_IN_PLACE)
                    self.was_dirty[i] = bool(pm.dirty[f])
                    if not flags & UPL_CLEAN_IN_PLACE:
                        kernel.pmap_disconnect(f)
                else:
                    if f is not None:
                        if flags & UPL_RET_ONLY_ABSENT or pm.busy[f] or pm.wire_count[f] > 0:
                            continue
                        self._hold(i, f, busy=True)
                        continue
                    nf = kernel.page_grab()
                    kernel.page_insert(obj, p, nf)
                    pm.absent[nf] = True
                    pm.special[nf] = True
                    if flags & UPL_PRECIOUS:
                        pm.precious[nf] = True
                        pm.special[nf] = True
                    self.created[i] = True
                    self._hold(i, nf, busy=True)
        except BaseException:
            self._unwind()
            raise
        obj.paging_in_progress += 1
        kernel.upls.add(self)

    def _hold(self, i: int, f: int, busy: bool) -> None:
        self.frames[i] = f
        self.state[i] = _HELD
        if busy:
            self.kernel.pm.busy[f] = True
            self.kernel.pm.special[f] = True

    def _unwind(self) -> None:
        pm = self.kernel.pm
        for i in range(self.npages):
            if self.state[i] == _HELD:
                f = self.frames[i]
                pm.busy[f] = False
                if self.created[i]:
                    self.kernel.page_free(f, force=True)
                self.state[i] = _DONE

    # ---- what the pager sees ------------------------------------------------------------------
    def _alive(self) -> None:
        if self.closed:
            raise InvalidArgument("UPL already committed/aborted and freed")

    def page_list(self) -> list[tuple[int, int, bool, bool, bool]]:
        """(page index in the UPL, frame, dirty, absent, precious) for every held page."""
        self._alive()
        pm = self.kernel.pm
        return [(i, f, bool(pm.dirty[f]), bool(pm.absent[f]), bool(pm.precious[f]))
                for i, f in enumerate(self.frames) if self.state[i] == _HELD]

    def frame_at(self, i: int) -> int:
        return self.frames[i]

    def buffers(self) -> list[memoryview]:
        """One writable page buffer per held page, in order (holes skipped)."""
        self._alive()
        fr = self.kernel.pm.frames
        return [memoryview(fr[f]) for i, f in enumerate(self.frames) if self.state[i] == _HELD]

    def runs(self) -> list[tuple[int, list[int]]]:
        """Contiguous runs of held pages: (first page index in the object, [UPL indexes])."""
        self._alive()
        out: list[tuple[int, list[int]]] = []
        cur: list[int] = []
        for i in range(self.npages):
            if self.state[i] == _HELD:
                if cur and cur[-1] == i - 1:
                    cur.append(i)
                else:
                    if cur:
                        out.append((self.first + cur[0], cur))
                    cur = [i]
        if cur:
            out.append((self.first + cur[0], cur))
        return out

    @property
    def held(self) -> int:
        return sum(1 for s in self.state if s == _HELD)

    # ---- settling -----------------------------------------------------------------------------
    def _range(self, offset: int, size: int) -> range:
        ps = self.kernel.page_size
        if offset % ps or size % ps or offset < 0 or size < 0 or offset + size > self.size:
            raise InvalidArgument(
                f"UPL range offset={offset:#x} size={size:#x} outside the UPL's {self.size:#x} bytes")
        return range(offset // ps, (offset + size) // ps)

    def commit_range(self, offset: int, size: int, flags: int = 0, _speculative: bool = False) -> bool:
        """Settle [offset, offset+size) as done; returns True when the UPL is now empty."""
        self._alive()
        k = self.kernel
        pm = k.pm
        pageout = bool(self.flags & UPL_COPYOUT_FROM)
        for i in self._range(offset, size):
            if self.state[i] != _HELD:
                continue
            f = self.frames[i]
            self.state[i] = _DONE
            pm.busy[f] = False
            if pageout:
                pm.precious[f] = False
                if flags & UPL_COMMIT_SET_DIRTY:
                    pm.dirty[f] = True
                    continue
                pm.dirty[f] = False
                if not self.flags & UPL_CLEAN_IN_PLACE:
                    k.page_free(f)
                    if self.was_dirty[i]:
                        k.stats.pageouts += 1
                elif flags & UPL_COMMIT_INACTIVATE and pm.wire_count[f] == 0:
                    pm.deactivate(f)
            else:
                pm.absent[f] = False
                if flags & UPL_COMMIT_SET_DIRTY:
                    pm.dirty[f] = True
                if flags & UPL_COMMIT_CLEAR_DIRTY:
                    pm.dirty[f] = False
                if pm.wire_count[f]:
                    continue
                if _speculative:
                    pm.clustered[f] = True
                    pm.special[f] = True
                    pm.deactivate(f)  # speculative: reference bit clear, inactive tail
                    if k.policy is not None:
                        k.policy_insert(f)
                elif flags & UPL_COMMIT_INACTIVATE or not pm.referenced[f]:
                    pm.deactivate(f)
                else:
                    pm.activate(f)
        return self._maybe_free(flags & UPL_COMMIT_FREE_ON_EMPTY)

    def abort_range(self, offset: int, size: int, flags: int = 0) -> bool:
        self._alive()
        k = self.kernel
        pm = k.pm
        for i in self._range(offset, size):
            if self.state[i] != _HELD:
                continue
            f = self.frames[i]
            self.state[i] = _DONE
            pm.busy[f] = False
            if pm.absent[f]:
                if flags & UPL_ABORT_ERROR:
                    self.object.error_pages.add(self.first + i)
                k.page_free(f, force=True)
            elif flags & UPL_ABORT_DUMP_PAGES and pm.wire_count[f] == 0:
                k.page_free(f, force=True)
        return self._maybe_free(flags & UPL_ABORT_FREE_ON_EMPTY)

    def _maybe_free(self, free_on_empty: int) -> bool:
        empty = all(s != _HELD for s in self.state)
        if empty and free_on_empty:
            self.close()
        return empty

    def commit(self, flags: int = 0) -> None:
        self.commit_range(0, self.size, flags)
        self.close()

    def abort(self, flags: int = 0) -> None:
        if self.closed:
            return
        self.abort_range(0, self.size, flags)
        self.close()

    def close(self) -> None:
        """ubc_upl_deallocate: abort whatever is still held and free the UPL."""
        if self.closed:
            return
        if any(s == _HELD for s in self.state):
            self.abort_range(0, self.size)
        self.closed = True
        self.object.paging_in_progress -= 1
        self.kernel.upls.discard(self)

    deallocate = close

    def __enter__(self) -> "UPL":
        return self

    def __exit__(self, *exc) -> None:
        if not self.closed:
            self.abort()
