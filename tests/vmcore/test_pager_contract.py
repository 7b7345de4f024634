"""Invariant guarded: the in-memory pager keeps the vmcore.pager contract (check_pager)."""

from vmcore.testing import MemoryPager, check_pager


def test_memory_pager_contract():
    check_pager(lambda: MemoryPager(1 << 20))


def test_memory_pager_contract_16k_pages():
    check_pager(lambda: MemoryPager(1 << 20, page_size=16384))
