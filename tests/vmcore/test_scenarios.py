"""Narrated scenarios: every scenario runs, as text and as JSON, through the
argparse wiring (`add_scenario_parser` / `run_scenario_command`) and `python -m vmcore.scenario`."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

import pytest

from vmcore.scenario import (
    HEADER, SCENARIOS, add_scenario_parser, main, run_scenario, run_scenario_command,
)

NAMES = ["fork-cow", "pageout", "shadow-collapse", "named-entry", "shared-region",
         "wired-pressure", "address-space-32", "map-copy"]
REGION_KEYS = {"type", "start", "end", "vsize", "resident", "dirty", "swapped", "protection",
               "max_protection", "share_mode", "detail"}


def test_the_scenarios_exist():
    assert list(SCENARIOS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_scenario_text_and_json(name, capsys):
    out = io.StringIO()
    rec = run_scenario(name, out=out)
    text = out.getvalue()
    assert text.startswith(f"== scenario {name}:")
    assert "-- step 1:" in text and "vm_stat deltas:" in text
    assert len(rec["steps"]) >= 3
    assert HEADER in text  # the vmmap-style listing
    assert "[" in text and "SM=" in text
    # JSON: the same steps, as data, through the CLI entry point
    assert main([name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scenario"] == name and len(data["steps"]) == len(rec["steps"])
    for st, st_text in zip(data["steps"], rec["steps"]):
        assert st["title"] == st_text["title"] and st["vm_stat_delta"] == st_text["vm_stat_delta"]
        for regions in st["tasks"].values():
            for r in regions:
                assert REGION_KEYS <= set(r)
                assert r["end"] > r["start"] and r["vsize"] == r["end"] - r["start"]
    assert any(st["vm_stat_delta"] for st in data["steps"])


def test_scenarios_show_their_mechanisms():
    fork = run_scenario("fork-cow", out=io.StringIO())
    assert fork["steps"][3]["vm_stat_delta"]["Pages copy-on-write"] == 1
    assert fork["steps"][3]["notes"] == {"parent sees": "P", "child sees": "c"}
    sr = run_scenario("shared-region", out=io.StringIO())
    third = sr["steps"][2]
    assert "Translation faults" not in third["vm_stat_delta"] and third["notes"]["same frames"]
    assert sr["steps"][4]["notes"]["data restored"] is True
    shadow = run_scenario("shadow-collapse", out=io.StringIO())
    assert shadow["steps"][1]["notes"]["depth after it exits"] == [0] * 6
    assert shadow["steps"][2]["notes"]["parent shadow depth"] == 3
    assert shadow["steps"][3]["notes"]["parent shadow depth"] == 0
    wired = run_scenario("wired-pressure", out=io.StringIO())
    assert wired["steps"][2]["notes"]["excess pages"] > 0
    last = wired["steps"][3]
    assert last["notes"]["reclaimed pages"] > 0 and last["notes"]["device still reads"] == "framebuffer"
    assert last["vm_stat_delta"]["Pages wired down"] < 0
    po = run_scenario("pageout", out=io.StringIO())
    assert po["steps"][1]["vm_stat_delta"]["Pageouts"] > 0
    assert po["steps"][2]["notes"]["bytes intact"] is True
    ne = run_scenario("named-entry", out=io.StringIO())
    assert ne["steps"][3]["notes"]["client faults"] == 0


def test_cli_wiring_list_step_and_bad_input(capsys):
    parser = argparse.ArgumentParser(prog="vmcore")
    sub = parser.add_subparsers(dest="cmd")
    add_scenario_parser(sub)
    args = parser.parse_args(["scenario", "--list"])
    assert args.func(args) == 0
    listed = capsys.readouterr().out.split("\n")
    assert [ln.split()[0] for ln in listed if ln.strip()] == NAMES
    # --step with a stdin that is not a terminal runs straight through
    args = parser.parse_args(["scenario", "fork-cow", "--step"])
    assert run_scenario_command(args) == 0
    assert "-- step 5:" in capsys.readouterr().out
    args = parser.parse_args(["scenario", "no-such"])
    assert run_scenario_command(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown scenario 'no-such'" in err
    assert main([]) == 2
    assert "NAME or --list" in capsys.readouterr().err
    help_text = sub.choices["scenario"].format_help()
    assert "--step" in help_text and "--json" in help_text and "--list" in help_text


def test_step_waits_for_enter_on_a_tty():
    class TTY(io.StringIO):
        def isatty(self):
            return True

    tty = TTY("\n" * 10)
    rec = run_scenario("named-entry", out=io.StringIO(), step=True, stdin=tty)
    assert tty.tell() == len(rec["steps"])  # one Enter read per step


def test_python_dash_m_runs():
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    r = subprocess.run([sys.executable, "-m", "vmcore.scenario", "fork-cow"], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "== scenario fork-cow" in r.stdout
    r = subprocess.run([sys.executable, "-m", "vmcore.scenario", "bogus"], capture_output=True,
                       text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and "bogus" in r.stderr


def test_address_space_32_scenario_runs_out_at_four_gigabytes():
    """Memory Management in Mac OS X: "For 32-bit processes, each process has an address space that can grow
    dynamically up to a limit of four gigabytes." The scenario's fourth 1 GiB request is refused,
    the rest of the 4 GiB is still mapped, and its last byte is usable."""
    rec = run_scenario("address-space-32", out=io.StringIO())
    steps = rec["steps"]
    assert steps[0]["notes"]["map"] == "0x1000-0x100000000"
    assert "NO_SPACE" in steps[2]["notes"]["fourth 1 GiB"]
    assert steps[2]["notes"]["rest"].endswith("-0x100000000")
    assert steps[3]["notes"]["last bytes"] == "last"
    assert steps[3]["vm_stat_delta"]["Pages zero filled"] == 2
    assert max(r["end"] for r in steps[2]["tasks"]["app32"]) == 1 << 32
    assert int(steps[5]["notes"]["highest end"], 16) > 1 << 32


def test_map_copy_scenario_copies_in_overwrites_the_kernel_and_discards():
    """Kernel Programming Guide, Memory and Virtual Memory: "In order to actually get the data from the copy list, you need to overwrite a
    memory object in the kernel's address space with vm_map_copy_overwrite." The scenario's
    copyin sets the copy field, the kernel reads the bytes as they were at the copyin, and the
    discarded copy leaves no reference behind."""
    rec = run_scenario("map-copy", out=io.StringIO())
    steps = rec["steps"]
    assert steps[1]["notes"]["its copy object"] is not None
    assert steps[1]["notes"]["copy object shadows"] == steps[1]["notes"]["source object"]
    assert steps[2]["vm_stat_delta"]["Copy-object pushes"] == 1
    assert steps[2]["notes"]["client reads"] == "REQUEST"
    assert steps[3]["notes"]["kernel reads"] == "request from user space"
    assert steps[3]["notes"]["kernel reads page 3"] == "last page"
    assert steps[3]["notes"]["copy consumed"] is True
    before, held, after = steps[4]["notes"]["source refs before / with copy / after discard"].split(" / ")
    assert int(held) == int(before) + 1 and after == before
    assert steps[4]["notes"]["live copies"] == 0
