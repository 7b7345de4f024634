"""Invariant guarded: the kernel honours every pager result (vmcore.pager): ABSENT -> look down the
chain / zero fill; BAD -> KERN_INVALID_ADDRESS at the faulting address; ERROR -> PagerIOError;
AGAIN on pageout keeps the page dirty and resident, counted in "Pageout failures", and loses
nothing; anonymous objects get their pager lazily at first pageout; dead objects and deallocated
ranges discard / terminate their pager's pages; a pager breaking the contract is reported."""

import pytest

from vmcore import invariants
from vmcore.errors import ContractViolation, InvalidAddress, PagerIOError, ResourceShortage
from vmcore.kernel import Kernel
from vmcore.pager import Pager, PagerKind, PagerResult
from vmcore.testing import MemoryPager

PS = 4096


class FilePager(Pager):
    """A read-write 'file' of n pages held in memory, with vnode kind (BAD past EOF)."""

    kind = PagerKind.VNODE

    def __init__(self, data: bytes, fail_read=False):
        self.page_size = PS
        self.data = bytearray(data)
        self.requests = []
        self.fail_read = fail_read

    def size(self):
        return len(self.data)

    def data_request(self, offset, pages):
        self.requests.append((offset, len(pages)))
        out = []
        for i, b in enumerate(pages):
            o = offset + i * PS
            if self.fail_read:
                self.last_error = "EIO reading the file"
                out.append(PagerResult.ERROR)
            elif o >= len(self.data):
                out.append(PagerResult.BAD)
            else:
                chunk = self.data[o:o + PS]
                b[:len(chunk)] = chunk
                b[len(chunk):] = bytes(PS - len(chunk))
                out.append(PagerResult.OK)
        return out

    def data_return(self, offset, pages):
        for i, b in enumerate(pages):
            o = offset + i * PS
            if o < len(self.data):
                n = min(PS, len(self.data) - o)
                self.data[o:o + n] = bytes(b[:n])
        return [PagerResult.OK] * len(pages)

    def has_page(self, offset):
        return offset < len(self.data)


class FullPager(MemoryPager):
    """Swap that is full: every pageout is refused with AGAIN (ENOSPC)."""

    terminated = 0
    discarded = []

    def data_return(self, offset, pages):
        self.last_error = "ENOSPC writing swapfile0"
        return [PagerResult.AGAIN] * len(pages)


class TrackingPager(MemoryPager):
    live: list = []

    def __init__(self, size):
        super().__init__(size, PS)
        self.discards = []
        self.terminated = False
        TrackingPager.live.append(self)

    def data_discard(self, offset, npages):
        self.discards.append((offset, npages))
        super().data_discard(offset, npages)

    def terminate(self):
        self.terminated = True
        super().terminate()


def test_file_mapping_shared_private_bad_and_clustering():
    content = bytes(range(256)) * 16 * 10  # 10 pages
    fp = FilePager(content + b"tail")
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    obj = k.object_create(len(fp.data), pager=fp, internal=False, name="file")
    shared = t.vm_map_object(obj, size=12 * PS)
    private = t.vm_map_object(obj, size=11 * PS, copy=True)
    k.object_deallocate(obj)  # the mappings hold their own references
    assert t.read(shared + 3 * PS, 16) == content[3 * PS:3 * PS + 16]
    # pre-heat in the launch window: one request brought a cluster
    assert fp.requests[0][1] > 1 and k.vm_stat()["Cluster pageins"] > 0
    assert t.read(shared + 10 * PS, 4) == b"tail"
    t.write(private + PS, b"private!")
    assert bytes(fp.data[PS:PS + 8]) == content[PS:PS + 8]
    t.write(shared + 2 * PS, b"shared!")
    assert t.read(private + 2 * PS, 7) == b"shared!"  # untouched private pages show the file
    k.pageout()
    assert bytes(fp.data[2 * PS:2 * PS + 7]) == b"shared!"
    assert t.read(private + PS, 8) == b"private!"
    with pytest.raises(InvalidAddress) as ei:
        t.read(shared + 11 * PS, 1)  # page 11 is past EOF: the pager says BAD
    assert "past the end" in str(ei.value)
    r = t.vm_region(shared)
    assert r.tag == "mapped file" and r.share_mode in ("SHM", "PRV", "ALI", "S/A")
    assert t.vm_region(private).share_mode == "COW"
    invariants.check(k)


def test_pager_error_is_pager_io_error():
    fp = FilePager(bytes(4 * PS), fail_read=True)
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_map_object(fp, prot="r")
    with pytest.raises(PagerIOError) as ei:
        t.read(a, 1)
    assert "EIO" in str(ei.value)
    invariants.check(k)


def test_again_keeps_pages_dirty_and_counts_failures():
    k = Kernel(memory="1MiB", default_pager=lambda size: FullPager(size, PS))
    t = k.task_create("t")
    a = t.vm_allocate(20 * PS)
    t.write(a, b"keep me" * 1000)
    k.pageout()
    st = k.vm_stat()
    assert st["Pageout failures"] >= 20 and st["Pageouts"] == 0
    assert t.read(a, 7) == b"keep me"
    invariants.check(k)
    # memory full of unpageable dirty pages: a clear ResourceShortage, nothing lost
    big = t.vm_allocate(400 * PS)
    with pytest.raises(ResourceShortage) as ei:
        for i in range(400):
            t.write(big + i * PS, b"x")
    assert "ENOSPC" in str(ei.value)
    assert t.read(a, 7) == b"keep me"
    invariants.check(k)


def test_lazy_pager_discard_and_terminate():
    TrackingPager.live = []
    k = Kernel(memory="1MiB", default_pager=TrackingPager)
    t = k.task_create("t")
    a = t.vm_allocate(16 * PS)
    t.write(a, b"q" * 16 * PS)
    assert TrackingPager.live == []  # no pager before the first pageout
    k.pageout()
    (pg,) = TrackingPager.live
    assert pg.resident_in_store == 16
    t.vm_deallocate(a + 4 * PS, 4 * PS)
    assert pg.resident_in_store == 12 and pg.discards
    t.terminate()
    assert pg.terminated
    invariants.check(k)


def test_contract_violation_is_reported():
    class Liar(MemoryPager):
        def data_return(self, offset, pages):
            return [PagerResult.OK]  # one result for many pages

    k = Kernel(memory="1MiB", default_pager=lambda s: Liar(s, PS))
    t = k.task_create("t")
    a = t.vm_allocate(8 * PS)
    t.write(a, b"x" * 8 * PS)
    with pytest.raises(ContractViolation):
        k.pageout()
