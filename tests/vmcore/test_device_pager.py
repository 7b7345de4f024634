"""The device pager, against the Kernel Programming Guide's "Pagers": "The device pager allows you to map
non-general-purpose memory with the cache characteristics required for that memory (WIMG).
Non-general-purpose memory includes physical addresses that are mapped onto hardware other than
main memory-for example, PCI memory, frame buffer memory, and so on." """

from __future__ import annotations

import numpy as np
import pytest

from vmcore import invariants
from vmcore.device_pager import (
    VM_WIMG_IO, VM_WIMG_WTHRU, DevicePager, parse_wimg, wimg_str,
)
from vmcore.errors import InvalidArgument
from vmcore.kernel import Kernel
from vmcore.pager import PagerKind
from vmcore.testing import check_pager

PS = 4096


def _fb(pages: int = 8) -> np.ndarray:
    return (np.arange(pages * PS) % 253).astype(np.uint8)


def test_device_pages_survive_memory_pressure_untouched():
    """Device memory is not general-purpose memory: never paged out, never in a page queue, and
    the mapping is the device's own bytes (a store reaches the buffer, the hardware's change shows
    through)."""
    k = Kernel(memory="1MiB")
    fb = _fb()
    before = fb.copy()
    dp = DevicePager(fb, wimg="io", name="framebuffer")
    t = k.task_create("t")
    a = t.vm_map_object(dp)
    assert t.read(a, 8 * PS) == before.tobytes()
    frames = [int(x) for x in t.map.lookup(a).pmap]
    assert min(frames) >= k.nframes, "device pages took RAM frames"
    free0 = len(k.pm.free)
    t.write(a + PS + 3, b"pixel")
    assert bytes(fb[PS + 3:PS + 8]) == b"pixel"
    fb[5 * PS] = 0xEE  # the device changes its memory behind the mapping
    # pressure: anonymous memory four times the size of RAM
    x = t.vm_allocate(4 * k.nframes * PS)
    for off in range(0, 4 * k.nframes * PS, PS):
        t.write(x + off, b"z")
    assert k.stats.pageouts > k.nframes
    assert [int(v) for v in t.map.lookup(a).pmap] == frames, "device translations were removed"
    assert t.read(a + 5 * PS, 1) == b"\xee"
    assert t.read(a + PS + 3, 5) == b"pixel"
    expect = before.copy()
    expect[PS + 3:PS + 8] = np.frombuffer(b"pixel", np.uint8)
    expect[5 * PS] = 0xEE
    assert (fb == expect).all()
    assert len(k.pm.free) <= free0  # the device mapping never fed the free list
    vs = k.vm_stat()
    assert vs["Pages wired down"] == 0, "device memory is not RAM: it is not counted as wired"
    invariants.check(k)
    k.close()


def test_device_pages_never_copied_on_write_and_wimg_reported():
    """Device pages are never copied: fork shares the mapping, copy mappings are refused; the
    cache attributes (WIMG) are kept and reported in the region listing."""
    k = Kernel(memory="1MiB")
    fb = _fb(4)
    t = k.task_create("t")
    a = t.vm_map_object(DevicePager(fb, wimg=VM_WIMG_WTHRU, name="pci0"), inheritance="copy")
    child = t.fork()
    child.write(a, b"C")
    assert t.read(a, 1) == b"C" and fb[0] == ord("C")
    assert k.stats.cow_faults == 0
    with pytest.raises(InvalidArgument, match="copy-on-write"):
        t.vm_map_object(DevicePager(_fb(1), name="x"), copy=True)
    with pytest.raises(InvalidArgument, match="inherited by copy"):
        t.vm_inherit(a, PS, "copy")
    h = k.make_memory_entry(t, a, PS)
    with pytest.raises(InvalidArgument, match="copy-on-write"):
        child.vm_map(h, copy=True)
    h.release()
    r = t.vm_region(a)
    assert r.tag == "IOKit" and "WIMG=W-MG (wthru)" in r.detail and "pci0" in r.detail
    assert r.resident == 4
    assert "IOKit" in r.format() and "WIMG" in r.format()
    invariants.check(k)
    t.terminate()
    child.terminate()
    invariants.check(k)
    # 4 pages + the 1 of the refused copy mapping (made, then released)
    assert len(k.pm.fict_free) == 5 and all(o is None for o in k.pm.owner[k.nframes:])
    # retired fictitious frame numbers are reused
    t2 = k.task_create("t2")
    b = t2.vm_map_object(DevicePager(_fb(2), wimg="default"))
    assert "WIMG=--M- (default)" in t2.vm_region(b).detail
    assert k.pm.ntotal == k.nframes + 5
    invariants.check(k)
    k.close()


def test_wimg_bits_and_bad_input():
    assert parse_wimg("io") == VM_WIMG_IO == parse_wimg("-IMG") == parse_wimg(7)
    assert wimg_str(VM_WIMG_IO) == "-IMG (io)"
    assert wimg_str(0) == "----"
    for bad in (16, -1, "xyz", "", True, 1.5):
        with pytest.raises(InvalidArgument):
            parse_wimg(bad)
    with pytest.raises(InvalidArgument, match="whole number"):
        DevicePager(np.zeros(PS + 1, np.uint8))
    with pytest.raises(InvalidArgument, match="read-only"):
        ro = np.zeros(PS, np.uint8)
        ro.flags.writeable = False
        DevicePager(ro)
    with pytest.raises(InvalidArgument):
        DevicePager(b"immutable bytes")
    k = Kernel(memory="1MiB", policy="lru")
    t = k.task_create("t")
    with pytest.raises(InvalidArgument, match="mach policy"):
        t.vm_map_object(DevicePager(_fb(1)))
    invariants.check(k)
    k.close()


def test_device_pager_keeps_the_pager_contract():
    """The device pager is a vmcore.pager.Pager of kind DEVICE (data_request copies device bytes
    out; pages past the aperture are BAD)."""
    fb = _fb(8)
    check_pager(lambda: DevicePager(fb), writable=False)
    assert DevicePager(fb).kind is PagerKind.DEVICE
