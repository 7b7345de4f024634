"""Wired-memory accounting against Memory Management in Mac OS X, "Wired Memory", table 2."""

from __future__ import annotations

import math

import pytest

from vmcore import invariants
from vmcore.errors import InvalidArgument
from vmcore.kernel import Kernel
from vmcore.shared_region import load_shared_file
from vmcore.wired import (
    enable_wired_accounting, format_wired_report, port_allocate, port_deallocate, thread_create,
    thread_terminate, wired_report,
)

PS = 4096
TABLES = 3 * (4 << 20) // 64  # 3/64 of a 4 MiB memory


def _bytes(rep: dict, name: str) -> int:
    return next(r["bytes"] for r in rep["resources"] if r["resource"] == name)


def test_wired_totals_equal_the_tables_sums():
    """Wired Memory, table 2: process 16 kilobytes; thread blocked in a continuation 5 kilobytes,
    blocked 21 kilobytes; Mach port 116 bytes; mapping 32 bytes; library 2 kilobytes plus 200
    bytes for each task that uses it; memory region 160 bytes. "Wired data structures are also
    associated with the physical page and map tables ... Both of these entities scale with the
    amount of available physical memory." """
    k = Kernel(memory="4MiB", wired_accounting=True)
    base = k.vm_stat()["Pages wired down"]
    assert base == math.ceil(TABLES / PS)  # only the tables at boot
    tasks = [k.task_create(f"t{i}") for i in range(5)]
    blocked = [thread_create(t, blocked=True) for t in tasks[:3]]
    cont = thread_create(tasks[4])
    port_allocate(tasks[0], 10)
    lib = load_shared_file(tasks[0], "libSystem", bytes(6 * PS), text_size=4 * PS)
    for t in tasks[1:3]:
        load_shared_file(t, "libSystem", lib.object)
    ne = k.make_memory_entry(tasks[3], tasks[3].vm_allocate(2 * PS), PS)
    x = tasks[4].vm_allocate(7 * PS)
    tasks[4].write(x, bytes(7 * PS))  # 7 translations
    tasks[0].read(lib.text_address, 4 * PS)  # 4 nested (shared) translations, whoever maps them
    tasks[1].read(lib.text_address, 4 * PS)
    rep = wired_report(k)
    # tasks 0-2 map the shared region (2 entries: they loaded a library); tasks 3 and 4 one each
    regions = sum(len(t.map.entries) for t in tasks)
    assert regions == 3 * 2 + 2
    expect = {
        "processes": 5 * 16 * 1024,
        "threads in a continuation": (5 + 1) * 5 * 1024,  # each task's main thread + `cont`
        "threads blocked": 3 * 21 * 1024,
        # task ports, thread ports, allocated ports, the named entry, the shared region's two
        "Mach ports": (5 + 9 + 10 + 1 + 2) * 116,
        "mappings": (7 + 4) * 32,
        "libraries": 2 * 1024 + 3 * 200,
        "memory regions": regions * 160,
        "page and map tables": TABLES,
    }
    got = {r["resource"]: r["bytes"] for r in rep["resources"]}
    assert got == expect
    assert rep["total_bytes"] == sum(expect.values())
    assert rep["pages_needed"] == rep["pages_held"] == math.ceil(sum(expect.values()) / PS)
    vs = k.vm_stat()
    assert vs["Pages wired down"] == rep["pages_held"]  # vm_stat includes it
    assert vs["Pages wired (kernel resources)"] == rep["pages_held"]
    text = format_wired_report(rep)
    assert "libraries (3 users)" in text and "Pages wired down" in text
    # state changes move the charge by the table's amounts
    blocked[0].block_in_continuation()
    assert _bytes(wired_report(k), "threads blocked") == 2 * 21 * 1024
    thread_terminate(cont)
    assert _bytes(wired_report(k), "threads in a continuation") == 6 * 5 * 1024
    port_deallocate(tasks[0], 10)
    assert _bytes(wired_report(k), "Mach ports") == (5 + 8 + 1 + 2) * 116
    ne.release()
    with pytest.raises(InvalidArgument):
        port_deallocate(tasks[0], 1)
    with pytest.raises(InvalidArgument):
        thread_terminate(cont)
    invariants.check(k)
    k.close()


def test_wired_memory_is_reclaimed_lazily_below_the_pageout_threshold():
    """Wired Memory: "Wired memory is not immediately released back to the free list when it becomes
    invalid. Instead it is "garbage collected" when the free-page count falls below the threshold
    that triggers page out events." """
    k = Kernel(memory="4MiB", wired_accounting=True)
    tasks = [k.task_create(f"t{i}") for i in range(16)]
    for t in tasks:
        thread_create(t, blocked=True)
    held = k.wired_acct.pages_held
    for t in tasks[1:]:
        t.terminate()
    a = k.wired_acct
    assert a.pages_held == held, "wired pages were released at once"
    assert a.excess_pages > 0 and k.vm_stat()["Pages wired down"] == held
    # touch memory while free stays above free_min: still not reclaimed
    t = tasks[0]
    x = t.vm_allocate(len(k.pm.free) * PS)
    n_safe = len(k.pm.free) - k.free_min - 2
    t.write(x, bytes(n_safe * PS))
    assert len(k.pm.free) >= k.free_min and a.pages_held == held
    # one more page past the threshold: the pageout daemon wakes and collects first
    t.write(x + n_safe * PS, bytes(4 * PS))
    assert a.reclaimed_pages > 0 and a.collections >= 1
    assert a.pages_held == a.pages_needed() < held
    assert k.vm_stat()["Pages wired down"] == a.pages_held
    invariants.check(k)
    k.close()


def test_accounting_scales_with_memory_and_is_off_by_default():
    """ "when you add memory to a system the wired memory increases even if nothing else changes":
    the tables are 3/64 of memory, from the seed's 14 MB at 64 MB and 17 MB at 128 MB."""
    small = Kernel(memory="2MiB", wired_accounting=True)
    big = Kernel(memory="8MiB", wired_accounting=True)
    assert small.vm_stat()["Pages wired down"] * 4 == big.vm_stat()["Pages wired down"]
    assert (17 - 14) / (128 - 64) == 3 / 64
    off = Kernel(memory="2MiB")
    assert off.vm_stat()["Pages wired down"] == 0 and off.wired_acct is None
    with pytest.raises(InvalidArgument, match="wired accounting is off"):
        wired_report(off)
    acct = enable_wired_accounting(off)
    assert enable_wired_accounting(off) is acct and off.vm_stat()["Pages wired down"] > 0
    for kern in (small, big, off):
        invariants.check(kern)
        kern.close()
