"""Trace replay: drive one task of a kernel with a recorded or synthetic page-access trace.

Owns: `AccessTrace` (a trace as numpy arrays: file index, page within that file, write flag, plus
the file names), the readers of the two model-side formats (`parse_text`, `load_npy`, `load`
dispatching on content), `TraceError`, and `replay(kernel, trace)` -> `ReplayResult`.

Theory of operation: one task; one vm_allocate'd region per distinct file,
sized to that file's highest page + 1 (anonymous memory from the kernel's default pager: the trace
says which pages are touched, not what the bytes are); the accesses are turned into addresses with
numpy and handed to the model's vectorised batch API `task.access(addrs, write)` in chunks, so hits
cost no Python per access and misses go through the fault path. The counters are the kernel's
vm_stat deltas over the replay for event counters (vmcore.stats.VMStats), as they are after it for
gauges (queue sizes, thresholds), plus `accesses` and `misses` = zero
fills + hard faults (the accesses that needed a frame). Under the reference policies (lru, fifo,
clock) the model evicts only on demand and never clusters, so `misses` equals what a plain cache
simulator with memory / page_size pages counts (vmcore.policy.simulate; tests/vmcore/test_golden_counts.py).

Text trace format (one access per line; `#` starts a comment; blank lines are ignored):
    PAGE [r|w]              a page number of the one anonymous region "" (decimal or 0x hex)
    FILE OFFSET [r|w]       a byte offset in the file named FILE (a token without spaces)
A trailing `w` marks a write, `r` (or nothing) a read. Any other shape is a TraceError naming
the file and the line number. `.npy` traces (numpy.save) hold either a 1-D integer array of page
numbers or a structured array with an integer `page` field and optional `file` (int) and `write`
(bool) fields. vnodefs binary traces are converted by the wiring layer (vmcore.cli), which may
import vnodefs; this module must not.

Who calls: vmcore.cli (`vmcore replay`), scripts/bench_vmcore.py, tests, the experiment layer.
Caveats:
  * A page-number trace touching page 2**40 makes a region of 2**40 pages: the model's address
    space is sparse, so this costs nothing until touched, but the model may refuse absurd sizes.
  * `misses` counts frames needed by the *trace's* accesses; under the mach policy pagein
    clustering may bring pages in ahead of use (those count as Pageins on first touch, not misses).
"""

from __future__ import annotations

import os
import re
import time
from array import array
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from vmcore.errors import InvalidArgument



def _event_keys() -> frozenset[str]:
    """The vm_stat entries that count events (reported as deltas over a replay): the keys of the
    model's VMStats counters. Every other entry (queue sizes, thresholds) is a gauge, reported as
    it is after the replay."""
    from vmcore.stats import VMStats

    return frozenset(VMStats().as_dict())

#: accesses handed to task.access per call
CHUNK = 1 << 16

_NPY_MAGIC = b"\x93NUMPY"
_PURE_PAGES = re.compile(rb"[0-9\r\n \t]*")  # digits and white space only ...
_ONE_PER_LINE = re.compile(rb"[0-9][ \t]+[0-9]")  # ... and never two numbers on one line
_COMMENT = re.compile(rb"#[^\n]*")
_MAX_PAGE = 1 << 52  # pages of 4 KiB in a 64-bit address space


class TraceError(InvalidArgument):
    """A trace that cannot be read: the message names the file (and line) and what was wrong."""

    def __str__(self) -> str:  # a plain one-line message, without the Mach prefix
        return Exception.__str__(self)


@dataclass
class AccessTrace:
    """A page-access trace: access i touches page `page[i]` of file `names[file[i]]`."""

    file: np.ndarray  # int32, index into names
    page: np.ndarray  # int64, page number within that file
    write: np.ndarray | None = None  # bool per access; None: every access is a read
    names: list[str] = field(default_factory=lambda: [""])
    source: str = ""

    def __post_init__(self) -> None:
        self.file = np.ascontiguousarray(self.file, dtype=np.int32)
        self.page = np.ascontiguousarray(self.page, dtype=np.int64)
        what = self.source or "trace"
        if self.file.shape != self.page.shape or self.file.ndim != 1:
            raise TraceError(f"{what}: file and page arrays differ in shape")
        if self.write is not None:
            self.write = np.ascontiguousarray(self.write, dtype=np.bool_)
            if self.write.shape != self.page.shape:
                raise TraceError(f"{what}: write flags and page arrays differ in shape")
            if not self.write.any():
                self.write = None
        if self.page.size:
            if int(self.page.min()) < 0:
                raise TraceError(f"{what}: negative page number {int(self.page.min())}")
            lo, hi = int(self.file.min()), int(self.file.max())
            if lo < 0 or hi >= len(self.names):
                raise TraceError(f"{what}: file index {hi if hi >= len(self.names) else lo} has no name "
                                 f"({len(self.names)} files)")

    def __len__(self) -> int:
        return int(self.page.size)

    @classmethod
    def from_pages(cls, pages, write=None, source: str = "") -> "AccessTrace":
        """A trace of page numbers of one anonymous region."""
        pages = np.asarray(pages, dtype=np.int64)
        return cls(np.zeros(pages.size, dtype=np.int32), pages, write, [""], source)

    def footprint(self) -> int:
        """Distinct (file, page) pairs touched: the compulsory misses."""
        if not len(self):
            return 0
        key = self.file.astype(np.int64) * (int(self.page.max()) + 1) + self.page
        return int(np.unique(key).size)

    def highest_pages(self) -> np.ndarray:
        """Highest page touched in each file (-1 for a file never touched)."""
        hi = np.full(len(self.names), -1, dtype=np.int64)
        if len(self):
            np.maximum.at(hi, self.file, self.page)
        return hi


# ---- readers --------------------------------------------------------------------------------------------

def read_trace_bytes(path: str, n: int = -1) -> bytes:
    """The first n bytes (all with n = -1) of a trace file; a missing, directory or unreadable
    path is a one-line TraceError naming it."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except FileNotFoundError:
        raise TraceError(f"trace file {path} does not exist") from None
    except IsADirectoryError:
        raise TraceError(f"trace file {path} is a directory") from None
    except OSError as e:
        raise TraceError(f"cannot read trace file {path}: {e.strerror or e}") from None


def _int_token(tok: str) -> int:
    if tok[:2] in ("0x", "0X"):
        return int(tok[2:], 16)
    if not tok.isdigit():  # no sign, no underscores, no spaces
        raise ValueError(tok)
    return int(tok)


def parse_text(path: str, page_size: int = 4096, *, data: bytes | None = None) -> AccessTrace:
    """Read a text trace (see the module docstring). Offsets are turned into pages of `page_size`."""
    if data is None:
        data = read_trace_bytes(path)
    bare = _COMMENT.sub(b"", data) if b"#" in data else data
    if _PURE_PAGES.fullmatch(bare) and not _ONE_PER_LINE.search(bare):
        # fast path: only page numbers (one per line), comments and blank lines
        try:
            pages = np.array(bare.split(), dtype=np.int64) if bare.strip() else np.zeros(0, dtype=np.int64)
        except (ValueError, OverflowError):
            pass  # a number too large for int64: the line-by-line reader below names its line
        else:
            return AccessTrace.from_pages(pages, source=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TraceError(f"{path}:{line}: not a text trace (undecodable bytes; not UTF-8 text, "
                         f".npy or a vnodefs trace)") from None
    names: dict[str, int] = {}
    files = array("i")
    pages = array("q")
    writes = bytearray()
    any_write = False
    shift_ok = page_size & (page_size - 1) == 0
    shift = page_size.bit_length() - 1
    for lineno, raw in enumerate(text.splitlines(), 1):
        body = raw.split("#", 1)[0]
        toks = body.split()
        if not toks:
            continue
        w = False
        if len(toks) >= 2 and toks[-1] in ("r", "w", "R", "W"):
            w = toks.pop() in ("w", "W")
        try:
            if len(toks) == 1:
                fname, page = "", _int_token(toks[0])
            elif len(toks) == 2:
                off = _int_token(toks[1])
                fname, page = toks[0], (off >> shift if shift_ok else off // page_size)
            else:
                raise ValueError
        except (ValueError, OverflowError):
            shown = raw.strip()
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise TraceError(f"{path}:{lineno}: malformed trace line {shown!r} (expected 'PAGE [r|w]' "
                             f"or 'FILE OFFSET [r|w]' with non-negative integers)") from None
        if page >= _MAX_PAGE:
            raise TraceError(f"{path}:{lineno}: page {page} is beyond a 64-bit address space")
        fid = names.get(fname)
        if fid is None:
            fid = names[fname] = len(names)
        files.append(fid)
        pages.append(page)
        writes.append(w)
        any_write |= w
    return AccessTrace(np.frombuffer(files, dtype=np.int32), np.frombuffer(pages, dtype=np.int64),
                       np.frombuffer(writes, dtype=np.bool_) if any_write else None,
                       list(names) or [""], path)


def load_npy(path: str) -> AccessTrace:
    """Read a numpy .npy trace: 1-D integer pages, or a structured array with page [file] [write]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise TraceError(f"cannot read numpy trace {path}: {e}") from None
    if arr.ndim != 1:
        raise TraceError(f"{path}: a numpy trace must be 1-D, got shape {arr.shape}")
    if arr.dtype.names is None:
        if not np.issubdtype(arr.dtype, np.integer):
            raise TraceError(f"{path}: a numpy trace of pages must hold integers, got {arr.dtype}")
        return AccessTrace.from_pages(arr, source=path)
    fields = arr.dtype.names
    if "page" not in fields or not np.issubdtype(arr.dtype["page"], np.integer):
        raise TraceError(f"{path}: a structured numpy trace needs an integer 'page' field (has {', '.join(fields)})")
    if "file" in fields:
        fids = arr["file"].astype(np.int64)
        uniq, dense = np.unique(fids, return_inverse=True) if fids.size else (np.zeros(0, np.int64), fids)
        names = [f"file{int(u)}" for u in uniq] or [""]
    else:
        dense, names = np.zeros(arr.size, dtype=np.int32), [""]
    write = arr["write"].astype(np.bool_) if "write" in fields else None
    return AccessTrace(dense, arr["page"], write, names, path)


def load(path: str, page_size: int = 4096) -> AccessTrace:
    """Read a text or .npy trace, telling them apart by content (numpy's magic bytes)."""
    data = read_trace_bytes(path)
    if data.startswith(_NPY_MAGIC):
        return load_npy(path)
    return parse_text(path, page_size, data=data)


# ---- replay ---------------------------------------------------------------------------------------------

@dataclass
class ReplayResult:
    accesses: int
    misses: int
    counters: dict[str, int]  # vm_stat: event deltas over the replay, gauges as they are after it
    footprint: int  # distinct pages touched
    wall_s: float
    regions: dict[str, tuple[int, int]]  # file name -> (address, size) of its region
    task: object = None  # the replay task, still alive (the caller terminates it or not)

    def as_dict(self) -> dict:
        d = dict(self.counters)
        d.update(accesses=self.accesses, misses=self.misses, footprint=self.footprint,
                 miss_ratio=(self.misses / self.accesses) if self.accesses else 0.0,
                 wall_s=round(self.wall_s, 6))
        return d


def _misses(delta: dict[str, int]) -> int:
    return int(delta.get("Pages zero filled", 0)) + int(delta.get("Hard faults", 0))


def replay(kernel, trace: AccessTrace, *, task=None, chunk: int = CHUNK,
           progress: Callable[[int, int], None] | None = None, name: str = "replay",
           warmup: int = 0) -> ReplayResult:
    """Replay `trace` through one task of `kernel` (a new task named `name` unless `task` is given)
    and return the counters. `progress(done, total)` is called after every chunk. The first
    `warmup` accesses are replayed but left out of the counters, `accesses`, `misses` and the
    wall time (a steady-state measurement); `footprint` is always that of the whole trace."""
    if chunk < 1:
        raise InvalidArgument(f"replay chunk must be >= 1, got {chunk}")
    if not 0 <= warmup <= len(trace):
        raise InvalidArgument(f"replay warmup {warmup} is not within the trace's {len(trace)} accesses")
    ps = kernel.page_size
    if task is None:
        task = kernel.task_create(name=name)
    highest = trace.highest_pages()
    bases = np.zeros(len(trace.names), dtype=np.int64)
    regions: dict[str, tuple[int, int]] = {}
    for i, fname in enumerate(trace.names):
        if highest[i] < 0:
            continue
        size = (int(highest[i]) + 1) * ps
        addr = task.vm_allocate(size)
        bases[i] = addr
        regions[fname] = (int(addr), size)
    total = len(trace)

    def run(start: int, stop: int) -> None:
        for lo in range(start, stop, chunk):
            hi = min(lo + chunk, stop)
            addrs = bases[trace.file[lo:hi]] + trace.page[lo:hi] * ps
            task.access(addrs, trace.write[lo:hi] if trace.write is not None else False)
            if progress is not None:
                progress(hi, total)

    run(0, warmup)
    before = kernel.vm_stat()
    t0 = time.perf_counter()
    run(warmup, total)
    wall = time.perf_counter() - t0
    after = kernel.vm_stat()
    events = _event_keys()
    counters = {}
    for k, v in after.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            continue
        counters[k] = int(v) - int(before.get(k, 0)) if k in events else int(v)
    return ReplayResult(total - warmup, _misses(counters), counters, trace.footprint(), wall, regions, task)


def replay_file(kernel, path: str, **kw) -> ReplayResult:
    """`replay(kernel, load(path, kernel.page_size))` for text and .npy traces."""
    if not os.path.exists(path):
        raise TraceError(f"trace file {path} does not exist")
    return replay(kernel, load(path, kernel.page_size), **kw)
