"""Invariant guarded: a vnodefs mount behaves like the directory it mounts, for every user.

The same probe (tests/vnodefs/posix_probe.py: permission checks, ownership of what a caller
creates, umask, set-group-ID and sticky directories, utimensat, truncate, chown, hard links) runs
against a host directory and against a vnodefs mount of an identical one, as root and as the user
nobody (setpriv), in page and direct mode, and must print the same answers. Also: with
--allow-other another user can use the mount at all; paths as long as the caller may make them
inside the mount work; a hard link's names agree at once while a name is held open and cached.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
from cache_modes import CACHE_MODES, cache_kwargs

from vnodefs.mount import MountError, check_allow_other, find_mount, mount

pytestmark = pytest.mark.fuse

PROBE = os.path.join(os.path.dirname(__file__), "posix_probe.py")
NOBODY = pwd.getpwnam("nobody").pw_uid
NOGROUP = grp.getgrnam("nogroup").gr_gid
USERS = grp.getgrnam("users").gr_gid


@pytest.fixture
def world_dir():
    """A scratch directory every user can traverse (pytest's tmp_path is root's 0700)."""
    d = tempfile.mkdtemp(prefix="vnodefs-posix-")
    os.chmod(d, 0o755)
    mounts = []
    yield d, mounts
    for m in mounts:
        if find_mount(m.mountpoint) is not None:
            try:
                m.umount()
            except MountError:
                subprocess.run(["fusermount3", "-u", "-z", m.mountpoint], capture_output=True)
    shutil.rmtree(d)
    for m in mounts:
        assert find_mount(m.mountpoint) is None


def prepare(base: str) -> None:
    """The tree the probe expects, owned by root."""
    os.makedirs(base)
    os.chmod(base, 0o755)

    def f(name, mode, data="data\n"):
        p = os.path.join(base, name)
        with open(p, "w") as fh:
            fh.write(data)
        os.chmod(p, mode)

    f("secret", 0o600)
    f("pub", 0o644)
    f("world", 0o666)
    for name, mode in (("open", 0o777), ("sgid", 0o2777), ("sticky", 0o1777)):
        os.mkdir(os.path.join(base, name))
        os.chmod(os.path.join(base, name), mode)
    os.chown(os.path.join(base, "sgid"), 0, USERS)
    f("sticky/rootf", 0o666)


def probe_python() -> str:
    """A python3 the user nobody can run (the venv's may live under root's 0700 home)."""
    for exe in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", "--clear-groups", exe, "-c", "0"],
                           capture_output=True)
        if r.returncode == 0:
            return exe
    pytest.fail("no python3 the user nobody can execute")


def run_probe(base: str, user: str, exe: str) -> list:
    probe = os.path.join(os.path.dirname(base), "posix_probe.py")
    if not os.path.exists(probe):
        shutil.copy(PROBE, probe)
        os.chmod(probe, 0o644)
    cmd = [exe, probe, base]
    if user == "nobody":
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", f"--groups={USERS}"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


#: the probe's answers the kernel's writeback cache may give from its own copy: with it the kernel
#: keeps a regular file's size and mtime itself, per name, so a change made through one hard-link
#: name is not seen through the other (vnodefs.fuseops.FsConfig.writeback_cache)
WRITEBACK_STALE = {"hl mtime h1", "hl read h1 again", "hl size h1"}


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_probe_answers_match_host_as_root_and_as_nobody(world_dir, cache):
    d, mounts = world_dir
    exe = probe_python()
    host, src, mnt = os.path.join(d, "host"), os.path.join(d, "src"), os.path.join(d, "mnt")
    prepare(host)
    prepare(src)
    os.mkdir(mnt)
    m = mount(src, mnt, trace=None, allow_other=True, **cache_kwargs(cache))
    mounts.append(m)
    for user in ("root", "nobody"):
        want = run_probe(host, user, exe)
        got = run_probe(mnt, user, exe)
        diff = [(w, g) for w, g in zip(want, got) if w != g and not (cache == "writeback" and w[0] in WRITEBACK_STALE)]
        assert not diff and len(want) == len(got), f"as {user}, {cache} mode: host vs mount {diff}"
        assert [w[0] for w in want] == [g[0] for g in got]
    # the probe really exercised refusals and another user's ownership
    answers = dict((k, v) for k, v in run_probe(host, "nobody", exe) if k in ("read secret", "chmod pub"))
    assert answers == {"read secret": "EACCES", "chmod pub": "EPERM"}
    st = os.lstat(os.path.join(src, "open", "user", "f"))
    assert (st.st_uid, st.st_gid) == (NOBODY, USERS)  # chowned to the caller's group of choice
    st = os.lstat(os.path.join(src, "sgid", "user", "f"))
    assert (st.st_uid, st.st_gid) == (NOBODY, USERS) and os.lstat(os.path.join(src, "sgid", "user")).st_mode & stat.S_ISGID


def test_other_users_are_refused_without_allow_other(world_dir):
    d, mounts = world_dir
    src, mnt = os.path.join(d, "src"), os.path.join(d, "mnt")
    os.mkdir(src)
    os.mkdir(mnt)
    os.chmod(src, 0o755)
    mounts.append(mount(src, mnt, trace=None))
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", "--clear-groups", "ls", mnt],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    mounts[0].umount()
    mounts.append(mount(src, mnt, trace=None, allow_other=True))
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOGROUP}", "--clear-groups", "ls", mnt],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_allow_other_refused_for_a_user_fuse_does_not_permit(tmp_path):
    """fusermount3's rule: root may always; another user only with user_allow_other in
    /etc/fuse.conf (a comment does not count); otherwise one clear line."""
    check_allow_other()  # root may
    conf = tmp_path / "fuse.conf"
    for text, allowed in (("", False), ("# user_allow_other\nmount_max = 1000\n", False),
                          ("mount_max = 1000\nuser_allow_other\n", True)):
        conf.write_text(text)
        if allowed:
            check_allow_other(euid=NOBODY, conf=str(conf))
        else:
            with pytest.raises(MountError) as e:
                check_allow_other(euid=NOBODY, conf=str(conf))
            assert str(e.value) == "--allow-other needs root, or the line user_allow_other in /etc/fuse.conf"
    with pytest.raises(MountError):
        check_allow_other(euid=NOBODY, conf=str(tmp_path / "missing.conf"))


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_paths_as_long_as_the_caller_may_make_them(world_dir, cache):
    """From a directory inside the mount, a relative path of PATH_MAX-1 bytes works, as on the
    host; and again from deeper inside, where the whole path from the mount root is longer than
    PATH_MAX."""
    d, mounts = world_dir
    host, src, mnt = os.path.join(d, "host"), os.path.join(d, "src"), os.path.join(d, "mnt")
    for p in (host, src, mnt):
        os.mkdir(p)
    mounts.append(mount(src, mnt, trace=None, **cache_kwargs(cache)))
    names = [("d%02d" % i) + "x" * 236 for i in range(16)]  # 16 names of 239 bytes
    rel_dir = "/".join(names)  # 3839 bytes
    leaf = "f" * (4095 - len(rel_dir) - 1)
    rel = rel_dir + "/" + leaf
    assert len(rel) == 4095
    for root in (host, mnt):
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(len(names)):
                os.mkdir("/".join(names[:i + 1]), dir_fd=fd)
            wfd = os.open(rel, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
            os.write(wfd, b"deep")
            os.close(wfd)
            assert os.stat(rel, dir_fd=fd).st_size == 4
            # deeper: the path from the mount root is now 3840 + 4095 bytes long
            sub = os.open(rel_dir, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                for i in range(len(names)):
                    os.mkdir("/".join(names[:i + 1]), dir_fd=sub)
                wfd = os.open(rel, os.O_CREAT | os.O_RDWR, 0o600, dir_fd=sub)
                os.write(wfd, b"deeper")
                os.close(wfd)
                os.rename(rel, rel_dir + "/g", src_dir_fd=sub, dst_dir_fd=sub)
                os.link(rel_dir + "/g", rel, src_dir_fd=sub, dst_dir_fd=sub)
                assert os.stat(rel, dir_fd=sub).st_nlink == 2
                os.chmod(rel, 0o640, dir_fd=sub)
                os.utime(rel, ns=(10**9, 10**9), dir_fd=sub)
                rfd = os.open(rel, os.O_RDONLY, dir_fd=sub)
                assert os.read(rfd, 100) == b"deeper"
                os.close(rfd)
                os.symlink("target", rel_dir + "/s", dir_fd=sub)
                assert os.readlink(rel_dir + "/s", dir_fd=sub) == "target"
                assert sorted(os.listdir(os.open(rel_dir, os.O_RDONLY | os.O_DIRECTORY, dir_fd=sub))) == \
                    sorted(["g", "s", leaf])
                os.unlink(rel, dir_fd=sub)
                os.unlink(rel_dir + "/g", dir_fd=sub)
            finally:
                os.close(sub)
        finally:
            os.close(fd)
    deep = os.path.join(src, rel_dir, rel_dir)
    assert os.path.isdir(os.path.join(src, rel_dir)) and len(deep) > 4096


@pytest.mark.parametrize("cache", ["page", "direct"])  # not writeback: see WRITEBACK_STALE
def test_hard_link_names_agree_at_once_while_open(world_dir, cache):
    d, mounts = world_dir
    src, mnt = os.path.join(d, "src"), os.path.join(d, "mnt")
    os.mkdir(src)
    os.mkdir(mnt)
    mounts.append(mount(src, mnt, trace=None, **cache_kwargs(cache)))
    h1, h2 = os.path.join(mnt, "h1"), os.path.join(mnt, "h2")
    with open(h1, "w") as fh:
        fh.write("a\n")
    assert os.stat(h1).st_nlink == 1
    os.link(h1, h2)
    assert os.stat(h1).st_nlink == 2 and os.stat(h2).st_nlink == 2
    r1 = os.open(h1, os.O_RDONLY)  # h1 stays open with its pages cached
    try:
        assert os.pread(r1, 100, 0) == b"a\n"
        os.chmod(h2, 0o640)
        assert stat.S_IMODE(os.stat(h1).st_mode) == 0o640
        assert stat.S_IMODE(os.fstat(r1).st_mode) == 0o640
        os.chown(h2, NOBODY, NOGROUP)
        assert (os.stat(h1).st_uid, os.stat(h1).st_gid) == (NOBODY, NOGROUP)
        os.utime(h2, ns=(7 * 10**9, 8 * 10**9))
        assert os.stat(h1).st_mtime_ns == 8 * 10**9
        w2 = os.open(h2, os.O_WRONLY)
        try:
            os.pwrite(w2, b"BBBB\n", 0)
        finally:
            os.close(w2)
        assert os.stat(h1).st_size == 5
        assert os.pread(r1, 100, 0) == b"BBBB\n"  # no stale page through the other name
        os.truncate(h2, 2)
        assert os.fstat(r1).st_size == 2 and os.pread(r1, 100, 0) == b"BB"
        os.unlink(h2)
        assert os.stat(h1).st_nlink == 1
    finally:
        os.close(r1)
