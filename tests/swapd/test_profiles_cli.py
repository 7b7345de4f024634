"""Invariants guarded: `swapd profiles list|show|rm` report what is in the tree (text and --json),
never change it except for `rm`, and answer bad input with one line on stderr and a non-zero exit
(2 for usage such as an escaping name, 1 for a missing or damaged profile)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swapd.profiles import AppProfileStore
from swapd.profiles_cli import add_profiles_parser, run_profiles
from vmcore.workingset import AppIdentity, Profile

ROOT = Path(__file__).resolve().parents[2]
IDENT = AppIdentity("bin/app", 99, 1_600_000_000_000_000_000)


def cli(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    code = ("import sys; from swapd.profiles_cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)


@pytest.fixture
def var(tmp_path):
    v = tmp_path / "var"
    s = AppProfileStore(v, report=lambda line: None)
    files = [("lib/a.so", 3, 20), ("lib/a.so", 4, 30), ("data/db", 9, 10)]
    anon = [(0x10, 5)]  # virtual page 0x10 = address 0x10000
    p = Profile.from_touches(IDENT, 501, "app", files, anon, created_ns=1_700_000_000 * 10**9)
    s.save(p)
    s.save(p.replace(app="tool", uid=0, launches=2))
    return v


def test_list_text_and_json(var):
    r = cli("list", "--var", str(var))
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].split()[:7] == ["APP", "UID", "PAGES", "FILES", "LAUNCH", "SIZE", "CREATED"]
    rows = {ln.split()[0]: ln.split() for ln in out[1:]}
    assert set(rows) == {"app", "tool"}
    assert rows["app"][1:4] == ["501", "4", "2"] and rows["tool"][1:5] == ["0", "4", "2", "2"]
    assert "bin/app" in out[1] and "ino=99" in out[1]
    r = cli("list", "--json", "--var", str(var))
    d = json.loads(r.stdout)
    by = {p["app"]: p for p in d["profiles"]}
    assert by["app"]["uid"] == 501 and by["app"]["pages"] == 4 and by["app"]["launches"] == 1
    assert by["app"]["identity"] == {"path": "bin/app", "inode": 99,
                                     "mtime_ns": 1_600_000_000_000_000_000}
    assert by["app"]["size"] == os.path.getsize(by["app"]["path"]) and by["app"]["error"] is None
    assert by["tool"]["launches"] == 2 and by["app"]["created_ns"] == 1_700_000_000 * 10**9


def test_list_of_an_empty_or_missing_tree(tmp_path):
    (tmp_path / "empty").mkdir()
    r = cli("list", "--var", str(tmp_path / "empty"))
    assert r.returncode == 0 and "no profiles" in r.stdout
    assert os.listdir(tmp_path / "empty") == []
    r = cli("list", "--json", "--var", str(tmp_path / "empty"))
    assert json.loads(r.stdout)["profiles"] == []
    # a missing VAR directory is an error (a mistyped --var), not "no profiles"
    r = cli("list", "--var", str(tmp_path / "nothing"))
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "nothing").exists()


def test_var_that_is_a_file_is_one_clear_line(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "v" / "vm").mkdir(parents=True)
    (tmp_path / "v" / "vm" / "app_profile").write_text("not a tree")
    for argv, needle in ((["list", "--var", str(tmp_path / "f")], "is not a directory"),
                         (["show", "app", "--var", str(tmp_path / "f")], "is not a directory"),
                         (["list", "--var", str(tmp_path / "v")], "app_profile")):
        r = cli(*argv)
        assert r.returncode == 1 and r.stdout == "", (argv, r.stdout)
        assert r.stderr.count("\n") == 1 and needle in r.stderr and "Errno" not in r.stderr, r.stderr


def test_list_shows_payload_damage_and_quarantined_files(var):
    d = var / "vm" / "app_profile" / "501"
    path = d / "app.aprof"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # the payload, not the header: same size, bad checksum
    path.write_bytes(bytes(data))
    (d / "old.aprof.corrupt-20260101T000000Z").write_bytes(b"junk")
    before = sorted(os.listdir(d))
    r = cli("list", "--var", str(var))
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert "DAMAGED" in rows["app"] and "DAMAGED" not in rows["tool"]
    assert "QUARANTINED" in rows["old"] and "20260101T000000Z" in rows["old"]
    d2 = json.loads(cli("list", "--json", "--var", str(var)).stdout)
    states = {p["app"]: p["state"] for p in d2["profiles"]}
    assert states == {"app": "damaged", "tool": "ok", "old": "quarantined"}
    assert sorted(os.listdir(d)) == before  # list never changes the tree


def test_show_text_and_json(var):
    r = cli("show", "app", "--var", str(var))
    assert r.returncode == 0, r.stderr
    assert "identity  bin/app  inode 99" in r.stdout
    assert "lib/a.so" in r.stdout and "data/db" in r.stdout and "(anonymous)" in r.stdout
    assert "first 4 of 4 entries" in r.stdout and "address 0x10000" in r.stdout
    body = r.stdout.split("first-touch order):")[1]
    assert body.index("(anonymous") < body.index("data/db") < body.index("lib/a.so")
    r = cli("show", "app", "--json", "--var", str(var), "--uid", "501")
    d = json.loads(r.stdout)
    assert d["header"]["pages"] == 4 and d["header"]["anon_pages"] == 1
    assert d["file_pages"] == {"data/db": 1, "lib/a.so": 2}
    assert [(e["file"], e["page"], e["first_ns"]) for e in d["entries"]] == [
        (None, 0x10, 5), ("data/db", 9, 10), ("lib/a.so", 3, 20), ("lib/a.so", 4, 30)]
    r = cli("show", "app", "--entries", "1", "--var", str(var))
    assert "first 1 of 4 entries" in r.stdout


def test_rm_removes_only_that_profile(var):
    r = cli("rm", "app", "--var", str(var))
    assert r.returncode == 0 and "removed" in r.stdout
    r = cli("list", "--json", "--var", str(var))
    assert [p["app"] for p in json.loads(r.stdout)["profiles"]] == ["tool"]
    r = cli("rm", "app", "--var", str(var))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no profile named 'app'" in r.stderr
    r = cli("rm", "tool", "--uid", "7", "--var", str(var))
    assert r.returncode == 1 and "uid 7" in r.stderr


@pytest.mark.parametrize("argv,status,needle", [
    (["show", "../../etc/passwd"], 2, "path separator"),
    (["rm", "/abs"], 2, "path separator"),
    (["show", ".."], 2, "starts with '.'"),
    (["show", "nope"], 1, "no profile named 'nope'"),
    (["show", "app", "--uid", "-3"], 2, "not a uid"),
    (["show", "app", "--entries", "-1"], 2, "must not be negative"),
])
def test_bad_input_is_one_line_and_non_zero(var, argv, status, needle):
    r = cli(*argv, "--var", str(var))
    assert r.returncode == status, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and needle in r.stderr and r.stderr.startswith("swapd: ")


def test_show_of_a_damaged_profile_reports_and_leaves_it(var):
    path = var / "vm" / "app_profile" / "501" / "app.aprof"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    r = cli("show", "app", "--var", str(var))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "truncated" in r.stderr
    assert path.exists()
    r = cli("list", "--var", str(var))
    assert r.returncode == 0 and "DAMAGED" in r.stdout and "size" in r.stdout


def test_ambiguous_name_needs_uid(var):
    s = AppProfileStore(var, report=lambda line: None)
    s.save(s.read(0, "tool").replace(uid=501))
    r = cli("show", "tool", "--var", str(var))
    assert r.returncode == 1 and "uids 0, 501" in r.stderr
    assert cli("show", "tool", "--uid", "0", "--var", str(var)).returncode == 0


def test_hooks_into_another_parser_and_has_help(var, capsys):
    parser = argparse.ArgumentParser(prog="swapd")
    sub = parser.add_subparsers(dest="command")
    add_profiles_parser(sub)
    args = parser.parse_args(["profiles", "list", "--json", "--var", str(var)])
    assert run_profiles(args) == 0
    assert len(json.loads(capsys.readouterr().out)["profiles"]) == 2
    assert run_profiles(parser.parse_args(["profiles"])) == 0
    assert "list" in capsys.readouterr().out
    for argv in (["profiles", "--help"], ["profiles", "show", "--help"]):
        with pytest.raises(SystemExit) as ei:
            parser.parse_args(argv)
        assert ei.value.code == 0
    assert "--var" in capsys.readouterr().out
