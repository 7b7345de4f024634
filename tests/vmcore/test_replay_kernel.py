"""Invariant guarded: replaying a trace through the model counts exactly what the trace implies.

* Under lru / fifo / clock the kernel's misses (zero fills + hard faults) equal a plain cache
  simulator's with memory / page_size pages, for page traces, multi-file traces and traces with
  writes (dirty pages go to the default pager and come back as hard faults, still one miss each).
* One region per file, sized to its highest page + 1; accesses = trace length.
* Under mach, every distinct page misses at least once and memory larger than the footprint
  misses exactly the footprint.
* `vmcore replay` (in-process and as the installed console command) prints the same numbers, the
  JSON object has the contract's keys, and every bad input is one line on stderr with exit 2.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmcore.cli import Progress, main
from vmcore.errors import InvalidArgument
from vmcore.kernel import Kernel
from vmcore.policy import simulate
from vmcore.replay import AccessTrace, load, replay

ROOT = Path(__file__).resolve().parents[2]
PS = 4096


def sim_misses(trace: AccessTrace, policy: str, nframes: int) -> int:
    key = trace.file.astype(np.int64) * (int(trace.page.max()) + 1) + trace.page
    return simulate(policy, key, nframes)


def zipf_trace(n=6000, footprint=600, seed=3, nfiles=1, write_frac=0.0):
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, footprint + 1)
    pages = rng.permutation(footprint)[np.minimum(np.searchsorted(np.cumsum(w) / w.sum(), rng.random(n)),
                                                  footprint - 1)]
    files = pages % nfiles
    writes = rng.random(n) < write_frac if write_frac else None
    return AccessTrace(files, pages // nfiles, writes, [f"f{i}" for i in range(nfiles)], "zipf")


@pytest.mark.parametrize("policy", ["lru", "fifo", "clock"])
@pytest.mark.parametrize("nfiles,write_frac", [(1, 0.0), (3, 0.0), (2, 0.3)])
def test_reference_policy_misses_equal_the_simulator(policy, nfiles, write_frac):
    tr = zipf_trace(nfiles=nfiles, write_frac=write_frac)
    for frames in (40, 150):
        k = Kernel(memory=frames * PS, page_size=PS, policy=policy)
        res = replay(k, tr, chunk=1000)
        assert res.accesses == len(tr)
        assert res.misses == sim_misses(tr, policy, frames), (policy, frames)
        c = res.counters
        assert res.misses == c["Pages zero filled"] + c["Hard faults"]
        assert c["Pages free"] == 0  # every frame in use: the reference policies evict only on demand
        if write_frac:
            assert c["Pageouts"] > 0 and c["Hard faults"] > 0
        else:
            assert c["Hard faults"] == 0
        res.task.terminate()
        k.close()


def test_regions_one_per_file_sized_to_highest_page():
    tr = AccessTrace(np.array([0, 1, 0, 1, 2]), np.array([3, 0, 9, 1, 0]), None, ["a", "b", "c"], "t")
    k = Kernel(memory="1MiB", page_size=PS, policy="lru")
    res = replay(k, tr)
    assert {n: s for n, (_, s) in res.regions.items()} == {"a": 10 * PS, "b": 2 * PS, "c": PS}
    addrs = sorted(a for a, _ in res.regions.values())
    assert len(set(addrs)) == 3
    assert res.misses == 5 and res.footprint == 5
    k.close()


def test_mach_misses_at_least_the_footprint_and_exactly_it_when_everything_fits():
    tr = zipf_trace(n=5000, footprint=400)
    k = Kernel(memory=2048 * PS, page_size=PS, policy="mach")
    res = replay(k, tr)
    assert res.misses == res.footprint == len(np.unique(tr.page))
    k.close()
    k = Kernel(memory=200 * PS, page_size=PS, policy="mach")
    res = replay(k, tr)
    assert res.misses > res.footprint
    k.close()


def test_replay_chunking_does_not_change_counts():
    tr = zipf_trace(n=4000, footprint=500, write_frac=0.2)
    out = []
    for chunk in (1, 7, 4000, 1 << 16):
        k = Kernel(memory=64 * PS, page_size=PS, policy="clock")
        out.append(replay(k, tr, chunk=chunk).counters)
        k.close()
    assert all(o == out[0] for o in out[1:])


def test_progress_callback_and_bar():
    tr = zipf_trace(n=3000)
    calls = []
    k = Kernel(memory=64 * PS, page_size=PS, policy="fifo")
    replay(k, tr, chunk=1000, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1000, 3000), (2000, 3000), (3000, 3000)]
    k.close()
    buf = io.StringIO()
    bar = Progress("replay", enabled=True, stream=buf, interval=3600)
    for d in range(0, 101, 10):
        bar(d, 100)
    bar.close()
    text = buf.getvalue()
    # first draw, then throttled until the final one; ends with a newline
    assert text.count("\r") == 2 and "100.0%" in text and text.endswith("\n")
    silent = io.StringIO()
    bar = Progress("replay", enabled=False, stream=silent)
    bar(5, 10)
    bar.close()
    assert silent.getvalue() == ""


# ---- the command line -------------------------------------------------------------------------------------

@pytest.fixture
def zipf_file(tmp_path):
    tr = zipf_trace(n=5000, footprint=500, nfiles=2, write_frac=0.2)
    path = tmp_path / "z.txt"
    lines = [f"{tr.names[f]} {p * PS} {'w' if w else 'r'}" for f, p, w in zip(tr.file, tr.page, tr.write)]
    path.write_text("# zipf over two files\n" + "\n".join(lines) + "\n")
    return str(path), tr


@pytest.mark.parametrize("policy", ["lru", "fifo", "clock", "mach"])
def test_cli_json(zipf_file, capsys, policy):
    path, tr = zipf_file
    assert main(["replay", path, "--memory", str(160 * PS), "--policy", policy, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # not a TTY: no progress bar
    lines = out.strip().splitlines()
    assert len(lines) == 1
    d = json.loads(lines[0])
    for key in ("Pages free", "Pages active", "Pages inactive", "Pages wired down", "Translation faults",
                "Pages copy-on-write", "Pages zero filled", "Pages reactivated", "Pageins", "Pageouts",
                "accesses", "misses", "policy", "memory", "page_size", "trace"):
        assert key in d, key
    assert d["accesses"] == len(tr) and d["policy"] == policy and d["memory"] == 160 * PS
    assert d["page_size"] == PS and d["trace"] == path
    assert d["misses"] == d["Pages zero filled"] + d["Hard faults"]
    if policy != "mach":
        assert d["misses"] == sim_misses(load(path), policy, 160)


def test_cli_text_output(zipf_file, capsys):
    path, tr = zipf_file
    assert main(["replay", path, "--memory", "640KiB", "--policy", "lru"]) == 0
    out = capsys.readouterr().out
    assert f"{len(tr)} accesses" in out
    assert "Mach Virtual Memory Statistics: (page size of 4096 bytes)" in out
    assert '"Translation faults":' in out and "Pages zero filled:" in out and "Pageouts:" in out


@pytest.mark.parametrize("args,needle", [
    (["--memory", "12XB"], "'12XB' is not a size"),
    (["--memory", "1MiB", "--policy", "arc"], "valid: mach, lru, fifo, clock"),
    (["--memory", "64KiB"], "below the mach policy's minimum"),
    (["--memory", "4KiB", "--policy", "lru"], "reference policy needs at least"),
    (["--memory", "1MiB", "--page-size", "1000"], "not a positive power of two"),
    ([], "required: --memory"),
])
def test_cli_bad_input_one_line_exit_2(zipf_file, capsys, args, needle):
    path, _ = zipf_file
    assert main(["replay", path] + args) == 2
    out, err = capsys.readouterr()
    assert out == "" and needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_trace_files(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n2\n# fine\n\nfile 4096 w\nfile 4096 q z\n")
    for path, needle in ((str(bad), f"{bad}:6: malformed trace line"),
                         (str(tmp_path / "missing.txt"), "does not exist"),
                         (str(tmp_path), "is a directory")):
        assert main(["replay", path, "--memory", "1MiB"]) == 2
        out, err = capsys.readouterr()
        assert out == "" and needle in err and err.count("\n") == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    assert main(["replay", str(empty), "--memory", "1MiB"]) == 2
    assert "holds no accesses" in capsys.readouterr().err


def test_cli_help_lists_replay(capsys):
    assert main([]) == 2  # no command: usage on stderr, exit 2 (as vnodefs and swapd)
    assert "replay" in capsys.readouterr().err
    assert main(["replay", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--memory", "--policy", "--page-size", "--json", "--progress"):
        assert opt in out


def test_installed_command_with_progress(tmp_path):
    """The console script end to end, with --progress forcing the bar onto a non-TTY stderr."""
    exe = Path(sys.executable).with_name("vmcore")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vmcore"]
    trace = tmp_path / "loop.txt"
    trace.write_text("\n".join(str(i % 300) for i in range(3000)) + "\n")
    env = dict(os.environ)
    r = subprocess.run(cmd + ["replay", str(trace), "--memory", str(299 * PS), "--policy", "lru", "--json",
                              "--progress"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["misses"] == 3000 and d["accesses"] == 3000  # a loop one page larger than memory
    assert "vmcore replay" in r.stderr and "100.0%" in r.stderr
    r = subprocess.run(cmd + ["replay", str(trace), "--memory", "1MiB", "--policy", "nope"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1


def test_warmup_is_replayed_but_not_counted():
    pages = np.concatenate([np.arange(100), np.random.default_rng(0).integers(0, 100, 5000)])
    tr = AccessTrace.from_pages(pages)
    k = Kernel(memory=128 * PS, page_size=PS, policy="lru")
    res = replay(k, tr, warmup=100)
    assert res.accesses == 5000 and res.misses == 0 and res.counters["Pages zero filled"] == 0
    assert res.footprint == 100 and res.counters["Pages active"] == 100
    k.close()
    with pytest.raises(InvalidArgument, match="warmup"):
        replay(Kernel(memory=128 * PS, page_size=PS, policy="lru"), tr, warmup=len(tr) + 1)


def test_cli_replay_with_a_real_swap_pool(zipf_file, tmp_path, capsys):
    """--swap DIR: dirty pages go to swapd's sparse swap files and come back intact (as counts);
    the pool's files are gone afterwards."""
    path, tr = zipf_file
    swap = tmp_path / "vm"
    assert main(["replay", path, "--memory", str(64 * PS), "--policy", "clock", "--swap", str(swap),
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["swap"] == str(swap) and d["Pageouts"] > 0 and d["Hard faults"] > 0
    assert d["misses"] == sim_misses(load(path), "clock", 64)
    assert not [p for p in swap.glob("swapfile*")]
    # a swap directory that cannot be created: one line, exit 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["replay", path, "--memory", "1MiB", "--swap", str(blocker / "vm")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "swap" in err
