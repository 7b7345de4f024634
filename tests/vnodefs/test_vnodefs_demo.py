"""Invariant guarded: `vnodefs demo` (the README's main job for now) runs end to end on real mounts,
prints one row per phase whose locality matches what each phase did, shows the direct-mode shared
mmap refusal with its `--cache page` hint, and leaves nothing mounted or on disk."""

from __future__ import annotations

import json
import os
import tempfile

import pytest

from vnodefs.mount import mount_table

pytestmark = pytest.mark.fuse


def _vnodefs_mounts():
    return [p for p, fstype, _ in mount_table() if fstype == "fuse.vnodefs"]


def test_demo_end_to_end(tmp_path, vcli):
    before_tmp = set(os.listdir(tempfile.gettempdir()))
    before_mounts = set(_vnodefs_mounts())
    js = tmp_path / "demo.json"
    rc, out, err = vcli("demo", "--size", "4", "--json", js, cwd=tmp_path, timeout=60)
    assert rc == 0, err
    for phase in ("sequential", "random", "mmap"):
        assert phase in out
    assert "--cache page" in out and "ENODEV" in out
    res = json.loads(js.read_text())["phases"]
    seq, rnd, mm = res["sequential"], res["random"], res["mmap"]
    assert seq["cache_mode"] == "direct" and mm["cache_mode"] == "page"
    assert seq["bytes_read"] >= 4 * (1 << 20) - 4 * 4096  # every byte of the data, read once
    # every read but the first of each of the four files continues the previous one
    assert seq["sequential_fraction"] == pytest.approx((seq["requests"] - 4) / seq["requests"])
    assert seq["mean_read_bytes"] > 100_000
    assert rnd["mean_read_bytes"] == 4096 and rnd["sequential_fraction"] < 0.2
    assert mm["reads"] > 0 and mm["mean_read_bytes"] <= 8192
    assert any(p["pid"] == 0 and p["bytes_written"] > 0 for p in mm["by_pid"])  # msync writeback
    assert set(_vnodefs_mounts()) == before_mounts
    leftovers = {n for n in set(os.listdir(tempfile.gettempdir())) - before_tmp if n.startswith("vnodefs-")}
    assert not leftovers
    assert list(tmp_path.iterdir()) == [js]


def test_demo_keep_and_bad_input(tmp_path, vcli):
    keep = tmp_path / "keep"
    rc, out, err = vcli("demo", "--size", "1", "--keep", keep, timeout=60)
    assert rc == 0, err
    assert (keep / "data").is_dir() and (keep / "demo-direct.vtrace").is_file()
    rc, out, err = vcli("demo", "--size", "0")
    assert rc == 2 and "out of range" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "afile").write_text("x")
    rc, out, err = vcli("demo", "--keep", tmp_path / "afile")
    assert rc == 2 and "not a directory" in err
