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


def test_readme_documents_every_command_and_the_options_users_rely_on():
    """Each vnodefs subcommand and the shared conventions (--force, --version, --json -, plot formats)
    are described in README.md."""
    import argparse

    from vnodefs.cli import build_parser

    text = (ROOT / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        if name != "summary":  # the alias of trace
            assert f"vnodefs {name}" in text, f"README.md does not describe `vnodefs {name}`"
    for needle in ("--force", "--version", "--json FILE|-", ".svg", "to_pandas", "returns a `Trace`",
                   "QUARANTINED", ".swapd.lock", "1PiB"):
        assert needle in text, f"README.md does not mention {needle}"
