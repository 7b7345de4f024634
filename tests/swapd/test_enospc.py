"""Invariant guarded: on a real, tiny file system (a 2 MiB tmpfs) the pool caps each new file at
1/8 of the free space, and when the disk is full (real ENOSPC from pwritev, or no room left to add
a file) pageout answers AGAIN with the file and errno named, counts it, and loses nothing: every
page returned OK reads back, and the AGAIN pages go out once space is freed."""

from __future__ import annotations

import os

from swapd import SwapPool
from swapd_helpers import blank, pages
from vmcore.pager import PagerResult

OK, AGAIN = PagerResult.OK, PagerResult.AGAIN
PS = 4096
KiB = 1024


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_model(p, model):
    for page, data in model.items():
        buf = blank(1)
        assert p.data_request(page * PS, buf) == [OK], (page, p.last_error)
        assert bytes(buf[0]) == data, f"page {page} changed"


def store(p, first, n, seed, model):
    data = pages(n, seed=seed)
    res = p.data_return(first * PS, data)
    for i, r in enumerate(res):
        assert r in (OK, AGAIN), r
        if r == OK:
            model[first + i] = bytes(data[i])
    return res


def test_real_enospc_from_pwritev_loses_nothing(tiny_tmpfs):
    d = os.path.join(tiny_tmpfs, "vm")
    with SwapPool(d) as pool:
        f0 = pool.status()["files"][0]
        # 1/8 of 2 MiB less what the directory and lock file took, in whole 16 KiB clusters
        assert 224 * KiB <= f0["size"] <= 256 * KiB, "swapfile0 must be capped at 1/8 of 2 MiB"
        p = pool.pager_factory()(1 << 24)
        model = {}
        assert store(p, 0, 8, 1, model) == [OK] * 8
        # ballast fills the file system up to 48 KiB
        ballast = os.path.join(tiny_tmpfs, "ballast")
        fd = os.open(ballast, os.O_CREAT | os.O_WRONLY, 0o600)
        os.posix_fallocate(fd, 0, free_bytes(tiny_tmpfs) - 48 * KiB)
        os.close(fd)
        res = store(p, 8, 32, 2, model)  # 128 KiB in one pageout: only part fits
        assert AGAIN in res, "the disk is full: some pages must come back AGAIN"
        assert res[:res.index(AGAIN)] == [OK] * res.index(AGAIN), "OK pages come first"
        assert "ENOSPC writing " + os.path.join(d, "swapfile0") in p.last_error
        assert "stay dirty" in p.last_error
        st = pool.status()
        assert st["enospc"] >= 1 and st["failures"] == res.count(AGAIN)
        check_model(p, model)
        # space comes back: the kernel's retry of the AGAIN pages succeeds
        os.unlink(ballast)
        again = [8 + i for i, r in enumerate(res) if r == AGAIN]
        assert store(p, again[0], len(again), 3, model) == [OK] * len(again)
        check_model(p, model)


def test_filling_a_tiny_disk_grows_then_answers_again(tiny_tmpfs):
    d = os.path.join(tiny_tmpfs, "vm")
    with SwapPool(d) as pool:
        p = pool.pager_factory()(1 << 26)
        model = {}
        first = 0
        res = []
        while AGAIN not in res:
            res = store(p, first, 16, first, model)
            first += 16
            assert first < 4096, "a 2 MiB disk cannot take 16 MiB"
        assert len(pool.space) > 2, "the pool should have grown before giving up"
        sizes = [f["size"] for f in pool.status()["files"]]
        assert 224 * KiB <= sizes[0] <= 256 * KiB and sizes[1] < sizes[0], \
            "each file is capped at 1/8 of the free space"
        assert ("cannot grow" in p.last_error) or ("ENOSPC" in p.last_error), p.last_error
        check_model(p, model)
        # free half of what is stored: the failed pages go out on retry
        for page in sorted(model)[: len(model) // 2]:
            p.data_discard(page * PS, 1)
            del model[page]
        failed = [first - 16 + i for i, r in enumerate(res) if r == AGAIN]
        assert store(p, failed[0], len(failed), 99, model) == [OK] * len(failed)
        check_model(p, model)
    assert not [n for n in os.listdir(d) if n.startswith("swapfile")]
