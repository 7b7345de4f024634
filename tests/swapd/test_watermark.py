"""Invariant guarded: the dynamic pager's decisions follow dynamic_pager (system_cmds-279..433): the 64, 64, 128, 256,
512 MiB, 1 GiB size table (scaled, capped, whole clusters), the per-file low-water table, GROW as
soon as free swap is below the hi-water mark, SHRINK only after `lo_checks` consecutive low-water
checks at least `interval` apart (any check at or below the mark resets the count), never SHRINK
with one file, and the swapoff admission rule (100 pages + the file's used pages free elsewhere).
The step function is pure: driven here by explicit times, as a manual clock would."""

from __future__ import annotations

import pytest

from swapd import watermark as wm
from swapd.watermark import Action, WatermarkState, decide

MiB = 1 << 20
CB = 16384


def test_size_table_matches_xnu():
    sizes = [wm.file_size(i, 1.0, CB) for i in range(8)]
    assert sizes == [64 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 512 * MiB] + [1024 * MiB] * 3
    scaled = [wm.file_size(i, 1 / 64, CB) for i in range(7)]
    assert scaled == [1 * MiB, 1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 16 * MiB]


def test_size_cap_and_rounding():
    assert wm.file_size(3, 1.0, CB, cap=10 * MiB + 5) == 10 * MiB  # 1/8 of free space
    assert wm.file_size(0, 1e-9, CB) == CB  # a tiny scale still gets one cluster
    assert wm.file_size(0, 1.0, CB, cap=CB - 1) == 0  # no room for one cluster


def test_low_water_table_matches_xnu():
    sizes = [64 * MiB, 64 * MiB, 128 * MiB, 256 * MiB, 512 * MiB, 1024 * MiB]
    lows = [wm.low_water(i, sizes, wm.HI_WATER_DEFAULT) for i in range(6)]
    # XNU's low-water table: 128, 128, 192, 320, 640, 1280 MiB
    assert lows == [128 * MiB, 128 * MiB, 192 * MiB, 320 * MiB, 640 * MiB, 1280 * MiB]


HI, LO = 100, 1000

# (step name, now, free bytes, files, expected action, expected lo_count afterwards)
SCENARIO = [
    ("first check, between marks", 0.0, 500, 2, Action.HOLD, 0),
    ("below hi-water: grow at once", 0.5, 50, 2, Action.GROW, 0),
    ("above lo, check 1", 3.0, 2000, 3, Action.HOLD, 1),
    ("too soon: not a check", 4.0, 2000, 3, Action.HOLD, 1),
    ("check 2", 6.0, 2000, 3, Action.HOLD, 2),
    ("dips to the mark: reset", 9.0, 1000, 3, Action.HOLD, 0),
    *[(f"check {i}", 9.0 + 3 * i, 5000, 3, Action.HOLD, i) for i in range(1, 11)],
    ("11th consecutive check: shrink", 42.0, 5000, 3, Action.SHRINK, 0),
    ("re-armed: count starts over", 45.0, 5000, 2, Action.HOLD, 1),
]


def test_hysteresis_scenario_table():
    state = WatermarkState()
    for name, now, free, files, action, count in SCENARIO:
        d = decide(state, now=now, free_bytes=free, file_count=files, hi_water=HI, lo_water=LO,
                   lo_checks=11, interval=3.0)
        assert d.action is action, f"{name}: {d.action} ({d.reason})"
        assert d.state.lo_count == count, f"{name}: lo_count {d.state.lo_count}"
        assert d.reason
        state = d.state


@pytest.mark.parametrize("free,files,lo,can_grow,expect", [
    (99, 1, None, True, Action.GROW),
    (99, 5, LO, False, Action.HOLD),  # max files: cannot grow
    (100, 1, None, True, Action.HOLD),  # exactly at hi-water: no growth
    (10**9, 1, None, True, Action.HOLD),  # one file (no lo-water): never shrink
    (10**9, 1, LO, True, Action.HOLD),  # one file: never shrink even with a fixed lo-water
    (10**9, 2, LO, True, Action.SHRINK),
    (LO, 2, LO, True, Action.HOLD),  # must be strictly above lo-water
])
def test_single_decisions(free, files, lo, can_grow, expect):
    state = WatermarkState(lo_count=10, last_check=0.0)  # one check away from a shrink
    d = decide(state, now=3.0, free_bytes=free, file_count=files, hi_water=HI, lo_water=lo,
               lo_checks=11, can_grow=can_grow)
    assert d.action is expect, d.reason


def test_pure_and_no_time_travel():
    s = WatermarkState(lo_count=3, last_check=10.0)
    decide(s, now=20.0, free_bytes=5000, file_count=3, hi_water=HI, lo_water=LO)
    assert s == WatermarkState(lo_count=3, last_check=10.0)
    with pytest.raises(ValueError, match="earlier"):
        decide(s, now=9.0, free_bytes=5000, file_count=3, hi_water=HI, lo_water=LO)


def test_lo_checks_one_shrinks_on_first_check():
    d = decide(WatermarkState(), now=0.0, free_bytes=5000, file_count=2, hi_water=HI,
               lo_water=LO, lo_checks=1)
    assert d.action is Action.SHRINK


def test_swapoff_refusal_rule():
    assert wm.swapoff_refusal(free_pages_elsewhere=164, file_used_pages=64,
                              file_name="swapfile2") is None
    why = wm.swapoff_refusal(free_pages_elsewhere=163, file_used_pages=64, file_name="swapfile2")
    assert why == ("refused to remove swapfile2: the other swap files have 163 free pages, "
                   "need 100 + 64 used in swapfile2 = 164")
