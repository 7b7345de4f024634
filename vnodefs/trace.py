"""The vnodefs trace: record layout, the append-only writer, and the loader.

Owns: the on-disk trace format (docs/vnodefs-trace-format.md is its specification), `RECORD_DTYPE`
(one 64-byte request record), `PATH_DTYPE` (the same 64 bytes read as a file-table chunk), the op
codes `OPS` / `OP_NAMES`, `TraceWriter` (used by the FUSE dispatcher, vnodefs.fuseops) and
`load(path) -> Trace` (used by vnodefs.summary, vnodefs.cli and the rest of the project).

File layout (little-endian):

    MAGIC (8 bytes b"VNODTRC\\0") | version u32 | header_len u32 | header JSON (header_len bytes,
    padded with spaces so records start at a multiple of the record size) | records ...

Version 2 records are 96 bytes: the 64 bytes of version 1, then where the request went on the
modelled device (`dev_addr`, `dev_prev`) and how its service time splits (`seek_ns`, `rot_ns`,
`xfer_ns`; queueing = delay_ns - the three). Version-1 traces (64-byte records) still load: the
device fields read as absent (-1 / 0).

Every record is either a request (op in OPS) or a file-table chunk (op == OP_PATH = 255) that
carries up to 48 bytes of a file's path relative to the mount root. A file's path chunks are
appended before the first request that names the file, in the same buffer, so any whole-record
prefix of a trace (a daemon killed mid-write) still resolves every file id it holds.

Invariants:
  * the writer only appends whole records; the loader accepts a trailing partial record (a crash)
    with a warning and drops it;
  * file ids are small integers assigned in first-use order, one per path (a renamed file gets a
    new id at its next open);
  * `dur_ns` includes `delay_ns` (the latency model's sleep); times are CLOCK_MONOTONIC ns, the
    header's `start_monotonic_ns` / `start_unix_ns` relate them to wall time;
  * pid 0 means the kernel (writeback, release): such records are kept and labelled "kernel".

Caveats:
  * The writer's request path takes no lock: struct.pack + deque.append (~0.2 us, measured 6x
    cheaper than pack_into a preallocated numpy buffer under a lock); blocks are written by a
    flusher thread outside the request path.
  * Records are written in completion order; `load` sorts them by `start_ns` (stable).
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

MAGIC = b"VNODTRC\0"
VERSION = 2
#: versions `load` reads (1: 64-byte records without the device fields)
READABLE_VERSIONS = (1, 2)
RECORD_SIZE = 96
RECORD_SIZE_V1 = 64
PATH_CHUNK = 48
OP_PATH = 255

#: request op codes (name -> code); code 0 is never used, 255 is the file-table chunk
OPS: dict[str, int] = {
    "read": 1,
    "write": 2,
    "truncate": 3,
    "fsync": 4,
    "open": 5,
    "release": 6,
    "create": 7,
    "flush": 8,
    "fallocate": 9,
    "prefetch": 10,  # one extent read by the daemon's prefetcher (vnodefs.prefetch)
    # metadata requests, recorded only by a mount with trace_metadata (`--trace-metadata`); with the
    # kernel's name and attribute caches on, only those it could not answer itself reach vnodefs
    "getattr": 11,  # a lookup or stat (libfuse's high-level API serves LOOKUP through getattr)
    "readdir": 12,
    "opendir": 13,
    "readlink": 14,
}
#: code -> name
OP_NAMES: dict[int, str] = {v: k for k, v in OPS.items()}

_V1_NAMES = ["start_ns", "dur_ns", "delay_ns", "offset", "length", "result",
             "pid", "uid", "file", "op", "flags", "reserved"]
_V1_FORMATS = ["<i8", "<i8", "<i8", "<i8", "<i8", "<i8", "<i4", "<u4", "<u4", "u1", "u1", "<u2"]
_V1_OFFSETS = [0, 8, 16, 24, 32, 40, 48, 52, 56, 60, 61, 62]
#: the device fields of a version-2 record: `dev_addr` byte address on the modelled device of the
#: request's first byte that needed I/O (-1: no device model, or nothing to read: a hole, past EOF),
#: `dev_prev` where the device head was before (the end of the previous request it served; -1
#: unknown), `seek_ns` / `rot_ns` / `xfer_ns` the service time's positioning (seek; access latency
#: on flash), rotation and transfer parts, `dev_segments` how many device extents it touched
DEVICE_FIELDS = ("dev_addr", "dev_prev", "seek_ns", "rot_ns", "xfer_ns", "dev_segments")
RECORD_DTYPE = np.dtype({
    "names": _V1_NAMES + list(DEVICE_FIELDS) + ["reserved2"],
    "formats": _V1_FORMATS + ["<i8", "<i8", "<u4", "<u4", "<u4", "<u2", "<u2"],
    "offsets": _V1_OFFSETS + [64, 72, 80, 84, 88, 92, 94],
    "itemsize": RECORD_SIZE,
})
RECORD_DTYPE_V1 = np.dtype({"names": _V1_NAMES, "formats": _V1_FORMATS, "offsets": _V1_OFFSETS,
                            "itemsize": RECORD_SIZE_V1})


def _path_dtype(itemsize: int) -> np.dtype:
    return np.dtype({
        "names": ["chunk_bytes", "path_len", "chunk", "file", "op", "flags", "reserved"],
        "formats": ["S48", "<u4", "<u4", "<u4", "u1", "u1", "<u2"],
        "offsets": [0, 48, 52, 56, 60, 61, 62],
        "itemsize": itemsize,
    })


PATH_DTYPE = _path_dtype(RECORD_SIZE)
PAGES_DTYPE = np.dtype([("t_ns", "<i8"), ("pid", "<i4"), ("op", "u1"), ("file", "<u4"), ("page", "<i8")])

#: flag bits of a request record
FLAG_SEEK = 1  # the device head moved: the request did not continue the previous one on the device
FLAG_ADDR_ESTIMATED = 16  # dev_addr is an estimate (synthetic layout, or bytes not yet allocated)
FLAG_COPY = 32  # one half (the source read or the destination write) of a copy_file_range the host did
#: a `fallocate` record's flags are its FALLOC_FL_* mode bits instead (KEEP_SIZE 1, PUNCH_HOLE 2,
#: COLLAPSE_RANGE 8, ZERO_RANGE 16, INSERT_RANGE 32; 0: plain allocation)

#: one request record: the 12 version-1 fields, then dev_addr, dev_prev, seek_ns, rot_ns, xfer_ns,
#: dev_segments, 0
_REC = struct.Struct("<qqqqqqiIIBBHqqIIIHH")
_PATH = struct.Struct("<48sIIIBBH32x")
_PREFIX = struct.Struct("<8sII")
assert _REC.size == RECORD_SIZE and _PATH.size == RECORD_SIZE


def encode_header(header: dict) -> bytes:
    """MAGIC + version + length + JSON header, padded to a multiple of RECORD_SIZE."""
    body = json.dumps(header, sort_keys=True).encode()
    total = _PREFIX.size + len(body)
    pad = (-total) % RECORD_SIZE
    body += b" " * pad
    return _PREFIX.pack(MAGIC, VERSION, len(body)) + body


def path_records(file_id: int, path: str) -> bytes:
    """The file-table chunks for one file id (at least one record, even for an empty path)."""
    raw = path.encode("utf-8", "surrogateescape")
    out = []
    for i, start in enumerate(range(0, max(len(raw), 1), PATH_CHUNK)):
        out.append(_PATH.pack(raw[start:start + PATH_CHUNK], len(raw), i, file_id, OP_PATH, 0, 0))
    return b"".join(out)


class TraceInUse(Exception):
    """The trace file is locked by a live writer (another mount is writing it)."""


def trace_in_use(path: str | os.PathLike) -> bool:
    """True if a live TraceWriter (any process) holds `path` (its exclusive flock); False for a
    missing file or one nobody writes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False


def in_use_message(path: str) -> str:
    """One line saying that `path` is being written, naming the writing daemon if its header says."""
    pid = None
    try:
        pid = read_header(path)[0].get("daemon_pid")
    except (OSError, ValueError):
        pass
    who = f" (daemon pid {pid})" if isinstance(pid, int) else ""
    return (f"trace file {path} is in use: a live vnodefs mount{who} is writing it; unmount it first or "
            f"choose another --trace")


class TraceWriter:
    """Append-only trace writer, shared by every FUSE worker thread.

    `record(...)` packs one request (struct.pack, 64 bytes) and appends it to a deque: no lock on
    the request path (deque.append is atomic), about 0.2 us. `file_id(path)` assigns ids under a
    small lock and queues the path's file-table chunks in the same deque, so they always precede
    the first request naming the id. The blocks are written by `flush()` (popleft in order, one
    os.write per block): by a background thread every `flush_interval` seconds, on close, and on
    SIGTERM (via the daemon's clean exit). Nothing reaches the file before `start(header)` writes
    the header (the mount must be ready to know the readahead setting). `path=None` makes a writer
    that assigns file ids but stores nothing (tracing off).

    The writer holds an exclusive flock on the file from open to close, and empties the file only
    once it holds it: a second writer on the same file (another mount's `--trace`) gets TraceInUse
    and the first writer's records stay intact.
    """

    def __init__(self, path: str | None, flush_interval: float = 0.2, capacity: int | None = None):
        self.path = path
        self.enabled = path is not None
        self._fd = -1
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TraceInUse(in_use_message(path)) from None
            os.ftruncate(fd, 0)
            self._fd = fd
        self._q: collections.deque[bytes] = collections.deque()
        #: the request path's fast append: `append(pack(start, dur, delay, offset, length, result,
        #: pid, uid, file, op, flags, 0, dev_addr, dev_prev, seek_ns, rot_ns, xfer_ns, segments, 0))`
        #: (what record() does, minus a call)
        self.append = self._q.append
        self.pack = _REC.pack
        self._block = max(1, capacity or 16384)  # records per os.write
        self._lock = threading.Lock()  # guards _ids / _next_id
        self._io_lock = threading.Lock()  # one flusher at a time: blocks keep queue order
        self._started = False
        self._ids: dict[str, int] = {}
        self._next_id = 1
        self.records_written = 0
        self._interval = flush_interval
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- ids ------------------------------------------------------------------------------------
    def file_id(self, path: str) -> int:
        """The id of `path` (a mount path, "/dir/name"), assigning one on first use and queuing its
        file-table chunks (stored without the leading "/") ahead of any request that uses it."""
        fid = self._ids.get(path)
        if fid is not None:
            return fid
        with self._lock:
            fid = self._ids.get(path)
            if fid is None:
                fid = self._next_id
                self._next_id += 1
                if self.enabled:
                    chunks = path_records(fid, path.lstrip("/"))
                    for i in range(0, len(chunks), RECORD_SIZE):
                        self._q.append(chunks[i:i + RECORD_SIZE])
                self._ids[path] = fid  # published only after its chunks are queued
            return fid

    def forget_path(self, path: str) -> None:
        """`path` no longer names the file it named (rename, unlink): its next use gets a new id."""
        with self._lock:
            self._ids.pop(path, None)

    # -- records --------------------------------------------------------------------------------
    def record(self, start_ns: int, dur_ns: int, delay_ns: int, offset: int, length: int, result: int,
               pid: int, uid: int, file: int, op: int, flags: int = 0, dev_addr: int = -1,
               dev_prev: int = -1, seek_ns: int = 0, rot_ns: int = 0, xfer_ns: int = 0,
               dev_segments: int = 0) -> None:
        if self.enabled:
            self._q.append(_REC.pack(start_ns, dur_ns, delay_ns, offset, length, result, pid,
                                     uid & 0xFFFFFFFF, file, op, flags, 0, dev_addr, dev_prev,
                                     seek_ns, rot_ns, xfer_ns, dev_segments, 0))

    def _drain(self) -> None:
        q = self._q
        with self._io_lock:
            if not self._started:
                return
            while q:
                n = min(len(q), self._block)
                self._write_all(b"".join([q.popleft() for _ in range(n)]))

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.records_written += len(data) // RECORD_SIZE

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, header: dict) -> None:
        """Write the header and anything buffered so far; start the periodic flusher."""
        if not self.enabled:
            self._started = True
            return
        with self._io_lock:
            os.write(self._fd, encode_header(header))
            self._started = True
        self.flush()
        if self._interval and self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="vnodefs-trace-flush", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except OSError:
                return

    def flush(self) -> None:
        """Write every queued record (no-op before start())."""
        if self.enabled:
            self._drain()

    def close(self, header: dict | None = None) -> None:
        """Flush and close; if the header was never written (the mount never became ready), write
        `header` first when given, else leave the file empty."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        if not self.enabled:
            return
        if not self._started and header is not None:
            self.start(header)
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# ---- loading ----------------------------------------------------------------------------------

@dataclass
class Trace:
    """A loaded trace: `records` (RECORD_DTYPE, start-time order), `files` (id -> path relative to
    the mount root), `header` (dict), `path`, `truncated` (a partial trailing record was dropped)."""

    records: np.ndarray
    files: dict[int, str]
    header: dict
    path: str = ""
    truncated: bool = False
    page_size: int = field(default=4096)

    def op_mask(self, ops: Iterable[str] | str) -> np.ndarray:
        """Boolean mask of records whose op is one of `ops` (names from OPS)."""
        if isinstance(ops, str):
            ops = (ops,)
        codes = []
        for name in ops:
            if name not in OPS:
                raise ValueError(f"unknown op {name!r}; known: {', '.join(OPS)}")
            codes.append(OPS[name])
        return np.isin(self.records["op"], np.array(codes, dtype=np.uint8))

    def expand_pages(self, ops: Iterable[str] | str = ("read",), page_size: int | None = None) -> np.ndarray:
        """One row (t_ns, pid, op, file, page) per page touched by each selected request, in request
        (start-time) order. The bytes a request touched are [offset, offset + n) where n is the
        result for reads and writes that succeeded (short reads at EOF touch fewer pages), the
        requested length for other ops; failed requests (result < 0) and empty ones touch none."""
        ps = int(page_size or self.page_size)
        r = self.records[self.op_mask(ops)]
        n = np.where(r["result"] >= 0, r["length"], 0).astype(np.int64)
        rw = np.isin(r["op"], np.array([OPS["read"], OPS["write"]], dtype=np.uint8))
        n = np.where(rw & (r["result"] >= 0), np.minimum(r["result"], r["length"]), n)
        keep = n > 0
        r, n = r[keep], n[keep]
        first = r["offset"] // ps
        last = (r["offset"] + n - 1) // ps
        count = (last - first + 1).astype(np.int64)
        total = int(count.sum())
        out = np.empty(total, dtype=PAGES_DTYPE)
        if total == 0:
            return out
        idx = np.repeat(np.arange(r.size), count)
        starts = np.cumsum(count) - count
        within = np.arange(total, dtype=np.int64) - np.repeat(starts, count)
        out["t_ns"] = r["start_ns"][idx]
        out["pid"] = r["pid"][idx]
        out["op"] = r["op"][idx]
        out["file"] = r["file"][idx]
        out["page"] = first[idx] + within
        return out

    @property
    def start_ns(self) -> int:
        """The trace's time origin (CLOCK_MONOTONIC ns): the header's `start_monotonic_ns` (the
        mount's start), else the first record's start, else 0."""
        t0 = self.header.get("start_monotonic_ns")
        if isinstance(t0, int) and not isinstance(t0, bool):
            return t0
        return int(self.records["start_ns"].min()) if self.records.size else 0

    def to_pandas(self):
        """The request records as a pandas DataFrame (pandas is an optional dependency: pip install
        pandas), one row a request in start-time order, with columns `t_s` (start, seconds since the
        trace's start: `start_ns` above), `dur_s`, `delay_s`, `op` (its name: read, write, ...;
        unknown codes by number), `path` (relative to the mount root; "" for file id 0 or an
        unknown id), then the raw fields `file`, `pid` (0 = the kernel), `uid`, `offset`, `length`,
        `result` (bytes or -errno), `flags`, `dev_addr`, `dev_prev`, `seek_ns`, `rot_ns`,
        `xfer_ns`, `dev_segments`, `start_ns`, `dur_ns`, `delay_ns`."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Trace.to_pandas() needs pandas, an optional dependency: pip install pandas "
                              "(or pip install 'machvm-lab[pandas]')") from None
        r = self.records
        t0 = self.start_ns
        files = self.files
        paths = np.array([files.get(int(f), "") for f in r["file"].tolist()], dtype=object)
        cols = {
            "t_s": (r["start_ns"] - t0) / 1e9,
            "dur_s": r["dur_ns"] / 1e9,
            "delay_s": r["delay_ns"] / 1e9,
            "op": pd.Categorical(self.op_names()),
            "path": paths,
        }
        for name in ("file", "pid", "uid", "offset", "length", "result", "flags") + DEVICE_FIELDS + \
                ("start_ns", "dur_ns", "delay_ns"):
            cols[name] = r[name]
        return pd.DataFrame(cols)

    def op_names(self) -> np.ndarray:
        """The op name of every record (a numpy str array), for display."""
        names = np.array(["?"] + [OP_NAMES.get(i, str(i)) for i in range(1, 256)], dtype=object)
        return names[self.records["op"]]


def read_header(path: str) -> tuple[dict, int]:
    """(header dict, offset of the first record); ValueError naming the file if it is not a trace."""
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
                raise ValueError(f"{path} is not a vnodefs trace (bad magic)")
            _, version, hlen = _PREFIX.unpack(prefix)
            if version not in READABLE_VERSIONS:
                raise ValueError(f"{path} is a vnodefs trace of version {version}; this vnodefs reads versions "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
            body = fh.read(hlen)
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a vnodefs trace") from None
    if len(body) < hlen:
        raise ValueError(f"{path}: vnodefs trace header is truncated ({len(body)} of {hlen} bytes)")
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: vnodefs trace header is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: vnodefs trace header is not a JSON object")
    return header, _PREFIX.size + hlen


def load(path: str | os.PathLike) -> Trace:
    """Load a trace file: a `Trace` (records in start-time order, the file table, the header).
    Raises FileNotFoundError / ValueError (one line naming the file) for a missing file, one that is
    not a vnodefs trace, or a damaged one (`check_records`: the line names the first bad record);
    warns (and drops it) for a partial last record."""
    path = os.fspath(path)
    header, start = read_header(path)
    with open(path, "rb") as fh:
        version = _PREFIX.unpack(fh.read(_PREFIX.size))[1]
    rsize = RECORD_SIZE if version >= 2 else RECORD_SIZE_V1
    size = os.path.getsize(path)
    nrec, tail = divmod(size - start, rsize)
    truncated = tail != 0
    if truncated:
        warnings.warn(f"{path}: trace is truncated (a crash?): loaded {nrec} whole records, "
                      f"dropped a partial record of {tail} bytes", RuntimeWarning, stacklevel=2)
    if version >= 2:
        raw = np.fromfile(path, dtype=RECORD_DTYPE, count=nrec, offset=start)
    else:
        raw = upgrade_v1(np.fromfile(path, dtype=RECORD_DTYPE_V1, count=nrec, offset=start))
        header = dict(header)
        header.setdefault("layout", {"kind": "none", "note": "version-1 trace: no device addresses"})
    check_records(raw, path, start, rsize, version, header)
    is_path = raw["op"] == OP_PATH
    files = _file_table(raw[is_path].view(PATH_DTYPE))
    recs = raw[~is_path]
    order = np.argsort(recs["start_ns"], kind="stable")
    recs = recs[order]
    return Trace(records=recs, files=files, header=header, path=path, truncated=truncated,
                 page_size=int(header.get("page_size", 4096)))


#: bounds of a plausible record (the format's MUST rules plus what the kernel can send): pid_max's
#: ceiling (PID_MAX_LIMIT), the largest FUSE read/write, the largest -errno, the longest path
PID_LIMIT = 1 << 22
MAX_RW_LENGTH = 1 << 32
MAX_ERRNO = 4095
MAX_PATH_LEN = 1 << 16
KNOWN_FLAGS = 0x3F
#: the fallocate(2) mode bits a `fallocate` record's flags may hold (linux/falloc.h: KEEP_SIZE ..
#: UNSHARE_RANGE)
FALLOC_MODES = 0x7F
#: how far before the header's start_monotonic_ns / after it a record may start (ns)
_BEFORE_START_NS = 86_400 * 10**9
_AFTER_START_NS = 366 * 86_400 * 10**9


def check_records(raw: np.ndarray, path: str, start: int, rsize: int, version: int,
                  header: dict | None = None, first_index: int = 0) -> None:
    """ValueError naming the first damaged record of `raw` (file order, RECORD_DTYPE layout; a
    version-1 trace already upgraded) and what is wrong with it, or None. The one validation every
    reader gets (load calls it): reserved fields and bits that MUST be 0 are 0; times, offsets,
    lengths and pids are non-negative; a read, write or prefetch moved no more than it asked for and
    asked for no more than FUSE can; a result is a byte count or -errno; file-table chunks are
    consistent. Records with an op code unknown to this version are checked only for the rules that
    hold for every record, and kept. `first_index`: the file-order index of raw[0] (a chunk of a
    streamed trace), so the record named is counted from the start of the file."""
    if raw.size == 0:
        return
    op = raw["op"]
    is_path = op == OP_PATH
    req = ~is_path
    rw = np.isin(op, np.array([OPS["read"], OPS["write"], OPS["prefetch"]], dtype=np.uint8))
    known = np.isin(op, np.array(list(OPS.values()), dtype=np.uint8))
    checks: list[tuple[np.ndarray, str]] = [
        (req & (raw["reserved"] != 0), "a non-zero reserved field (bytes 62-63)"),
        (req & (op != OPS["fallocate"]) & ((raw["flags"] & ~np.uint8(KNOWN_FLAGS)) != 0), "reserved flag bits set"),
        (req & (op == OPS["fallocate"]) & ((raw["flags"] & ~np.uint8(FALLOC_MODES)) != 0),
         "a fallocate mode no kernel defines"),
        (req & (raw["start_ns"] < 0), "a negative start time"),
        (req & (raw["dur_ns"] < 0), "a negative duration"),
        (req & (raw["delay_ns"] < 0), "a negative modelled delay"),
        (req & (raw["offset"] < 0), "a negative offset"),
        (req & (raw["length"] < 0), "a negative length"),
        (req & ((raw["pid"] < 0) | (raw["pid"] > PID_LIMIT)), "an impossible pid"),
        (req & (raw["result"] < -MAX_ERRNO), "a result that is neither a byte count nor -errno"),
        (rw & (raw["length"] > MAX_RW_LENGTH), "a read/write length larger than FUSE sends"),
        (rw & (raw["result"] > raw["length"]), "more bytes transferred than requested"),
        (known & ~rw & (raw["result"] > MAX_RW_LENGTH), "a result that is neither a byte count nor -errno"),
    ]
    if version >= 2:
        checks += [
            (req & (raw["reserved2"] != 0), "a non-zero reserved field (bytes 94-95)"),
            (req & ((raw["dev_addr"] < -1) | (raw["dev_prev"] < -1)), "a device address below -1"),
        ]
    t0 = header.get("start_monotonic_ns") if isinstance(header, dict) else None
    if isinstance(t0, int) and not isinstance(t0, bool) and t0 > 0:
        checks.append((req & ((raw["start_ns"] < t0 - _BEFORE_START_NS) | (raw["start_ns"] > t0 + _AFTER_START_NS)),
                       "a start time far outside the trace's (header start_monotonic_ns)"))
    if is_path.any():
        pv = raw.view(_path_dtype(RECORD_SIZE))
        bytes_ = raw.view(np.uint8).reshape(raw.size, RECORD_SIZE)
        bad_chunk = np.zeros(raw.size, bool)
        plen = pv["path_len"].astype(np.int64)
        chunk = pv["chunk"].astype(np.int64)
        bad_chunk[is_path] = ((chunk * PATH_CHUNK >= np.maximum(plen, 1)) | (plen > MAX_PATH_LEN))[is_path]
        checks += [
            (is_path & ((pv["flags"] != 0) | (pv["reserved"] != 0)), "a file-table chunk with non-zero flags"),
            (is_path & (pv["file"] == 0), "a file-table chunk for file id 0"),
            (bad_chunk, "a file-table chunk whose index or path length is impossible"),
        ]
        if version >= 2:
            pad = bytes_[:, RECORD_SIZE_V1:].any(axis=1)
            checks.append((is_path & pad, "a file-table chunk with non-zero padding (bytes 64-95)"))
    first, why = raw.size, []
    for mask, reason in checks:
        hit = np.flatnonzero(mask)
        if hit.size:
            i = int(hit[0])
            if i < first:
                first, why = i, [reason]
            elif i == first and reason not in why:
                why.append(reason)
    if first == raw.size:
        return
    nbad = int(np.logical_or.reduce([m for m, _ in checks]).sum())
    code = int(op[first])
    name = "file-table chunk" if code == OP_PATH else f"{OP_NAMES.get(code, f'op {code}')} record"
    more = f"; {nbad} damaged records in all" if nbad > 1 else ""
    first += first_index
    raise ValueError(f"{path}: damaged vnodefs trace: record {first} (byte {start + first * rsize}, a {name}) "
                     f"has {' and '.join(why)}{more}")


def upgrade_v1(raw: np.ndarray) -> np.ndarray:
    """Version-1 records (RECORD_DTYPE_V1) as version-2 records: the device fields absent
    (dev_addr / dev_prev -1, times and segments 0); path chunks keep their bytes."""
    out = np.zeros(raw.size, dtype=RECORD_DTYPE)
    out.view(np.uint8).reshape(-1, RECORD_SIZE)[:, :RECORD_SIZE_V1] = \
        raw.view(np.uint8).reshape(-1, RECORD_SIZE_V1)
    req = raw["op"] != OP_PATH
    out["dev_addr"][req] = -1
    out["dev_prev"][req] = -1
    return out


def _file_table(chunks: np.ndarray) -> dict[int, str]:
    parts: dict[int, dict[int, bytes]] = {}
    lengths: dict[int, int] = {}
    for c in chunks:
        fid = int(c["file"])
        # S48 strips trailing NULs; a path never contains NUL, so the chunk is exact
        parts.setdefault(fid, {})[int(c["chunk"])] = bytes(c["chunk_bytes"])
        lengths[fid] = int(c["path_len"])
    out = {}
    for fid, ch in parts.items():
        raw = b"".join(ch[i] for i in sorted(ch))[: lengths[fid]]
        out[fid] = raw.decode("utf-8", "surrogateescape")
    return out
