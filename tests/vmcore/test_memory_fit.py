"""Invariant guarded: `vmcore replay --memory SIZE` refuses a memory whose page frames cannot fit in
this machine, before allocating anything (one line naming the machine's memory, exit 2, no
traceback, no swap directory created, fast); every size unit up to EiB parses (one size grammar),
and vnodefs' MiB options take the same units."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from vmcore.errors import InvalidArgument
from vmcore.types import parse_size


def _trace(tmp_path):
    t = tmp_path / "t.txt"
    t.write_text("".join(f"{i % 50}\n" for i in range(500)))
    return str(t)


@pytest.mark.parametrize("memory", ["1TiB", "1PiB", "1EiB", "big"])
def test_memory_beyond_the_machine_is_one_line_before_allocating(tmp_path, memory):
    if memory == "big":
        memory = f"{psutil.virtual_memory().total * 2 // (1 << 30)}GiB"
    swap = tmp_path / "swap"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vmcore", "replay", _trace(tmp_path), f"--memory={memory}",
                        "--swap", str(swap)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stdout == "" and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert f"memory '{memory}' does not fit in this machine" in p.stderr and "of RAM" in p.stderr
    assert "available" in p.stderr
    assert not swap.exists()  # refused before the swap pool was made
    assert time.monotonic() - t0 < 30


def test_a_memory_that_fits_still_replays(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vmcore", "replay", _trace(tmp_path), "--memory=1.5MiB", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("text,value", [("1PiB", 1 << 50), ("2PB", 2 << 50), ("1EiB", 1 << 60), ("1.5TiB", 3 << 39),
                                        ("4k", 4096), ("7", 7)])
def test_size_grammar(text, value):
    assert parse_size(text) == value


def test_not_a_size_names_the_value():
    with pytest.raises(InvalidArgument, match="'12XB' is not a size"):
        parse_size("12XB")


def test_vnodefs_mib_options_take_units(tmp_path):
    keep = tmp_path / "keep"
    p = subprocess.run([sys.executable, "-m", "vnodefs", "demo", "--size", "256KiB", "--keep", str(keep)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    total = sum(f.stat().st_size for f in (keep / "data").rglob("*") if f.is_file())
    assert 200 * 1024 <= total <= 300 * 1024
    p = subprocess.run([sys.executable, "-m", "vnodefs", "demo", "--size", "12XB"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "'12XB' is not a size" in p.stderr and len(p.stderr.splitlines()) == 1
