"""Fixtures for vnodefs tests: real mounts that are ALWAYS unmounted, even when a test fails.

`vmount(cache=..., latency=..., trace=True)` mounts a fresh source dir (tmp_path/src) on a fresh
mount point (tmp_path/mnt) and returns the vnodefs.mount.Mount with `.src` and `.trace_path`
added; the finalizer unmounts (falling back to `fusermount3 -u -z` if the daemon is gone) and
checks nothing of this test stays mounted.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cache_modes import cache_kwargs

from vnodefs.mount import MountError, find_mount, mount, umount

VNODEFS = [sys.executable, "-m", "vnodefs"]


def _force_unmount(mnt: str) -> None:
    if find_mount(mnt) is not None:
        try:
            umount(mnt)
        except MountError:
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)


@pytest.fixture
def vmount(tmp_path):
    made = []

    def make(cache="page", latency="none", trace=True, read_only=False, name="m", xattr=False, layout="auto"):
        """`cache` is a mount's cache mode, or "writeback" (page mode with the kernel's writeback
        cache, as in CACHE_MODES)."""
        src = tmp_path / f"{name}-src"
        mnt = tmp_path / f"{name}-mnt"
        src.mkdir(exist_ok=True)
        mnt.mkdir(exist_ok=True)
        tpath = str(tmp_path / f"{name}.vtrace") if trace else None
        made.append(str(mnt))
        m = mount(str(src), str(mnt), trace=tpath, latency=latency, read_only=read_only, xattr=xattr,
                  layout=layout, **cache_kwargs(cache))
        m.src = str(src)
        m.trace_path = tpath
        return m

    yield make
    for mnt in made:
        _force_unmount(mnt)
    for mnt in made:
        assert find_mount(mnt) is None, f"{mnt} is still mounted after the test"


def run_vnodefs(*args, cwd=None, env=None, timeout=60):
    """Run the vnodefs CLI as a separate process: (returncode, stdout, stderr)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(VNODEFS + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=e,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def vcli():
    """The vnodefs CLI in a subprocess: vcli(*args, cwd=, env=) -> (returncode, stdout, stderr)."""
    return run_vnodefs
