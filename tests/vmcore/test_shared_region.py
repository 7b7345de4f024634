"""The shared region: the Kernel Programming Guide's "VM Shared Memory Server Subsystem" and its
"Memory Maps Explained" submap / use_pmap text, each test against the sentence it checks."""

from __future__ import annotations

import os

import pytest

from vmcore import invariants
from vmcore.errors import InvalidArgument, ProtectionFailure
from vmcore.kernel import Kernel
from vmcore.shared_region import (
    SHARED_DATA_REGION_BASE, SHARED_TEXT_REGION_BASE, SharedFileMapping, library_pager,
    load_shared_file, new_system_shared_regions, reset_shared_file, unload_shared_file,
)

PS = 4096
NTEXT, NDATA = 6, 4


def _blob(seed: int = 7, pages: int = NTEXT + NDATA) -> bytes:
    return bytes((i * seed + i // PS) % 251 for i in range(pages * PS))


def _frame(task, addr: int) -> int:
    e = task.map.lookup(addr)
    return int(e.pmap[(addr - e.start) // PS])


@pytest.fixture
def k():
    kern = Kernel(memory="4MiB")
    yield kern
    invariants.check(kern)
    kern.close()


def test_text_shared_by_every_task_including_translations(k):
    """VM Shared Memory Server Subsystem: "The read-only portions are completely shared between tasks, including the
    underlying pmap entries." Memory Maps Explained: "The read-only shared code section has use_pmap set to
    true." One frame per text page system-wide; a task never faults on a text page another task
    already brought in."""
    blob = _blob()
    new_system_shared_regions(k)
    tasks = [k.task_create(f"t{i}") for i in range(4)]
    lib = load_shared_file(tasks[0], "libSystem", blob, text_size=NTEXT * PS)
    for t in tasks[1:]:
        assert load_shared_file(t, "libSystem", lib.object) is lib
    assert tasks[0].read(lib.text_address, NTEXT * PS) == blob[:NTEXT * PS]
    faults = k.stats.faults
    for t in tasks[1:]:
        assert t.read(lib.text_address, NTEXT * PS) == blob[:NTEXT * PS]
    assert k.stats.faults == faults, "other tasks faulted on text already mapped (pmap not shared)"
    text_pages = [p for p in lib.object.pages if p < NTEXT]
    assert len(text_pages) == NTEXT
    for p in range(NTEXT):
        frames = {_frame(t, lib.text_address + p * PS) for t in tasks}
        assert frames == {lib.object.pages[p]}, f"text page {p} maps frames {frames}"
    # the text is read-only and its maximum protection is r-x: nobody can write it
    with pytest.raises(ProtectionFailure):
        tasks[1].write(lib.text_address, b"x")
    with pytest.raises(ProtectionFailure):
        tasks[1].vm_protect(lib.text_address, PS, "rw")
    assert tasks[0].vm_region(lib.text_address).share_mode == "SHM"


def test_data_shared_until_first_write_then_private_copy(k):
    """VM Shared Memory Server Subsystem: "The read-write portions share a common submap, but have different underlying
    data objects (achieved through copy-on-write)." Memory Maps Explained: "The read-write (nonshared) section
    has use_pmap set to false"."""
    blob = _blob()
    a, b = k.task_create("a"), k.task_create("b")
    lib = load_shared_file(a, "libc", blob, text_size=NTEXT * PS)
    load_shared_file(b, "libc", lib.object)
    data = blob[NTEXT * PS:]
    assert a.read(lib.data_address, NDATA * PS) == data
    assert b.read(lib.data_address, NDATA * PS) == data
    # before any write both tasks map the library object's one page (private translations)
    assert _frame(a, lib.data_address) == _frame(b, lib.data_address) == lib.object.pages[NTEXT]
    ea, eb = a.map.lookup(lib.data_address), b.map.lookup(lib.data_address)
    assert ea.is_submap and not ea.use_pmap and ea.pmap is not eb.pmap
    cow = k.stats.cow_faults
    a.write(lib.data_address + 10, b"private")
    assert k.stats.cow_faults == cow + 1
    assert a.read(lib.data_address + 10, 7) == b"private"
    assert b.read(lib.data_address, NDATA * PS) == data
    # the file object is untouched; a's page is a copy in a's own object
    fa = _frame(a, lib.data_address)
    assert fa != lib.object.pages[NTEXT] and k.pm.owner[fa] is not lib.object
    assert bytes(k.pm.frames[lib.object.pages[NTEXT]][10:17]) == data[10:17]
    # only the page written was copied; the rest still shows the file through a's shadow
    assert a.read(lib.data_address + PS, PS) == data[PS:2 * PS]
    assert _frame(a, lib.data_address + PS) == lib.object.pages[NTEXT + 1]
    # a new task gets the clean data ("forcing a clean copy of the library's DATA segment")
    c = k.task_create("c")
    load_shared_file(c, "libc", lib.object)
    assert c.read(lib.data_address, NDATA * PS) == data


def test_reset_restores_the_files_bytes(k):
    """VM Shared Memory Server Subsystem: "The function reset_shared_file can be used to reset any changes that your task
    may have made to its private copy of the data section for a file." """
    blob = _blob(11)
    a = k.task_create("a")
    lib = load_shared_file(a, "libm", blob, text_size=NTEXT * PS)
    data = blob[NTEXT * PS:]
    assert reset_shared_file(a, "libm") == 0  # nothing private yet
    a.write(lib.data_address, b"A" * (2 * PS))
    a.write(lib.data_address + 3 * PS + 5, b"B")
    invariants.check(k)
    assert reset_shared_file(a, "libm") == 3
    assert a.read(lib.data_address, NDATA * PS) == data
    assert a.vm_region(lib.data_address).is_submap
    a.write(lib.data_address, b"again")  # the data is copy-on-write again after the reset
    assert a.read(lib.data_address, 5) == b"again"
    assert bytes(k.pm.frames[lib.object.pages[NTEXT]][:5]) == data[:5]
    with pytest.raises(InvalidArgument):
        reset_shared_file(a, "nosuchlib")


def test_new_regions_do_not_disturb_old_tasks(k):
    """VM Shared Memory Server Subsystem: "a new set of shared regions can be created with new_system_shared_regions so that
    no new tasks will use old libraries." ... "(Users of old shared libraries will still work"."""
    old_blob, new_blob = _blob(3), _blob(5)
    first = new_system_shared_regions(k)
    old = k.task_create("old")
    lib1 = load_shared_file(old, "libFoo", old_blob, text_size=NTEXT * PS)
    old.write(lib1.data_address, b"mine")
    child = old.fork("old-child")  # descendants keep the old set
    second = new_system_shared_regions(k)
    assert second is not first and k.shared_regions is second
    new = k.task_create("new")
    assert new.shared_regions is second and child.shared_regions is first
    assert "libFoo" not in second.libraries
    lib2 = load_shared_file(new, "libFoo", new_blob, text_size=NTEXT * PS)
    assert lib2 is not lib1 and lib2.object is not lib1.object
    assert new.read(lib2.text_address, NTEXT * PS) == new_blob[:NTEXT * PS]
    assert old.read(lib1.text_address, NTEXT * PS) == old_blob[:NTEXT * PS]
    assert child.read(lib1.text_address, 4) == old_blob[:4]
    assert old.read(lib1.data_address, 4) == b"mine"
    assert child.read(lib1.data_address, 4) == b"mine"
    assert sorted(t.name for t in lib1.users()) == ["old", "old-child"]
    assert [t.name for t in lib2.users()] == ["new"]


def test_a_loaded_library_cannot_be_unloaded(k):
    """VM Shared Memory Server Subsystem: "Once such a file is loaded, other tasks can then depend on it, so a shared
    library cannot be unshared." """
    a = k.task_create("a")
    lib = load_shared_file(a, "libBar", _blob(), text_size=NTEXT * PS)
    with pytest.raises(InvalidArgument, match="cannot be unshared"):
        unload_shared_file(a, "libBar")
    regions = a.shared_regions
    with pytest.raises(InvalidArgument, match="permanent"):
        regions.text.vm_deallocate(lib.base, PS)
    with pytest.raises(InvalidArgument, match="permanent"):
        regions.data.vm_deallocate(lib.base, PS)
    with pytest.raises(InvalidArgument, match="already loaded"):
        load_shared_file(a, "libBar", _blob(9), text_size=NTEXT * PS)
    a.terminate()  # even with no user left the library stays loaded for later tasks
    b = k.task_create("b")
    assert load_shared_file(b, "libBar", lib.object) is lib
    assert b.read(lib.text_address, 4) == _blob()[:4]


def test_mappings_layout_pager_and_pressure(k):
    """The Kernel Programming Guide's load_shared_file takes the file's mappings: read-only ones go to the text
    region, writable ones to the data region; a library is a file paged through its pager, so its
    text survives memory pressure (paged out clean, paged back in)."""
    blob = _blob(13, 12)
    pager = library_pager(blob)
    t = k.task_create("t")
    maps = [SharedFileMapping(0, 4 * PS, "r-x"), SharedFileMapping(4 * PS, 2 * PS, "rw-"),
            SharedFileMapping(6 * PS, 6 * PS, "r--")]
    lib = load_shared_file(t, "libLayout", pager, mappings=maps)
    assert lib.text_address == SHARED_TEXT_REGION_BASE and lib.data_address == SHARED_DATA_REGION_BASE
    assert lib.text_size == 10 * PS and lib.data_size == 2 * PS
    assert t.read(lib.text_address, 4 * PS) == blob[:4 * PS]
    assert t.read(lib.text_address + 4 * PS, 6 * PS) == blob[6 * PS:]
    assert t.read(lib.data_address, 2 * PS) == blob[4 * PS:6 * PS]
    t.write(lib.data_address, b"dirty")
    lib2 = load_shared_file(t, "libNext", _blob(17), text_size=NTEXT * PS)
    assert lib2.base >= lib.base + 10 * PS  # placed after, never overlapping
    k.pageout()
    assert not lib.object.pages, "clean text pages should have been freed under pressure"
    assert t.read(lib.text_address, 4 * PS) == blob[:4 * PS]
    assert t.read(lib.data_address, 5) == b"dirty"
    assert t.read(lib.data_address + 5, PS - 5) == blob[4 * PS + 5:5 * PS]
    with pytest.raises(InvalidArgument):
        load_shared_file(t, "libBad", pager, mappings=[SharedFileMapping(100, PS, "r-x")])
    with pytest.raises(InvalidArgument):
        load_shared_file(t, "", blob, text_size=PS)
    with pytest.raises(InvalidArgument):
        load_shared_file(t, "libNoLayout", blob)


def test_use_pmap_on_named_regions(k):
    """Memory Maps Explained: "the use_pmap field indicates whether a submap's low-level mappings should be
    shared among all tasks into which the submap is mapped. If the mappings are not shared, then
    the structure of the map is shared among all tasks, but the actual contents of the pages are
    not." """
    region = k.make_named_region(8 * PS, name="r")
    off = region.vm_allocate(2 * PS)
    a, b, c = (k.task_create(n) for n in "abc")
    ya = a.vm_map(region)  # nested (use_pmap true)
    yb = b.vm_map(region)
    yc = c.vm_map(region, copy=True)  # use_pmap false: structure shared, contents private
    a.write(ya + off, b"shared")
    f = k.stats.faults
    assert b.read(yb + off, 6) == b"shared" and k.stats.faults == f
    assert c.read(yc + off, 6) == b"shared"
    c.write(yc + off, b"C")
    assert c.read(yc + off, 6) == b"Chared" and a.read(ya + off, 6) == b"shared"
    # a structure change shows in every task that maps the submap
    off2 = region.vm_allocate(PS)
    b.write(yb + off2, b"new")
    assert a.read(ya + off2, 3) == b"new" and c.read(yc + off2, 3) == b"new"
    # a task changing its own protection is unnested; the others keep the shared translations
    a.vm_protect(ya, 8 * PS, "r")
    assert not a.map.lookup(ya).use_pmap and b.map.lookup(yb).use_pmap
    with pytest.raises(ProtectionFailure):
        a.write(ya + off, b"x")
    b.write(yb + off, b"S")
    assert a.read(ya + off, 6) == b"Shared"
    with pytest.raises(InvalidArgument):
        a.vm_map(region, copy=True, use_pmap=True)


# ---- a state machine over the shared region, with forks, resets, pressure and new regions --------

from hypothesis import settings, strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

LIBS = {name: _blob(seed, NTEXT + NDATA) for name, seed in (("libA", 3), ("libB", 5), ("libC", 7))}


class SharedRegionMachine(RuleBasedStateMachine):
    """Every task sees each loaded library's text, and its own view of the data: the file's
    bytes overlaid with what it (or the parent it was forked from) wrote since its last reset."""

    def __init__(self):
        super().__init__()
        self.k = Kernel(memory="2MiB", wired_accounting=True)
        self.tasks = []  # (task, {lib: {offset: byte}})
        self.libs = {}  # (regions, name) -> LoadedLibrary
        self.kmem = {}  # address -> (size, fill byte)
        self.devices = []  # (task, address, numpy buffer)

    def teardown(self):
        self.k.close()

    @rule(new_regions=st.booleans())
    def create_task(self, new_regions):
        if len(self.tasks) >= 6:
            return
        if new_regions:
            new_system_shared_regions(self.k)
        self.tasks.append((self.k.task_create(f"t{len(self.tasks)}"), {}))

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), name=st.sampled_from(sorted(LIBS)))
    def load(self, data, name):
        t, view = data.draw(st.sampled_from(self.tasks))
        regs = t.shared_regions or self.k.shared_regions
        key = (id(regs), name)
        if key in self.libs:
            lib = load_shared_file(t, name, self.libs[key].object)
        else:
            lib = load_shared_file(t, name, LIBS[name], text_size=NTEXT * PS)
            self.libs[(id(t.shared_regions), name)] = lib
        view.setdefault(name, {})

    def _pick(self, data):
        cands = [(t, v, n) for t, v in self.tasks for n in v]
        return data.draw(st.sampled_from(cands)) if cands else None

    def _lib(self, t, name):
        return self.libs[(id(t.shared_regions), name)]

    @rule(data=st.data(), off=st.integers(0, NDATA * PS - 1), val=st.integers(0, 255))
    def write_data(self, data, off, val):
        got = self._pick(data)
        if got is None:
            return
        t, view, name = got
        t.write(self._lib(t, name).data_address + off, bytes([val]))
        view[name][off] = val

    @rule(data=st.data())
    def reset(self, data):
        got = self._pick(data)
        if got is None:
            return
        t, view, name = got
        reset_shared_file(t, name)
        view[name] = {}

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def fork(self, data):
        if len(self.tasks) >= 6:
            return
        t, view = data.draw(st.sampled_from(self.tasks))
        self.tasks.append((t.fork(), {n: dict(v) for n, v in view.items()}))

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def terminate(self, data):
        i = data.draw(st.integers(0, len(self.tasks) - 1))
        self.tasks.pop(i)[0].terminate()

    @rule()
    def pressure(self):
        self.k.pageout()

    @rule(data=st.data())
    def check_view(self, data):
        got = self._pick(data)
        if got is None:
            return
        t, view, name = got
        lib = self._lib(t, name)
        blob = LIBS[name]
        assert t.read(lib.text_address, NTEXT * PS) == blob[:NTEXT * PS]
        want = bytearray(blob[NTEXT * PS:])
        for off, val in view[name].items():
            want[off] = val
        assert t.read(lib.data_address, NDATA * PS) == bytes(want)

    @rule(kind=st.sampled_from(["wired", "pageable", "aligned", "contig"]),
          npages=st.sampled_from([1, 2, 4, 8]), fill=st.integers(1, 255))
    def kmem_alloc(self, kind, npages, fill):
        from vmcore.errors import ResourceShortage
        from vmcore.kmem import (
            kernel_map, kmem_alloc, kmem_alloc_aligned, kmem_alloc_contig, kmem_alloc_pageable,
            kmem_write,
        )

        km = kernel_map(self.k)
        fn = {"wired": kmem_alloc, "pageable": kmem_alloc_pageable,
              "aligned": kmem_alloc_aligned, "contig": kmem_alloc_contig}[kind]
        try:
            a = fn(km, npages * PS)
        except ResourceShortage:
            assert kind == "contig"
            return
        kmem_write(km, a, bytes([fill]) * (npages * PS))
        self.kmem[a] = (npages * PS, fill)

    @precondition(lambda self: self.kmem)
    @rule(data=st.data())
    def kmem_free(self, data):
        from vmcore.kmem import kernel_map, kmem_free, kmem_read

        a = data.draw(st.sampled_from(sorted(self.kmem)))
        size, fill = self.kmem.pop(a)
        km = kernel_map(self.k)
        assert kmem_read(km, a, size) == bytes([fill]) * size
        kmem_free(km, a, size)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), off=st.integers(0, 2 * PS - 1), val=st.integers(0, 255))
    def device(self, data, off, val):
        import numpy as np

        from vmcore.device_pager import DevicePager

        t, _ = data.draw(st.sampled_from(self.tasks))
        live = [(tt, a, b) for tt, a, b in self.devices if tt is t]
        if not live:
            buf = np.zeros(2 * PS, dtype=np.uint8)
            self.devices.append((t, t.vm_map_object(DevicePager(buf)), buf))
            live = self.devices[-1:]
        _, a, buf = live[0]
        t.write(a + off, bytes([val]))
        assert buf[off] == val

    @rule(data=st.data())
    def thread(self, data):
        from vmcore.wired import thread_create

        if self.tasks:
            thread_create(data.draw(st.sampled_from(self.tasks))[0],
                          blocked=data.draw(st.booleans()))

    @invariant()
    def consistent(self):
        self.devices = [(t, a, b) for t, a, b in self.devices if t.alive]
        for t, a, buf in self.devices:
            assert t.read(a, 2 * PS) == buf.tobytes()
        invariants.check(self.k)
        acct = self.k.wired_acct
        vs = self.k.vm_stat()
        assert acct.deficit_pages == 0 and acct.pages_held >= acct.pages_needed()
        assert vs["Pages wired down"] >= acct.pages_held


TestSharedRegionMachine = SharedRegionMachine.TestCase
TestSharedRegionMachine.settings = settings(max_examples=1000 if os.environ.get("VM_SOAK") == "1"
                                            else 25, stateful_step_count=30, deadline=None)
