"""Invariant guarded: `vnodefs export` reads the trace in chunks and writes exactly what the
in-memory export (vnodefs.export.export of the loaded trace) writes, byte for byte, for csv and
libcachesim at any chunk size; `--format parquet` round-trips (read_parquet gives back the page
rows and paths) and pyarrow / pandas read it with the documented columns; parquet needs -o FILE.
Traces are written with vnodefs.trace.TraceWriter (no FUSE).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vnodefs.export import export, main
from vnodefs.export_parquet import export_file, read_parquet
from vnodefs.locality import page_keys
from vnodefs.stream import TraceStream
from vnodefs.trace import load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_export import ODD, make_trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fmt", ["csv", "libcachesim"])
def test_chunked_export_equals_the_in_memory_one(tmp_path, fmt):
    path = make_trace(tmp_path / "t.vtrace", n=900)
    tr = load(path)
    ref = io.StringIO()
    n_ref = export(tr, ref, fmt, ops=("read", "write"))
    for chunk in (7, 100, 1 << 18):
        got = io.StringIO()
        n = export_file(TraceStream(path, chunk), got, fmt, ops=("read", "write"))
        assert n == n_ref and got.getvalue() == ref.getvalue(), chunk
    got = io.StringIO()
    export_file(TraceStream(path, 50), got, fmt, ops=("read",), page_size=8192)
    ref = io.StringIO()
    export(tr, ref, fmt, ops=("read",), page_size=8192)
    assert got.getvalue() == ref.getvalue()


def test_cli_csv_is_chunked_and_identical(tmp_path):
    path = make_trace(tmp_path / "t.vtrace", n=500)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main([path, "--format", "csv", "-o", str(a), "--chunk-records", "13"]) == 0
    with open(b, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
        export(load(path), fh, "csv")
    assert a.read_bytes() == b.read_bytes()


def test_parquet_round_trip_and_columns(tmp_path):
    path = make_trace(tmp_path / "t.vtrace", n=700)
    tr = load(path)
    out = tmp_path / "t.parquet"
    assert main([path, "--format", "parquet", "-o", str(out), "--chunk-records", "64"]) == 0
    pages = tr.expand_pages(("read", "write"))
    back, files = read_parquet(str(out))
    assert np.array_equal(back, pages)
    assert files == {f: tr.files[f] for f in np.unique(pages["file"]).tolist()}
    assert ODD.lstrip("/") in files.values()
    import pyarrow.parquet as pq

    t = pq.read_table(out)
    assert t.column_names == ["t_ns", "pid", "op", "file", "path", "page", "obj_id"]
    assert np.array_equal(t.column("obj_id").to_numpy(), page_keys(pages))
    assert pq.ParquetFile(out).metadata.num_row_groups > 1
    assert b"vnodefs.header" in t.schema.metadata
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_parquet_errors_are_one_line(tmp_path):
    path = make_trace(tmp_path / "t.vtrace", n=5)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args, msg in ((["--format", "parquet"], "give -o FILE"),
                      (["--format", "parquet", "-o", str(tmp_path / "no" / "x.parquet")], "cannot write"),
                      (["--format", "csv", "--chunk-records", "0"], "positive integer")):
        p = subprocess.run([sys.executable, "-m", "vnodefs", "export", path, *args], capture_output=True,
                           text=True, timeout=60, env=env)
        assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
