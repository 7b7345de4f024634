"""The device pager (docs/mach-vm.md#pagers): maps non-general-purpose memory with its cache attributes.

Owns: `DevicePager` (a vmcore.pager.Pager of kind DEVICE over a numpy buffer standing in for a
frame buffer or a PCI aperture), the WIMG cache-attribute bits (`VM_MEM_*`, `VM_WIMG_*`,
`parse_wimg`, `wimg_str`), and `device_object_populate` / `device_object_release`, which the
kernel calls when a VM object over a DevicePager is made and when it dies.

Kernel Programming Guide, "Pagers": "The device pager allows you to map non-general-purpose memory with the cache
characteristics required for that memory (WIMG). Non-general-purpose memory includes physical
addresses that are mapped onto hardware other than main memory - for example, PCI memory, frame
buffer memory, and so on."

How it maps onto the model (XNU device_pager.c + vm_page_grab_fictitious): the object's pages are
*fictitious* frames (vmcore.resident: frame numbers past RAM) whose bytes ARE the device buffer, so
a task's store lands in the buffer and a change of the buffer (the "hardware") shows through the
mapping at once. They are entered when the object is made, take no RAM frame, sit on no page
queue, are never paged out, never deactivated, never copied on write: a copy-on-write mapping of
device memory is refused, and fork shares a device mapping whatever its inheritance. The object
keeps the pager's WIMG bits and Task.vm_region reports them (tag "IOKit", detail "WIMG=...").

WIMG bits (osfmk/mach/vm_param.h / PowerPC): W write-through 0x8, I cache-inhibited 0x4,
M memory-coherent 0x2, G guarded 0x1; VM_WIMG_DEFAULT = M, VM_WIMG_IO = I|M|G,
VM_WIMG_WTHRU = W|M|G, VM_WIMG_WCOMB = I|M. The model keeps and reports them; it has no cache, so
they change no timing.

Caveats: device mappings need the mach policy (the reference policies track RAM frames only);
the buffer must be a whole number of pages; the pager does not copy or own the buffer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vmcore.errors import InvalidArgument
from vmcore.pager import Buffer, Pager, PagerKind, PagerResult

VM_MEM_GUARDED = 0x1
VM_MEM_COHERENT = 0x2
VM_MEM_NOT_CACHEABLE = 0x4
VM_MEM_WRITE_THROUGH = 0x8
VM_WIMG_DEFAULT = VM_MEM_COHERENT
VM_WIMG_COPYBACK = VM_MEM_COHERENT
VM_WIMG_IO = VM_MEM_COHERENT | VM_MEM_NOT_CACHEABLE | VM_MEM_GUARDED
VM_WIMG_WTHRU = VM_MEM_WRITE_THROUGH | VM_MEM_COHERENT | VM_MEM_GUARDED
VM_WIMG_WCOMB = VM_MEM_NOT_CACHEABLE | VM_MEM_COHERENT

_NAMED = {"default": VM_WIMG_DEFAULT, "copyback": VM_WIMG_COPYBACK, "io": VM_WIMG_IO,
          "wthru": VM_WIMG_WTHRU, "wcomb": VM_WIMG_WCOMB}
_LETTERS = (("W", VM_MEM_WRITE_THROUGH), ("I", VM_MEM_NOT_CACHEABLE), ("M", VM_MEM_COHERENT),
            ("G", VM_MEM_GUARDED))


def parse_wimg(value) -> int:
    """WIMG bits from an int 0..15, a name (default, copyback, io, wthru, wcomb) or letters
    ("IMG", "-IMG", "W-MG")."""
    if isinstance(value, bool):
        raise InvalidArgument(f"WIMG {value!r} is not cache attributes")
    if isinstance(value, (int, np.integer)):
        if 0 <= int(value) <= 15:
            return int(value)
        raise InvalidArgument(f"WIMG {value!r} is not 4 bits (W=8 I=4 M=2 G=1)")
    if isinstance(value, str):
        v = value.strip()
        if v.lower() in _NAMED:
            return _NAMED[v.lower()]
        bits = 0
        for ch in v.upper():
            hit = [b for letter, b in _LETTERS if letter == ch]
            if hit:
                bits |= hit[0]
            elif ch != "-":
                raise InvalidArgument(
                    f"WIMG {value!r}: use letters W, I, M, G (or -) or one of {sorted(_NAMED)}")
        if v:
            return bits
    raise InvalidArgument(f"WIMG {value!r} is not cache attributes")


def wimg_str(bits: int) -> str:
    """"-IMG" style, plus the XNU name when there is one: "-IMG (io)"."""
    s = "".join(letter if bits & b else "-" for letter, b in _LETTERS)
    names = [n for n, b in _NAMED.items() if b == bits and n != "copyback"]
    return f"{s} ({names[0]})" if names else s


class DevicePager(Pager):
    """A memory object over device memory: `buffer` (a writable numpy array or bytearray, a whole
    number of pages) with cache attributes `wimg` (default VM_WIMG_IO)."""

    kind = PagerKind.DEVICE

    def __init__(self, buffer, wimg=VM_WIMG_IO, page_size: int = 4096, name: str = "device"):
        if isinstance(buffer, np.ndarray):
            arr = buffer.reshape(-1).view(np.uint8) if buffer.flags.c_contiguous else None
            if arr is None:
                raise InvalidArgument("device buffer must be a C-contiguous numpy array")
        elif isinstance(buffer, (bytearray, memoryview)):
            arr = np.frombuffer(buffer, dtype=np.uint8)
        else:
            raise InvalidArgument(
                f"device buffer of type {type(buffer).__name__} is not a numpy array or bytearray")
        if not arr.flags.writeable:
            raise InvalidArgument("device buffer is read-only; device memory must be writable")
        if arr.size == 0 or arr.size % page_size:
            raise InvalidArgument(
                f"device buffer of {arr.size} bytes is not a whole number of {page_size}-byte pages")
        self.buffer = arr
        self.page_size = page_size
        self.wimg = parse_wimg(wimg)
        self.name = name
        self.npages = arr.size // page_size
        self.requests = 0

    def page(self, i: int) -> memoryview:
        """The device page i itself (a writable view into the buffer)."""
        ps = self.page_size
        return memoryview(self.buffer[i * ps:(i + 1) * ps])

    def data_request(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        """Copy device bytes out (for UPL readers; the kernel maps the pages directly)."""
        self.requests += 1
        out = []
        for i, buf in enumerate(pages):
            p = offset // self.page_size + i
            if 0 <= p < self.npages and offset % self.page_size == 0:
                buf[:] = self.page(p)
                out.append(PagerResult.OK)
            else:
                out.append(PagerResult.BAD)
        return out

    def data_return(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        self.requests += 1
        out = []
        for i, buf in enumerate(pages):
            p = offset // self.page_size + i
            if 0 <= p < self.npages:
                self.page(p)[:] = buf
                out.append(PagerResult.OK)
            else:
                out.append(PagerResult.ERROR)
        return out

    def has_page(self, offset: int) -> bool:
        return offset % self.page_size == 0 and 0 <= offset // self.page_size < self.npages

    def size(self) -> int:
        return self.npages * self.page_size

    def __repr__(self) -> str:
        return f"<DevicePager {self.name!r} {self.npages}p WIMG={wimg_str(self.wimg)}>"


def device_object_populate(kernel, obj) -> None:
    """Enter every page of a device object as a fictitious frame over the device buffer
    (device_pager_data_request + vm_object_page_map, done once at object creation)."""
    pager = obj.pager
    if kernel.policy is not None:
        raise InvalidArgument(
            f"device memory needs the mach policy: the {kernel.policy_name!r} policy tracks RAM "
            f"frames only")
    if pager.page_size != kernel.page_size:
        raise InvalidArgument(f"device pager page size {pager.page_size} != kernel's "
                              f"{kernel.page_size}")
    n = min(obj.npages, pager.npages)
    pm = kernel.pm
    frames = pm.add_fictitious([pager.page(i) for i in range(n)])
    for i, f in enumerate(frames):
        obj.pages[i] = f
        pm.owner[f] = obj
        pm.obj_id[f] = obj.id
        pm.pidx[f] = i


def device_object_release(kernel, obj) -> None:
    """The device object dies: unmap and retire its fictitious frames (nothing is written back:
    the buffer is the memory)."""
    pm = kernel.pm
    for f in list(obj.pages.values()):
        if pm.pv[f]:
            kernel.pmap_disconnect(f)
        pm.release_fictitious(f)
    obj.pages.clear()


def is_device(obj) -> bool:
    return obj.pager is not None and obj.pager.kind is PagerKind.DEVICE
