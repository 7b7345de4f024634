"""Invariant guarded: the working set detection subsystem is on by default under the mach policy:
every fault is recorded for its task, and a pagein from any pager brings in, in one request, the
adjacent pages this task touched before (xnu.md 1.4 path B), never bridging a resident page, never
for RANDOM behaviour, never for a task that did not touch them, and never under the reference
policies (whose miss counts stay those of a plain cache simulator)."""

import pytest

from vmcore import invariants
from vmcore.kernel import Kernel
from vmcore.pager import Pager, PagerKind, PagerResult

PS = 4096


class FilePager(Pager):
    """A read-only 'file' of n pages in memory, vnode kind, counting its requests."""

    kind = PagerKind.VNODE

    def __init__(self, npages: int):
        self.page_size = PS
        self.data = b"".join(bytes([i % 251]) * PS for i in range(npages))
        self.requests: list[tuple[int, int]] = []

    def size(self):
        return len(self.data)

    def data_request(self, offset, pages):
        self.requests.append((offset // PS, len(pages)))
        for i, b in enumerate(pages):
            b[:] = self.data[offset + i * PS:offset + (i + 1) * PS]
        return [PagerResult.OK] * len(pages)

    def data_return(self, offset, pages):
        return [PagerResult.OK] * len(pages)

    def has_page(self, offset):
        return offset < len(self.data)


def test_fault_asks_the_working_set_which_adjacent_pages_to_bring_in_for_all_pagers():
    """Kernel Programming Guide, "Working Set Detection Subsystem": "This subsystem is called on a VM fault; it
    keeps a profile of the fault behavior of each task from the time of its inception. In
    addition, just before a page request, the fault code asks this subsystem which adjacent
    pages should be brought in, and then makes a single large request to the pager. ... This
    occurs for all pagers."

    Anonymous memory (the default pager) written, paged out and read again comes back in one
    request per cluster of pages the task touched; a file read again after its pages were
    dropped comes back the same way."""
    k = Kernel(memory="4MiB")
    t = k.task_create("app")
    assert k.working_set is k.tws is not None
    n = 32
    a = t.vm_allocate(n * PS)
    for i in range(n):
        t.write(a + i * PS, bytes([i]) * 8)
    assert k.tws.pages(t) == n
    k.pageout()
    st0 = k.vm_stat()
    for i in range(n):
        assert t.read(a + i * PS, 8) == bytes([i]) * 8
    st = k.vm_stat()
    requests = st["Pagein requests"] - st0["Pagein requests"]
    assert requests == 1, requests  # all 32 touched pages in one request
    assert st["Hard faults"] - st0["Hard faults"] == 1
    assert st["Cluster pageins"] - st0["Cluster pageins"] == n - 1
    assert st["Pageins"] - st0["Pageins"] == n  # each clustered page counts when first touched
    assert st["Pages reactivated"] == st0["Pages reactivated"]
    # a file (the vnode pager), past the launch window's blind read-ahead
    fp = FilePager(64)
    f = t.vm_map_object(fp, prot="r")
    k.clock.advance(60.0)
    for i in range(0, 20):
        t.read(f + i * PS, 1)
    assert len(fp.requests) == 20  # no history yet: one page per request
    obj = t.map.lookup(f).object
    for q in list(obj.pages):
        k.page_free(obj.pages[q])
    fp.requests.clear()
    t.read(f + 5 * PS, 1)
    assert fp.requests == [(0, 20)]  # forward to page 19, backward to page 0: one request
    invariants.check(k)
    k.close()


def test_clusters_follow_this_tasks_history_only():
    """Kernel Programming Guide, Working Set Detection Subsystem: "since it is based upon the application's previous behavior, it tends to pull in
    pages that would probably have otherwise been needed later." Each task's clusters follow its
    own faults: pages of a shared object that only another task touched are left out (a
    one-page hole is bridged, xnu.md 1.4), a task with no history gets one page per request,
    RANDOM behaviour turns clustering off, and the reference policies never cluster."""
    k = Kernel(memory="4MiB")
    p = k.task_create("parent")
    a = p.vm_allocate(64 * PS)
    for i in (0, 1, 2, 4, 5, 9, 10, 12):
        p.write(a + i * PS, bytes([i]))
    p.vm_inherit(a, 64 * PS, "share")
    c = p.fork("c")
    d = p.fork("d")
    for i in (3, 6, 7, 8):
        c.write(a + i * PS, bytes([i]))
    obj = p.map.lookup(a).object
    assert c.map.lookup(a).object is obj is d.map.lookup(a).object
    k.pageout()
    n0 = k.vm_stat()["Pagein requests"]
    p.read(a, 1)  # forward over 1, 2, (3: a hole in p's history), 4, 5; stops at 6-7
    assert k.vm_stat()["Pagein requests"] == n0 + 1
    assert sorted(obj.pages) == [0, 1, 2, 3, 4, 5]
    d.read(a + 12 * PS, 1)  # d touched nothing: one page
    assert k.vm_stat()["Pagein requests"] == n0 + 2 and 11 not in obj.pages
    assert 13 not in obj.pages
    c.read(a + 8 * PS, 1)  # c's own history: 6, 7, 8
    assert k.vm_stat()["Pagein requests"] == n0 + 3
    assert sorted(obj.pages) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 12]
    assert [c.read(a + i * PS, 1)[0] for i in range(13)] == list(range(11)) + [0, 12]
    t = p
    # RANDOM: no cluster even over touched pages
    t.vm_behavior_set(a, 64 * PS, "random")
    k.pageout()
    n0 = k.vm_stat()["Pagein requests"]
    t.read(a, 1)
    t.read(a + PS, 1)
    assert k.vm_stat()["Pagein requests"] == n0 + 2
    invariants.check(k)
    k.close()
    for policy in ("lru", "fifo", "clock"):
        kr = Kernel(memory="1MiB", policy=policy)
        assert kr.tws is None and kr.working_set is None
        tr = kr.task_create("t")
        b = tr.vm_allocate(8 * PS)
        for i in range(8):
            tr.write(b + i * PS, b"y")
        kr.pageout()
        n0 = kr.vm_stat()["Pagein requests"]
        tr.read(b, 8 * PS)
        assert kr.vm_stat()["Pagein requests"] == n0 + 8, policy
        kr.close()


@pytest.mark.parametrize("terminate", [True])
def test_terminate_forgets_the_working_set(terminate):
    """Kernel Programming Guide, Working Set Detection Subsystem: the subsystem "keeps a profile of the fault behavior of each task from the time
    of its inception": a new task starts empty, a terminated task's record goes."""
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    t.read(a, 4 * PS)
    assert k.tws.pages(t) == 4 and k.tws.pages(k.task_create("u")) == 0
    t.terminate()
    assert k.tws.pages(t) == 0
    k.close()
