"""Invariant guarded: `vmcore replay --swap DIR` leaves what its help says: a DIR whose parent does
not exist is refused in one line and nothing is created; a DIR the command created is gone at the
end (swap files, lock and directory); an existing DIR keeps only its empty .swapd.lock."""

from __future__ import annotations

import subprocess
import sys


def _replay(tmp_path, swap):
    t = tmp_path / "t.txt"
    t.write_text("".join(f"{i} w\n" for i in range(3000)))
    return subprocess.run([sys.executable, "-m", "vmcore", "replay", str(t), "--memory", "1MiB", "--swap", str(swap),
                           "--json"], capture_output=True, text=True, timeout=120)


def test_missing_parent_is_refused_and_nothing_created(tmp_path):
    p = _replay(tmp_path, tmp_path / "no" / "such" / "swap")
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "no").exists()


def test_created_directory_is_removed_at_the_end(tmp_path):
    p = _replay(tmp_path, tmp_path / "swap")
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "swap").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["t.txt"]


def test_existing_directory_keeps_only_the_lock(tmp_path):
    d = tmp_path / "swap"
    d.mkdir()
    (d / "mine.txt").write_text("keep me")
    p = _replay(tmp_path, d)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in d.iterdir()) == [".swapd.lock", "mine.txt"]
    assert (d / ".swapd.lock").stat().st_size == 0 and (d / "mine.txt").read_text() == "keep me"


def test_help_says_what_is_left():
    p = subprocess.run([sys.executable, "-m", "vmcore", "replay", "--help"], capture_output=True, text=True, timeout=60)
    flat = " ".join(p.stdout.split())
    assert "removed, and so is DIR if this command created it" in flat and ".swapd.lock" in flat
