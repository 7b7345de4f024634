"""Invariant guarded: the vnodefs command line keeps its contract: `mount` returns once the mount is
ready and says where the trace goes, `umount` finishes the trace, `run` substitutes {mnt}, sets
VNODEFS_MNT, exits with COMMAND's status and writes the JSON keys others depend on; every bad
input gets one clear line on stderr, a non-zero exit, and leaves nothing mounted or half-written."""

from __future__ import annotations

import json
import os
import sys

import pytest

from vnodefs.mount import find_mount, mount_table
from vnodefs.trace import OPS, load

pytestmark = pytest.mark.fuse


def _no_vnodefs_mounts_under(path):
    return [p for p, fstype, _ in mount_table() if fstype == "fuse.vnodefs" and p.startswith(str(path))]


def _one_line(err):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_mount_umount_cli_and_default_trace(tmp_path, vcli):
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_bytes(b"abc" * 1000)
    try:
        rc, out, err = vcli("mount", src, mnt, "--cache", "direct", cwd=tmp_path)
        assert rc == 0, err
        traces = list(tmp_path.glob("vnodefs-mnt-*.vtrace"))
        assert len(traces) == 1 and str(traces[0]) in err
        assert (mnt / "f").read_bytes() == b"abc" * 1000
    finally:
        rc, out, err = vcli("umount", mnt)
    assert rc == 0, err
    assert find_mount(str(mnt)) is None
    tr = load(traces[0])
    assert int(tr.records[tr.records["op"] == OPS["read"]]["result"].sum()) == 3000


def test_run_exit_status_substitution_env_and_json(tmp_path, vcli):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(os.urandom(300_000))
    js = tmp_path / "out.json"
    tr = tmp_path / "run.vtrace"
    script = ("import os,sys; m=sys.argv[1]; assert m==os.environ['VNODEFS_MNT'], (m, os.environ); "
              "d=open(m+'/data','rb').read(); open(sys.argv[2],'w').write(m); sys.exit(7 if len(d)==300000 else 1)")
    rc, out, err = vcli("run", src, "--cache", "direct", "--trace", tr, "--json", js, "--",
                        sys.executable, "-c", script, "{mnt}", tmp_path / "seen")
    assert rc == 7, err
    seen = (tmp_path / "seen").read_text()
    assert seen.startswith("/") and "{mnt}" not in seen
    assert not os.path.exists(seen), "run must remove its temporary mount point"
    assert find_mount(seen) is None
    s = json.loads(js.read_text())
    for key in ("wall_s", "exit_status", "requests", "bytes_read", "pages_read", "major_faults", "trace"):
        assert key in s, key
    assert s["exit_status"] == 7 and s["trace"] == str(tr)
    assert s["bytes_read"] >= 300_000 and s["pages_read"] >= 300_000 // 4096
    assert s["requests"] >= 1 and s["wall_s"] > 0 and s["major_faults"] >= 0
    assert "requests" in err and "sequential" in err and "time blocked" in err  # the summary


def test_run_reports_major_faults_of_the_command_tree(tmp_path, vcli):
    src = tmp_path / "src"
    src.mkdir()
    (src / "m").write_bytes(os.urandom(64 * 4096))
    js = tmp_path / "o.json"
    # a grandchild maps the file from the (fresh, uncached) mount and touches every page
    script = ("import mmap,os,subprocess,sys; subprocess.run([sys.executable,'-c',"
              "\"import mmap,os,sys; f=open(os.environ['VNODEFS_MNT']+'/m','rb'); "
              "mm=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); mm.madvise(mmap.MADV_RANDOM); "
              "sum(mm[i] for i in range(0,len(mm),4096))\"], check=True)")
    rc, out, err = vcli("run", src, "--trace", tmp_path / "t.vtrace", "--json", js, "--",
                        sys.executable, "-c", script)
    assert rc == 0, err
    s = json.loads(js.read_text())
    assert s["major_faults"] >= 32, s["major_faults"]


def _private_tmpdir(tmp_path):
    """A TMPDIR of this test's own, so `vnodefs run`'s temporary mount points land where only this
    test looks (other programs may mount vnodefs under /tmp at the same time)."""
    d = tmp_path / "tmpdir"
    d.mkdir(exist_ok=True)
    return d


def test_run_signal_and_missing_command(tmp_path, vcli):
    src = tmp_path / "src"
    src.mkdir()
    tmpdir = _private_tmpdir(tmp_path)
    env = {"TMPDIR": str(tmpdir)}
    rc, out, err = vcli("run", src, "--no-trace", "--", sys.executable, "-c", "import os; os.kill(os.getpid(), 9)",
                        env=env)
    assert rc == 128 + 9, err
    rc, out, err = vcli("run", src, "--trace", tmp_path / "x.vtrace", "--", "no-such-command-xyz", cwd=tmp_path,
                        env=env)
    assert rc == 127
    assert "no-such-command-xyz" in _one_line(err)
    assert not (tmp_path / "x.vtrace").exists()
    assert not _no_vnodefs_mounts_under(tmpdir)
    assert list(tmpdir.iterdir()) == [], "vnodefs run left its temporary mount point behind"


def _bad_input_cases(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_text("x")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    return src, mnt, full, ro


@pytest.mark.parametrize("case", [
    "source-missing", "source-not-dir", "mnt-missing", "mnt-not-empty", "mnt-not-dir",
    "trace-unwritable", "trace-dir-missing", "latency-unknown", "latency-bad-custom", "no-fuse-device",
    "no-fuse-library", "no-fusermount",
])
def test_bad_input_one_line_nonzero_nothing_mounted(tmp_path, vcli, case):
    src, mnt, full, ro = _bad_input_cases(tmp_path)
    args = ["mount", src, mnt]
    env = {}
    expect = {
        "source-missing": "does not exist", "source-not-dir": "not a directory", "mnt-missing": "does not exist",
        "mnt-not-empty": "not empty", "mnt-not-dir": "not a directory", "trace-unwritable": "cannot write trace",
        "trace-dir-missing": "cannot write trace", "latency-unknown": "unknown device model 'floppy'",
        "latency-bad-custom": "bad device model", "no-fuse-device": "fuse3", "no-fuse-library": "libfuse3-3",
        "no-fusermount": "fuse3",
    }[case]
    if case == "source-missing":
        args = ["mount", tmp_path / "nope", mnt]
    elif case == "source-not-dir":
        args = ["mount", src / "file", mnt]
    elif case == "mnt-missing":
        args = ["mount", src, tmp_path / "nomnt"]
    elif case == "mnt-not-empty":
        args = ["mount", src, full]
    elif case == "mnt-not-dir":
        args = ["mount", src, src / "file"]
    elif case == "trace-unwritable":
        if os.geteuid() == 0:  # root may write anywhere; a path under a file cannot be created by anyone
            args += ["--trace", src / "file" / "t.vtrace"]
        else:
            args += ["--trace", ro / "t.vtrace"]
    elif case == "trace-dir-missing":
        args += ["--trace", tmp_path / "no" / "dir" / "t.vtrace"]
    elif case == "latency-unknown":
        args += ["--latency", "floppy"]
    elif case == "latency-bad-custom":
        args += ["--latency", "100:0"]
    elif case == "no-fuse-device":
        env["VNODEFS_FUSE_DEVICE"] = str(tmp_path / "no-fuse-device")
    elif case == "no-fuse-library":
        env["FUSE_LIBRARY_PATH"] = str(tmp_path / "libfuse3.so.3")
    elif case == "no-fusermount":
        env["PATH"] = str(tmp_path / "empty-path")
    rc, out, err = vcli(*args, "--no-trace" if "trace" not in case else "--cache=page", env=env, cwd=tmp_path)
    assert rc != 0
    line = _one_line(err)
    assert expect in line, line
    assert line.startswith("vnodefs mount: ")
    assert not _no_vnodefs_mounts_under(tmp_path)
    assert list(tmp_path.glob("*.vtrace")) == []
    # the same input through `run` fails the same way
    if case not in ("mnt-missing", "mnt-not-empty", "mnt-not-dir"):
        extra = args[3:] if "trace" in case else [*args[3:], "--no-trace"]
        tmpdir = _private_tmpdir(tmp_path)
        env["TMPDIR"] = str(tmpdir)
        rc, out, err = vcli("run", args[1], *extra, "--", sys.executable, "-c", "pass", env=env, cwd=tmp_path)
        assert rc != 0 and rc != 127
        assert expect in _one_line(err)
        assert not _no_vnodefs_mounts_under(tmpdir)
        assert list(tmpdir.iterdir()) == [], "vnodefs run left its temporary mount point behind"


def test_mount_on_a_mount_point_that_is_already_mounted(vmount, vcli, tmp_path):
    m = vmount()
    other = tmp_path / "other"
    other.mkdir()
    rc, out, err = vcli("mount", other, m.mountpoint, "--no-trace")
    assert rc == 2 and "already a mount point" in _one_line(err)
    # and the existing mount is untouched
    assert find_mount(m.mountpoint)[0] == "fuse.vnodefs"
    rc, out, err = vcli("umount", tmp_path)
    assert rc == 2 and "not mounted" in _one_line(err)


def test_umount_refuses_a_busy_mount_in_one_line(vmount, vcli):
    m = vmount()
    fh = open(os.path.join(m.mountpoint, "busy"), "w")
    try:
        rc, out, err = vcli("umount", m.mountpoint)
        assert rc == 2 and "busy" in _one_line(err)
        assert find_mount(m.mountpoint) is not None
    finally:
        fh.close()


def test_trace_summary_command(tmp_path, vcli, vmount):
    m = vmount(cache="direct")
    with open(os.path.join(m.src, "s"), "wb") as fh:
        fh.write(b"q" * 50_000)
    with open(os.path.join(m.mountpoint, "s"), "rb") as fh:
        fh.read()
    m.umount()
    rc, out, err = vcli("trace", m.trace_path)
    assert rc == 0 and "requests" in out and "sequential" in out
    rc, out, err = vcli("summary", m.trace_path, "--json")
    assert rc == 0 and json.loads(out)["bytes_read"] == 50_000
    bad = tmp_path / "bad.vtrace"
    bad.write_text("not a trace")
    rc, out, err = vcli("trace", bad)
    assert rc == 2 and "not a vnodefs trace" in _one_line(err)
    rc, out, err = vcli("trace", tmp_path / "missing.vtrace")
    assert rc == 2 and "does not exist" in _one_line(err)


def test_help_on_every_command(vcli):
    for cmd in ([], ["mount"], ["umount"], ["run"], ["demo"], ["trace"], ["summary"]):
        rc, out, err = vcli(*cmd, "--help")
        assert rc == 0 and "usage" in out.lower()
    rc, out, err = vcli("mount", "--help")
    flat = " ".join(out.split())
    assert "hdd (7200 rpm 1 TB desktop drive: seek 1.0 ms track-to-track / 8.5 ms average / 17 ms" in flat
    assert "--layout" in flat
