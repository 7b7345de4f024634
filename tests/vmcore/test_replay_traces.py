"""Invariant guarded: every trace input is read exactly or refused in one line that names the file
(and, for text, the line number); nothing is guessed.

Covers vmcore.replay's readers: text traces (page lines, `file offset` lines, `#` comments, blank
lines, r/w flags, hex), numpy .npy traces (plain and structured), AccessTrace validation, and the
seeded generator of scripts/make_trace.py round-tripping through both writers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vmcore.errors import InvalidArgument
from vmcore.replay import AccessTrace, TraceError, load, load_npy, parse_text

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_trace", ROOT / "scripts" / "make_trace.py")
make_trace = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_trace)


def write(tmp_path, text, name="t.txt"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def test_page_lines_fast_path(tmp_path):
    tr = parse_text(write(tmp_path, "5\n0\n17\r\n5\n"))
    assert tr.page.tolist() == [5, 0, 17, 5]
    assert tr.file.tolist() == [0, 0, 0, 0] and tr.names == [""] and tr.write is None
    assert tr.footprint() == 3 and len(tr) == 4


def test_file_offset_lines_comments_flags_and_hex(tmp_path):
    text = """# a header comment
lib/a.dylib 0
lib/a.dylib 8191      # same page 1 as 4096..8191
data 0x3000 w

   data 12288 r
7 w
7
"""
    tr = parse_text(write(tmp_path, text), page_size=4096)
    assert tr.names == ["lib/a.dylib", "data", ""]
    assert tr.file.tolist() == [0, 0, 1, 1, 2, 2]
    assert tr.page.tolist() == [0, 1, 3, 3, 7, 7]
    assert tr.write.tolist() == [False, False, True, False, True, False]
    assert tr.highest_pages().tolist() == [1, 3, 7]
    # page size changes the page an offset falls in
    tr16 = parse_text(write(tmp_path, text), page_size=16384)
    assert tr16.page.tolist() == [0, 0, 0, 0, 7, 7]


def test_all_reads_have_no_write_array(tmp_path):
    tr = parse_text(write(tmp_path, "f 0 r\nf 4096 R\n"))
    assert tr.write is None and tr.page.tolist() == [0, 1]


@pytest.mark.parametrize("bad,lineno", [
    ("1\n2\n-3\n", 3),
    ("1\nabc\n", 2),
    ("1\n\n# ok\nf 10 20 w\n", 4),
    ("f 1.5\n", 1),
    ("1 x\n", 1),
    ("1\n2\n3\nf -4096\n", 4),
    ("0x\n", 1),
    ("f 1_000\n", 1),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, lineno):
    path = write(tmp_path, bad)
    with pytest.raises(TraceError) as ei:
        parse_text(path)
    msg = str(ei.value)
    assert f"{path}:{lineno}:" in msg and "\n" not in msg
    assert isinstance(ei.value, InvalidArgument)


def test_binary_garbage_is_refused_with_a_line(tmp_path):
    path = write(tmp_path, b"1\n2\n\xff\xfe\x00junk\n")
    with pytest.raises(TraceError) as ei:
        load(path)
    assert f"{path}:3:" in str(ei.value) and "not a text trace" in str(ei.value)


def test_missing_and_directory(tmp_path):
    with pytest.raises(TraceError, match="does not exist"):
        load(str(tmp_path / "nope.txt"))
    with pytest.raises(TraceError, match="is a directory"):
        load(str(tmp_path))


def test_empty_and_comment_only(tmp_path):
    assert len(load(write(tmp_path, ""))) == 0
    assert len(load(write(tmp_path, "# nothing\n\n"))) == 0


def test_npy_plain_and_structured(tmp_path):
    p = tmp_path / "p.npy"
    np.save(p, np.array([3, 1, 4, 1, 5], dtype=np.int32))
    tr = load(str(p))
    assert tr.page.tolist() == [3, 1, 4, 1, 5] and tr.names == [""]
    rec = np.zeros(4, dtype=[("file", np.int64), ("page", np.int64), ("write", np.bool_)])
    rec["file"] = [10, 2, 10, 2]
    rec["page"] = [0, 1, 2, 3]
    rec["write"] = [False, True, False, False]
    np.save(p, rec)
    tr = load_npy(str(p))
    assert tr.names == ["file2", "file10"]
    assert tr.file.tolist() == [1, 0, 1, 0] and tr.write.tolist() == [False, True, False, False]


@pytest.mark.parametrize("arr,match", [
    (np.zeros((2, 2), dtype=np.int64), "1-D"),
    (np.array([1.5, 2.0]), "integers"),
    (np.zeros(3, dtype=[("addr", np.int64)]), "'page' field"),
])
def test_npy_bad_shapes(tmp_path, arr, match):
    p = tmp_path / "b.npy"
    np.save(p, arr)
    with pytest.raises(TraceError, match=match):
        load(str(p))


def test_npy_truncated(tmp_path):
    p = tmp_path / "t.npy"
    np.save(p, np.arange(1000))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(TraceError, match="cannot read numpy trace"):
        load(str(p))


def test_access_trace_validation():
    with pytest.raises(TraceError, match="negative page"):
        AccessTrace.from_pages([1, -2])
    with pytest.raises(TraceError, match="differ in shape"):
        AccessTrace(np.zeros(3), np.zeros(2))
    with pytest.raises(TraceError, match="has no name"):
        AccessTrace(np.array([0, 1]), np.array([0, 0]), names=["only"])


@pytest.mark.parametrize("kind", make_trace.KINDS)
def test_generator_is_seeded_and_round_trips(tmp_path, kind):
    a = make_trace.generate(kind, 3000, 200, seed=4)
    b = make_trace.generate(kind, 3000, 200, seed=4)
    assert a.dtype == np.int64 and a.size == 3000 and np.array_equal(a, b)
    assert a.min() >= 0
    if kind != "loop":
        assert not np.array_equal(a, make_trace.generate(kind, 3000, 200, seed=5))
    writes = make_trace.write_flags(a.size, 0.25, seed=4)
    for nfiles in (0, 3):
        txt = tmp_path / f"{kind}{nfiles}.txt"
        make_trace.write_text(txt, a, nfiles=nfiles, writes=writes, header="test\nheader")
        npy = tmp_path / f"{kind}{nfiles}.npy"
        make_trace.write_npy(npy, a, nfiles=nfiles, writes=writes)
        for tr in (load(str(txt)), load(str(npy))):
            fids, fpages = make_trace.split_files(a, max(nfiles, 1))
            assert np.array_equal(tr.page, fpages)
            expect = np.char.add("file", fids.astype(str)) if nfiles else np.full(a.size, "")
            assert np.array_equal(np.asarray(tr.names)[tr.file], expect)
            assert np.array_equal(tr.write, writes)


def test_generator_shapes():
    assert make_trace.loop(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
    z = make_trace.zipf(20000, 1000, seed=1, alpha=1.2)
    counts = np.bincount(z, minlength=1000)
    assert counts.max() > 20 * np.median(counts[counts > 0])  # skewed
    s = make_trace.sequential(5000, 10000, seed=1, run=50)
    assert np.mean(np.diff(s) == 1) > 0.9  # mostly consecutive
    m = make_trace.mixed(20000, 500, seed=1)
    assert (m < 500).any() and (m >= 500).any() and m.max() < 2000
    with pytest.raises(ValueError, match="unknown trace kind"):
        make_trace.generate("random", 10, 10)


@pytest.mark.parametrize("text,lineno", [
    ("1\n99999999999999999999999\n", 2),           # beyond int64, fast path falls back
    ("# c\nf 0\nf 99999999999999999999999999 w\n", 3),
])
def test_numbers_beyond_64_bits_name_their_line(tmp_path, text, lineno):
    path = write(tmp_path, text)
    with pytest.raises(TraceError) as ei:
        load(path)
    assert f"{path}:{lineno}:" in str(ei.value) and "64-bit" in str(ei.value)


def test_fast_path_with_comments_and_spaces_equals_general_path(tmp_path):
    text = "# header\n  5  \n\t7\n# more\n\n9 # trailing comment\n"
    tr = load(write(tmp_path, text))
    assert tr.page.tolist() == [5, 7, 9] and tr.names == [""]
    # two numbers on one line are `file offset`, never two pages
    tr = load(write(tmp_path, "5\n12 8192\n"))
    assert tr.names == ["", "12"] and tr.page.tolist() == [5, 2]
