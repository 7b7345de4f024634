"""Invariant guarded: `swapd status DIR [--json]` run in ANOTHER process reports a live pool
(holder pid, files with logical size and real allocated bytes, used/free slots and clusters,
watermarks, files added/removed, pageout/pagein counters, damage), reports a directory with no
live pool (files found, "no pool holds the lock"), and refuses bad input with one line on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from swapd_helpers import pages

SWAPD = os.path.join(os.path.dirname(sys.executable), "swapd")
CMD = [SWAPD] if os.path.exists(SWAPD) else [sys.executable, "-m", "swapd"]
MiB = 1 << 20


def swapd(*args):
    return subprocess.run(CMD + list(args), capture_output=True, text=True, timeout=60)


def test_help():
    r = swapd("--help")
    assert r.returncode == 0 and "status" in r.stdout
    r = swapd("status", "--help")
    assert r.returncode == 0 and "--json" in r.stdout and "DIR" in r.stdout


def test_status_of_a_live_pool_from_another_process(make_pool, swapdir):
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    assert all(r == 0 for r in p.data_return(0, pages(300)))  # grows to two files
    pool.tick(0.0)
    r = swapd("status", swapdir, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["live"] is True and st["pid"] == os.getpid()
    assert st["directory"] == swapdir
    assert [f["name"] for f in st["files"]] == ["swapfile0", "swapfile1"]
    f0, f1 = st["files"]
    assert f0["size"] == MiB and f0["allocated"] == MiB
    assert f0["used_slots"] == 256 and f0["free_slots"] == 0
    assert f1["used_clusters"] == 11 and f1["used_slots"] == 44
    assert f1["allocated"] == 11 * 16384
    assert st["total"]["used_slots"] == 300
    assert st["files_added"] == 1 and st["files_removed"] == 0
    assert st["pageouts"] == 300 and st["hi_water"] == 625000 and st["lo_water"] == 2 * MiB
    assert st["healthy"] is True
    r = swapd("status", swapdir)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"pool pid {os.getpid()} holds the lock on {swapdir}" in out
    assert "swapfile0" in out and "swapfile1" in out and "hi-water 610.4 KiB" in out
    assert "files added 1, removed 0" in out and "pageouts 300 pages" in out


def test_status_sees_damage_and_live_allocation(make_pool, swapdir):
    pool = make_pool()
    p = pool.pager_factory()(64 * MiB)
    p.data_return(0, pages(8))
    pool.publish()
    os.truncate(os.path.join(swapdir, "swapfile0"), 4096)
    st = json.loads(swapd("status", swapdir, "--json").stdout)
    assert st["healthy"] is False and st["files"][0]["state"] == "truncated"
    assert st["files"][0]["allocated"] <= 4096
    out = swapd("status", swapdir).stdout
    assert "ERROR: swap file " + os.path.join(swapdir, "swapfile0") in out


def test_status_without_a_live_pool(swapdir):
    os.makedirs(swapdir)
    with open(os.path.join(swapdir, "swapfile3"), "wb") as fh:
        fh.truncate(MiB)
        fh.write(b"x" * 8192)
    r = swapd("status", swapdir, "--json")
    assert r.returncode == 0
    st = json.loads(r.stdout)
    assert st["live"] is False and st["message"] == f"no pool holds the lock on {swapdir}"
    assert st["files"][0]["name"] == "swapfile3" and st["files"][0]["size"] == MiB
    assert st["files"][0]["allocated"] == 8192
    out = swapd("status", swapdir).stdout
    assert f"no pool holds the lock on {swapdir}" in out and "swapfile3" in out


def test_status_after_close(swapdir):
    from swapd import SwapPool

    with SwapPool(swapdir):
        pass
    r = swapd("status", swapdir)
    assert r.returncode == 0 and "no pool holds the lock" in r.stdout and "no swap files" in r.stdout


def test_bad_input_one_line_on_stderr(tmp_path):
    missing = str(tmp_path / "nope")
    r = swapd("status", missing)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"swapd: swap directory {missing} does not exist\n"
    f = tmp_path / "file"
    f.write_text("x")
    r = swapd("status", str(f))
    assert r.returncode == 1 and r.stderr == f"swapd: {f} is not a directory\n"
    r = swapd("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_profiles_command_is_hooked_in(tmp_path):
    """`swapd profiles ...` (defined in swapd.profiles_cli) runs from the main
    `swapd` entry point."""
    r = swapd("profiles", "list", "--var", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "app_profile" in r.stdout
    r = swapd("profiles", "show", "../escape", "--var", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("swapd: ")
