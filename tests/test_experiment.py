"""Invariant guarded: `vmcore experiment seeding` runs end to end on real mounts.

At `--size small --runs 1` every workload (sqlite, pyimport, manyfiles, and the model-side replays)
gets one floor, one cold and one seeded run with the contract's JSON keys (wall_s, major_faults,
requests, bytes_read; seeded: prefetch used / wasted / late), the summary holds medians, cold/seeded
ratios, the floor, the share of the cold-start penalty removed and device time cold vs seeded, the PNG
is written, and nothing is left mounted or in the temp dir. The pyimport workload's imports really
come from the mount (its driver fails loudly otherwise; the trace shows its .pyc and .so reads).
Ctrl-C tears down; bad input is one line and exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vmcore.experiment import format_table, penalty_removed, summarize_runs
from vmcore.experiment_workloads import build_manyfiles, build_pyimport, child_env
from vnodefs import trace as vtrace

pytestmark = pytest.mark.fuse
WORKLOADS = ("sqlite", "pyimport", "manyfiles", "model-sqlite", "model-pyimport", "model-manyfiles")


def vnodefs_mounts_under(path):
    with open("/proc/mounts") as fh:
        return [ln for ln in fh if str(path) in ln]


def run_vmcore(args, tmpdir, timeout=150):
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.run([sys.executable, "-m", "vmcore", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def tmpdir_env(tmp_path):
    d = tmp_path / "tmp"
    d.mkdir()
    yield d
    assert not vnodefs_mounts_under(tmp_path)


def test_small_end_to_end(tmp_path, tmpdir_env):
    out_json, out_png = tmp_path / "exp.json", tmp_path / "exp.png"
    work = tmp_path / "work"
    r = run_vmcore(["experiment", "seeding", "--size", "small", "--runs", "1", "--json", str(out_json),
                    "--plot", str(out_png), "--work", str(work), "--keep"], tmpdir_env)
    assert r.returncode == 0, r.stderr[-3000:]
    # nothing left mounted, nothing in the temp dir (mount points lived under the work dir)
    assert not vnodefs_mounts_under(tmp_path)
    assert os.listdir(tmpdir_env) == []
    rep = json.loads(out_json.read_text())
    assert set(rep["workloads"]) == set(WORKLOADS)
    for name in WORKLOADS:
        w = rep["workloads"][name]
        assert len(w["floor"]) == 1 and len(w["cold"]) == 1 and len(w["seeded"]) == 1, name
        for run in w["floor"] + w["cold"] + w["seeded"]:
            for key in ("wall_s", "major_faults", "requests", "bytes_read"):
                assert isinstance(run[key], (int, float)) and run[key] >= 0, (name, key)
            assert run["wall_s"] > 0
        pf = w["seeded"][0]["prefetch"]
        for key in ("used", "wasted", "late"):
            assert isinstance(pf[key], int) and pf[key] >= 0, (name, key)
        assert pf["used"] > 0, name  # the profile recorded by the cold run was used
        s = rep["summary"][name]
        assert s["cold"]["wall_s"] == w["cold"][0]["wall_s"]
        assert set(s["ratios"]) >= {"wall_s", "major_faults", "requests", "bytes_read"}
        assert s["ratios"]["wall_s"] == pytest.approx(w["cold"][0]["wall_s"] / w["seeded"][0]["wall_s"])
        # floor, penalty share and device time cold vs seeded, as the table and the plot show them
        assert s["floor_s"] == w["floor"][0]["wall_s"]
        assert s["penalty_removed"] == penalty_removed(s["floor_s"], s["cold"]["wall_s"], s["seeded"]["wall_s"])
        for key in ("seek_s_cold", "seek_s_seeded", "positioning_s_cold", "positioning_s_seeded",
                    "device_busy_s_cold", "device_busy_s_seeded"):
            assert isinstance(s[key], float) and s[key] >= 0, (name, key)
        assert w["floor"][0]["device_busy_s"] == 0  # no device model on the floor mount
        assert s["positioning_s_cold"] > 0, name  # the cold launch paid the disk
    assert rep["config"]["device_model"] == "hdd" and rep["config"]["layout"] in ("fiemap", "synthetic")
    assert rep["config"]["prefetch"] == "cache"
    assert "cold-start penalty removed" in r.stdout and "floor" in r.stdout
    # the model replays page for page what the real cold run read, and eager seeding removes
    # every hard fault of the replay
    for name in ("model-sqlite", "model-pyimport", "model-manyfiles"):
        w = rep["workloads"][name]
        assert w["cold"][0]["major_faults"] > 0
        assert w["seeded"][0]["major_faults"] == 0
        assert w["seeded"][0]["prefetch"]["late"] == 0
    assert "sqlite" in r.stdout and "cold / seeded" in r.stdout
    png = out_png.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    # the pyimport cold run's trace: the command's process read .pyc and extension modules
    # through the mount (its driver also checked every module's __file__, or it would exit 4)
    run = rep["workloads"]["pyimport"]["cold"][0]
    tr = vtrace.load(run["trace"])
    reads = tr.records[tr.op_mask("read")]
    paths = {tr.files[int(f)] for f in set(reads["file"].tolist())}
    assert any(p.startswith("lib/") and p.endswith(".pyc") for p in paths)
    assert any(p.startswith("lib/") and p.endswith(".so") for p in paths)
    assert "bin/pyimport_app.py" in paths
    sq = {tr2 for tr2 in vtrace.load(rep["workloads"]["sqlite"]["cold"][0]["trace"]).files.values()}
    assert "sqlite/app.db" in sq
    # the manyfiles launch read its plugins' bytecode through the mount, hundreds of small files
    mf = vtrace.load(rep["workloads"]["manyfiles"]["cold"][0]["trace"])
    mreads = mf.records[mf.op_mask("read")]
    pyc = {mf.files[int(f)] for f in set(mreads["file"].tolist())} - {"bin/manyfiles_app.py"}
    assert len(pyc) >= 400 and all(p.startswith("plugins/") for p in pyc)


def test_penalty_share_formula_and_table():
    assert penalty_removed(1.0, 11.0, 2.0) == pytest.approx(0.9)
    assert penalty_removed(1.0, 11.0, 11.0) == 0
    assert penalty_removed(1.0, 11.0, 12.0) == pytest.approx(-0.1)  # seeding made it worse: negative
    assert penalty_removed(2.0, 2.0, 1.0) is None  # no penalty to remove
    assert penalty_removed(3.0, 2.0, 1.0) is None
    assert penalty_removed(None, 2.0, 1.0) is None

    def run(mode, wall, seek=0.0, rot=0.0, busy=0.0):
        r = {"mode": mode, "wall_s": wall, "major_faults": 0, "requests": 10, "bytes_read": 4096,
             "device_seek_s": seek, "device_rotation_s": rot, "device_busy_s": busy}
        if mode == "seeded":
            r["prefetch"] = {"used": 5, "wasted": 1, "late": 0}
        return r

    results = {"w": {"floor": [run("floor", 1.0)], "cold": [run("cold", 11.0, 2.0, 8.0, 10.5)],
                     "seeded": [run("seeded", 2.0, 0.1, 0.3, 0.6)]}}
    summ = summarize_runs(results)["w"]
    assert summ["penalty_removed"] == pytest.approx(0.9)
    assert (summ["seek_s_cold"], summ["seek_s_seeded"]) == (2.0, 0.1)
    assert summ["positioning_s_cold"] == pytest.approx(10.0)
    rep = {"summary": {"w": summ}, "config": {"latency": "hdd", "layout": "fiemap", "size": "small", "seed": 1,
                                            "cache": "page", "prefetch": "cache"}}
    text = format_table(rep)
    assert "penalty removed 90%" in text and "layout fiemap" in text
    assert [ln.split()[1] for ln in text.splitlines() if ln.startswith("w ")] == ["floor", "cold", "seeded"]


def test_manyfiles_driver_fails_loudly_off_the_mount(tmp_path):
    src = tmp_path / "src"
    info = build_manyfiles(str(src), "small", 1)
    assert info["plugins"] == 400 and info["files"] >= 800
    driver = str(src / "bin" / "manyfiles_app.py")
    ok = subprocess.run([sys.executable, "-S", "-B", driver, str(src)], capture_output=True, text=True,
                        env=child_env())
    assert ok.returncode == 0, ok.stderr
    assert "400 modules ok" in ok.stdout
    empty = tmp_path / "elsewhere"
    (empty / "plugins").mkdir(parents=True)
    bad = subprocess.run([sys.executable, "-S", "-B", driver, str(empty)], capture_output=True, text=True,
                         env=child_env())
    assert bad.returncode != 0
    # the same seed builds the same bytes
    again = tmp_path / "again"
    build_manyfiles(str(again), "small", 1)
    for sub in ("plugins/p03/m0043.py", "bin/manyfiles_app.py"):
        assert (src / sub).read_bytes() == (again / sub).read_bytes()


def test_pyimport_driver_fails_loudly_off_the_mount(tmp_path):
    src = tmp_path / "src"
    build_pyimport(str(src), "small", 1)
    driver = str(src / "bin" / "pyimport_app.py")
    ok = subprocess.run([sys.executable, "-S", "-B", driver, str(src)], capture_output=True, text=True,
                        env=child_env())
    assert ok.returncode == 0, ok.stderr
    assert "imports ok" in ok.stdout
    # a library dir that is not there: the same imports come from the host stdlib -> exit 4
    empty = tmp_path / "elsewhere"
    (empty / "lib").mkdir(parents=True)
    bad = subprocess.run([sys.executable, "-S", "-B", driver, str(empty)], capture_output=True, text=True,
                         env=child_env())
    assert bad.returncode == 4
    assert "NOT imported from the mount" in bad.stderr
    assert not list(src.rglob("*.pyc.*"))  # -B: nothing written beside the sources


def test_ctrl_c_tears_down(tmp_path, tmpdir_env):
    env = dict(os.environ, TMPDIR=str(tmpdir_env))
    p = subprocess.Popen([sys.executable, "-m", "vmcore", "experiment", "seeding", "--size", "small",
                          "--workload", "sqlite", "--runs", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        seen = ""
        while time.monotonic() < deadline:  # wait until a run is under way (a mount exists)
            line = p.stderr.readline()
            seen += line
            if "built sqlite" in line or not line:
                break
        time.sleep(1.5)
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "built sqlite" in seen
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert not vnodefs_mounts_under(tmpdir_env)
    assert os.listdir(tmpdir_env) == []  # the work dir (a temp dir) is gone too


@pytest.mark.parametrize("args, says", [
    (["--workload", "nosuch"], "unknown workload 'nosuch'"),
    (["--runs", "0"], "--runs 0"),
    (["--latency", "floppy"], "unknown device model 'floppy'"),
    (["--size", "huge"], "unknown size 'huge'"),
    (["--prefetch", "psychic"], "unknown prefetch strategy"),
])
def test_bad_input(tmp_path, tmpdir_env, args, says):
    r = run_vmcore(["experiment", "seeding", *args], tmpdir_env, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert r.stdout == ""
    assert os.listdir(tmpdir_env) == []


def test_summary_ratios():
    runs = {"w": {"cold": [{"wall_s": 4.0, "major_faults": 10, "requests": 9, "bytes_read": 100},
                           {"wall_s": 6.0, "major_faults": 30, "requests": 3, "bytes_read": 100},
                           {"wall_s": 5.0, "major_faults": 20, "requests": 6, "bytes_read": 100}],
                  "seeded": [{"wall_s": 1.0, "major_faults": 0, "requests": 3, "bytes_read": 50,
                              "prefetch": {"used": 5, "wasted": 1, "late": 0}}]}}
    s = summarize_runs(runs)["w"]
    assert s["cold"]["wall_s"] == 5.0 and s["cold"]["min"]["wall_s"] == 4.0 and s["cold"]["max"]["wall_s"] == 6.0
    assert s["ratios"]["wall_s"] == 5.0 and s["ratios"]["requests"] == 2.0
    assert s["ratios"]["major_faults"] == float("inf")
    assert s["major_faults_reduction"] == 1.0
    assert s["seeded"]["prefetch"] == {"used": 5, "wasted": 1, "late": 0}
