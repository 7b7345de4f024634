"""Invariant guarded: the trace API works from a bare `import vnodefs` (`vnodefs.trace.load(p)`
returns a Trace), and `Trace.to_pandas()` gives one row a request with op names, paths and times
relative to the trace's start, matching the records exactly; without pandas it is one ImportError
saying what to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    src = d / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a b.txt").write_bytes(b"a" * 20000)
    (src / "c").write_bytes(b"c" * 5000)
    trace = d / "t.vtrace"
    p = subprocess.run([sys.executable, "-m", "vnodefs", "run", str(src), "--cache", "direct", "--trace", str(trace),
                        "--quiet", "--", "sh", "-c", "cat '{mnt}/sub/a b.txt' {mnt}/c >/dev/null"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return trace


def test_bare_import_then_trace_load(real_trace):
    code = textwrap.dedent(f"""
        import vnodefs
        t = vnodefs.trace.load({str(real_trace)!r})
        print(type(t).__name__, t.records.size, sorted(t.files.values()))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Trace ") and "'c', 'sub/a b.txt'" in p.stdout


def test_to_pandas_rows_names_paths_relative_times(real_trace):
    import pandas as pd  # a test extra (pyproject): CI installs it
    from vnodefs.trace import load

    tr = load(real_trace)
    df = tr.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == tr.records.size
    for col in ("t_s", "dur_s", "delay_s", "op", "path", "pid", "offset", "length", "result", "file"):
        assert col in df.columns
    t0 = tr.header["start_monotonic_ns"]
    assert np.allclose(df["t_s"].to_numpy(), (tr.records["start_ns"] - t0) / 1e9)
    assert (df["t_s"] >= 0).all() and df["t_s"].is_monotonic_increasing
    assert df["t_s"].max() < 60  # seconds since the mount started, not raw CLOCK_MONOTONIC
    reads = df[df["op"] == "read"]
    assert set(reads["path"]) == {"sub/a b.txt", "c"}
    by = reads.groupby("path", observed=True)["result"].sum()
    assert by["sub/a b.txt"] == 20000 and by["c"] == 5000
    assert set(df["op"].astype(str)) >= {"open", "read", "release"}


def test_to_pandas_without_pandas_says_what_to_install(real_trace):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["pandas"] = None  # as if pandas were not installed
        import vnodefs
        try:
            vnodefs.trace.load({str(real_trace)!r}).to_pandas()
        except ImportError as e:
            print("ImportError:", e)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "ImportError:" in p.stdout and "pip install pandas" in p.stdout
