"""The shared memory server's shared region ("VM Shared Memory Server Subsystem"; submaps and
use_pmap, docs/mach-vm.md#the-shared-region): shared libraries loaded once into two submaps that every task maps.

Owns: `SharedRegions` (one set of the two regions: a TEXT submap and a DATA submap, with the
libraries loaded into them), `LoadedLibrary`, `SharedFileMapping`, and the three calls the seed
names: `load_shared_file`, `reset_shared_file`, `new_system_shared_regions` (plus
`unload_shared_file`, which always refuses, and `library_pager`, bytes -> an in-memory "file").

How it maps onto the model ("Memory Maps Explained": "shared libraries are handled with two submaps. The read-only
shared code section has use_pmap set to true. The read-write (nonshared) section has use_pmap set
to false, forcing a clean copy of the library's DATA segment to be mapped in from disk for each new
task"):
  * TEXT: a submap mapped into each task at SHARED_TEXT_REGION_BASE nested (use_pmap true): its
    translations live in the submap's nested pmap, so a text page faulted in by one task is mapped
    in every task at once; one frame per text page system-wide.
  * DATA: a submap mapped into each task at SHARED_DATA_REGION_BASE copy-on-write (use_pmap false,
    needs_copy): tasks read the library's data pages from the one file object until they write;
    the first write gives the task a private copy-on-write entry for that library's data, and the
    written page is copied into the task's own shadow object (vmcore.fault.submap_cow_extract).
  * A library is ONE VM object (its "file": a vnode-pager-backed object when the kernel has a file
    mount, or any vmcore.pager.Pager, or bytes through vmcore.testing.MemoryPager), external (not
    anonymous): its read-only mappings go to the TEXT submap, its writable ones to the DATA submap,
    at the same offset in both (the library's base).
  * The submaps are permanent: "a shared library cannot be unshared" (Kernel Programming Guide). Loading is
    idempotent for the same file; new_system_shared_regions makes a fresh set that tasks created
    afterwards get (Kernel.task_create attaches kernel.shared_regions), while existing tasks and
    their forks keep the set they have.
  * Users: a task uses a library once it called load_shared_file for it (dyld linking it), or was
    forked from a user; vmcore.wired charges 2 KB + 200 B per user ("Wired Memory", table 2).

Caveats: addresses are the 10.3 PowerPC ones (text 0x90000000, data 0xA0000000, 256 MiB each);
libraries are placed by a bump allocator (never unloaded, so never a hole); there is no prebinding
and no split-segment slide. Calls validate before changing anything.
Who calls: users, vmcore.scenario, Kernel.task_create / Task.fork / Task.terminate (hooks).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, Sequence

from vmcore.errors import InvalidArgument, NoSpace
from vmcore.map import VMMapEntry
from vmcore.object import VMObject, object_deallocate
from vmcore.pager import Pager
from vmcore.testing import MemoryPager
from vmcore.types import (
    VM_PROT_ALL, VM_PROT_EXECUTE, VM_PROT_READ, VM_PROT_WRITE, Behavior, Inherit, parse_prot,
    prot_str,
)

#: 10.3 (PowerPC) shared region layout: osfmk/mach/shared_memory_server.h
SHARED_TEXT_REGION_BASE = 0x90000000
SHARED_DATA_REGION_BASE = 0xA0000000
SHARED_REGION_SIZE = 0x10000000

TEXT_TAG = "__TEXT shared"
DATA_TAG = "__DATA shared"


class SharedFileMapping(NamedTuple):
    """One sf_mapping: `size` bytes of the file at `file_offset`, with `protection`. Writable
    mappings go to the DATA region, the others to the TEXT region."""

    file_offset: int
    size: int
    protection: int | str = "r-x"


class LoadedLibrary:
    """A library loaded into a SharedRegions set."""

    def __init__(self, regions: "SharedRegions", name: str, obj: VMObject, base: int,
                 text: list[tuple[int, int, int, int]], data: list[tuple[int, int, int, int]]):
        self.regions = regions
        self.name = name
        self.object = obj
        self.base = base
        #: (offset in the region, size, file offset, protection) per mapping
        self.text = text
        self.data = data
        self._users: dict[int, weakref.ref] = {}

    @property
    def text_address(self) -> int:
        return SHARED_TEXT_REGION_BASE + self.base

    @property
    def data_address(self) -> int:
        return SHARED_DATA_REGION_BASE + self.base

    @property
    def text_size(self) -> int:
        return sum(m[1] for m in self.text)

    @property
    def data_size(self) -> int:
        return sum(m[1] for m in self.data)

    def users(self) -> list:
        """The live tasks using this library."""
        out = []
        for tid, ref in list(self._users.items()):
            t = ref()
            if t is None or not t.alive:
                del self._users[tid]
            else:
                out.append(t)
        return out

    def add_user(self, task) -> None:
        self._users[task.id] = weakref.ref(task)

    def __repr__(self) -> str:
        return (f"<LoadedLibrary {self.name!r} text {self.text_address:#x}+{self.text_size:#x} "
                f"data {self.data_address:#x}+{self.data_size:#x} users={len(self.users())}>")


class SharedRegions:
    """One set of system shared regions: the TEXT and DATA submaps and the libraries in them."""

    def __init__(self, kernel, size: int = SHARED_REGION_SIZE, name: str = ""):
        self.kernel = kernel
        self.generation = len(kernel.shared_region_sets) + 1
        self.name = name or f"shared region {self.generation}"
        self.size = size
        self.text = kernel.make_named_region(size, name=f"{self.name} text")
        self.data = kernel.make_named_region(size, name=f"{self.name} data")
        self.text.object.permanent = True
        self.data.object.permanent = True
        self.libraries: dict[str, LoadedLibrary] = {}
        self.next_base = 0
        kernel.shared_region_sets.append(self)

    def __repr__(self) -> str:
        return f"<SharedRegions {self.name!r} libraries={sorted(self.libraries)}>"

    # ---- tasks --------------------------------------------------------------------------------
    def attach(self, task) -> None:
        """Map both regions into task (vm_map_shared_region): TEXT nested, DATA copy-on-write."""
        if task.shared_regions is self:
            return
        if task.shared_regions is not None:
            raise InvalidArgument(f"task {task.name!r} already maps {task.shared_regions.name!r}")
        m = task.map
        for base in (SHARED_TEXT_REGION_BASE, SHARED_DATA_REGION_BASE):
            if not m.range_free(base, base + self.size):
                raise NoSpace(f"task {task.name!r} has mappings in the shared region range "
                              f"{base:#x}-{base + self.size:#x}")
        task.vm_map(self.text, address=SHARED_TEXT_REGION_BASE, prot="r-x", max_prot="r-x",
                    use_pmap=True, tag=TEXT_TAG)
        task.vm_map(self.data, address=SHARED_DATA_REGION_BASE, prot="rw-", max_prot="rwx",
                    copy=True, tag=DATA_TAG)
        task.shared_regions = self

    def task_forked(self, parent, child) -> None:
        """The child inherits its parent's regions (the submap entries) and libraries."""
        child.shared_regions = self
        for lib in self.libraries.values():
            if parent.id in lib._users:
                lib.add_user(child)

    def users(self) -> list:
        """Live tasks that map this set."""
        return [t for t in self.kernel.tasks.values() if t.shared_regions is self]

    # ---- libraries ------------------------------------------------------------------------------
    def _place(self, ntext: int, ndata: int) -> int:
        base = self.next_base
        need = max(ntext, ndata)
        if base + need > self.size:
            raise NoSpace(f"{self.name!r} is full: {need:#x} bytes do not fit after {base:#x} "
                          f"(region size {self.size:#x}); make new regions")
        return base


def library_pager(data: bytes, page_size: int = 4096) -> MemoryPager:
    """An in-memory "file" holding `data` (a MemoryPager preloaded page by page)."""
    mv = memoryview(bytes(data))
    pager = MemoryPager(len(mv), page_size)
    for off in range(0, len(mv), page_size):
        page = bytearray(page_size)
        chunk = mv[off:off + page_size]
        page[:len(chunk)] = chunk
        pager.data_return(off, [memoryview(page)])
    pager.requests = pager.pages_out = 0
    return pager


def new_system_shared_regions(kernel, size: int = SHARED_REGION_SIZE) -> SharedRegions:
    """Create a fresh set of shared regions; tasks created from now on get it. Existing tasks
    (and their descendants) keep theirs: "users of old shared libraries will still work"."""
    ps = kernel.page_size
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % ps:
        raise InvalidArgument(f"shared region size {size!r} must be a positive multiple of {ps}")
    regions = SharedRegions(kernel, size)
    kernel.shared_regions = regions
    return regions


def _library_object(kernel, name: str, file, size_hint: int) -> tuple[VMObject, bool]:
    """(the library's VM object, whether we made it). `file`: a VMObject, a Pager, or bytes."""
    if isinstance(file, VMObject):
        if not file.alive:
            raise InvalidArgument(f"library {name!r}: object {file.id} is dead")
        return file, False
    if isinstance(file, (bytes, bytearray, memoryview)):
        file = library_pager(file, kernel.page_size)
        size_hint = max(size_hint, file.resident_in_store * kernel.page_size)
    if not isinstance(file, Pager):
        raise InvalidArgument(
            f"library {name!r}: {type(file).__name__} is not a VM object, a pager or bytes")
    psize = file.size()
    size = max(psize if psize is not None else 0, size_hint, kernel.page_size)
    return kernel.object_create(size, pager=file, internal=False, name=name), True


def load_shared_file(task, name: str, file, text_size: int | None = None,
                     data_size: int | None = None,
                     mappings: Sequence[SharedFileMapping] | None = None) -> LoadedLibrary:
    """Load library `name` from `file` into the shared regions of `task` (attaching the system
    regions first if the task has none) and record the task as a user.

    The layout is either `mappings` (SharedFileMapping list) or `text_size` (bytes of read-only
    text at file offset 0) plus `data_size` (read-write data right after the text; default: the
    rest of the file). Loading a name already loaded from the same file only adds the user; from
    another file it is refused (a loaded library cannot be replaced: make new regions)."""
    k = task.kernel
    task._alive()
    if not isinstance(name, str) or not name or "\n" in name:
        raise InvalidArgument(f"library name {name!r} must be a non-empty one-line string")
    regions = task.shared_regions
    if regions is None:
        regions = k.shared_regions or new_system_shared_regions(k)
    lib = regions.libraries.get(name)
    if lib is not None:
        same = (file is lib.object or (isinstance(file, Pager) and file is lib.object.pager))
        if not same:
            raise InvalidArgument(
                f"library {name!r} is already loaded in {regions.name!r} from another file; a "
                f"shared library cannot be unshared or replaced (use new_system_shared_regions)")
        if task.shared_regions is None:
            regions.attach(task)
        lib.add_user(task)
        if k.wired_acct is not None:
            k.wired_acct.sync()
        return lib
    ps = k.page_size
    # ---- the layout, validated before anything changes ----
    if mappings is None:
        if text_size is None:
            raise InvalidArgument(f"library {name!r}: give mappings= or text_size=")
        maps = [SharedFileMapping(0, text_size, "r-x")]
        if data_size is None:
            total = _file_size(file, ps)
            data_size = max(0, total - _round(text_size, ps)) if total is not None else 0
        if data_size:
            maps.append(SharedFileMapping(_round(text_size, ps), data_size, "rw-"))
    else:
        maps = list(mappings)
        if not maps:
            raise InvalidArgument(f"library {name!r}: no mappings")
    text: list[tuple[int, int, int, int]] = []
    data: list[tuple[int, int, int, int]] = []
    end = 0
    for m in maps:
        if not isinstance(m, SharedFileMapping):
            m = SharedFileMapping(*m)
        fo, sz = m.file_offset, m.size
        if isinstance(fo, bool) or not isinstance(fo, int) or fo < 0 or fo % ps:
            raise InvalidArgument(f"library {name!r}: file offset {fo!r} is not page aligned")
        if isinstance(sz, bool) or not isinstance(sz, int) or sz <= 0:
            raise InvalidArgument(f"library {name!r}: mapping size {sz!r} must be positive")
        prot = parse_prot(m.protection)
        if not prot & VM_PROT_READ:
            raise InvalidArgument(f"library {name!r}: mapping at file offset {fo:#x} is not "
                                  f"readable ({prot_str(prot)})")
        sz = _round(sz, ps)
        end = max(end, fo + sz)
        (data if prot & VM_PROT_WRITE else text).append((0, sz, fo, prot))
    ntext = sum(m[1] for m in text)
    ndata = sum(m[1] for m in data)
    base = regions._place(ntext, ndata)
    if task.shared_regions is None:
        regions.attach(task)
    obj, made = _library_object(k, name, file, end)
    try:
        if obj.internal:
            raise InvalidArgument(f"library {name!r}: object {obj.id} is anonymous memory, "
                                  f"not a file")
        placed_text, placed_data = [], []
        for lst, out, sub in ((text, placed_text, regions.text), (data, placed_data, regions.data)):
            off = base
            for _, sz, fo, prot in lst:
                sub.vm_map_object(obj, offset=fo, size=sz, at=off,
                                  prot=prot_str(prot & (VM_PROT_ALL if sub is regions.data
                                                        else VM_PROT_READ | VM_PROT_EXECUTE)))
                out.append((off, sz, fo, prot))
                off += sz
    finally:
        if made:
            object_deallocate(k, obj)  # the submap entries hold the references now
    regions.next_base = base + max(ntext, ndata)
    lib = LoadedLibrary(regions, name, obj, base, placed_text, placed_data)
    regions.libraries[name] = lib
    lib.add_user(task)
    if k.wired_acct is not None:
        k.wired_acct.sync()  # 2 KB + 200 B per user (vmcore.wired)
    return lib


def reset_shared_file(task, name: str) -> int:
    """Give task back the clean data section of library `name`: its private copies are dropped and
    the DATA submap is mapped again over the library's data (the file's bytes show again).
    Returns the number of private pages discarded."""
    task._alive()
    regions = task.shared_regions
    if regions is None:
        raise InvalidArgument(f"task {task.name!r} maps no shared region")
    lib = regions.libraries.get(name)
    if lib is None:
        raise InvalidArgument(f"library {name!r} is not loaded in {regions.name!r}")
    if not lib.data:
        return 0
    k = task.kernel
    start, end = lib.data_address, lib.data_address + lib.data_size
    ents = task.map.entries_in(start, end)
    for e in ents:
        if e.wired_count:
            raise InvalidArgument(f"{e.start:#x}-{e.end:#x} of library {name!r} is wired")
    covered = sum(min(e.end, end) - max(e.start, start) for e in ents) == end - start
    if covered and all(e.is_submap and e.object is regions.data.object for e in ents):
        return 0  # nothing private: the task already sees the file's data
    private = task._private_objects(ents)
    dropped = 0
    task.map.clip(k, start)
    task.map.clip(k, end)
    for e in task.map.entries_in(start, end):
        if not e.is_submap:
            dropped += len([p for p in e.object.pages
                            if (e.offset >> k.page_shift) <= p
                            < (e.offset >> k.page_shift) + e.npages])
        task._entry_delete(e, free_pages=e.object in private)
    sub = regions.data.object
    ne = VMMapEntry(task.map, start, end, sub, start - SHARED_DATA_REGION_BASE,
                    VM_PROT_READ | VM_PROT_WRITE, VM_PROT_ALL, Inherit.SHARE, Behavior.DEFAULT,
                    is_submap=True, needs_copy=True, tag=DATA_TAG)
    ne.use_pmap = False
    sub.attach(ne)
    task.map.insert(ne)
    return dropped


def unload_shared_file(task, name: str) -> None:
    """Always refused: "Once such a file is loaded, other tasks can then depend on it, so a shared
    library cannot be unshared" (VM Shared Memory Server Subsystem)."""
    regions = task.shared_regions
    where = regions.name if regions is not None else "the shared region"
    raise InvalidArgument(
        f"library {name!r} cannot be unloaded from {where!r}: a shared library cannot be "
        f"unshared; use new_system_shared_regions so that new tasks stop using it")


def _round(n: int, ps: int) -> int:
    return (n + ps - 1) // ps * ps


def _file_size(file, ps: int) -> int | None:
    if isinstance(file, (bytes, bytearray, memoryview)):
        return len(file)
    if isinstance(file, VMObject):
        return file.size
    if isinstance(file, MemoryPager) and file.size() is None:
        return file.resident_in_store * ps
    if isinstance(file, Pager):
        return file.size()
    return None


__all__ = [
    "SHARED_TEXT_REGION_BASE", "SHARED_DATA_REGION_BASE", "SHARED_REGION_SIZE", "SharedRegions",
    "LoadedLibrary", "SharedFileMapping", "load_shared_file", "reset_shared_file",
    "new_system_shared_regions", "unload_shared_file", "library_pager",
]
