"""Invariant guarded: `vnodefs run --profile APP` records a real program's launch profile on its first
run (a valid 0600 app_profile the store loads), and a later seeded run of the same executable
really is better: with the `cache` strategy fewer requests block the command and it blocks for less
time than in the cold run, the prefetch was used and its scores add up (used + wasted ==
prefetched); with `read` pages land in the kernel page cache (mincore) and the command takes fewer
major faults. The data the command reads through the cache is the file's. Bad input: one line,
non-zero exit, nothing mounted, no profile damaged.

Workload: Python's sqlite3 (a program this project did not write) over a ~24 MiB database built
from a seed, mapped (PRAGMA mmap_size) and queried at scattered rows, under latency 2000:100.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import stat
import sys

import pytest

from vnodefs.prefetch import FLAG_PF_HIT, OP_PREFETCH
from vnodefs.trace import load

pytestmark = pytest.mark.fuse

LAT = "2000:100"
QUERY = r"""
import random, sqlite3, sys
c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
c.execute("PRAGMA mmap_size=1000000000")
n = c.execute("SELECT max(id) FROM t").fetchone()[0]
rng = random.Random(int(sys.argv[2]))
h = 0
for _ in range(int(sys.argv[3])):
    h = (h * 31 + sum(c.execute("SELECT v FROM t WHERE id=?", (rng.randrange(1, n + 1),)).fetchone()[0])) % (1 << 61)
print(h)
"""


def _mounts_left(under):
    """vnodefs mounts whose source lies under `under` (other helpers' mounts are not ours)."""
    root = os.path.realpath(under)
    with open("/proc/mounts") as fh:
        return [ln for ln in fh if ln.startswith("vnodefs:") and ln.split()[0][len("vnodefs:"):].startswith(root)]


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    d = tmp_path_factory.mktemp("seedwl")
    src = d / "src"
    src.mkdir()
    rng = random.Random(6)
    c = sqlite3.connect(src / "db.sqlite")
    c.execute("PRAGMA page_size=4096")
    c.execute("PRAGMA journal_mode=OFF")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    c.executemany("INSERT INTO t VALUES(?,?)", ((i, rng.randbytes(1000)) for i in range(1, 22_000)))
    c.commit()
    c.close()
    script = d / "query.py"
    script.write_text(QUERY)
    # the expected answer, computed straight from the host file
    import subprocess

    want = subprocess.run([sys.executable, str(script), str(src / "db.sqlite"), "5", "60"], capture_output=True,
                          text=True, check=True).stdout.strip()
    return d, src, script, want


def _run(vcli, d, src, script, name, *opts, cwd=None):
    js = d / f"{name}.json"
    tr = d / f"{name}.vtrace"
    out = d / f"{name}.out"
    rc, _, err = vcli("run", src, "--profile", "sqlq", "--var", d / "var", "--latency", LAT, "--trace", tr,
                      "--json", js, *opts, "--", sys.executable, "-c",
                      f"import runpy,sys; sys.argv=[{str(script)!r}]+sys.argv[1:]; "
                      f"sys.stdout=open({str(out)!r},'w'); runpy.run_path(sys.argv[0], run_name='__main__')",
                      "{mnt}/db.sqlite", "5", "60", timeout=120)
    assert rc == 0, err
    return json.loads(js.read_text()), err, out.read_text().strip(), tr


def test_record_then_seed_cache_and_read(workload, vcli, tmp_path):
    d, src, script, want = workload
    cold, err, ans, _ = _run(vcli, d, src, script, "cold")
    assert ans == want
    assert cold["prefetch"]["strategy"] == "none" and cold["profile"]["action"] == "recorded", err
    prof = d / "var" / "vm" / "app_profile" / str(os.getuid()) / "sqlq.aprof"
    assert prof.exists() and stat.S_IMODE(prof.stat().st_mode) == 0o600
    from swapd.profiles import AppProfileStore

    p = AppProfileStore(str(d / "var")).read(os.getuid(), "sqlq")
    assert p.npages == cold["profile"]["recorded_pages"] > 0 and p.files == ("db.sqlite",)
    assert p.identity.path == os.path.abspath(sys.executable) or os.path.samefile(p.identity.path, sys.executable)
    assert cold["blocking_requests"] == cold["requests"] > 0

    seeded, err, ans, tr = _run(vcli, d, src, script, "cache")
    assert ans == want  # the data served from the prefetch cache is the file's
    for key in ("wall_s", "exit_status", "requests", "bytes_read", "pages_read", "major_faults", "trace",
                "prefetch", "blocking_requests", "blocked_s"):
        assert key in seeded, key
    pf = seeded["prefetch"]
    for key in ("used", "wasted", "late", "strategy", "pages_landed", "requests", "bytes", "time_s"):
        assert key in pf, key
    assert pf["strategy"] == "cache" and "strategy cache" in err
    assert pf["used"] > 0 and pf["used"] + pf["wasted"] == pf["prefetched"] > 0
    assert 0 <= pf["late"] <= pf["used"]
    assert seeded["blocking_requests"] < cold["blocking_requests"], (seeded, cold)
    assert seeded["blocked_s"] < cold["blocked_s"]
    assert seeded["profile"]["action"] == "none"  # a seeded run records nothing without --record
    t = load(tr)
    assert (t.records["op"] == OP_PREFETCH).sum() == pf["requests"] > 0
    assert ((t.records["flags"] & FLAG_PF_HIT) != 0).sum() == pf["cache_hits"] > 0
    assert t.header["prefetch"]["strategy"] == "cache"

    rd, err, ans, _ = _run(vcli, d, src, script, "read", "--prefetch", "read")
    assert ans == want
    pf = rd["prefetch"]
    assert pf["strategy"] == "read" and pf["estimated"] is True
    assert pf["pages_landed"] > 0 and pf["landed_by_file"]["db.sqlite"] == pf["pages_landed"]
    assert pf["used"] + pf["wasted"] == pf["prefetched"] and pf["late"] <= pf["used"]
    assert rd["major_faults"] < cold["major_faults"], (rd["major_faults"], cold["major_faults"])
    assert rd["blocking_requests"] < cold["blocking_requests"]
    assert "estimated" in err

    merged, err, ans, _ = _run(vcli, d, src, script, "merge", "--record", "--min-count", "1")
    assert merged["profile"]["action"].startswith("merged (2 launches")
    assert AppProfileStore(str(d / "var")).read(os.getuid(), "sqlq").launches == 2
    assert not _mounts_left(d)


def test_cache_serves_exact_bytes_in_direct_mode(tmp_path, vcli):
    """Unaligned reads that hit, straddle and miss the prefetch cache return the file's bytes."""
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(3).randbytes(3 * 1024 * 1024 + 777)
    (src / "f").write_bytes(data)
    reader = tmp_path / "r.py"
    reader.write_text(
        "import hashlib,random,sys\n"
        "f=open(sys.argv[1],'rb',buffering=0); rng=random.Random(int(sys.argv[2])); h=hashlib.sha256()\n"
        "for _ in range(200):\n"
        "    o=rng.randrange(0, 3*1024*1024+777); f.seek(o); h.update(f.read(rng.randrange(1, 70000)))\n"
        "open(sys.argv[3],'w').write(h.hexdigest())\n")
    rng = random.Random(9)
    h = hashlib.sha256()
    for _ in range(200):
        o = rng.randrange(0, len(data))
        h.update(data[o:o + rng.randrange(1, 70000)])
    for i, seed in enumerate((9, 9)):  # record with seed 9, then seeded with the same reads
        out = tmp_path / f"h{i}"
        js = tmp_path / f"j{i}.json"
        rc, _, err = vcli("run", src, "--cache", "direct", "--profile", "rd", "--var", tmp_path / "var",
                          "--latency", "50:1000", "--trace", tmp_path / f"t{i}.vtrace", "--json", js, "--",
                          sys.executable, reader, "{mnt}/f", seed, out)
        assert rc == 0, err
        assert out.read_text() == h.hexdigest()
    s = json.loads(js.read_text())
    assert s["prefetch"]["strategy"] == "cache" and s["prefetch"]["cache_hits"] > 0
    assert s["prefetch"]["used"] > 0


@pytest.mark.parametrize("args, needle", [
    (["--profile", "../escape"], "path separator"),
    (["--profile", ".hidden"], "starts with '.'"),
    (["--profile", "a", "--prefetch", "read", "--cache", "direct"], "needs --cache page"),
    (["--profile", "a", "--prefetch", "fadvise", "--cache", "direct"], "needs --cache page"),
    (["--prefetch", "cache"], "needs --profile"),
    (["--profile", "a", "--no-trace"], "needs the trace"),
    (["--profile", "a", "--window", "-1"], "--window"),
    (["--profile", "a", "--prefetch-gap", "x"], "--prefetch-gap"),
])
def test_bad_input_one_line_nothing_mounted(tmp_path, vcli, args, needle):
    src = tmp_path / "src"
    src.mkdir()
    rc, _, err = vcli("run", src, "--var", tmp_path / "var", *args, "--", "true") if "--profile" in args else \
        vcli("run", src, *args, "--", "true")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not _mounts_left(tmp_path)
    assert not (tmp_path / "var" / "vm" / "app_profile" / str(os.getuid())).exists()


def test_corrupt_profile_reported_moved_aside_run_cold(tmp_path, vcli):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 50000)
    d = tmp_path / "var" / "vm" / "app_profile" / str(os.getuid())
    d.mkdir(parents=True)
    os.chmod(tmp_path / "var" / "vm" / "app_profile", 0o700)
    os.chmod(d, 0o700)
    bad = d / "cat.aprof"
    bad.write_bytes(b"not a profile at all")
    os.chmod(bad, 0o600)
    js = tmp_path / "j.json"
    rc, _, err = vcli("run", src, "--profile", "cat", "--var", tmp_path / "var", "--trace", tmp_path / "t.vtrace",
                      "--json", js, "--", "cat", "{mnt}/f")
    assert rc == 0, err
    notes = [ln for ln in err.splitlines() if "damaged profile" in ln]
    assert len(notes) == 1 and "moved aside" in notes[0]
    assert list(d.glob("cat.aprof.corrupt-*"))
    s = json.loads(js.read_text())
    assert s["prefetch"]["strategy"] == "none" and s["profile"]["action"] == "recorded"
    assert bad.exists() and bad.read_bytes()[:8] == b"APPROF\r\n"
    assert not _mounts_left(tmp_path)


def test_many_small_files_seeded_in_device_order_beat_cold_without_double_reads(tmp_path, vcli):
    """300 small files written in shuffled order, read by `cat` in name order under hdd: every
    strategy's seeded run is faster than the cold run; with `cache` no device byte is read twice
    (a read of an extent not fetched yet fetches it once, for the cache) and the prefetch reads
    sweep the device in ascending address order more often than not."""
    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(4)
    names = [f"f{i:03d}" for i in range(300)]
    order = names[:]
    rnd.shuffle(order)
    for n in order:
        with open(src / n, "wb") as fh:
            fh.write(rnd.randbytes(rnd.randint(1000, 9000)))
    os.sync()
    script = tmp_path / "cat.sh"
    script.write_text('for f in "$1"/f*; do cat "$f"; done > /dev/null\n')
    walls = {}
    for run, strategy in (("cold", "off"), ("cache", "cache"), ("read", "read"), ("fadvise", "fadvise")):
        js = tmp_path / f"{run}.json"
        trace = tmp_path / f"{run}.vtrace"
        rc, _, err = vcli("run", src, "--profile", "catall", "--var", tmp_path / "var", "--prefetch",
                          strategy if run != "cold" else "cache", "--latency", "hdd", "--trace", trace,
                          "--json", js, "--quiet", "--", "sh", script, "{mnt}")
        assert rc == 0, err
        walls[run] = json.loads(js.read_text())["wall_s"]
        if run == "cache":
            tr = load(trace)
            r = tr.records
            dev = r[(r["dev_addr"] >= 0) & np.isin(r["op"], [1, OP_PREFETCH])]
            keys = list(zip(dev["dev_addr"].tolist(), dev["result"].tolist()))
            assert len(keys) == len(set(keys)), "a device range was read twice"
            pf = r[r["op"] == OP_PREFETCH]
            assert pf.size >= 300
            up = np.diff(pf["dev_addr"][np.argsort(pf["start_ns"] + pf["delay_ns"], kind="stable")]) > 0
            assert up.mean() > 0.7, up.mean()
    for run in ("cache", "read", "fadvise"):
        assert walls[run] < walls["cold"], walls
