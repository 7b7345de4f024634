"""Invariant guarded: SwapPager keeps the vmcore.pager contract (check_pager, for every page and
cluster size), writes a run of whole clusters with ONE pwritev and reads a run back with ONE
preadv, never loses or mixes a byte across many objects under random returns / requests /
discards, and frees slots (with hole punching) on discard, on rewrite and on terminate."""

from __future__ import annotations

import os
import random

import pytest

from swapd import swapfile as swapfile_mod
from swapd.swapmap import loc_cluster, loc_file
from swapd_helpers import blank, pages
from vmcore.pager import PagerKind, PagerResult
from vmcore.testing import check_pager

OK, ABSENT, ERROR = PagerResult.OK, PagerResult.ABSENT, PagerResult.ERROR


@pytest.mark.parametrize("page_size,cluster_pages", [(4096, 4), (4096, 1), (4096, 8),
                                                     (16384, 4), (512, 2)])
def test_check_pager_contract(make_pool, page_size, cluster_pages):
    pool = make_pool(page_size=page_size, cluster_pages=cluster_pages)
    factory = pool.pager_factory()
    check_pager(lambda: factory(1 << 22))
    check_pager(lambda: factory(1 << 22), seed=7, npages=300)
    assert pool.status()["total"]["used_clusters"] == 0, "terminate must free every cluster"


def test_kind_and_page_size(make_pool):
    pool = make_pool(page_size=8192)
    p = pool.pager_factory()(1 << 20)
    assert p.kind is PagerKind.DEFAULT and p.page_size == 8192


class Syscalls:
    def __init__(self, monkeypatch):
        self.writes, self.reads = [], []
        real_w, real_r = os.pwritev, os.preadv

        def pwritev(fd, bufs, off):
            self.writes.append((off, len(bufs)))
            return real_w(fd, bufs, off)

        def preadv(fd, bufs, off):
            self.reads.append((off, len(bufs)))
            return real_r(fd, bufs, off)

        monkeypatch.setattr(swapfile_mod.os, "pwritev", pwritev)
        monkeypatch.setattr(swapfile_mod.os, "preadv", preadv)


def test_one_pwritev_per_run_and_one_preadv_back(make_pool, monkeypatch):
    pool = make_pool()
    p = pool.pager_factory()(1 << 24)
    sc = Syscalls(monkeypatch)
    data = pages(64)
    assert p.data_return(0, data) == [OK] * 64
    assert sc.writes == [(0, 64)], "a 64-page pageout of fresh clusters must be one pwritev"
    back = blank(64)
    assert p.data_request(0, back) == [OK] * 64
    assert sc.reads == [(0, 64)], "a 64-page pagein of consecutive slots must be one preadv"
    assert [bytes(b) for b in back] == [bytes(d) for d in data]
    # a cluster-unaligned request: slots 2..9 are consecutive in the file too
    sc.reads.clear()
    back = blank(8)
    assert p.data_request(2 * 4096, back) == [OK] * 8
    assert sc.reads == [(2 * 4096, 8)]
    assert [bytes(b) for b in back] == [bytes(d) for d in data[2:10]]


def test_unaligned_pageout_writes_partial_clusters_in_place(make_pool, monkeypatch):
    pool = make_pool()
    p = pool.pager_factory()(1 << 20)
    first = pages(4, seed=1)
    assert p.data_return(0, first) == [OK] * 4
    loc0 = p.map.get(0)[0]
    sc = Syscalls(monkeypatch)
    second = pages(6, seed=2)  # pages 2..7: partial cluster 0, whole cluster 1
    assert p.data_return(2 * 4096, second) == [OK] * 6
    assert p.map.get(0)[0] == loc0, "a partial cluster is rewritten in place"
    assert len(sc.writes) == 2
    back = blank(8)
    assert p.data_request(0, back) == [OK] * 8
    assert [bytes(b) for b in back] == [bytes(x) for x in first[:2] + second]


def test_holes_and_partial_clusters_are_absent(make_pool):
    pool = make_pool()
    p = pool.pager_factory()(1 << 20)
    assert p.data_return(5 * 4096, pages(1)) == [OK]  # slot 1 of cluster 1 only
    res = p.data_request(0, blank(8))
    assert res == [ABSENT] * 5 + [OK] + [ABSENT] * 2
    assert [p.has_page(i * 4096) for i in range(8)] == [i == 5 for i in range(8)]
    st = pool.status()["total"]
    assert st["used_slots"] == 1 and st["used_clusters"] == 1


def test_rewrite_moves_to_a_new_cluster_and_frees_the_old(make_pool):
    pool = make_pool()
    p = pool.pager_factory()(1 << 20)
    f0 = pool.space.file(0)
    p.data_return(0, pages(8, seed=1))
    old = [p.map.get(k)[0] for k in (0, 1)]
    newer = pages(8, seed=2)
    p.data_return(0, newer)
    new = [p.map.get(k)[0] for k in (0, 1)]
    assert set(old).isdisjoint(new), "whole clusters are rewritten into fresh clusters"
    for loc in old:
        assert f0.bitmap[loc_cluster(loc)] == 0, "the old cluster must be freed"
    assert f0.nclusters - f0.free_clusters == 2 and f0.used_slots == 8
    assert os.stat(f0.path).st_blocks * 512 == 2 * 16384, "old clusters must be punched out"
    back = blank(8)
    p.data_request(0, back)
    assert [bytes(b) for b in back] == [bytes(x) for x in newer]


def test_discard_and_terminate_free_slots_and_blocks(make_pool):
    pool = make_pool()
    p = pool.pager_factory()(1 << 20)
    f0 = pool.space.file(0)
    p.data_return(0, pages(16))
    assert os.stat(f0.path).st_blocks * 512 == 16 * 4096
    p.data_discard(4096, 2)  # part of cluster 0: the cluster stays
    assert f0.nclusters - f0.free_clusters == 4 and f0.used_slots == 14
    assert p.data_request(0, blank(4)) == [OK, ABSENT, ABSENT, OK]
    p.data_discard(4 * 4096, 8)  # clusters 1 and 2 entirely
    assert f0.nclusters - f0.free_clusters == 2
    assert os.stat(f0.path).st_blocks * 512 == 2 * 16384
    p.terminate()
    assert f0.free_clusters == f0.nclusters and f0.used_slots == 0
    assert os.stat(f0.path).st_blocks == 0
    assert pool.status()["objects"] == 0


def test_bad_arguments_raise(make_pool):
    p = make_pool().pager_factory()(1 << 20)
    with pytest.raises(ValueError):
        p.data_return(100, pages(1))
    with pytest.raises(ValueError):
        p.data_request(0, [])


def test_closed_pool_answers_error(make_pool):
    pool = make_pool()
    p = pool.pager_factory()(1 << 20)
    p.data_return(0, pages(1))
    pool.close()
    assert p.data_request(0, blank(1)) == [ERROR]
    assert "closed" in p.last_error
    assert p.data_return(0, pages(1)) == [ERROR]
    assert not p.has_page(0)


def test_many_objects_random_operations_against_a_model(make_pool):
    """Random data_return / data_request / data_discard / terminate over several objects in a
    pool that must grow several times; every read is checked against a dict model."""
    rng = random.Random(11)
    pool = make_pool(scale=1 / 1024)  # 64 KiB first file: growth happens often
    factory = pool.pager_factory()
    ps = pool.page_size
    objs = {i: (factory(1 << 22), {}) for i in range(4)}
    nxt = 4
    for step in range(600):
        key = rng.choice(list(objs))
        p, model = objs[key]
        op = rng.random()
        first = rng.randrange(96)
        n = rng.choice([1, 2, 3, 4, 5, 8, 16, 33])
        if op < 0.45:
            data = pages(n, seed=step)
            res = p.data_return(first * ps, data)
            assert res == [OK] * n, (res, p.last_error)
            for i in range(n):
                model[first + i] = bytes(data[i])
        elif op < 0.8:
            back = blank(n)
            res = p.data_request(first * ps, back)
            for i in range(n):
                if first + i in model:
                    assert res[i] == OK and bytes(back[i]) == model[first + i], \
                        f"object {key} page {first + i} lost at step {step}"
                else:
                    assert res[i] == ABSENT
        elif op < 0.95:
            p.data_discard(first * ps, n)
            for i in range(n):
                model.pop(first + i, None)
        else:
            p.terminate()
            del objs[key]
            objs[nxt] = (factory(1 << 22), {})
            nxt += 1
        st = pool.status()["total"]
        assert st["used_slots"] == sum(len(m) for _, m in objs.values())
    assert len(pool.space) > 2, "the pool should have grown"
    # every slot in use belongs to exactly one object page
    owners = {}
    for key, (p, _) in objs.items():
        for ocl, loc, mask in p.map:
            assert loc not in owners, f"cluster {loc:#x} owned twice"
            owners[loc] = key
            f = pool.space.file(loc_file(loc))
            assert f.bitmap[loc_cluster(loc)] == 1
    assert len(owners) == pool.status()["total"]["used_clusters"]
