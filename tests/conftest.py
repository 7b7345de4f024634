"""Shared test fixtures and the `fuse` marker policy.

Tests marked `@pytest.mark.fuse` need a real FUSE mount. They may skip only where FUSE is truly
missing (no /dev/fuse, no fusermount3, no libfuse3); under CI=true they fail instead, because CI
has FUSE and a skipped test proves nothing.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil

import pytest


def fuse_missing_reason() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian package fuse3)"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse3 is missing (Debian package libfuse3-3)"
    return None


def pytest_runtest_setup(item):
    if item.get_closest_marker("fuse") is None:
        return
    reason = fuse_missing_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but FUSE is unusable: {reason}", pytrace=False)
    pytest.skip(reason)
