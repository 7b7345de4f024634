"""Invariant guarded: a SwapPool owns its directory exclusively (lock naming the holder), starts
clean (stale swap files removed), refuses unusable directories with one clear error, grows at the
hi-water mark and shrinks after `lo_checks` consecutive low-water checks at the right moments (a
manual clock drives it), empties a file with every page intact or refuses with the reason, detects
files deleted or truncated behind its back, answers AGAIN (losing nothing) when it cannot grow, and
leaves nothing behind when closed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from swapd import (SwapClosedError, SwapConfigError, SwapDirError, SwapLockedError, SwapPool)
from swapd_helpers import blank, pages
from vmcore.clock import ManualClock
from vmcore.pager import PagerResult

OK, ABSENT, ERROR, AGAIN = (PagerResult.OK, PagerResult.ABSENT, PagerResult.ERROR,
                            PagerResult.AGAIN)
PS = 4096
MiB = 1 << 20


def names(d):
    return sorted(n for n in os.listdir(d) if n.startswith("swapfile"))


def read_all(p, model):
    for page, data in model.items():
        buf = blank(1)
        r = p.data_request(page * PS, buf)
        assert r == [OK], f"page {page}: {r} ({p.last_error})"
        assert bytes(buf[0]) == data, f"page {page} changed"


def fill(p, first, n, seed, model):
    data = pages(n, seed=seed)
    res = p.data_return(first * PS, data)
    for i, r in enumerate(res):
        if r == OK:
            model[first + i] = bytes(data[i])
    return res


# ---- start-up, lock, stale files, bad directories -----------------------------------------------

def test_start_creates_directory_lock_and_swapfile0(make_pool, swapdir):
    pool = make_pool()
    assert os.path.isdir(swapdir)
    assert names(swapdir) == ["swapfile0"]
    assert os.stat(os.path.join(swapdir, "swapfile0")).st_size == MiB  # 64 MiB / 64
    assert open(os.path.join(swapdir, ".swapd.lock")).read().strip() == str(os.getpid())
    st = pool.status()
    assert st["files"][0]["allocated"] == 0 and st["hi_water"] == 625000
    assert st["lo_water"] is None and st["files_added"] == 0


def test_second_pool_on_the_same_directory_is_refused(make_pool, swapdir):
    make_pool()
    with pytest.raises(SwapLockedError) as ei:
        SwapPool(swapdir)
    msg = str(ei.value)
    assert swapdir in msg and f"pid {os.getpid()}" in msg
    assert names(swapdir) == ["swapfile0"], "the refused pool must not touch the live pool's files"


def test_second_pool_in_another_process_is_refused(make_pool, swapdir):
    make_pool()
    code = f"from swapd import SwapPool; SwapPool({swapdir!r})"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"swap directory {swapdir} is in use by another swap pool (pid {os.getpid()}" \
        in r.stderr


def test_lock_is_released_on_close(swapdir):
    a = SwapPool(swapdir)
    a.close()
    b = SwapPool(swapdir)
    b.close()


def test_stale_swap_files_are_removed_at_start(swapdir):
    os.makedirs(swapdir)
    for name in ("swapfile0", "swapfile7", "swapfile12", "swapfile_notes"):
        with open(os.path.join(swapdir, name), "wb") as fh:
            fh.write(b"x" * 100000)
    with SwapPool(swapdir) as pool:
        assert names(swapdir) == ["swapfile0", "swapfile_notes"]
        assert os.stat(os.path.join(swapdir, "swapfile0")).st_blocks == 0
        assert pool.status()["stale_removed"] == 3


def test_not_a_directory_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SwapDirError, match=f"swap directory {path} exists and is not a directory"):
        SwapPool(str(path))


def test_unwritable_directory_is_refused(readonly_tmpfs):
    with pytest.raises(SwapDirError, match=f"swap directory {readonly_tmpfs} is not writable"):
        SwapPool(readonly_tmpfs)
    with pytest.raises(SwapDirError, match="cannot create swap directory"):
        SwapPool(os.path.join(readonly_tmpfs, "vm"))


def test_unwritable_directory_is_refused_for_a_normal_user(tmp_path):
    """As root the mode bits do not stop us, so check them as 'nobody' in a subprocess."""
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="swapd-test-")  # outside pytest's 0700 tree
    d = os.path.join(top, "locked")
    os.mkdir(d, 0o555)
    os.chmod(top, 0o755)
    # as root, import first and only then become 'nobody': the checkout and its venv may sit under
    # a directory that nobody cannot read (a 0700 temp dir), which is not what this test is about
    drop = "os.setgroups([]); os.setgid(65534); os.setuid(65534); " if os.geteuid() == 0 else ""
    code = f"import os; from swapd import SwapPool; {drop}SwapPool({d!r})"
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    finally:
        shutil.rmtree(top)
    assert r.returncode != 0
    assert f"swap directory {d} is not writable: Permission denied" in r.stderr, r.stderr


@pytest.mark.parametrize("kw,match", [
    (dict(cluster_pages=3), "cluster_pages"),
    (dict(page_size=1000), "page_size"),
    (dict(scale=0), "scale"),
    (dict(max_files=0), "max_files"),
    (dict(max_files=63), "max_files"),
    (dict(hi_water=10, lo_water=10), "lo_water"),
    (dict(lo_checks=0), "lo_checks"),
    (dict(max_bytes=100), "max_bytes"),
])
def test_bad_parameters_refused(swapdir, kw, match):
    with pytest.raises(SwapConfigError, match=match):
        SwapPool(swapdir, **kw)
    assert not os.path.exists(os.path.join(swapdir, "swapfile0"))


def test_close_removes_files_and_closed_pool_refuses_work(swapdir):
    pool = SwapPool(swapdir)
    p = pool.pager_factory()(MiB)
    fill(p, 0, 300, 1, {})  # grows to two files
    assert len(names(swapdir)) == 2
    pool.close()
    assert names(swapdir) == [] and not os.path.exists(os.path.join(swapdir, ".swapd.status.json"))
    assert open(os.path.join(swapdir, ".swapd.lock")).read() == ""
    pool.close()  # idempotent
    with pytest.raises(SwapClosedError):
        pool.pager_factory()
    with pytest.raises(SwapClosedError):
        pool.tick(0.0)


# ---- growth and shrinking -------------------------------------------------------------------------

def test_watermarks_add_and_remove_files_at_the_right_moments(make_pool, swapdir):
    clock = ManualClock()
    pool = make_pool(clock=clock)  # files 1, 1, 2 MiB; hi-water 625000 B; 11 checks, 3 s apart
    p = pool.pager_factory()(64 * MiB)
    model = {}
    assert pool.tick() is None
    # 200 pages: 800 KiB used, 224 KiB free < hi-water: the next tick adds swapfile1
    assert fill(p, 0, 200, 1, model) == [OK] * 200
    assert names(swapdir) == ["swapfile0"], "allocation alone must not grow while clusters remain"
    clock.advance(1)
    msg = pool.tick()
    assert msg.startswith("added swapfile1 (1.0 MiB): free swap 229376 B < hi-water 625000 B")
    assert names(swapdir) == ["swapfile0", "swapfile1"]
    assert pool.tick() is None, "free swap is now above hi-water"
    assert fill(p, 200, 200, 2, model) == [OK] * 200
    clock.advance(1)
    assert pool.tick().startswith("added swapfile2 (2.0 MiB)")
    assert pool.status()["lo_water"] == 3 * MiB  # size[2] + size[1]
    # everything freed: 4 MiB free > 3 MiB low water; 11 consecutive checks 3 s apart remove it
    p.data_discard(0, 400)
    model.clear()
    for check in range(1, 12):
        clock.advance(3)
        msg = pool.tick()
        clock.advance(1)
        assert pool.tick() is None, "a tick sooner than the interval is not a check"
        if check < 11:
            assert msg is None, f"removed too early, at check {check}"
            assert pool.status()["lo_count"] == check
            assert names(swapdir) == ["swapfile0", "swapfile1", "swapfile2"]
    assert msg == ("removed swapfile2 after moving 0 clusters into the other files: free swap "
                   "4194304 B > lo-water 3145728 B for 11 consecutive checks")
    assert names(swapdir) == ["swapfile0", "swapfile1"]
    # with two files the low-water mark (2 MiB) cannot be exceeded: nothing more is removed
    for _ in range(30):
        clock.advance(3)
        assert pool.tick() is None
    st = pool.status()
    assert (st["files_added"], st["files_removed"]) == (2, 1)


def test_a_dip_resets_the_low_water_count(make_pool, swapdir):
    pool = make_pool(lo_checks=3, check_interval=1.0)
    p = pool.pager_factory()(64 * MiB)
    fill(p, 0, 400, 1, {})
    pool.tick(0.0)
    pool.tick(0.5)
    assert len(pool.space) == 3
    p.data_discard(0, 400)
    assert pool.tick(2.0) is None and pool.tick(3.0) is None
    fill(p, 0, 300, 2, {})  # free now below the low-water mark: the count resets
    assert pool.tick(4.0) is None and pool.status()["lo_count"] == 0
    p.data_discard(0, 300)
    assert pool.tick(5.0) is None and pool.tick(6.0) is None
    assert pool.tick(7.0).startswith("removed swapfile2")


def test_pageout_grows_the_pool_at_once_when_no_cluster_is_free(make_pool, swapdir):
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    model = {}
    assert fill(p, 0, 1100, 1, model) == [OK] * 1100  # 4.3 MiB: needs 1+1+2+4 MiB files
    assert names(swapdir) == ["swapfile0", "swapfile1", "swapfile2", "swapfile3"]
    assert [f["size"] for f in pool.status()["files"]] == [MiB, MiB, 2 * MiB, 4 * MiB]
    read_all(p, model)


def test_emptying_a_file_moves_every_cluster_intact(make_pool, swapdir):
    pool = make_pool()
    factory = pool.pager_factory()
    objs = [(factory(64 * MiB), {}) for _ in range(3)]
    # fill files 0, 1 and half of file 2, spread over three objects, with partial clusters too
    for k, (p, model) in enumerate(objs):
        assert fill(p, 0, 300, 10 + k, model) == [OK] * 300
        assert fill(p, 1001, 2, 20 + k, model) == [OK] * 2
    assert len(pool.space) == 3
    # make room elsewhere: drop the first 250 pages of every object
    for p, model in objs:
        p.data_discard(0, 250)
        for i in range(250):
            model.pop(i)
    f2 = pool.space.file(2)
    used2 = f2.nclusters - f2.free_clusters
    assert used2 > 0
    msg = pool.swapoff()
    assert msg.startswith(f"removed swapfile2 after moving {used2} clusters")
    assert names(swapdir) == ["swapfile0", "swapfile1"]
    for p, model in objs:
        read_all(p, model)
        for ocl, loc, mask in p.map:
            assert loc >> 32 in (0, 1)
    st = pool.status()
    assert st["clusters_moved"] == used2 and st["files_removed"] == 1
    assert st["total"]["used_slots"] == sum(len(m) for _, m in objs)


def test_swapoff_is_refused_without_room_and_loses_nothing(make_pool, swapdir):
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    model = {}
    fill(p, 0, 700, 1, model)  # files 1 + 1 + 2 MiB, 2.7 MiB used
    msg = pool.swapoff()
    assert msg.startswith("refused to remove swapfile2: the other swap files have 0 free pages, "
                          "need 100 + ")
    assert names(swapdir) == ["swapfile0", "swapfile1", "swapfile2"]
    assert pool.status()["swapoffs_refused"] == 1
    read_all(p, model)
    with pytest.raises(SwapConfigError, match="no swapfile9"):
        pool.swapoff(9)


def test_only_file_is_never_removed(make_pool):
    pool = make_pool()
    assert pool.swapoff() == "refused to remove swapfile0: it is the only swap file"


# ---- damage behind the pool's back ----------------------------------------------------------------

@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_damaged_file_is_detected_and_named(make_pool, swapdir, how):
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    model = {}
    fill(p, 0, 8, 1, model)
    path = os.path.join(swapdir, "swapfile0")
    if how == "delete":
        os.unlink(path)
    else:
        os.truncate(path, 4096)
    buf = blank(8)
    assert p.data_request(0, buf) == [ERROR] * 8, "lost pages must be errors, never zeros"
    assert path in p.last_error
    assert ("deleted" if how == "delete" else "truncated") in p.last_error
    assert not p.has_page(0)
    st = pool.status()
    assert not st["healthy"] and st["files"][0]["state"] == "damaged"
    assert st["errors"] and path in st["errors"][0]
    # the kernel still holds these pages dirty: writing them again goes to a healthy file
    assert fill(p, 0, 8, 2, model) == [OK] * 8
    assert names(swapdir)[-1] == "swapfile1"
    read_all(p, model)
    # new pages never go to the damaged file; tick keeps reporting it
    fill(p, 100, 4, 3, model)
    assert all(loc >> 32 != 0 for _, loc, _ in p.map)
    pool.tick(0.0)
    assert pool.status()["files"][0]["state"] == "damaged"
    read_all(p, model)


def test_partial_rewrite_of_a_damaged_cluster_keeps_the_rest_an_error(make_pool, swapdir):
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    fill(p, 0, 4, 1, {})
    os.unlink(os.path.join(swapdir, "swapfile0"))
    newer = pages(1, seed=5)
    assert p.data_return(PS, newer) == [OK]
    back = blank(4)
    assert p.data_request(0, back) == [ERROR, OK, ERROR, ERROR]
    assert bytes(back[1]) == bytes(newer[0])
    p.data_discard(0, 1)
    assert p.data_request(0, blank(1)) == [ABSENT], "a discarded lost page is simply gone"


def test_damaged_newest_file_can_be_removed(make_pool, swapdir):
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    model = {}
    fill(p, 0, 300, 1, model)  # 256 pages in swapfile0, 44 in swapfile1
    os.truncate(os.path.join(swapdir, "swapfile1"), 0)
    msg = pool.swapoff(1)
    assert msg.startswith("removed swapfile1")
    assert names(swapdir) == ["swapfile0"]
    bad = [pg for pg in model if p.data_request(pg * PS, blank(1)) != [OK]]
    assert len(bad) == 44
    assert p.data_request(bad[0] * PS, blank(1)) == [ERROR]


# ---- no room: AGAIN, nothing lost -----------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(max_bytes=64 * 1024), dict(max_files=1, scale=1 / 1024)])
def test_size_capped_pool_answers_again_and_loses_nothing(make_pool, swapdir, kw):
    pool = make_pool(**kw)  # room for 16 pages only
    p = pool.pager_factory()(64 * MiB)
    model = {}
    assert fill(p, 0, 16, 1, model) == [OK] * 16
    res = fill(p, 16, 8, 2, model)
    assert res == [AGAIN] * 8
    assert "is full and cannot grow" in p.last_error and "stay dirty" in p.last_error
    # rewriting pages that already have clusters still works in place
    assert fill(p, 0, 8, 3, model) == [OK] * 8
    read_all(p, model)
    st = pool.status()
    assert st["failures"] == 8 and st["growth_failures"] >= 1
    assert names(swapdir) == ["swapfile0"]
    # free room, retry: the kernel's dirty pages now go out
    p.data_discard(8 * PS, 8)
    for i in range(8, 16):
        model.pop(i)
    assert fill(p, 16, 8, 4, model) == [OK] * 8
    read_all(p, model)


def test_pageout_survives_every_file_being_deleted_behind_its_back(make_pool, swapdir):
    """Two damaged files found one after the other during one pageout: the pages still go out,
    to a new file, and read back."""
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    model = {}
    fill(p, 0, 300, 1, model)  # swapfile0 full, swapfile1 partly used
    p.data_discard(0, 8)  # two free clusters in swapfile0
    for n in ("swapfile0", "swapfile1"):
        os.unlink(os.path.join(swapdir, n))
    fresh = {}
    assert fill(p, 1000, 8, 2, fresh) == [OK] * 8
    read_all(p, fresh)
    assert names(swapdir) == ["swapfile2"]
    assert {f["state"] for f in pool.status()["files"][:2]} == {"damaged"}


def test_tick_reports_a_refused_removal(make_pool, swapdir):
    """A low-water decision the rest of the pool cannot absorb is refused by tick, with why."""
    pool = make_pool(lo_water=700_000, hi_water=100_000, lo_checks=1, check_interval=0.0)
    p = pool.pager_factory()(64 * MiB)
    model = {}
    fill(p, 0, 300, 1, model)  # swapfile0 full (256 pages), 44 pages in swapfile1
    assert len(pool.space) == 2
    msg = pool.tick(0.0)  # free 980 KiB > 700000 B: shrink, but swapfile0 has no room
    assert msg == ("refused to remove swapfile1: the other swap files have 0 free pages, "
                   "need 100 + 44 used in swapfile1 = 144")
    assert pool.status()["last_action"] == msg and names(swapdir) == ["swapfile0", "swapfile1"]
    p.data_discard(0, 200)  # now swapfile0 has 200 free pages: the next check removes it
    assert pool.tick(1.0).startswith("removed swapfile1 after moving 11 clusters")
    read_all(p, {k: v for k, v in model.items() if k >= 200})
