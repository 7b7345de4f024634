"""vm_stat counters (struct vm_statistics, xnu-792) and the 10.4 `vm_stat` text layout.

Owns: `VMStats` (plain int counters bumped by fault.py, pageout.py and the kernel; queue lengths are
read from PhysicalMemory when a snapshot is taken), `VM_STAT_KEYS` (the macOS labels, in vm_stat's
order) and `format_vm_stat`.

Invariants: counters only grow; "Translation faults" = soft + hard + zero-fill faults (a COW fault is
also one of those three: its source page was resident (soft) or paged in (hard)).
Who calls: Kernel.vm_stat() / Kernel.format_vm_stat(); swapd may read a snapshot dict.
"""

from __future__ import annotations

#: the ten labels of 10.4's vm_stat, in its order
VM_STAT_KEYS = (
    "Pages free", "Pages active", "Pages inactive", "Pages wired down", "Translation faults",
    "Pages copy-on-write", "Pages zero filled", "Pages reactivated", "Pageins", "Pageouts",
)


class VMStats:
    """Event counters. Plain attributes (bumped in hot paths), snapshot via as_dict()."""

    __slots__ = ("faults", "cow_faults", "zero_fill", "reactivations", "pageins", "pageouts",
                 "hard_faults", "soft_faults", "pageout_failures", "cluster_pageins",
                 "pagein_requests", "pageout_requests", "deactivations", "scans", "evictions",
                 "collapses", "bypasses", "lookups", "hits", "clean_frees", "deactivate_behind",
                 "submap_copies", "copy_pushes")

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {
            "Translation faults": self.faults,
            "Pages copy-on-write": self.cow_faults,
            "Pages zero filled": self.zero_fill,
            "Pages reactivated": self.reactivations,
            "Pageins": self.pageins,
            "Pageouts": self.pageouts,
            "Hard faults": self.hard_faults,
            "Soft faults": self.soft_faults,
            "Faults cow": self.cow_faults,
            "Pageout failures": self.pageout_failures,
            "Cluster pageins": self.cluster_pageins,
            "Pagein requests": self.pagein_requests,
            "Pageout requests": self.pageout_requests,
            "Pages deactivated": self.deactivations,
            "Deactivate behind": self.deactivate_behind,
            "Clean pages freed": self.clean_frees,
            "Evictions": self.evictions,
            "Pageout scans": self.scans,
            "Shadow collapses": self.collapses,
            "Shadow bypasses": self.bypasses,
            "Object cache lookups": self.lookups,
            "Object cache hits": self.hits,
            "Submap copies": self.submap_copies,
            "Copy-object pushes": self.copy_pushes,
        }


def format_vm_stat(stat: dict[str, int], page_size: int) -> str:
    """The 10.4 snapshot: title, `%-25s %10u.` per counter, then the object cache line."""
    lines = [f"Mach Virtual Memory Statistics: (page size of {page_size} bytes)"]
    for key in VM_STAT_KEYS:
        label = '"Translation faults":' if key == "Translation faults" else key + ":"
        lines.append(f"{label:<25s} {stat[key] % (1 << 32):10d}.")
    lookups = stat.get("Object cache lookups", 0)
    hits = stat.get("Object cache hits", 0)
    pct = (100 * hits // lookups) if lookups else 0
    lines.append(f"Object cache: {hits} hits of {lookups} lookups ({pct}% hit rate)")
    return "\n".join(lines)
