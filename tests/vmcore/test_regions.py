"""Invariant guarded: vm_region / regions report what vmmap shows: bounds,
protections, inheritance, behaviour, share mode (NUL / PRV / COW / SHM / ALI), resident, dirty and
swapped page counts; vm_stat has the macOS keys and format_vm_stat the 10.4 layout (8.1)."""

from vmcore.kernel import Kernel
from vmcore.stats import VM_STAT_KEYS

PS = 4096


def test_region_records_and_share_modes():
    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    a = t.vm_allocate(4 * PS)
    r = t.vm_region(a)
    assert (r.start, r.end, r.protection, r.max_protection) == (a, a + 4 * PS, "rw-", "rwx")
    assert (r.inheritance, r.behavior, r.share_mode) == ("copy", "default", "NUL")
    t.write(a, b"x" * 2 * PS)
    r = t.vm_region(a - PS if a > PS else a)
    assert r.share_mode == "PRV" and (r.resident, r.dirty, r.swapped) == (2, 2, 0)
    k.pageout()
    r = t.vm_region(a)
    assert (r.resident, r.swapped) == (0, 2)
    c = t.fork()
    assert t.vm_region(a).share_mode == "COW" and c.vm_region(a).share_mode == "COW"
    h = k.make_memory_entry(t, a, PS, "rw")
    b = t.vm_map(h)
    assert t.vm_region(b).share_mode == "ALI"
    o = k.task_create("o")
    o.vm_map(h)
    assert t.vm_region(b).share_mode == "S/A"
    assert len(t.regions()) == 2
    assert "SM=" in r.format() and "rw-/rwx" in r.format()


def test_vm_stat_keys_and_format():
    k = Kernel(memory="1MiB")
    s = k.vm_stat()
    for key in VM_STAT_KEYS + ("Hard faults", "Soft faults", "Pageout failures"):
        assert key in s
    assert s["Pages free"] == 256
    text = k.format_vm_stat().splitlines()
    assert text[0] == "Mach Virtual Memory Statistics: (page size of 4096 bytes)"
    assert text[1] == f"{'Pages free:':<25s} {256:10d}."
    assert text[5].startswith('"Translation faults":')
    assert text[-1].startswith("Object cache:")
    assert len(text) == 12


def test_object_cache_lookups_and_hits():
    """Kernel Programming Guide, "Mac OS X VM Overview": "Implicitly, each VM object is associated with a given
    pager through its memory object." Mapping a pager looks its VM object up in the object cache
    (XNU's vm_object_enter): the second mapping of one pager is a hit and shares the first's
    object; vm_stat's last line counts the lookups and hits (xnu.md 4.3, 8.1)."""
    from vmcore.testing import MemoryPager

    k = Kernel(memory="1MiB")
    t = k.task_create("t")
    u = k.task_create("u")
    pager = MemoryPager(4 * PS)
    a = t.vm_map_object(pager, size=4 * PS)
    t.write(a, b"one object")
    b = u.vm_map_object(pager, size=4 * PS)
    assert t.map.lookup(a).object is u.map.lookup(b).object
    assert u.read(b, 10) == b"one object"
    other = t.vm_map_object(MemoryPager(4 * PS), size=4 * PS)
    assert t.map.lookup(other).object is not t.map.lookup(a).object
    st = k.vm_stat()
    assert (st["Object cache lookups"], st["Object cache hits"]) == (3, 1)
    assert k.format_vm_stat().splitlines()[-1] == "Object cache: 1 hits of 3 lookups (33% hit rate)"
    # once every mapping is gone the object dies and the next lookup misses
    t.vm_deallocate(a, 4 * PS)
    u.vm_deallocate(b, 4 * PS)
    c = u.vm_map_object(pager, size=4 * PS)
    assert u.map.lookup(c).object.alive
    assert k.vm_stat()["Object cache hits"] == 1 and k.vm_stat()["Object cache lookups"] == 4
    from vmcore import invariants

    invariants.check(k)
