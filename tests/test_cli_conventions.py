"""Invariant guarded: the three commands behave alike where users expect it: `--version` prints
`NAME VERSION` (the version of pyproject.toml, also each package's `__version__`) and exits 0; no
arguments prints the usage on stderr and exits 2; `vnodefs run SRC COMMAND` without `--` is refused
in one line that shows where the `--` goes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("vmcore", "vnodefs", "swapd")


def _project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _cmd(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", name]


def test_each_package_has_the_project_version():
    import swapd
    import vmcore
    import vnodefs

    assert vmcore.__version__ == vnodefs.__version__ == swapd.__version__ == _project_version()


@pytest.mark.parametrize("name", COMMANDS)
def test_version_option(name):
    for cmd in (_cmd(name), [sys.executable, "-m", name]):
        p = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == f"{name} {_project_version()}"


@pytest.mark.parametrize("name", COMMANDS)
def test_no_arguments_is_usage_and_exit_2(name):
    p = subprocess.run(_cmd(name), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stdout == "" and p.stderr.startswith(f"usage: {name}") and "Traceback" not in p.stderr
    assert "--version" in p.stderr


def test_run_without_double_dash_hints_at_it(tmp_path):
    (tmp_path / "src").mkdir()
    p = subprocess.run(_cmd("vnodefs") + ["run", str(tmp_path / "src"), "true"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "-- true" in p.stderr and "put the command after --" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["src"]  # nothing mounted, no trace written
    p = subprocess.run(_cmd("vnodefs") + ["run", str(tmp_path / "src"), "--bogus"], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "unrecognized arguments: --bogus" in p.stderr
