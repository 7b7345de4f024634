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
