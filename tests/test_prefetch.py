"""Invariant guarded: vmcore.prefetch.object_prefetch (the model side of seeding) brings a range's
absent pages in with one pager request per contiguous run, never re-reads or disturbs resident
pages, leaves the new pages speculative (inactive, clustered) so their first touch is a soft fault
counted as a pagein, aborts pages the pager does not have, and never evicts to make room."""

from vmcore import invariants
from vmcore.kernel import Kernel
from vmcore.pager import Pager, PagerKind, PagerResult
from vmcore.prefetch import object_prefetch
from vmcore.resident import INACTIVE

PS = 4096


class FilePager(Pager):
    kind = PagerKind.VNODE

    def __init__(self, npages):
        self.page_size = PS
        self.data = bytearray(b"".join(bytes([i % 251]) * PS for i in range(npages)))
        self.requests = []

    def size(self):
        return len(self.data)

    def data_request(self, offset, pages):
        self.requests.append((offset // PS, len(pages)))
        out = []
        for i, b in enumerate(pages):
            o = offset + i * PS
            if o >= len(self.data):
                out.append(PagerResult.BAD)
            else:
                b[:] = self.data[o:o + PS]
                out.append(PagerResult.OK)
        return out

    def data_return(self, offset, pages):
        return [PagerResult.OK] * len(pages)

    def has_page(self, offset):
        return offset < len(self.data)


def test_prefetch_runs_skip_resident_and_are_speculative():
    k = Kernel(memory="4MiB")
    pager = FilePager(64)
    t = k.task_create(name="p")
    a = t.vm_map_object(pager, prot="r")
    obj = t.map.lookup(a).object
    t.vm_behavior_set(a, 64 * PS, "random")
    t.read(a + 10 * PS, 1)  # page 10 resident, 1 request
    f10 = obj.pages[10]
    pager.requests.clear()
    landed = object_prefetch(k, obj, 4, 16)  # 4..19, page 10 resident
    assert pager.requests == [(4, 6), (11, 9)]
    assert landed == [p for p in range(4, 20) if p != 10]
    assert obj.pages[10] == f10
    for p in landed:
        f = obj.pages[p]
        assert k.pm.queue[f] == INACTIVE and k.pm.clustered[f] and not k.pm.referenced[f]
    assert k.prefetch_counts == {"requests": 2, "pages": 15}
    invariants.check(k)
    st0 = k.vm_stat()
    assert t.read(a + 5 * PS, 1) == bytes([5])
    st1 = k.vm_stat()
    assert st1["Soft faults"] - st0["Soft faults"] == 1
    assert st1["Hard faults"] == st0["Hard faults"]
    assert st1["Pageins"] - st0["Pageins"] == 1
    # past EOF: BAD pages are aborted, nothing fails
    pager.requests.clear()
    assert object_prefetch(k, obj, 60, 8) == [60, 61, 62, 63]
    assert all(p not in obj.pages for p in range(64, 68))
    invariants.check(k)


def test_prefetch_never_evicts():
    k = Kernel(memory="1MiB")  # 256 frames
    pager = FilePager(1024)
    t = k.task_create(name="p")
    a = t.vm_map_object(pager, prot="r")
    obj = t.map.lookup(a).object
    free = len(k.pm.free)
    landed = object_prefetch(k, obj, 0, 1024)
    assert len(landed) < free
    assert k.vm_stat()["Pageouts"] == 0 and k.stats.scans == 0
    assert len(k.pm.free) >= k.free_target
    invariants.check(k)
