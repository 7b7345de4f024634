"""Invariants guarded: a profile in VAR/vm/app_profile is read back exactly; a save is atomic (a
writer killed with SIGKILL at any moment leaves the old profile or the new one, never a mix) and
two writer processes never produce a damaged file; a damaged, truncated, wrong-version or
wrong-magic file is reported in one line, moved aside and treated as absent; a stale identity is
absent; no application name escapes the tree; directories are 0700 and files 0600."""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from swapd.profiles import (
    AppProfileStore, AppProfileTreeError, ProfileNotFound, tree_of,
)
from vmcore.workingset import (
    HEADER_SIZE, AppIdentity, Profile, ProfileFormatError, ProfileNameError, encode_profile,
)

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
IDENT = AppIdentity("bin/app", 77, 1_700_000_000_000_000_001)


def make_profile(n=1000, seed=0, uid=501, app="app", ident=IDENT, **kw):
    rng = np.random.default_rng(seed)
    ft = [(f"lib/f{int(x) % 13}", int(rng.integers(0, 1 << 30)), int(rng.integers(0, 10**11)))
          for x in range(n)]
    at = [(int(rng.integers(1, 1 << 30)), int(rng.integers(0, 10**11))) for _ in range(n // 8)]
    kw.setdefault("created_ns", 1_700_000_000 * 10**9 + seed)
    return Profile.from_touches(ident, uid, app, ft, at, **kw)


@pytest.fixture
def lines():
    return []


@pytest.fixture
def store(tmp_path, lines):
    return AppProfileStore(tmp_path / "var", report=lines.append)


def test_round_trip_of_every_field_big_profile(store, lines):
    p = make_profile(100_000, seed=3, launches=1, window_ns=12_345_678_901, page_size=8192)
    assert store.save(p) is True
    q = store.load(501, "app", IDENT)
    assert q == p and q is not p
    for f in ("identity", "uid", "app", "created_ns", "window_ns", "launches", "page_size",
              "files"):
        assert getattr(q, f) == getattr(p, f)
    assert np.array_equal(q.entries, p.entries)
    assert lines == []
    path = store.path_for(501, "app")
    assert path == os.path.join(tree_of(store.var), "501", "app.aprof")
    assert os.path.getsize(path) == len(encode_profile(p))
    [info] = store.list()
    assert (info.app, info.uid, info.pages, info.launches, info.identity, info.error) == \
        ("app", 501, p.npages, 1, IDENT, None)
    assert info.size == os.path.getsize(path)


def test_missing_profile_is_absent_without_a_word(store, lines):
    assert store.load(501, "app", IDENT) is None
    assert store.list() == []
    assert lines == []
    with pytest.raises(ProfileNotFound):
        store.read(501, "app")
    assert store.remove(501, "app") is False


def test_permissions_0700_0600_even_with_a_permissive_umask(tmp_path, lines):
    old = os.umask(0)
    try:
        s = AppProfileStore(tmp_path / "var", report=lines.append)
        s.save(make_profile(10))
    finally:
        os.umask(old)
    root = tree_of(tmp_path / "var")
    for d in (root, os.path.join(root, "501")):
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    for f in (os.path.join(root, ".lock"), os.path.join(root, "501", "app.aprof")):
        st = os.stat(f)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    os.chmod(os.path.join(root, "501"), 0o755)  # loosened behind our back: tightened on save
    s.save(make_profile(10, seed=1))
    assert stat.S_IMODE(os.stat(os.path.join(root, "501")).st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to another user")
def test_a_tree_owned_by_someone_else_is_refused(store, lines):
    store.save(make_profile(10))
    os.chown(os.path.join(store.root, "501"), 4242, 4242)
    with pytest.raises(AppProfileTreeError, match="owned by uid 4242") as ei:
        store.save(make_profile(10, seed=2))
    assert "\n" not in str(ei.value)
    os.chown(os.path.join(store.root, "501"), 0, 0)
    os.chown(store.path_for(501, "app"), 4242, 4242)
    with pytest.raises(AppProfileTreeError, match="owned by uid 4242"):
        store.read(501, "app")


@pytest.mark.parametrize("name", ["..", "../../etc/passwd", "/etc/passwd", "a/b", "a\\b", "",
                                  "a\0b", ".lock", "x" * 300, "..\\..", "\n"])
def test_path_escape_attempts_are_refused_and_touch_nothing(store, tmp_path, name):
    p = make_profile(5)
    with pytest.raises(ProfileNameError) as ei:
        store.path_for(501, name)
    assert isinstance(ei.value, ValueError) and "\n" not in str(ei.value)
    for call in (lambda: store.load(501, name, IDENT), lambda: store.remove(501, name),
                 lambda: store.read(501, name)):
        with pytest.raises(ProfileNameError):
            call()
    with pytest.raises(ValueError):
        Profile(IDENT, 501, name, entries=p.entries, files=p.files)
    assert not (tmp_path / "var").exists()  # nothing created anywhere
    with pytest.raises(ValueError, match="uid"):
        store.path_for(-1, "app")


def test_stale_identity_is_absent_said_so_and_replaced(store, lines):
    store.save(make_profile(50))
    new = AppIdentity("bin/app", 77, IDENT.mtime_ns + 1)  # rebuilt: new mtime
    assert store.load(501, "app", new) is None
    assert len(lines) == 1 and "stale" in lines[0] and "\n" not in lines[0]
    assert os.path.exists(store.path_for(501, "app"))  # left for the next save to replace
    assert store.load(501, "app", AppIdentity("bin/app", 78, IDENT.mtime_ns)) is None  # new inode
    p2 = make_profile(20, seed=9, ident=new)
    store.save(p2)
    assert store.load(501, "app", new) == p2
    assert store.load(501, "app", IDENT) is None


def _version2(b: bytes) -> bytes:
    b = bytearray(b)
    b[8:10] = struct.pack("<H", 2)
    b[92:96] = struct.pack("<I", zlib.crc32(bytes(b[:92])))
    return bytes(b)


@pytest.mark.parametrize("kind,damage,match", [
    ("corrupt", lambda b: b[:HEADER_SIZE + 40] + bytes([b[HEADER_SIZE + 40] ^ 0xFF])
     + b[HEADER_SIZE + 41:], "payload checksum"),
    ("truncated", lambda b: b[:len(b) // 2], "truncated"),
    ("truncated-header", lambda b: b[:20], "truncated"),
    ("empty", lambda b: b"", "truncated"),
    ("wrong-version", _version2, "unsupported format version 2"),
    ("wrong-magic", lambda b: b"\x7fELF\x02\x01\x01\x00" + b[8:], "bad magic"),
    ("header-bitflip", lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "header checksum"),
    ("trailing", lambda b: b + b"junk", "unexpected bytes"),
])
def test_damaged_files_are_reported_in_one_line_moved_aside_and_absent(store, lines, kind,
                                                                        damage, match):
    p = make_profile(300)
    store.save(p)
    path = store.path_for(501, "app")
    good = Path(path).read_bytes()
    Path(path).write_bytes(damage(good))
    with pytest.raises(ProfileFormatError, match=match):
        store.read(501, "app")  # inspection: an error, the file stays
    assert os.path.exists(path)
    assert store.load(501, "app", IDENT) is None
    assert len(lines) == 1, lines
    assert "\n" not in lines[0] and path in lines[0] and "moved aside" in lines[0]
    assert not os.path.exists(path)
    aside = [n for n in os.listdir(os.path.dirname(path)) if n.startswith("app.aprof.corrupt-")]
    assert len(aside) == 1 and aside[0] in lines[0]
    assert Path(os.path.dirname(path), aside[0]).read_bytes() == damage(good)  # kept, not fixed
    assert store.load(501, "app", IDENT) is None and len(lines) == 1  # now simply missing
    assert all(i.app == "app" and i.error is None for i in store.list()) or store.list() == []
    store.save(p)  # a new save works and another damage gets its own name
    Path(path).write_bytes(damage(good))
    assert store.load(501, "app", IDENT) is None
    assert len([n for n in os.listdir(os.path.dirname(path)) if ".corrupt-" in n]) == 2


def test_a_symlink_in_place_of_a_profile_is_not_followed(store, lines, tmp_path):
    store.save(make_profile(5))
    path = store.path_for(501, "app")
    target = tmp_path / "elsewhere"
    target.write_bytes(encode_profile(make_profile(5)))
    os.unlink(path)
    os.symlink(target, path)
    assert store.load(501, "app", IDENT) is None
    assert "symbolic link" in lines[0]
    assert target.exists()  # the link was moved aside, not its target


def test_list_shows_damaged_headers_without_moving_them(store):
    store.save(make_profile(10))
    store.save(make_profile(10, app="other", uid=0))
    bad = os.path.join(store.root, "0", "broken.aprof")
    Path(bad).write_bytes(b"garbage")
    infos = {(i.uid, i.app): i for i in store.list()}
    assert set(infos) == {(0, "broken"), (0, "other"), (501, "app")}
    assert "bad magic" in infos[(0, "broken")].error and os.path.exists(bad)
    assert infos[(0, "other")].pages == make_profile(10).npages
    assert store.uids_with("other") == [0]


def test_remove_and_twin_and_merge(store):
    p1 = make_profile(40, seed=1)
    assert store.save(p1)
    assert store.save(make_profile(40, seed=2), if_absent=True) is False  # twin kept
    assert store.load(501, "app", IDENT) == p1
    p2 = make_profile(40, seed=1, created_ns=5)  # same pages, another launch
    m = store.save_merged(p2, min_count=2)
    assert m.launches == 2 and m.npages == p1.npages
    assert store.load(501, "app", IDENT) == m
    other = make_profile(40, seed=3)
    m2 = store.save_merged(other, min_count=3)  # pages of p1 have 3 launches only with `other`
    assert m2.launches == 3 and m2.npages < m.npages
    assert store.remove(501, "app") is True
    assert store.load(501, "app", IDENT) is None and store.remove(501, "app") is False


# ---- processes: atomicity and concurrent writers -------------------------------------------------
CHILD_PRELUDE = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    sys.path.insert(0, {root!r})
    import swapd.profiles as sp
    from vmcore.workingset import AppIdentity, Profile, ENTRY_DTYPE
    IDENT = AppIdentity("bin/app", 77, 1_700_000_000_000_000_001)
    def big(n, tag):
        e = np.zeros(n, dtype=ENTRY_DTYPE)
        e["file"] = 0
        e["page"] = np.arange(n, dtype=np.uint64) * 2 + tag
        e["count"] = 1
        e["first_ns"] = np.arange(n, dtype=np.uint64)
        e["order"] = np.arange(n, dtype=np.uint32)
        return Profile(IDENT, 501, "app", entries=e, files=["data/f"], created_ns=tag)
    store = sp.AppProfileStore(sys.argv[1], report=lambda s: None)
""")


def _child(script: str, *args: str) -> subprocess.Popen:
    code = CHILD_PRELUDE.format(root=str(ROOT)) + textwrap.dedent(script)
    return subprocess.Popen([PY, "-c", code, *args], stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, "child never reached the point"
        time.sleep(0.01)


def test_writer_killed_between_write_and_rename_leaves_the_old_profile(store, tmp_path, lines):
    old = make_profile(200, seed=11)
    store.save(old)
    marker = tmp_path / "at-rename"
    proc = _child("""
        def stop(tmp, final):
            open(sys.argv[2], "w").close()
            time.sleep(600)
        sp._before_rename = stop
        store.save(big(1_000_000, 1))
    """, str(store.var), str(marker))
    try:
        _wait_for(marker, proc)
        d = os.path.dirname(store.path_for(501, "app"))
        tmps = [n for n in os.listdir(d) if n.startswith(".tmp-")]
        assert len(tmps) == 1 and os.path.getsize(os.path.join(d, tmps[0])) > 32_000_000
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store.load(501, "app", IDENT) == old and lines == []
    new = make_profile(30, seed=12)
    store.save(new)  # takes the lock the dead writer held, removes its debris
    assert not [n for n in os.listdir(d) if n.startswith(".tmp-")]
    assert store.load(501, "app", IDENT) == new


def test_writer_killed_at_random_moments_never_leaves_a_damaged_profile(store, lines):
    first = make_profile(10, seed=1)
    store.save(first)
    for delay in (0.15, 0.35, 0.6):
        proc = _child("""
            a, b = big(300_000, 1), big(300_000, 2)
            while True:
                store.save(a)
                store.save(b)
        """, str(store.var))
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        p = store.load(501, "app", IDENT)
        assert p is not None and lines == [], lines
        if p.created_ns in (1, 2):  # a whole new profile, with its own pages
            assert p.npages == 300_000
            assert int(p.entries["page"][-1]) == 2 * 299_999 + p.created_ns
        else:
            assert p == first


def test_two_writer_processes_never_produce_a_damaged_file(store, lines):
    store.save(make_profile(10))
    script = """
        tag = int(sys.argv[2])
        p = big(50_000 + tag, tag)
        for _ in range(15):
            store.save(p)
    """
    procs = [_child(script, str(store.var), str(t)) for t in (1, 2)]
    seen = set()
    try:
        while any(p.poll() is None for p in procs):
            q = store.load(501, "app", IDENT)  # a reader racing the writers
            assert q is not None and lines == [], lines
            seen.add(q.created_ns)
            if q.created_ns in (1, 2):
                assert q.npages == 50_000 + q.created_ns
                assert int(q.entries["page"][-1]) == 2 * (q.npages - 1) + q.created_ns
    finally:
        for p in procs:
            p.wait(timeout=120)
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    final = store.load(501, "app", IDENT)
    assert final is not None and final.created_ns in (1, 2)
    d = os.path.dirname(store.path_for(501, "app"))
    assert sorted(os.listdir(d)) == ["app.aprof"]  # no debris, nothing moved aside
