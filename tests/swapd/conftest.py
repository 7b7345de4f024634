"""Fixtures for the swapd tests: a swap directory, pools that are always closed, and real tmpfs
mounts (tiny or read-only) that are always unmounted.

tmpfs mounts need root. Where mounting fails the tests that need one skip, except under CI=true,
where they fail (CI runs as root and a skipped test proves nothing).
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from swapd import SwapPool


@pytest.fixture
def swapdir(tmp_path):
    return str(tmp_path / "vm")


@pytest.fixture
def make_pool(swapdir):
    """make_pool(**kwargs) -> SwapPool on `swapdir` (or directory=...); all closed at teardown."""
    pools = []

    def make(**kw):
        kw.setdefault("directory", swapdir)
        p = SwapPool(**kw)
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()


@contextlib.contextmanager
def tmpfs(path: str, options: str):
    """Mount a tmpfs with `options` on `path` for the block; always unmounts."""
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        reason = f"cannot mount tmpfs ({options}) on {path}: {r.stderr.strip() or r.returncode}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], capture_output=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 2 MiB tmpfs, mounted for the test and always unmounted."""
    with tmpfs(str(tmp_path / "tiny"), "size=2m,mode=0755") as path:
        yield path


@pytest.fixture
def readonly_tmpfs(tmp_path):
    with tmpfs(str(tmp_path / "ro"), "ro,size=1m") as path:
        yield path
