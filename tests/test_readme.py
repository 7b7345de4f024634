"""Invariant guarded: README.md opens with the main-job and test commands, and .ci/run runs
exactly README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.*?)\n```", text, re.S)


def test_readme_opens_with_two_commands():
    cmds = readme_commands()
    assert len(cmds) >= 2, "README.md must open with the main-job and the test command"
    assert cmds[0].startswith("bash scripts/setup.sh && ")
    assert "pytest" in cmds[1]


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r"^TEST_COMMAND='(.*)'$", ci, re.M)
    assert m, ".ci/run must define TEST_COMMAND"
    assert m.group(1) == readme_commands()[1]
