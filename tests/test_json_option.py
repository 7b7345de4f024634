"""Invariant guarded: `--json` is one convention across the three commands: where it takes a FILE
(vnodefs run / demo, vmcore experiment), `-` means stdout (stdout then holds only the JSON, no file
named `-` appears); where it is a flag it prints on stdout; and every --json help says which."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest


def _parsers():
    from swapd.cli import build_parser as swapd_parser
    from vmcore.cli import build_parser as vmcore_parser
    from vnodefs.cli import build_parser as vnodefs_parser

    def walk(p, name):
        yield name, p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, sp in a.choices.items():
                    yield from walk(sp, f"{name} {sub}")

    for name, build in (("vmcore", vmcore_parser), ("vnodefs", vnodefs_parser), ("swapd", swapd_parser)):
        yield from walk(build(), name)


def test_every_json_help_says_where_it_goes():
    seen = []
    for name, p in _parsers():
        for a in p._actions:
            if "--json" in a.option_strings:
                seen.append(name)
                assert "stdout" in (a.help or ""), f"{name} --json: help does not say where: {a.help!r}"
                if a.nargs != 0:  # takes FILE
                    assert "-" in a.help and "FILE" in a.help, f"{name} --json FILE: help must say what - means"
    for must in ("vmcore replay", "vmcore experiment seeding", "vnodefs run", "vnodefs demo", "vnodefs trace",
                 "vnodefs locality", "swapd status", "swapd profiles list"):
        assert must in seen


def test_run_json_dash_is_stdout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"y" * 5000)
    p = subprocess.run([sys.executable, "-m", "vnodefs", "run", str(src), "--trace", str(tmp_path / "t.vtrace"),
                        "--json", "-", "--", "sh", "-c", "cat {mnt}/f >/dev/null"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["exit_status"] == 0 and d["bytes_read"] >= 5000
    assert "requests" in p.stderr  # the text summary stays on stderr
    assert not (tmp_path / "-").exists()


def test_demo_json_dash_is_stdout(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vnodefs", "demo", "--size", "0.5", "--json", "-"],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert set(d["phases"]) >= {"sequential", "random"}
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("argv", [["vmcore", "replay", "{t}", "--memory", "1MiB", "--json"],
                                  ["vnodefs", "trace", "{v}", "--json"]])
def test_json_flags_print_on_stdout(tmp_path, argv):
    from vnodefs.trace import OPS, TraceWriter

    t = tmp_path / "t.txt"
    t.write_text("1\n2\n3\n")
    w = TraceWriter(str(tmp_path / "v.vtrace"), flush_interval=0)
    w.start({"cache_mode": "direct", "page_size": 4096})
    w.record(1000, 1, 0, 0, 4096, 4096, 1, 0, w.file_id("/a"), OPS["read"])
    w.close()
    cmd = [sys.executable, "-m"] + [a.format(t=t, v=tmp_path / "v.vtrace") for a in argv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    json.loads(p.stdout)
