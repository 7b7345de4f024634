"""The dynamic pager's decisions, as pure functions: file sizes, watermarks, grow / shrink / hold.

Owns: XNU's variable sizing table (`file_sizes`, `low_water_table`), the watermark step function
`decide` with its immutable `WatermarkState`, and the swapoff admission rule `swapoff_refusal`.
No I/O, no clock of its own: the caller passes `now` (seconds, any origin), so tests drive it with
a manual clock.

Theory of operation (docs/mach-vm.md#pagers; dynamic_pager.c of system_cmds-279..433, bsd_vm.c):
  * Sizes: 64, 64, 128, 256, 512 MiB, then 1 GiB for every further file, times `scale`, each capped
    (by the caller) at 1/8 of the file system's free space.
  * High water (HI_WAT_ALERT): when free swap falls below `hi_water` bytes (XNU: 40,000,000) the
    dynamic pager adds the next file at once.
  * Low water (LO_WAT_ALERT): a check runs every `interval` seconds (XNU: PF_INTERVAL 3 s); when
    free swap is above the newest file's low-water mark for `lo_checks` consecutive checks (XNU:
    "more than 10", i.e. 11, about 33 s), the newest file is emptied and deleted. The newest file's
    low water is size[N] + size[N-1] (or + size[N-1]/2 once that half exceeds the hi-water
    default), so removing it still leaves more than the hi-water mark free: that gap is the
    hysteresis that keeps the pool from adding and removing the same file over and over.
  * Each alert is one-shot and re-armed after it is handled: a GROW or SHRINK resets the count.
  * swapoff admission (default_pager_backing_store_delete): the pool must keep
    `reserve_pages` (cluster_transfer_minimum, 100 pages) plus the file's used pages free *outside*
    the file, or the removal is refused, with the reason.

Invariants: `decide` never mutates its input and never goes back in time (a `now` earlier than the
last check is a ValueError); SHRINK is never decided with fewer than two files.

Who calls: swapd.pool (tick and growth); tests call it directly, table-driven.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

MiB = 1 << 20
GiB = 1 << 30
MINIMUM_SIZE = 64 * MiB
MAXIMUM_SIZE = 1 * GiB
HI_WATER_DEFAULT = 40_000_000  # bytes of free swap
PF_INTERVAL = 3.0  # seconds between low-water checks
PF_LATENCY = 10  # "more than 10 consecutive checks"
LO_CHECKS_DEFAULT = PF_LATENCY + 1
CLUSTER_TRANSFER_MINIMUM = 100  # pages that must stay free for swapoff
GROWTH = (64 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 512 * MiB, 1 * GiB)


def nominal_size(index: int, scale: float) -> int:
    """Unrounded, uncapped size in bytes of swapfile<index> (XNU's limits[min(index, 5)].size)."""
    return int(GROWTH[min(index, len(GROWTH) - 1)] * scale)


def file_size(index: int, scale: float, cluster_bytes: int, cap: int | None = None) -> int:
    """Size in bytes of swapfile<index>: the scaled growth table, capped at `cap` (e.g. 1/8 of free
    space), rounded down to whole clusters. 0 means "no room for even one cluster"."""
    size = nominal_size(index, scale)
    if cap is not None:
        size = min(size, cap)
    size -= size % cluster_bytes
    if size == 0 and (cap is None or cap >= cluster_bytes):
        size = cluster_bytes  # a tiny scale still gets one cluster
    return max(size, 0)


def low_water(index: int, sizes: list[int], hi_water_default: int) -> int:
    """Free bytes above which swapfile<index> (the newest) may be removed (XNU limits[i].low_water).

    sizes[i] is the size of swapfile<i>. low_water[0] = 2 * size[0]; low_water[i] = size[i] +
    size[i-1], or size[i] + size[i-1] / 2 once size[i-1] / 2 exceeds the hi-water default."""
    if index == 0:
        return 2 * sizes[0]
    prev = sizes[index - 1]
    return sizes[index] + (prev // 2 if prev // 2 > hi_water_default else prev)


class Action(enum.Enum):
    HOLD = "hold"
    GROW = "grow"  # add the next swap file
    SHRINK = "shrink"  # empty and delete the newest swap file


@dataclass(frozen=True)
class WatermarkState:
    """What the step function remembers between checks (nothing else is hidden anywhere)."""

    lo_count: int = 0  # consecutive low-water checks with free swap above the low-water mark
    last_check: float | None = None  # `now` of the last low-water check


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    state: WatermarkState


def decide(state: WatermarkState, *, now: float, free_bytes: int, file_count: int,
           hi_water: int, lo_water: int | None, lo_checks: int = LO_CHECKS_DEFAULT,
           interval: float = PF_INTERVAL, can_grow: bool = True) -> Decision:
    """One step of the dynamic pager.

    `free_bytes`: free swap now; `file_count`: files in the pool; `hi_water`: grow below this;
    `lo_water`: the newest file's low-water mark (None: never shrink); `can_grow`: False when the
    pool may not add a file (max_files reached). Returns the action, a one-line reason, and the new
    state."""
    if state.last_check is not None and now < state.last_check:
        raise ValueError(f"watermark check at {now} is earlier than the last one at "
                         f"{state.last_check}")
    if free_bytes < hi_water:
        if can_grow:
            return Decision(Action.GROW, f"free swap {free_bytes} B < hi-water {hi_water} B",
                            WatermarkState(0, now if state.last_check is None else state.last_check))
        # cannot grow: fall through to the low-water bookkeeping (which will reset the count)
    if state.last_check is not None and now - state.last_check < interval:
        return Decision(Action.HOLD, f"next low-water check at {state.last_check + interval:g}",
                        state)
    above = lo_water is not None and file_count > 1 and free_bytes > lo_water
    count = state.lo_count + 1 if above else 0
    if above and count >= lo_checks:
        return Decision(Action.SHRINK,
                        f"free swap {free_bytes} B > lo-water {lo_water} B for {count} "
                        f"consecutive checks", WatermarkState(0, now))
    if free_bytes < hi_water:
        reason = f"free swap {free_bytes} B < hi-water {hi_water} B but no file can be added"
    elif above:
        reason = f"free swap above lo-water for {count} of {lo_checks} checks"
    else:
        reason = "free swap between the watermarks"
    return Decision(Action.HOLD, reason, replace(state, lo_count=count, last_check=now))


def swapoff_refusal(*, free_pages_elsewhere: int, file_used_pages: int, file_name: str,
                    reserve_pages: int = CLUSTER_TRANSFER_MINIMUM) -> str | None:
    """None if `file_name` may be emptied into the rest of the pool, else the reason it may not:
    the other files must have `reserve_pages` + the file's used pages free."""
    need = reserve_pages + file_used_pages
    if free_pages_elsewhere >= need:
        return None
    return (f"refused to remove {file_name}: the other swap files have {free_pages_elsewhere} free "
            f"pages, need {reserve_pages} + {file_used_pages} used in {file_name} = {need}")
