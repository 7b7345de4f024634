"""Working-set detection (TWS) and launch profiles: what an application touched when it started.

Owns (the model side of launch profiles; no file I/O here, swapd.profiles stores profiles):
  * `AppIdentity(path, inode, mtime_ns)`: the executable a profile belongs to; a changed identity
    means a new profile (as in xnu-792: inode + mtime, the name keys the file).
  * `Profile`: one application's launch working set for one uid: file pages keyed by (path relative
    to the mount root, page number) and anonymous pages keyed by virtual page number, each with the
    number of launches that touched it and the first-touch time / order. Entries live in one
    numpy structured array (`ENTRY_DTYPE`, 32 bytes per page) sorted by (file index, page), the
    anonymous pages last; a 100k-page profile is 3.2 MB and loads with one `np.frombuffer`.
  * `encode_profile(profile) -> bytes` / `decode_profile(data) -> Profile`: the versioned,
    checksummed on-disk format of docs/app_profile-format.md (pure bytes, so vnodefs' real-program
    profiles (vnodefs.seeding) and swapd's store share one codec). Limits: `MAX_ENTRIES`, `MAX_FILES`,
    `MAX_PATH_BYTES`, `MAX_APP_BYTES`, `MAX_PROFILE_BYTES`.
  * `TaskWorkingSets`: the kernel's per-task record of faulted pages (on by default under the mach
    policy), which the fault path's cluster rule asks which adjacent pages to bring in.
  * `WorkingSetRecorder`: an event sink for vmcore.kernel.Kernel (a callable taking a
    vmcore.types.FaultEvent). For each task it was told to record (`start`), it keeps the faults
    from the task's creation within the launch window (default 45 s of task time, model time from
    the kernel clock) keyed by backing object (file + page through a `PageResolver`, else the
    virtual page), and produces a `Profile` at the first fault past the window (XNU's
    KERN_OPERATION_TIMED_OUT), on `poll()`, or when asked (`finish`, at task terminate). It also
    answers the kernel's `working_set` hook, `contains(task, obj, pidx)`: did this task touch that
    page of that object before (the cluster widening of xnu-792's tws_build_cluster)?
  * `merge_profiles(profiles, min_count=1)`: several launches into one, keeping pages touched in at
    least min_count launches (iorap's min_traces, BootCache's merge).
  * `ProfileStore`: the protocol swapd.profiles.AppProfileStore implements.
  * Prefetch scoring (BootCache style): `PrefetchScore(used, wasted, late, missed)`,
    `PrefetchScoreboard` (landed / touched events) and `score_prefetch`.
  * Seeding plans: `coalesce(pages_by_file, max_request_pages=256)` (eager: few large sorted
    requests) and `LazySeeder` (XNU's lazy mode: the first touch of each 32-page frame brings in
    that frame's profiled pages, once).

Invariants: a Profile's entries are unique and sorted by (file, page); every file index names an
entry of `files` (or is ANON); 1 <= count <= launches; `order` is a permutation of 0..n-1 that
sorts the entries by first touch. used + wasted == prefetched for every PrefetchScore; late <= used.

Who calls it: the wiring layer (vmcore.lab / Kernel(files=, var=)) builds the recorder with a
resolver from its vnode pager, sets it as `kernel.event_sink` (and `kernel.working_set`), and seeds
tasks from a ProfileStore; swapd.profiles and the `swapd profiles` CLI use the data model and codec.

Caveats:
  * Anonymous pages are keyed by virtual address, as XNU keyed every page (xnu-792 TWS): they
    only help when the next launch lays its memory out at the same addresses (the model's
    deterministic allocator does).
  * The recorder keeps every fault of a recorded task in its window (no TWS line recycling), so the
    profile is exact; `contains` remembers every page a task touched until the task is forgotten.
  * Imports only the standard library, numpy, vmcore.types, vmcore.errors and vmcore.clock.
"""

from __future__ import annotations

import math
import struct
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vmcore.types import MAX_UPL_TRANSFER, FaultEvent

# ---- constants (xnu-792's TWS and app_profile) ---------------------------------------------------

#: TWS's launch window: a profile records the first 45 s of task time (xnu-792)
PROFILE_WINDOW_S = 45.0
#: a TWS element covers one 32-page (128 KB at 4 KiB) frame of an object (xnu-792)
CLUSTER_FRAME_PAGES = 32
#: XNU's "community" threshold: a frame needs this many recorded pages to be pre-heated (xnu-792)
TWS_COMMUNITY_PAGES = 4
#: eager seeding's largest request, in pages (MAX_UPL_TRANSFER)
MAX_REQUEST_PAGES = MAX_UPL_TRANSFER

#: file index of an anonymous entry (its page is a virtual page number)
ANON = 0xFFFFFFFF

#: one profile entry: 32 bytes, little-endian, the on-disk record of docs/app_profile-format.md
ENTRY_DTYPE = np.dtype([("file", "<u4"), ("count", "<u4"), ("page", "<u8"), ("first_ns", "<u8"),
                        ("order", "<u4"), ("reserved", "<u4")])
assert ENTRY_DTYPE.itemsize == 32

# ---- limits (xnu-792 had none and its files only grew; we bound everything we read) --------------
MAX_ENTRIES = 1 << 22  # 4,194,304 pages = 16 GiB of working set at 4 KiB; 128 MiB of entries
MAX_FILES = 1 << 16
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_APP_BYTES = 255  # NAME_MAX
MAX_LAUNCHES = 0xFFFFFFFF
MAX_PROFILE_BYTES = 96 + 2 * (2 + MAX_PATH_BYTES) + (2 + MAX_APP_BYTES) + 8 \
    + MAX_FILES * (2 + MAX_PATH_BYTES) + MAX_ENTRIES * 32  # ~400 MiB; real profiles are KB-MB

# ---- on-disk header (docs/app_profile-format.md) ---------------------------------------------------
MAGIC = b"APPROF\r\n"
FORMAT_VERSION = 1
HEADER_SIZE = 96
#   magic version header_size flags payload_size payload_crc uid launches page_size window_ns
#   created_ns exe_inode exe_mtime_ns n_files n_entries strings_size reserved header_crc
_HEADER = struct.Struct("<8sHHIQIIIIQqQqIII8sI")
assert _HEADER.size == HEADER_SIZE


# ---- errors ---------------------------------------------------------------------------------------
class ProfileError(Exception):
    """Base of the profile errors; str() is one line naming what was wrong."""


class ProfileFormatError(ProfileError, ValueError):
    """Bytes that are not a valid profile (bad magic, version, checksum, truncated, limits)."""


class ProfileNameError(ProfileError, ValueError):
    """An application name that could escape the profile tree or is not a usable file name."""


class ProfileMismatch(ProfileError, ValueError):
    """Profiles that cannot be merged (different identity, uid, app or page size)."""


# ---- identity and names ---------------------------------------------------------------------------
@dataclass(frozen=True)
class AppIdentity:
    """The executable a profile belongs to: path, inode and mtime (ns). Equal identities match."""

    path: str
    inode: int
    mtime_ns: int

    def __post_init__(self):
        _check_str(self.path, "executable path", MAX_PATH_BYTES)
        if isinstance(self.inode, bool) or not isinstance(self.inode, int) \
                or not 0 <= self.inode < 1 << 64:
            raise ValueError(f"executable inode {self.inode!r} is not an integer in 0..2**64-1")
        if isinstance(self.mtime_ns, bool) or not isinstance(self.mtime_ns, int) \
                or not -(1 << 63) <= self.mtime_ns < 1 << 63:
            raise ValueError(f"executable mtime_ns {self.mtime_ns!r} is not a 64-bit integer")

    @classmethod
    def of_stat(cls, path: str, st) -> "AppIdentity":
        """The identity of `path` from its os.stat_result (the caller stats; no I/O here)."""
        return cls(str(path), int(st.st_ino), int(st.st_mtime_ns))

    def describe(self) -> str:
        return f"{self.path} (inode {self.inode}, mtime_ns {self.mtime_ns})"


def _check_str(s, what: str, limit: int) -> bytes:
    if not isinstance(s, str):
        raise ValueError(f"{what} {s!r} is not a string")
    if not s:
        raise ValueError(f"{what} is empty")
    if "\0" in s:
        raise ValueError(f"{what} {s!r} contains a NUL byte")
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {s!r} is not valid UTF-8") from None
    if len(b) > limit:
        raise ValueError(f"{what} is {len(b)} bytes long; the limit is {limit}")
    return b


def validate_app_name(name) -> str:
    """The application name as a file name inside the profile tree, or ProfileNameError.

    Refused: non-strings, empty, longer than MAX_APP_BYTES UTF-8 bytes, NUL, '/' or '\\', control
    characters, names starting with '.' (so '.', '..', hidden and temporary files), ' ' at the ends.
    """
    if not isinstance(name, str):
        raise ProfileNameError(f"application name {name!r} is not a string")
    if not name:
        raise ProfileNameError("application name is empty")
    if "\0" in name:
        raise ProfileNameError(f"application name {name!r} contains a NUL byte")
    if "/" in name or "\\" in name:
        raise ProfileNameError(
            f"application name {name!r} contains a path separator; give a bare name, not a path")
    if name.startswith("."):
        raise ProfileNameError(
            f"application name {name!r} starts with '.' ('.', '..' and hidden names are refused)")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ProfileNameError(f"application name {name!r} contains a control character")
    if name != name.strip():
        raise ProfileNameError(f"application name {name!r} has leading or trailing blanks")
    try:
        n = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ProfileNameError(f"application name {name!r} is not valid UTF-8") from None
    if n > MAX_APP_BYTES:
        raise ProfileNameError(
            f"application name is {n} bytes long; the limit is {MAX_APP_BYTES}")
    return name


def validate_file_path(path) -> str:
    """A profile file path: relative to the mount root, normalised, no '..', no NUL."""
    _check_str(path, "profiled file path", MAX_PATH_BYTES)
    if path.startswith("/"):
        raise ValueError(
            f"profiled file path {path!r} is absolute; paths are relative to the mount")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"profiled file path {path!r} is not normalised (empty, '.' or '..' part)")
    return path


# ---- the profile ----------------------------------------------------------------------------------
class Profile:
    """One application's launch working set (see the module docstring). Treat as immutable."""

    __slots__ = ("identity", "uid", "app", "created_ns", "window_ns", "launches", "page_size",
                 "files", "entries")

    def __init__(self, identity: AppIdentity, uid: int, app: str, *, entries: np.ndarray,
                 files: Iterable[str] = (), created_ns: int = 0,
                 window_ns: int = int(PROFILE_WINDOW_S * 1e9), launches: int = 1,
                 page_size: int = 4096, _checked: bool = False):
        if not isinstance(identity, AppIdentity):
            raise ValueError(f"identity {identity!r} is not an AppIdentity")
        self.identity = identity
        self.uid = _u(uid, "uid", 0xFFFFFFFE)
        self.app = validate_app_name(app)
        self.created_ns = _i64(created_ns, "created_ns")
        self.window_ns = _u(window_ns, "window_ns", (1 << 64) - 1)
        self.launches = _u(launches, "launches", MAX_LAUNCHES)
        if self.launches < 1:
            raise ValueError("launches must be at least 1")
        ps = _u(page_size, "page_size", 1 << 30)
        if ps < 512 or ps & (ps - 1):
            raise ValueError(f"page_size {page_size} is not a power of two >= 512")
        self.page_size = ps
        self.files = tuple(files)
        e = np.asarray(entries)
        if e.dtype != ENTRY_DTYPE:
            raise ValueError(f"entries must have dtype ENTRY_DTYPE, got {e.dtype}")
        self.entries = e
        if not _checked:
            self._check()
        e.flags.writeable = False

    # ---- construction ----
    @classmethod
    def from_touches(cls, identity: AppIdentity, uid: int, app: str,
                     file_touches: Iterable[tuple[str, int, int]] = (),
                     anon_touches: Iterable[tuple[int, int]] = (), **kw) -> "Profile":
        """A one-launch profile from (path, page, first_ns) and (virtual page, first_ns) touches in
        any order; a page touched twice keeps its earliest time."""
        firsts: dict[tuple[int, int], int] = {}
        fidx: dict[str, int] = {}
        raw = []
        for path, page, t in file_touches:
            raw.append((path, int(page), int(t)))
            fidx.setdefault(path, 0)
        files = sorted(fidx)
        for i, p in enumerate(files):
            validate_file_path(p)
            fidx[p] = i
        for path, page, t in raw:
            k = (fidx[path], page)
            if k not in firsts or t < firsts[k]:
                firsts[k] = t
        for vpage, t in anon_touches:
            k = (ANON, int(vpage))
            t = int(t)
            if k not in firsts or t < firsts[k]:
                firsts[k] = t
        return cls(identity, uid, app, entries=_entries_from(firsts), files=files, **kw)

    def _check(self) -> None:
        files = self.files
        if len(files) > MAX_FILES:
            raise ValueError(f"{len(files)} files; the limit is {MAX_FILES}")
        for p in files:
            validate_file_path(p)
        if list(files) != sorted(set(files)):
            raise ValueError("profile file table is not sorted and unique")
        e = self.entries
        if e.ndim != 1:
            raise ValueError("entries must be one-dimensional")
        n = e.size
        if n > MAX_ENTRIES:
            raise ValueError(f"{n} entries; the limit is {MAX_ENTRIES}")
        if n == 0:
            return
        f = e["file"]
        if np.any((f >= len(files)) & (f != ANON)):
            raise ValueError("an entry names a file index past the file table")
        if n > 1:
            df = np.diff(f.astype(np.int64))
            pg = e["page"]
            same = df == 0
            if np.any(df < 0) or np.any(same & (pg[1:] <= pg[:-1])):
                raise ValueError("entries are not sorted by (file, page) and unique")
        c = e["count"]
        if np.any(c < 1) or np.any(c > self.launches):
            raise ValueError(f"an entry count is outside 1..launches ({self.launches})")
        o = e["order"].astype(np.int64)
        seen = np.zeros(n, dtype=np.bool_)
        if np.any(o >= n):
            raise ValueError("entry order is not a permutation of 0..n-1")
        seen[o] = True
        if not seen.all():
            raise ValueError("entry order is not a permutation of 0..n-1")
        if np.any(e["reserved"] != 0):
            raise ValueError("entry reserved field is not zero")

    # ---- views ----
    @property
    def window_s(self) -> float:
        return self.window_ns / 1e9

    @property
    def npages(self) -> int:
        return int(self.entries.size)

    def _anon_mask(self) -> np.ndarray:
        return self.entries["file"] == ANON

    @property
    def nfile_pages(self) -> int:
        return int(np.count_nonzero(~self._anon_mask()))

    @property
    def nanon_pages(self) -> int:
        return int(np.count_nonzero(self._anon_mask()))

    def pages_by_file(self) -> dict[str, np.ndarray]:
        """{path: sorted unique page numbers (int64)} for the file pages."""
        e = self.entries
        f = e["file"]
        out = {}
        if e.size == 0:
            return out
        bounds = np.flatnonzero(np.diff(f.astype(np.int64))) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [e.size]))
        for s, t in zip(starts.tolist(), ends.tolist()):
            fi = int(f[s])
            if fi != ANON:
                out[self.files[fi]] = e["page"][s:t].astype(np.int64)
        return out

    def anon_pages(self) -> np.ndarray:
        """Sorted virtual page numbers of the anonymous entries (address = page * page_size)."""
        return self.entries["page"][self._anon_mask()].astype(np.int64)

    def file_page_counts(self) -> dict[str, int]:
        return {p: int(a.size) for p, a in self.pages_by_file().items()}

    def timeline(self, limit: int | None = None) -> list[tuple[int, str | None, int, int]]:
        """(first_ns, path or None for anonymous, page, count) in first-touch order (the first
        `limit` of them)."""
        e = self.entries
        idx = np.argsort(e["order"], kind="stable")
        out = []
        for i in idx[:limit].tolist():
            fi = int(e["file"][i])
            out.append((int(e["first_ns"][i]), None if fi == ANON else self.files[fi],
                        int(e["page"][i]), int(e["count"][i])))
        return out

    def with_min_count(self, min_count: int) -> "Profile":
        """The pages touched in at least min_count launches (order renumbered)."""
        return merge_profiles([self], min_count=min_count)

    def replace(self, **kw) -> "Profile":
        d = dict(identity=self.identity, uid=self.uid, app=self.app, entries=self.entries,
                 files=self.files, created_ns=self.created_ns, window_ns=self.window_ns,
                 launches=self.launches, page_size=self.page_size)
        d.update(kw)
        ident, uid, app = d.pop("identity"), d.pop("uid"), d.pop("app")
        return Profile(ident, uid, app, **d)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return (self.identity == other.identity and self.uid == other.uid
                and self.app == other.app and self.created_ns == other.created_ns
                and self.window_ns == other.window_ns and self.launches == other.launches
                and self.page_size == other.page_size and self.files == other.files
                and np.array_equal(self.entries, other.entries))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"<Profile {self.app!r} uid={self.uid} {self.npages} pages "
                f"({self.nfile_pages} file, {self.nanon_pages} anon) in {len(self.files)} files, "
                f"{self.launches} launch(es), {self.identity.describe()}>")


def _u(v, what: str, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= hi:
        raise ValueError(f"{what} {v!r} is not an integer in 0..{hi}")
    return int(v)


def _i64(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) \
            or not -(1 << 63) <= int(v) < 1 << 63:
        raise ValueError(f"{what} {v!r} is not a 64-bit integer")
    return int(v)


def _entries_from(firsts: Mapping[tuple[int, int], int],
                  counts: Mapping | None = None) -> np.ndarray:
    """Sorted ENTRY_DTYPE array from {(file index, page): first_ns}; order by (first_ns, key)."""
    n = len(firsts)
    e = np.zeros(n, dtype=ENTRY_DTYPE)
    if n == 0:
        return e
    keys = np.array(list(firsts.keys()), dtype=np.uint64).reshape(n, 2)
    e["file"] = keys[:, 0]
    e["page"] = keys[:, 1]
    e["first_ns"] = np.fromiter(firsts.values(), dtype=np.uint64, count=n)
    e["count"] = 1 if counts is None else np.fromiter((counts[k] for k in firsts), np.uint32, n)
    e = e[np.lexsort((e["page"], e["file"]))]
    _renumber(e)
    return e


def _renumber(e: np.ndarray, prior: np.ndarray | None = None) -> None:
    """Set e['order'] to the rank of (first_ns, prior order, position)."""
    keys = (np.arange(e.size),) + ((prior,) if prior is not None else ()) + (e["first_ns"],)
    idx = np.lexsort(keys)
    order = np.empty(e.size, dtype=np.uint32)
    order[idx] = np.arange(e.size, dtype=np.uint32)
    e["order"] = order


# ---- merge ----------------------------------------------------------------------------------------
def merge_profiles(profiles: Iterable[Profile], min_count: int = 1) -> Profile:
    """Merge launches of one application: counts add up, first touch is the earliest, launches add
    up, and only pages with count >= min_count are kept. All profiles must have the same identity,
    uid, app and page size (else ProfileMismatch). window is the largest, created the newest."""
    profs = list(profiles)
    if not profs:
        raise ValueError("merge_profiles needs at least one profile")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count {min_count!r} must be a positive integer")
    p0 = profs[0]
    for p in profs[1:]:
        for attr in ("identity", "uid", "app", "page_size"):
            if getattr(p, attr) != getattr(p0, attr):
                raise ProfileMismatch(
                    f"cannot merge profiles of different {attr}: {getattr(p0, attr)!r} and "
                    f"{getattr(p, attr)!r}")
    files = sorted(set().union(*(p.files for p in profs)))
    fmap = {f: i for i, f in enumerate(files)}
    parts = []
    for p in profs:
        remap = np.array([fmap[f] for f in p.files] + [0], dtype=np.uint32)
        e = p.entries.copy()
        fi = e["file"]
        anon = fi == ANON
        e["file"] = np.where(anon, ANON, remap[np.where(anon, len(p.files), fi)])
        parts.append(e)
    allv = np.concatenate(parts)
    launches = sum(p.launches for p in profs)
    if launches > MAX_LAUNCHES:
        raise ValueError(f"merged launches {launches} exceed {MAX_LAUNCHES}")
    if allv.size:
        idx = np.lexsort((allv["order"], allv["first_ns"], allv["page"], allv["file"]))
        allv = allv[idx]
        newkey = np.ones(allv.size, dtype=np.bool_)
        newkey[1:] = ((allv["file"][1:] != allv["file"][:-1])
                      | (allv["page"][1:] != allv["page"][:-1]))
        starts = np.flatnonzero(newkey)
        out = allv[starts].copy()  # earliest first_ns (and its order) of each key
        out["count"] = np.add.reduceat(allv["count"].astype(np.uint64), starts).astype(np.uint32)
        prior = out["order"].copy()
        keep = out["count"] >= min_count
        out, prior = out[keep], prior[keep]
        _renumber(out, prior)
    else:
        out = allv
    used = sorted({int(x) for x in np.unique(out["file"]) if int(x) != ANON})
    if len(used) != len(files):  # drop files that lost every page to min_count
        remap = np.full(len(files) + 1, 0, dtype=np.uint32)
        for new, old in enumerate(used):
            remap[old] = new
        fi = out["file"]
        anon = fi == ANON
        out["file"] = np.where(anon, ANON, remap[np.where(anon, len(files), fi)])
        files = [files[i] for i in used]
    return Profile(p0.identity, p0.uid, p0.app, entries=out, files=files,
                   created_ns=max(p.created_ns for p in profs),
                   window_ns=max(p.window_ns for p in profs), launches=launches,
                   page_size=p0.page_size)


# ---- codec ----------------------------------------------------------------------------------------
def encode_profile(profile: Profile) -> bytes:
    """The profile as bytes in format version 1 (docs/app_profile-format.md)."""
    strings = bytearray()
    for s in (profile.app, profile.identity.path, *profile.files):
        b = s.encode("utf-8")
        strings += struct.pack("<H", len(b)) + b
    pad = (-(HEADER_SIZE + len(strings))) % 8
    payload = bytes(strings) + b"\0" * pad + profile.entries.tobytes()
    pcrc = zlib.crc32(payload)
    ident = profile.identity
    fields = [MAGIC, FORMAT_VERSION, HEADER_SIZE, 0, len(payload), pcrc, profile.uid,
              profile.launches, profile.page_size, profile.window_ns, profile.created_ns,
              ident.inode, ident.mtime_ns, len(profile.files), profile.npages, len(strings),
              b"\0" * 8, 0]
    head = _HEADER.pack(*fields)
    hcrc = zlib.crc32(head[:HEADER_SIZE - 4])
    return head[:HEADER_SIZE - 4] + struct.pack("<I", hcrc) + payload


@dataclass(frozen=True)
class ProfileHeader:
    """The fixed header of a profile file (what `swapd profiles list` shows without the payload)."""

    version: int
    payload_size: int
    payload_crc: int
    uid: int
    launches: int
    page_size: int
    window_ns: int
    created_ns: int
    exe_inode: int
    exe_mtime_ns: int
    n_files: int
    n_entries: int
    strings_size: int

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.payload_size


def decode_header(data: bytes) -> ProfileHeader:
    """Parse and check the fixed header (magic, version, header checksum, limits)."""
    if len(data) < 8 or data[:8] != MAGIC:
        if len(data) < 8 and MAGIC.startswith(bytes(data)):
            raise ProfileFormatError(f"truncated: {len(data)} bytes, shorter than the header")
        raise ProfileFormatError(f"bad magic {bytes(data[:8])!r} (not a profile file)")
    if len(data) >= 10:
        (version,) = struct.unpack_from("<H", data, 8)
        if version != FORMAT_VERSION:
            raise ProfileFormatError(
                f"unsupported format version {version} (this reader knows {FORMAT_VERSION})")
    if len(data) < HEADER_SIZE:
        raise ProfileFormatError(f"truncated: {len(data)} bytes, the header needs {HEADER_SIZE}")
    (magic, version, hsize, flags, psize, pcrc, uid, launches, page_size, window_ns, created_ns,
     inode, mtime_ns, n_files, n_entries, ssize, reserved, hcrc) = _HEADER.unpack_from(data, 0)
    if zlib.crc32(bytes(data[:HEADER_SIZE - 4])) != hcrc:
        raise ProfileFormatError("header checksum mismatch (the header is damaged)")
    if hsize != HEADER_SIZE:
        raise ProfileFormatError(f"header size {hsize} is not {HEADER_SIZE}")
    if flags != 0:
        raise ProfileFormatError(f"unknown flags {flags:#x}")
    if reserved != b"\0" * 8:
        raise ProfileFormatError("reserved header bytes are not zero")
    if n_entries > MAX_ENTRIES:
        raise ProfileFormatError(f"{n_entries} entries exceed the limit of {MAX_ENTRIES}")
    if n_files > MAX_FILES:
        raise ProfileFormatError(f"{n_files} files exceed the limit of {MAX_FILES}")
    smax = (2 + MAX_APP_BYTES) + (2 + MAX_PATH_BYTES) * (1 + n_files)
    if ssize > smax:
        raise ProfileFormatError(f"string table of {ssize} bytes exceeds its limit of {smax}")
    pad = (-(HEADER_SIZE + ssize)) % 8
    if psize != ssize + pad + 32 * n_entries:
        raise ProfileFormatError(
            f"payload size {psize} does not match {n_files} files and {n_entries} entries")
    return ProfileHeader(version, psize, pcrc, uid, launches, page_size, window_ns, created_ns,
                         inode, mtime_ns, n_files, n_entries, ssize)


def decode_profile(data: bytes) -> Profile:
    """Bytes of a version-1 profile -> Profile, or ProfileFormatError naming what is wrong."""
    h = decode_header(data)
    total = h.file_size
    if len(data) < total:
        raise ProfileFormatError(f"truncated: {len(data)} bytes of {total}")
    if len(data) > total:
        raise ProfileFormatError(f"{len(data) - total} unexpected bytes after the profile")
    payload = memoryview(data)[HEADER_SIZE:total]
    if zlib.crc32(payload) != h.payload_crc:
        raise ProfileFormatError("payload checksum mismatch (the entries or names are damaged)")
    strings = []
    pos = 0
    sbuf = bytes(payload[:h.strings_size])
    for _ in range(2 + h.n_files):
        if pos + 2 > len(sbuf):
            raise ProfileFormatError("string table is shorter than its strings")
        (ln,) = struct.unpack_from("<H", sbuf, pos)
        pos += 2
        if pos + ln > len(sbuf):
            raise ProfileFormatError("string table is shorter than its strings")
        try:
            strings.append(sbuf[pos:pos + ln].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProfileFormatError("a name in the string table is not UTF-8") from None
        pos += ln
    if pos != len(sbuf):
        raise ProfileFormatError(f"{len(sbuf) - pos} stray bytes in the string table")
    off = h.strings_size + (-(HEADER_SIZE + h.strings_size)) % 8
    if any(payload[h.strings_size:off]):
        raise ProfileFormatError("padding bytes are not zero")
    entries = np.frombuffer(payload[off:], dtype=ENTRY_DTYPE, count=h.n_entries).copy()
    try:
        ident = AppIdentity(strings[1], h.exe_inode, h.exe_mtime_ns)
        return Profile(ident, h.uid, strings[0], entries=entries, files=strings[2:],
                       created_ns=h.created_ns, window_ns=h.window_ns, launches=h.launches,
                       page_size=h.page_size)
    except ValueError as e:
        raise ProfileFormatError(f"inconsistent contents: {e}") from None


# ---- the store protocol ---------------------------------------------------------------------------
@runtime_checkable
class ProfileStore(Protocol):
    """Where profiles live between launches (swapd.profiles.AppProfileStore on disk).

    load: the profile of (uid, app) if one exists, is readable and matches `identity`; else None
    (missing, stale or damaged: a damaged one is reported and moved aside, never raised).
    save: write atomically (a reader sees the old profile or the new one, never a mix).
    list: one record per stored profile. remove: True if a profile was removed.
    """

    def load(self, uid: int, app: str, identity: AppIdentity) -> Profile | None: ...

    def save(self, profile: Profile) -> Any: ...

    def list(self) -> list: ...

    def remove(self, uid: int, app: str) -> bool: ...


# ---- the recorder ---------------------------------------------------------------------------------
class PageResolver(Protocol):
    """Object identity -> file page: `resolve(object_id, offset)` returns (path relative to the
    mount root, page number in the file) when the object is file-backed (a vnode object), or None
    for anonymous memory. Called with the *base* object of the shadow chain (TWS keys by the
    backing object), so a copy-on-write page of a private file mapping resolves to its file page."""

    def __call__(self, object_id: int, offset: int) -> tuple[str, int] | None: ...


@dataclass
class _Recording:
    task: Any
    identity: AppIdentity
    uid: int
    app: str
    start: float
    window_s: float
    touches: dict = field(default_factory=dict)  # (path | None, page) -> first_ns


class WorkingSetRecorder:
    """Kernel event sink that records launch working sets and answers `contains` (see module doc).

    `WorkingSetRecorder(resolver=None, window_s=45.0, on_profile=None, clock=None,
    wall_clock=time.time_ns, track_touched=True)`:
      resolver     PageResolver (callable or object with .resolve); None: everything is anonymous
      on_profile   called with each Profile when its window closes (e.g. store.save)
      clock        model clock (.now() seconds); None: the faulting task's kernel.clock
      wall_clock   ns since the epoch, for Profile.created_ns
      track_touched  keep every task's touched (object, page) pairs for `contains`
    Use: `kernel.event_sink = rec` (and `kernel.working_set = rec`); `rec.start(task, identity,
    app, uid)` right after task_create; `rec.finish(task)` at terminate.
    """

    def __init__(self, resolver=None, window_s: float = PROFILE_WINDOW_S,
                 on_profile: Callable[[Profile], Any] | None = None, clock=None,
                 wall_clock: Callable[[], int] = time.time_ns, track_touched: bool = True):
        if resolver is not None and not callable(resolver):
            r = getattr(resolver, "resolve", None)
            if not callable(r):
                raise ValueError(f"resolver {resolver!r} is neither callable nor has resolve()")
            resolver = r
        self._resolve = resolver
        self.window_s = _window(window_s)
        self.on_profile = on_profile
        self.clock = clock
        self.wall_clock = wall_clock
        self.track_touched = track_touched
        self._rec: dict[int, _Recording] = {}  # id(task) -> recording
        # task -> {(object_id, page index)}; weak, so a dropped task takes its set with it
        self._touched: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.profiles: list[Profile] = []  # every profile produced, in order
        self.events = 0
        self.recorded = 0

    # ---- control ----
    def start(self, task, identity: AppIdentity, app: str, uid: int = 0,
              window_s: float | None = None) -> None:
        """Record `task`'s launch (its faults since creation, within the window)."""
        if not isinstance(identity, AppIdentity):
            raise ValueError(f"identity {identity!r} is not an AppIdentity")
        validate_app_name(app)
        _u(uid, "uid", 0xFFFFFFFE)
        w = self.window_s if window_s is None else _window(window_s)
        self._rec[id(task)] = _Recording(task, identity, int(uid), app, float(task.created_at), w)

    def recording(self, task) -> bool:
        return id(task) in self._rec

    def _now(self, task) -> float:
        c = self.clock if self.clock is not None else task.kernel.clock
        return float(c.now())

    def finish(self, task) -> Profile | None:
        """End task's recording now (task terminate); returns its Profile (None if not recorded or
        it touched nothing). Also forgets the task's touched set."""
        self._touched.pop(task, None)
        r = self._rec.pop(id(task), None)
        if r is None:
            return None
        return self._produce(r)

    def forget(self, task) -> None:
        """Drop task's recording and touched set without producing a profile."""
        self._rec.pop(id(task), None)
        self._touched.pop(task, None)

    def poll(self) -> list[Profile]:
        """Close every recording whose window has passed (without waiting for a fault)."""
        out = []
        for key, r in list(self._rec.items()):
            if self._now(r.task) - r.start >= r.window_s:
                del self._rec[key]
                p = self._produce(r)
                if p is not None:
                    out.append(p)
        return out

    def _produce(self, r: _Recording) -> Profile | None:
        if not r.touches:
            return None
        ps = r.task.kernel.page_size
        ftouch = ((k[0], k[1], t) for k, t in r.touches.items() if k[0] is not None)
        atouch = ((k[1], t) for k, t in r.touches.items() if k[0] is None)
        p = Profile.from_touches(r.identity, r.uid, r.app, ftouch, atouch,
                                 created_ns=int(self.wall_clock()),
                                 window_ns=int(round(r.window_s * 1e9)), launches=1,
                                 page_size=ps)
        self.profiles.append(p)
        if self.on_profile is not None:
            self.on_profile(p)
        return p

    # ---- the sink ----
    def __call__(self, ev: FaultEvent) -> None:
        self.events += 1
        task = ev.task
        key = id(task)
        if self.track_touched:
            shift = task.kernel.page_shift
            s = self._touched.get(task)
            if s is None:
                s = self._touched[task] = set()
            s.add((ev.object_id, ev.offset >> shift))
            if ev.base_object_id >= 0:
                s.add((ev.base_object_id, ev.base_offset >> shift))
        r = self._rec.get(key)
        if r is None:
            return
        age = self._now(task) - r.start
        if age >= r.window_s:  # the first fault past the window closes it (TIMED_OUT)
            del self._rec[key]
            self._produce(r)
            return
        if ev.base_object_id >= 0:
            oid, off = ev.base_object_id, ev.base_offset
        else:
            oid, off = ev.object_id, ev.offset
        where = self._resolve(oid, off) if self._resolve is not None else None
        if where is None:
            k = (None, ev.address // task.kernel.page_size)
        else:
            path, page = where
            k = (path, int(page))
        if k not in r.touches:
            r.touches[k] = max(0, int(age * 1e9))
            self.recorded += 1

    # ---- the kernel's working_set hook ----
    def contains(self, task, obj, pidx: int) -> bool:
        """Has `task` faulted on page pidx of obj (by object id) since it was created?"""
        s = self._touched.get(task)
        return s is not None and (obj.id, pidx) in s


class TaskWorkingSets:
    """The working set detection subsystem's live half, on by default under the mach policy
    (the Kernel Programming Guide (Working Set Detection Subsystem): it "is called on a VM fault; it keeps a profile of the fault behavior of each task
    from the time of its inception. In addition, just before a page request, the fault code asks
    this subsystem which adjacent pages should be brought in ... This occurs for all pagers").

    For each task, the pages it has faulted on, by VM object: `insert(task, obj, pidx)` from
    every vm_fault, `contains(task, obj, pidx)` / `touched(task, obj)` for the cluster rule of
    vmcore.fault (xnu-792: beyond the blind pre-heat, a page joins a pagein cluster
    only if this task touched it, or the page one further out, before). `forget(task)` at
    terminate. XNU's TWS is a bounded hash of 32-page lines that recycles old ones; this one keeps
    every page a task touched until it terminates (one set entry per page)."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: dict[int, dict[int, set]] = {}

    def insert(self, task, obj_id: int, pidx: int) -> None:
        d = self._tasks.get(task.id)
        if d is None:
            d = self._tasks[task.id] = {}
        s = d.get(obj_id)
        if s is None:
            d[obj_id] = {pidx}
        else:
            s.add(pidx)

    def touched(self, task, obj) -> set:
        """The pages of obj this task faulted on (an empty set if none; do not modify)."""
        d = self._tasks.get(task.id)
        if d is None:
            return _EMPTY
        return d.get(obj.id, _EMPTY)

    def contains(self, task, obj, pidx: int) -> bool:
        return pidx in self.touched(task, obj)

    def forget(self, task) -> None:
        self._tasks.pop(task.id, None)

    def pages(self, task) -> int:
        """How many pages the task's working set holds."""
        return sum(len(s) for s in self._tasks.get(task.id, {}).values())


_EMPTY: frozenset = frozenset()


def _window(w) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise ValueError(f"launch window {w!r} must be a positive number of seconds")
    return float(w)


# ---- prefetch scoring -----------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefetchScore:
    """BootCache-style accuracy of one seeded launch, in pages.

    used     prefetched and touched by the task (late ones included)
    wasted   prefetched and never touched (BootCache's "spurious discards")
    late     prefetched, touched, but the prefetch had not landed at the first touch (the task
             waited for it or faulted it itself)
    missed   touched, never prefetched (what the profile did not predict)
    used + wasted == prefetched; late <= used.
    """

    used: int
    wasted: int
    late: int
    missed: int = 0

    @property
    def prefetched(self) -> int:
        return self.used + self.wasted

    def as_dict(self) -> dict[str, int]:
        return {"used": self.used, "wasted": self.wasted, "late": self.late,
                "missed": self.missed, "prefetched": self.prefetched}


def score_prefetch(landed: Mapping[Any, float | None],
                   first_touch: Mapping[Any, float]) -> PrefetchScore:
    """Score from {page key: time it landed, or None if it never did} for every prefetched page and
    {page key: first touch time} for every page the task touched. A page that landed exactly when
    it was touched is on time."""
    used = late = 0
    for key, t_land in landed.items():
        t_touch = first_touch.get(key)
        if t_touch is None:
            continue
        used += 1
        if t_land is None or t_land > t_touch:
            late += 1
    missed = sum(1 for k in first_touch if k not in landed)
    return PrefetchScore(used, len(landed) - used, late, missed)


class PrefetchScoreboard:
    """Accumulates prefetch events as they happen; `score()` at any time.

    `issued(key)` when a page is put into a prefetch request, `landed(key, t)` when it is in
    memory, `touched(key, t)` at every access (only the first counts)."""

    def __init__(self):
        self._landed: dict[Any, float | None] = {}
        self._touch: dict[Any, float] = {}

    def issued(self, key) -> None:
        self._landed.setdefault(key, None)

    def landed(self, key, t: float) -> None:
        if self._landed.get(key) is None:
            self._landed[key] = float(t)

    def touched(self, key, t: float) -> None:
        if key not in self._touch:
            self._touch[key] = float(t)

    def was_prefetched(self, key) -> bool:
        return key in self._landed

    def score(self) -> PrefetchScore:
        return score_prefetch(self._landed, self._touch)


# ---- seeding plans --------------------------------------------------------------------------------
def coalesce(pages_by_file: Mapping[Any, Iterable[int]], max_request_pages: int = MAX_REQUEST_PAGES,
             max_gap: int = 0) -> list[tuple[Any, int, int]]:
    """Eager seeding plan: (path, first_page, npages) requests sorted by path then offset, each a
    run of profiled pages no longer than max_request_pages. Holes of up to max_gap pages between
    profiled pages are bridged (read too) to save a seek; 0 reads exactly the profiled pages.
    Keys may be any sortable value (None, for anonymous pages, sorts first)."""
    if isinstance(max_request_pages, bool) or not isinstance(max_request_pages, int) \
            or max_request_pages < 1:
        raise ValueError(f"max_request_pages {max_request_pages!r} must be a positive integer")
    if isinstance(max_gap, bool) or not isinstance(max_gap, int) or max_gap < 0:
        raise ValueError(f"max_gap {max_gap!r} must be a non-negative integer")
    out: list[tuple[Any, int, int]] = []
    for path in sorted(pages_by_file, key=lambda p: (p is not None, p or "")):
        pages = np.unique(np.asarray(list(pages_by_file[path])
                                     if not isinstance(pages_by_file[path], np.ndarray)
                                     else pages_by_file[path], dtype=np.int64))
        if pages.size == 0:
            continue
        if pages[0] < 0:
            raise ValueError(f"negative page number in {path!r}")
        breaks = np.flatnonzero(np.diff(pages) > max_gap + 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [pages.size]))
        for s, t in zip(starts.tolist(), ends.tolist()):
            lo = int(pages[s])
            hi = int(pages[t - 1]) + 1
            if max_gap == 0:
                while lo < hi:
                    n = min(max_request_pages, hi - lo)
                    out.append((path, lo, n))
                    lo += n
            else:  # split a bridged run only at profiled pages
                run = pages[s:t]
                i = 0
                while i < run.size:
                    first = int(run[i])
                    j = int(np.searchsorted(run, first + max_request_pages, side="left"))
                    out.append((path, first, int(run[j - 1]) - first + 1))
                    i = j
    return out


class LazySeeder:
    """XNU's lazy seeding (xnu-792): the first touch of a page in a 32-page frame of a file (or
    of the address space, key None) returns the requests that bring in that frame's profiled
    pages; the frame is then consumed. Frames with fewer than min_pages profiled pages are never
    pre-heated (XNU's community threshold was TWS_COMMUNITY_PAGES = 4; the default 1 seeds all).
    `exclude_touched` drops the touched page itself from the requests (the fault reads it)."""

    def __init__(self, pages_by_file: Mapping[Any, Iterable[int]],
                 frame_pages: int = CLUSTER_FRAME_PAGES, min_pages: int = 1):
        if isinstance(frame_pages, bool) or not isinstance(frame_pages, int) or frame_pages < 1:
            raise ValueError(f"frame_pages {frame_pages!r} must be a positive integer")
        self.frame_pages = frame_pages
        self.min_pages = min_pages
        self._frames: dict[tuple[Any, int], np.ndarray] = {}
        for path, pages in pages_by_file.items():
            a = np.unique(np.asarray(pages if isinstance(pages, np.ndarray) else list(pages),
                                     dtype=np.int64))
            if a.size == 0:
                continue
            fr = a // frame_pages
            cuts = np.flatnonzero(np.diff(fr)) + 1
            for chunk in np.split(a, cuts):
                if chunk.size >= min_pages:
                    self._frames[(path, int(chunk[0]) // frame_pages)] = chunk
        self.frames_seeded = 0

    @property
    def pending_frames(self) -> int:
        return len(self._frames)

    def frame_of(self, page: int) -> int:
        return int(page) // self.frame_pages

    def on_touch(self, path, page: int,
                 exclude_touched: bool = False) -> list[tuple[Any, int, int]]:
        """Requests (path, first_page, npages) for the frame holding `page`, once; else []."""
        chunk = self._frames.pop((path, int(page) // self.frame_pages), None)
        if chunk is None:
            return []
        self.frames_seeded += 1
        if exclude_touched:
            chunk = chunk[chunk != int(page)]
        return coalesce({path: chunk}, max_request_pages=self.frame_pages)
