"""Small shared vocabulary of the model: sizes, protections, inheritance, behaviours, fault kinds.

Owns: `parse_size` ("64MiB" -> bytes; the one size grammar of every command: bytes or a number
with B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB, P/PB/PiB, E/EB/EiB, all binary multiples),
`parse_page_size` (a power of two from 512 to 1MiB), the Mach protection bits (VM_PROT_READ/WRITE/EXECUTE) with
their "rwx" spelling, `Inherit` (VM_INHERIT_SHARE / COPY / NONE), `Behavior` (VM_BEHAVIOR_DEFAULT /
RANDOM / SEQUENTIAL / RSEQNTL), the vmmap share-mode codes (vm_region.h SM_*), `FaultKind` and the
`FaultEvent` record handed to the kernel's event sink.

Invariants: protections are ints made of the three VM_PROT bits; every parser raises
vmcore.errors.InvalidArgument with one line naming the bad value.
Imports only the standard library and vmcore.errors. Used by every other vmcore module.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

from vmcore.errors import InvalidArgument

VM_PROT_NONE = 0
VM_PROT_READ = 1
VM_PROT_WRITE = 2
VM_PROT_EXECUTE = 4
VM_PROT_ALL = 7
VM_PROT_DEFAULT = VM_PROT_READ | VM_PROT_WRITE

#: MAX_UPL_TRANSFER: the largest UPL / pageout cluster, in pages (xnu-792)
MAX_UPL_TRANSFER = 256
#: tws_build_cluster's max_length in 10.2-10.4: 256 KB (xnu-344 to xnu-792)
TWS_MAX_CLUSTER_BYTES = 0x40000
#: VM_SUPER_CLUSTER: the default pager's largest read or write (xnu-792)
VM_SUPER_CLUSTER_BYTES = 0x40000
#: vm_default_behind (xnu-792 deactivate-behind)
VM_DEFAULT_BEHIND = 256

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40,
          "tib": 1 << 40, "p": 1 << 50, "pb": 1 << 50, "pib": 1 << 50, "e": 1 << 60, "eb": 1 << 60,
          "eib": 1 << 60}
#: the page sizes the model (and every command's --page-size) accepts: powers of two in this range
PAGE_SIZE_MIN = 512
PAGE_SIZE_MAX = 1 << 20


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes from an int or a string such as "64MiB", "512KiB", "1GiB", "4096"."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number of bytes or a string like '64MiB', got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            n = float(m.group(1)) * _UNITS[m.group(2).lower()]
            if n == int(n):
                return int(n)
    raise InvalidArgument(f"{what} {value!r} is not a size (use bytes or e.g. '64MiB', '512KiB', '1GiB')")


def parse_page_size(value: int | str, what: str = "page size") -> int:
    """A page size from an int or a size string ("4096", "16KiB"): a power of two from 512 bytes
    to 1MiB, the range the model's Kernel accepts; InvalidArgument naming the value otherwise."""
    try:
        n = parse_size(value, what)
    except InvalidArgument:
        n = None
    if n is None or n < PAGE_SIZE_MIN or n > PAGE_SIZE_MAX or n & (n - 1):
        raise InvalidArgument(f"{what} {value!r} is not a positive power of two from {PAGE_SIZE_MIN} "
                              f"to 1MiB (e.g. 4096 or 16KiB)")
    return n


def format_size(n: int) -> str:
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f}M"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f}K"
    return f"{n}"


def parse_prot(value: int | str, what: str = "protection") -> int:
    """VM_PROT bits from "rwx"-style strings ("r", "rw", "r-x", "---", "") or an int 0..7."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} {value!r} is not a protection")
    if isinstance(value, int):
        if 0 <= value <= VM_PROT_ALL:
            return value
        raise InvalidArgument(f"{what} {value!r} is not a protection (bits r=1 w=2 x=4)")
    if isinstance(value, str):
        bits = 0
        for ch in value.strip().lower():
            if ch == "r":
                bits |= VM_PROT_READ
            elif ch == "w":
                bits |= VM_PROT_WRITE
            elif ch == "x":
                bits |= VM_PROT_EXECUTE
            elif ch == "-":
                continue
            else:
                raise InvalidArgument(f"{what} {value!r} is not a protection (letters r, w, x, -)")
        return bits
    raise InvalidArgument(f"{what} {value!r} is not a protection")


def prot_str(p: int) -> str:
    return ("r" if p & VM_PROT_READ else "-") + ("w" if p & VM_PROT_WRITE else "-") + \
        ("x" if p & VM_PROT_EXECUTE else "-")


class Inherit(enum.IntEnum):
    """vm_inherit_t: what a child task gets of a map entry at fork (docs/mach-vm.md#fork)."""

    SHARE = 0
    COPY = 1
    NONE = 2

    @property
    def label(self) -> str:
        return {0: "shared", 1: "copy", 2: "none"}[int(self)]

    @classmethod
    def parse(cls, value: "str | int | Inherit") -> "Inherit":
        if isinstance(value, Inherit):
            return value
        names = {"shared": cls.SHARE, "share": cls.SHARE, "copy": cls.COPY, "none": cls.NONE}
        if isinstance(value, str) and value.lower() in names:
            return names[value.lower()]
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
            return cls(value)
        raise InvalidArgument(f"inheritance {value!r} is not one of shared, copy, none")


class Behavior(enum.IntEnum):
    """vm_behavior_t: the paging reference behaviour of a range (docs/mach-vm.md#faults)."""

    DEFAULT = 0
    RANDOM = 1
    SEQUENTIAL = 2
    RSEQNTL = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: "str | int | Behavior") -> "Behavior":
        if isinstance(value, Behavior):
            return value
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2, 3):
            return cls(value)
        raise InvalidArgument(
            f"behavior {value!r} is not one of default, random, sequential, rseqntl")


# vmmap share modes (osfmk/mach/vm_region.h SM_* and their vmmap spellings)
SM_COW = "COW"
SM_PRIVATE = "PRV"
SM_EMPTY = "NUL"
SM_SHARED = "SHM"
SM_PRIVATE_ALIASED = "ALI"
SM_SHARED_ALIASED = "S/A"


class FaultKind(enum.Enum):
    """How a vm_fault was resolved (each is counted in vm_stat)."""

    SOFT = "soft"  # page resident in the object chain: map it (maybe reactivate)
    HARD = "hard"  # the pager supplied the page (a pagein)
    ZERO_FILL = "zero_fill"  # no object in the chain has the page: a fresh zero page
    COW = "cow"  # a write copied a page up the shadow chain (the source was resident or paged in)


class FaultEvent(NamedTuple):
    """One fault, as handed to the kernel's event sink (working-set detection, vmcore.workingset)."""

    task: object
    object_id: int  # the VM object that supplied (or received) the page
    offset: int  # byte offset of the page in that object
    kind: FaultKind
    address: int  # the faulting virtual address (page aligned)
    write: bool = False
    base_object_id: int = -1  # bottom of the shadow chain (TWS keys by the backing object)
    base_offset: int = -1


def round_page(n: int, page_size: int) -> int:
    return (n + page_size - 1) // page_size * page_size


def trunc_page(n: int, page_size: int) -> int:
    return n // page_size * page_size
