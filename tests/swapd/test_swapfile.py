"""Invariant guarded: a swap file is really sparse (st_blocks grows only with written clusters and
shrinks when clusters are freed), mode 0600, its clusters read back exactly what was written, holes
read as zeros, the bitmap hands out every cluster once, and damage behind the pool's back (unlink,
truncate) is detected before any I/O, with the file named."""

from __future__ import annotations

import os
import stat

import pytest

from swapd.swapfile import SwapFile, SwapFileDamaged
from swapd_helpers import pages

PS = 4096
CP = 4
CB = PS * CP


@pytest.fixture
def sf(tmp_path):
    f = SwapFile(str(tmp_path / "swapfile0"), 0, 64 * CB, PS, CP)
    yield f
    f.close()


def blocks(f: SwapFile) -> int:
    return os.stat(f.path).st_blocks * 512


def test_created_sparse_with_mode_0600(tmp_path):
    old = os.umask(0)
    try:
        f = SwapFile(str(tmp_path / "swapfile0"), 0, 1 << 20, PS, CP)
    finally:
        os.umask(old)
    st = os.stat(f.path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 1 << 20
    assert st.st_blocks == 0, "a new swap file must hold no blocks"
    assert f.nclusters == (1 << 20) // CB and f.free_clusters == f.nclusters
    f.close()


def test_allocated_blocks_follow_written_clusters_and_punch_releases_them(sf):
    start, count = sf.allocate(3)
    assert (start, count) == (0, 3)
    sf.write(start * CB, pages(3 * CP))
    assert blocks(sf) == 3 * CB, "exactly the written clusters must be allocated"
    assert sf.allocated_bytes() == 3 * CB
    sf.free(1, 1)  # punch the middle cluster
    assert blocks(sf) == 2 * CB
    sf.free(0, 1)
    sf.free(2, 1)
    assert blocks(sf) == 0
    assert sf.free_clusters == sf.nclusters


def test_cluster_round_trip_and_holes_read_zero(sf):
    data = pages(2 * CP, seed=7)
    sf.allocate(10)
    sf.write(5 * CB, data)  # clusters 5 and 6
    back = [memoryview(bytearray(PS)) for _ in range(2 * CP)]
    sf.read(5 * CB, back)
    assert [bytes(b) for b in back] == [bytes(d) for d in data]
    # slots never written (cluster 0, and cluster 7) are holes: zeros
    hole = [memoryview(bytearray(b"\xff" * PS)) for _ in range(CP)]
    sf.read(0, hole)
    assert all(bytes(b) == bytes(PS) for b in hole)
    sf.read(7 * CB, hole)
    assert all(bytes(b) == bytes(PS) for b in hole)
    # a single slot in the middle of a cluster, written alone, reads back alone
    one = pages(1, seed=9)
    sf.write(8 * CB + 2 * PS, one)
    back = [memoryview(bytearray(PS)) for _ in range(CP)]
    sf.read(8 * CB, back)
    assert bytes(back[2]) == bytes(one[0])
    assert bytes(back[0]) == bytes(back[1]) == bytes(back[3]) == bytes(PS)


def test_bitmap_next_fit_runs_and_exhaustion(sf):
    seen = set()
    runs = []
    while True:
        got = sf.allocate(5)
        if got is None:
            break
        runs.append(got)
        for c in range(got[0], got[0] + got[1]):
            assert c not in seen, f"cluster {c} handed out twice"
            seen.add(c)
    assert seen == set(range(sf.nclusters)) and sf.free_clusters == 0
    assert runs[0] == (0, 5) and runs[1] == (5, 5), "next-fit must hand out consecutive runs"
    # free a scattered set; a request for a long run gets the longest run available from the rotor
    sf.free(10, 1)
    sf.free(20, 3)
    got = sf.allocate(3)
    assert got == (20, 3)
    got = sf.allocate(4)
    assert got == (10, 1), "no 4-run: the first free cluster and what follows it"
    assert sf.allocate(1) is None and sf.free_clusters == 0


def test_free_of_a_free_cluster_is_refused(sf):
    sf.allocate(2)
    sf.free(0, 1)
    with pytest.raises(ValueError, match="not all allocated"):
        sf.free(0, 1)
    with pytest.raises(ValueError, match="not all allocated"):
        sf.free(1, 2)


def test_deleted_behind_our_back_is_detected(sf):
    sf.allocate(1)
    sf.write(0, pages(CP))
    os.unlink(sf.path)
    with pytest.raises(SwapFileDamaged, match="swapfile0 was deleted"):
        sf.read(0, [memoryview(bytearray(PS))])
    with pytest.raises(SwapFileDamaged, match=str(sf.path)):
        sf.write(0, pages(1))
    assert not sf.allocatable and not sf.healthy()


def test_truncated_behind_our_back_is_detected(sf):
    sf.allocate(1)
    sf.write(0, pages(CP))
    os.truncate(sf.path, CB // 2)
    with pytest.raises(SwapFileDamaged, match=r"swapfile0 was truncated .* to 8192 bytes"):
        sf.read(0, [memoryview(bytearray(PS))])
    assert sf.damaged and "expected 1048576" in sf.damaged


def test_unlink_only_removes_our_own_inode(tmp_path):
    f = SwapFile(str(tmp_path / "swapfile3"), 3, CB, PS, CP)
    os.rename(f.path, str(tmp_path / "moved"))
    with open(f.path, "w") as fh:  # someone else's file now has the name
        fh.write("not ours")
    f.unlink()
    assert open(f.path).read() == "not ours"


def test_bad_sizes_refused(tmp_path):
    with pytest.raises(ValueError):
        SwapFile(str(tmp_path / "swapfile0"), 0, CB + 1, PS, CP)
    with pytest.raises(ValueError):
        SwapFile(str(tmp_path / "swapfile0"), 0, 0, PS, CP)
    assert not os.path.exists(tmp_path / "swapfile0")
