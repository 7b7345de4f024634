"""Invariant guarded: the vmcore model with a swap pool as its default pager runs tasks whose
anonymous memory is many times its physical memory with every byte intact; the swap files grow
(and hold real blocks) while it runs, give their blocks back when the task dies, and the dynamic
pager then removes the extra files at the low-water mark. The model's own hypothesis state machine
(tests/vmcore/test_stateful.py) runs unchanged over a swap pool, with watermark ticks (and so
swapoffs moving live clusters) interleaved, and no byte lost."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as hst
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, rule

from swapd import SwapPool
from swapd.swapmap import loc_cluster, loc_file
from vmcore.clock import ManualClock
from vmcore.errors import PagerIOError
from vmcore.kernel import Kernel

MiB = 1 << 20
PS = 4096
SOAK = os.environ.get("VM_SOAK") == "1"


def pattern(off: int, n: int) -> bytes:
    return hashlib.sha256(off.to_bytes(8, "little")).digest() * (n // 32)


def test_footprint_64x_memory_every_byte_back(tmp_path):
    clock = ManualClock()
    swapdir = str(tmp_path / "vm")
    with SwapPool(swapdir, clock=clock) as pool:
        k = Kernel(memory="1MiB", page_size=PS, default_pager=pool.pager_factory())
        try:
            t = k.task_create("big")
            size = 64 * MiB
            addr = t.vm_allocate(size)
            chunk = 256 * 1024
            for off in range(0, size, chunk):
                t.write(addr + off, pattern(off, chunk))
            st = pool.status()
            assert len(st["files"]) >= 6, "the pool must have grown to hold 64 MiB"
            assert st["total"]["allocated"] >= 60 * MiB, "swap files must hold real blocks"
            assert all(f["allocated"] <= f["size"] for f in st["files"])
            on_disk = sum(os.stat(os.path.join(swapdir, f["name"])).st_blocks * 512
                          for f in st["files"])
            assert on_disk == st["total"]["allocated"]
            for off in range(0, size, chunk):
                assert t.read(addr + off, chunk) == pattern(off, chunk), f"bytes at {off} lost"
            # rewrite every 7th page and read everything again: rewritten pages move
            for off in range(0, size, 7 * PS):
                t.write(addr + off, b"\x5a" * PS)
            for off in range(0, size, chunk):
                want = bytearray(pattern(off, chunk))
                for p in range(off, off + chunk, PS):
                    if p % (7 * PS) == 0:
                        want[p - off:p - off + PS] = b"\x5a" * PS
                assert t.read(addr + off, chunk) == bytes(want)
            vs = k.vm_stat()
            assert vs["Pageouts"] >= size // PS and vs["Pageins"] >= size // PS
            assert pool.status()["pageouts"] == vs["Pageouts"]
            t.terminate()
            st = pool.status()
            assert st["total"]["used_clusters"] == 0 and st["total"]["allocated"] == 0, \
                "a dead task's swap must be freed and punched out"
            assert st["objects"] == 0
            # the dynamic pager gives the extra files back, newest first, one per 11 checks
            nfiles = len(st["files"])
            removed = []
            for _ in range(12 * nfiles):
                clock.advance(3)
                msg = pool.tick()
                if msg:
                    removed.append(msg.split()[1])
            assert removed == [f"swapfile{i}" for i in range(nfiles - 1, 1, -1)], removed
            assert len(pool.status()["files"]) == 2  # XNU's low-water table: unreachable with two files
        finally:
            k.close()
    assert not [n for n in os.listdir(swapdir) if n.startswith("swapfile")]


def test_fork_cow_and_swap(tmp_path):
    with SwapPool(str(tmp_path / "vm"), scale=1 / 256) as pool:
        k = Kernel(memory="1MiB", page_size=PS, default_pager=pool.pager_factory())
        try:
            parent = k.task_create("parent")
            size = 8 * MiB
            a = parent.vm_allocate(size)
            for off in range(0, size, 64 * 1024):
                parent.write(a + off, pattern(off, 64 * 1024))
            child = parent.fork()
            for off in range(0, size, 2 * 64 * 1024):  # child rewrites half
                child.write(a + off, b"\x01" * (64 * 1024))
            for off in range(0, size, 64 * 1024):
                assert parent.read(a + off, 64 * 1024) == pattern(off, 64 * 1024)
                want = b"\x01" * (64 * 1024) if off % (128 * 1024) == 0 else pattern(off, 64 * 1024)
                assert child.read(a + off, 64 * 1024) == want
            child.terminate()
            parent.terminate()
            assert pool.status()["total"]["used_slots"] == 0
        finally:
            k.close()


def test_swap_file_deleted_under_a_task_is_a_clear_fault_error(tmp_path):
    swapdir = str(tmp_path / "vm")
    with SwapPool(swapdir) as pool:
        k = Kernel(memory="1MiB", page_size=PS, default_pager=pool.pager_factory())
        try:
            t = k.task_create("victim")
            a = t.vm_allocate(4 * MiB)
            for off in range(0, 4 * MiB, 64 * 1024):
                t.write(a + off, pattern(off, 64 * 1024))
            os.unlink(os.path.join(swapdir, "swapfile0"))
            with pytest.raises(PagerIOError) as ei:
                t.read(a, PS)  # the first pages went to swapfile0
            msg = str(ei.value)
            assert "KERN_MEMORY_ERROR" in msg
            assert os.path.join(swapdir, "swapfile0") + " was deleted" in msg
            st = pool.status()
            assert not st["healthy"] and st["files"][0]["state"] == "damaged"
        finally:
            k.close()


def test_kernel_keeps_pages_dirty_when_the_pool_is_full(tmp_path):
    """A size-capped pool: pageout gets AGAIN, the kernel keeps the pages, nothing is lost;
    once the task frees memory the rest can go out."""
    from vmcore.errors import ResourceShortage

    with SwapPool(str(tmp_path / "vm"), max_bytes=1 * MiB) as pool:
        k = Kernel(memory="1MiB", page_size=PS, default_pager=pool.pager_factory())
        try:
            t = k.task_create("hog")
            a = t.vm_allocate(4 * MiB)
            written = 0
            with pytest.raises(ResourceShortage):
                for off in range(0, 4 * MiB, PS):
                    t.write(a + off, pattern(off, PS))
                    written = off + PS
            assert written >= MiB, "the pool's 1 MiB plus some memory must have been used"
            st = pool.status()
            assert st["failures"] > 0 and st["growth_failures"] > 0
            assert "is full and cannot grow" in k.last_pageout_error
            # the task gives memory back: its last 1 MiB (resident, dirty) goes away
            keep = written - MiB
            t.vm_deallocate(a + keep, 4 * MiB - keep)
            for off in range(0, keep, PS):
                assert t.read(a + off, PS) == pattern(off, PS), f"page at {off} lost"
        finally:
            k.close()


# ---- the model's state machine over a swap pool -----------------------------------------------

_spec = importlib.util.spec_from_file_location(
    "_vmcore_stateful_for_swapd",
    Path(__file__).resolve().parents[1] / "vmcore" / "test_stateful.py")
_stateful = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_stateful)


class SwapVMStateMachine(_stateful.VMStateMachine):
    """The vmcore state machine with swapd as the default pager: 64 KiB first swap file (so the
    pool grows often), low-water removal after 2 checks (so swapoff moves live clusters), and
    memory at the mach policy's minimum (97 + 32 pages) so that pageout to swap is frequent."""

    memory_pages = 130

    def make_kernel(self) -> Kernel:
        self.swapdir = tempfile.mkdtemp(prefix="swapd-stateful-")
        self.swap_clock = ManualClock()
        self.pool = SwapPool(self.swapdir, scale=1 / 1024, lo_checks=2, clock=self.swap_clock,
                             reserve_pages=4)
        return Kernel(memory=self.memory_pages * PS, page_size=PS,
                      default_pager=self.pool.pager_factory())

    def teardown(self):
        try:
            super().teardown()
            status = self.pool.status()
            assert status["total"]["used_slots"] == 0 and status["objects"] == 0, \
                "closing the kernel must free every swap slot"
        finally:
            self.pool.close()
            shutil.rmtree(self.swapdir, ignore_errors=True)

    @rule()
    def swap_tick(self):
        self.swap_clock.advance(3)
        self.pool.tick()

    @rule(data=hst.data())
    def swapoff_one(self, data):
        """Empty any file (not only the newest) into the others, moving live clusters."""
        number = data.draw(hst.sampled_from(sorted(self.pool.space.files)), label="swapfile")
        self.pool.swapoff(number)

    @invariant()
    def swap_bookkeeping(self):
        pool = self.pool
        owners = {}
        pages_mapped = 0
        for pager in pool._pagers.values():
            pages_mapped += pager.map.pages
            for _, loc, _ in pager.map:
                assert loc not in owners, f"swap cluster {loc:#x} owned twice"
                owners[loc] = pager
                assert pool.space.file(loc_file(loc)).bitmap[loc_cluster(loc)] == 1
        status = pool.status()
        assert status["healthy"]
        assert status["total"]["used_slots"] == pages_mapped
        assert status["total"]["used_clusters"] == len(owners)


SwapVMStateMachine.TestCase.settings = settings(
    max_examples=500 if SOAK else 30,
    stateful_step_count=100 if SOAK else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestSwapVMStateful = SwapVMStateMachine.TestCase
