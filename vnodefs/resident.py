"""`vnodefs resident PATH...`: how much of each file is in the host's page cache (vmtouch-style).

Owns: `residency(path) -> (size, pages, resident)`, `scan(paths, recurse)` (the files under the
arguments, with their residency, and one error line per path that could not be read), and the
`vnodefs resident` command (`add_resident_parser`, `run_resident`). Prefetch experiments use it to
see what the page cache holds before and after a run.

How: the file is mapped read-only and shared (mmap(2) through ctypes, so nothing is read) and
mincore(2) reports which of its pages are resident; the mapping is dropped at once. Pages are the
host's page size (SC_PAGE_SIZE). An empty file has 0 pages (never mapped).

Like vmtouch: a directory argument is walked recursively (`--no-recurse`: its own files only, no
subdirectories); symbolic links given as arguments are followed, links met during the walk are not;
non-regular files met during the walk (fifos, sockets, devices) are skipped; a file that cannot be
opened (permission denied, vanished) is reported in one line on stderr and the others still are.
Exit status: 0 every file reported; 1 some path could not be read (each said so); 2 bad usage.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import mmap
import os
import stat
import sys
from dataclasses import asdict, dataclass

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.restype = ctypes.c_int
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
_MAP_FAILED = ctypes.c_void_p(-1).value


@dataclass
class FileResidency:
    path: str
    size: int  # bytes
    pages: int  # pages the file spans
    resident: int  # of them in the page cache

    @property
    def percent(self) -> float:
        return 100.0 * self.resident / self.pages if self.pages else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "percent": round(self.percent, 2)}


def residency_fd(fd: int, size: int) -> tuple[int, int]:
    """(pages, resident pages) of the open file `fd` of `size` bytes; OSError on failure."""
    if size <= 0:
        return 0, 0
    pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
    addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    try:
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(addr, size, vec) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        resident = sum(b & 1 for b in bytes(vec))
    finally:
        _libc.munmap(addr, size)
    return pages, resident


def residency(path: str) -> FileResidency:
    """The page-cache residency of the regular file `path`; OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        pages, resident = residency_fd(fd, st.st_size)
        return FileResidency(path, st.st_size, pages, resident)
    finally:
        os.close(fd)


def _walk(top: str, recurse: bool, errors: list[str]):
    """Regular files under the directory `top` (sorted, symlinks not followed)."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as e:
        errors.append(f"cannot read directory {top}: {e.strerror}")
        return
    for e in entries:
        try:
            if e.is_symlink():
                continue
            if e.is_dir(follow_symlinks=False):
                if recurse:
                    yield from _walk(e.path, recurse, errors)
            elif e.is_file(follow_symlinks=False):
                yield e.path
        except OSError as err:
            errors.append(f"cannot read {e.path}: {err.strerror}")


def scan(paths: list[str], recurse: bool = True) -> tuple[list[FileResidency], list[str]]:
    """(one FileResidency per file under `paths`, one error line per path that could not be read)."""
    out: list[FileResidency] = []
    errors: list[str] = []
    for p in paths:
        try:
            st = os.stat(p)  # arguments: symlinks followed
        except OSError as e:
            errors.append(f"cannot read {p}: {e.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            files = list(_walk(p, recurse, errors))
        elif stat.S_ISREG(st.st_mode):
            files = [p]
        else:
            errors.append(f"{p} is not a regular file or directory")
            continue
        for f in files:
            try:
                out.append(residency(f))
            except OSError as e:
                errors.append(f"cannot read {f}: {e.strerror}")
    return out, errors


def _size(n: float) -> str:
    for unit in ("G", "M", "K"):
        mult = {"G": 1 << 30, "M": 1 << 20, "K": 1 << 10}[unit]
        if n >= mult:
            return f"{n / mult:.1f}{unit}"
    return f"{int(n)}"


def format_report(files: list[FileResidency]) -> str:
    lines = []
    for f in files:
        lines.append(f"{f.resident:>9d}/{f.pages:<9d} {f.percent:5.1f}%  {_size(f.resident * PAGE_SIZE):>7s}"
                     f"/{_size(f.size):<7s} {f.path}")
    pages = sum(f.pages for f in files)
    res = sum(f.resident for f in files)
    pct = 100.0 * res / pages if pages else 0.0
    lines.append(f"{len(files)} file{'' if len(files) == 1 else 's'}, {res}/{pages} pages of {PAGE_SIZE} bytes resident ({pct:.1f}%, "
                 f"{_size(res * PAGE_SIZE)} of {_size(sum(f.size for f in files))})")
    return "\n".join(lines)


DESCRIPTION = ("Show how much of each file is in the host's page cache, one line a file: resident pages / "
               "pages, percent, resident bytes / size, path; then a total (like vmtouch). The files are "
               "mapped and asked with mincore(2): nothing is read, nothing changes. A directory is walked "
               "recursively (--no-recurse: its own files only); symbolic links on the command line are "
               "followed, those inside directories are not; fifos, sockets and devices inside directories "
               "are skipped. A path that cannot be read (missing, permission denied) is one line on stderr "
               "and exit status 1; the other files are still reported.")


def add_resident_parser(subparsers) -> argparse.ArgumentParser:
    """Add `resident` to an argparse subparsers object (vnodefs.cli); dispatch with run_resident."""
    p = subparsers.add_parser("resident", help="pages of each file in the host page cache (vmtouch-style)",
                              description=DESCRIPTION)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    p.add_argument("--no-recurse", action="store_true",
                   help="for a directory, report only the files directly in it (default: its whole tree)")
    p.add_argument("--json", action="store_true",
                   help="print JSON on stdout instead of text: page_size, files (path, size, pages, resident, "
                        "percent), total, errors")
    p.set_defaults(func=run_resident)
    return p


def run_resident(args) -> int:
    files, errors = scan(args.paths, recurse=not args.no_recurse)
    for e in errors:
        print(f"vnodefs resident: {e}", file=sys.stderr)
    if args.json:
        pages = sum(f.pages for f in files)
        res = sum(f.resident for f in files)
        json.dump({"page_size": PAGE_SIZE, "files": [f.as_dict() for f in files],
                   "total": {"files": len(files), "pages": pages, "resident": res,
                             "size": sum(f.size for f in files),
                             "percent": round(100.0 * res / pages, 2) if pages else 0.0},
                   "errors": errors}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(files))
    return 1 if errors else 0
