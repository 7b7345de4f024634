"""Invariant guarded: `from vmcore import Kernel` wires the model to its backing stores.
With swap=DIR, anonymous memory many times physical memory round-trips through real swap files,
and closing the kernel leaves no swap file behind."""

import os
import random

import pytest

from vmcore import InvalidArgument, Kernel
from vmcore.testing import MemoryPager


def test_kernel_without_swap_uses_memory_pager():
    with Kernel(memory="1MiB") as k:
        t = k.task_create(name="a")
        a = t.vm_allocate(8 << 20)
        t.write(a + 12345, b"hello")
        k.pageout()
        assert t.read(a + 12345, 5) == b"hello"
        assert k.swap_pool is None


def test_kernel_with_swap_round_trips_and_cleans_up(tmp_path):
    swap = tmp_path / "vm"
    rnd = random.Random(7)
    n = 12 << 20
    data = rnd.randbytes(n)
    with Kernel(memory="1MiB", swap=swap) as k:
        t = k.task_create(name="big")
        a = t.vm_allocate(n)
        for off in range(0, n, 1 << 20):
            t.write(a + off, data[off:off + (1 << 20)])
        files = sorted(p for p in os.listdir(swap) if p.startswith("swapfile"))
        assert len(files) >= 2, "the dynamic pager should have added swap files"
        allocated = sum(os.stat(swap / f).st_blocks * 512 for f in files)
        assert allocated >= n // 2, "swapped-out pages must occupy real blocks"
        assert t.read(a, n) == data
        st = k.vm_stat()
        assert st["Pageouts"] > 0 and st["Pageins"] > 0
        assert st["Swap files"] == len(files)
        # a forked child sees the same bytes, through COW over swapped pages
        child = t.fork()
        child.write(a, b"child")
        assert t.read(a, 5) == data[:5]
        assert child.read(a + 5, 100) == data[5:105]
    assert not [p for p in os.listdir(swap) if p.startswith("swapfile")]


def test_swap_and_default_pager_conflict(tmp_path):
    with pytest.raises(InvalidArgument, match="either swap= or default_pager="):
        Kernel(memory="1MiB", swap=tmp_path / "vm", default_pager=lambda size: MemoryPager(size))


def test_swap_dir_not_writable_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InvalidArgument, match="swap"):
        Kernel(memory="1MiB", swap=f)
