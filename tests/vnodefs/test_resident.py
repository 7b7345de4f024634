"""Invariant guarded: `vnodefs resident PATH...` reports the host page cache's real residency of each
file (mincore): 0 pages after the cache is dropped, exactly the pages read afterwards (readahead
off), an empty file as 0/0; directories are walked recursively (or not, --no-recurse) without
following symlinks inside them; a path that cannot be read (missing, permission denied) is one line
on stderr and exit 1 while the other files are still reported; --json holds the same numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

PS = os.sysconf("SC_PAGE_SIZE")
VN = [sys.executable, "-m", "vnodefs", "resident"]


def _drop(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident(*args, **kw):
    p = subprocess.run(VN + [str(a) for a in args] + ["--json"], capture_output=True, text=True, timeout=60, **kw)
    return p, (json.loads(p.stdout) if p.stdout else None)


def test_counts_the_pages_really_cached(tmp_path):
    f = tmp_path / "data"
    f.write_bytes(os.urandom(256 * PS))
    _drop(f)
    p, d = _resident(f)
    if d["files"][0]["resident"] != 0:
        pytest.skip("this file system keeps dropped pages cached (tmpfs?)")
    assert p.returncode == 0 and d["files"][0]["pages"] == 256 and d["files"][0]["size"] == 256 * PS
    fd = os.open(f, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: only what is read gets cached
        for page in (0, 7, 100, 255):
            os.pread(fd, PS, page * PS)
    finally:
        os.close(fd)
    p, d = _resident(f)
    assert d["files"][0]["resident"] == 4 and d["total"]["resident"] == 4
    text = subprocess.run(VN + [str(f)], capture_output=True, text=True, timeout=60).stdout
    assert text.splitlines()[0].split()[0] == "4/256" and str(f) in text


def test_empty_files_directories_and_symlinks(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "empty").write_bytes(b"")
    (tmp_path / "d" / "a").write_bytes(b"x" * (3 * PS + 1))
    (tmp_path / "d" / "sub" / "b").write_bytes(b"y" * PS)
    (tmp_path / "outside").write_bytes(b"z" * 10 * PS)
    os.symlink(tmp_path / "outside", tmp_path / "d" / "link")
    os.mkfifo(tmp_path / "d" / "fifo")
    p, d = _resident(tmp_path / "d")
    assert p.returncode == 0, p.stderr
    got = {os.path.relpath(x["path"], tmp_path / "d"): x for x in d["files"]}
    assert set(got) == {"a", "empty", "sub/b"}  # no fifo, the symlink inside not followed
    assert got["empty"]["pages"] == 0 and got["empty"]["resident"] == 0
    assert got["a"]["pages"] == 4 and got["sub/b"]["pages"] == 1
    p, d = _resident("--no-recurse", tmp_path / "d")
    assert {os.path.basename(x["path"]) for x in d["files"]} == {"a", "empty"}
    p, d = _resident(tmp_path / "d" / "link")  # a symlink argument is followed
    assert d["files"][0]["pages"] == 10


def test_unreadable_paths_are_one_line_each_and_the_rest_reported(tmp_path):
    ok = tmp_path / "ok"
    secret = tmp_path / "secret"
    for path in (ok, secret):
        path.write_bytes(b"q" * 2 * PS)
    os.chmod(secret, 0)
    prefix = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it, keep the uid
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        os.chown(secret, 65534, 65534)
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}"]
    p = subprocess.run(prefix + VN + [str(ok), str(secret), str(tmp_path / "missing")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"cannot read {secret}: Permission denied" in err[0]
    assert "missing: No such file or directory" in err[1]
    assert p.stdout.splitlines()[0].split()[0].endswith("/2") and str(ok) in p.stdout
    assert "1 file, " in p.stdout
