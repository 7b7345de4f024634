"""Invariant guarded: the per-object swap map is sparse (chunks exist only while they map
something), loc == NONE iff mask == 0, its page count equals the set mask bits, and iteration
returns every mapping in object-cluster order."""

from __future__ import annotations

import random

import pytest

from swapd.swapmap import CHUNK, NONE, SwapMap, loc_cluster, loc_file, make_loc


def test_location_packing_round_trips():
    for fno, cl in [(0, 0), (1, 5), (61, (1 << 32) - 1)]:
        loc = make_loc(fno, cl)
        assert (loc_file(loc), loc_cluster(loc)) == (fno, cl)


def test_set_get_clear_and_counts():
    m = SwapMap()
    assert m.get(123) == (NONE, 0) and len(m) == 0 and m.pages == 0
    assert m.set(5, make_loc(0, 9), 0b1011) == (NONE, 0)
    assert m.get(5) == (make_loc(0, 9), 0b1011)
    assert len(m) == 1 and m.pages == 3
    assert m.set(5, make_loc(1, 2), 0b1111) == (make_loc(0, 9), 0b1011)
    assert m.pages == 4 and len(m) == 1
    assert m.clear(5) == (make_loc(1, 2), 0b1111)
    assert len(m) == 0 and m.pages == 0 and not m._chunks, "an empty chunk must be dropped"


def test_bad_entries_refused():
    m = SwapMap()
    with pytest.raises(ValueError):
        m.set(0, NONE, 1)
    with pytest.raises(ValueError):
        m.set(0, make_loc(0, 1), 0)
    with pytest.raises(ValueError):
        m.set(0, make_loc(0, 1), 256)


def test_against_a_dict_model():
    rng = random.Random(4)
    m = SwapMap()
    model: dict[int, tuple[int, int]] = {}
    for _ in range(5000):
        ocl = rng.choice([rng.randrange(3 * CHUNK), rng.randrange(1 << 40)])
        if rng.random() < 0.6:
            mask = rng.randrange(1, 16)
            loc = make_loc(rng.randrange(4), rng.randrange(1000))
            assert m.set(ocl, loc, mask) == model.get(ocl, (NONE, 0))
            model[ocl] = (loc, mask)
        else:
            assert m.clear(ocl) == model.pop(ocl, (NONE, 0))
    assert list(m) == [(k, *model[k]) for k in sorted(model)]
    assert len(m) == len(model)
    assert m.pages == sum(bin(mask).count("1") for _, mask in model.values())
    f2 = [e for e in m if loc_file(e[1]) == 2]
    assert m.in_file(2) == f2
    assert len(m._chunks) == len({k // CHUNK for k in model})


def test_set_run_equals_cluster_by_cluster_sets():
    rng = random.Random(9)
    a, b = SwapMap(), SwapMap()
    for _ in range(400):
        ocl = rng.randrange(5 * CHUNK)
        count = rng.randint(1, 2 * CHUNK + 3)
        loc = make_loc(rng.randrange(3), rng.randrange(1 << 20))
        if rng.random() < 0.3:
            mask = rng.randrange(1, 16)
            a.set(ocl, loc, mask)
            b.set(ocl, loc, mask)
            continue
        olds = a.set_run(ocl, count, loc, 0b1111)
        want = []
        for q in range(count):
            old = b.set(ocl + q, loc + q, 0b1111)
            if old[1]:
                want.append(old)
        assert olds == want
        assert list(a) == list(b) and len(a) == len(b) and a.pages == b.pages
    with pytest.raises(ValueError):
        a.set_run(0, 1, NONE, 1)


def test_contiguous_finds_exactly_consecutive_full_runs():
    m = SwapMap()
    assert m.set_run(30, 40, make_loc(1, 100), 0b1111) == []
    assert m.contiguous(30, 40, 0b1111) == make_loc(1, 100)
    assert m.contiguous(45, 3, 0b1111) == make_loc(1, 115)
    assert m.contiguous(29, 2, 0b1111) == NONE  # 29 unmapped
    assert m.contiguous(60, 11, 0b1111) == NONE  # 70 unmapped
    m.set(50, make_loc(1, 500), 0b1111)  # no longer consecutive
    assert m.contiguous(49, 3, 0b1111) == NONE and m.contiguous(51, 10, 0b1111) == make_loc(1, 121)
    assert m.contiguous(50, 1, 0b1111) == make_loc(1, 500)
    m.set(40, make_loc(1, 110), 0b0111)  # partly valid
    assert m.contiguous(39, 2, 0b1111) == NONE and m.contiguous(40, 1, 0b0111) == make_loc(1, 110)
    m.set_run(200, 2, make_loc(2, (1 << 32) - 1), 0b1111)  # would cross into "file 3"
    assert m.contiguous(200, 2, 0b1111) == NONE
