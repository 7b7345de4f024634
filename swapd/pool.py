"""The swap pool: a directory of swap files, its lock, the dynamic pager's growth and shrinking,
and the counters `swapd status` reports.

Owns: `SwapPool` (public API: pager_factory, tick, swapoff, status, close).

Theory of operation (docs/mach-vm.md#pagers; dynamic_pager of system_cmds-279..433):
  * Start: create the directory if missing (mode 0700), take an exclusive `flock` on
    DIR/.swapd.lock (a second pool on the same directory is refused, naming the holder's pid),
    remove stale `swapfileN` files of an earlier run (anonymous memory does not outlive its tasks;
    XNU 10.5's dynamic_pager did the same), create `swapfile0`.
  * Growth (dynamic_pager, variable sizing): file i has size 64, 64, 128, 256, 512 MiB, then 1 GiB,
    times `scale`, capped at 1/8 of the file system's free space (and at `max_bytes` for the whole
    pool when given), in whole clusters. A file is added when `tick` sees free swap below the
    hi-water mark, and at once when a pageout finds no free cluster.
  * Shrinking: `tick` is one low-water check of XNU's 3 s thread call; when free swap stays above
    the newest file's low-water mark for `lo_checks` consecutive checks, the newest file is emptied
    (every cluster moved into the other files, `macx_swapoff`) and deleted - unless the rest lacks
    room (100 pages + the file's used pages), in which case it is refused with the reason.
  * Status: every change is published to DIR/.swapd.status.json (written to a temp file and
    renamed, at most once per `status_interval` seconds of real time for I/O counters, at once for
    file changes, errors and ticks), so `swapd status DIR` in another process can report it.

Invariants: exactly the files in `space` exist as swapfileN in the directory while the pool is
open; the lock is held from construction to close(); all pager and pool operations run under one
re-entrant lock, so a swapoff never races a pageout.

Who calls: the wiring layer (vmcore.lab) builds one pool per kernel and hands
`pool.pager_factory()` to the kernel as its default pager; the kernel (or a driver loop) calls
`tick`; `swapd status` reads what the pool publishes (swapd.status).

Caveats:
  * The pool does not know the machine's memory size, so XNU's "cap at hw.memsize" is not applied.
  * `tick` with no `now` reads the pool's clock (default: time.monotonic); tests pass `now` or a
    manual clock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import threading
import time
import weakref
from typing import Callable

from swapd import watermark as wm
from swapd.errors import SwapClosedError, SwapConfigError, SwapDirError, SwapLockedError
from swapd.pager import SwapPager, TransferFailed
from swapd.swapfile import SwapFile
from swapd.swapspace import SwapSpace
from vmcore.pager import Pager

LOCK_NAME = ".swapd.lock"
STATUS_NAME = ".swapd.status.json"
SWAPFILE_RE = re.compile(r"swapfile(\d+)")
MAX_FILES = 62  # XNU: MAX_NUM_PAGING_SEGMENTS 63, segment 0 reserved
FORMAT_VERSION = 1


class _MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


def _cleanup(lock_fd_box: list, files: list) -> None:  # weakref.finalize: pool never closed
    for f in files:
        try:
            f.unlink()
        except OSError:
            pass
    if lock_fd_box and lock_fd_box[0] >= 0:
        os.close(lock_fd_box[0])
        lock_fd_box[0] = -1


class SwapPool:
    """A swap directory with its files, lock, watermarks and counters.

    Parameters (sizes in bytes):
      directory      the swap directory (created if missing)
      page_size      bytes per page (multiple of 512); must match the kernel's
      cluster_pages  pages per swap cluster: 1, 2, 4 (XNU's default) or 8
      scale          factor applied to XNU's file sizes (1/64: 1, 1, 2, 4, 8, 16 MiB files)
      hi_water       add a file when free swap falls below this (default 40,000,000 * scale)
      lo_water       remove the newest file when free swap stays above this (default: XNU's
                     per-file table, size[N] + size[N-1])
      lo_checks      consecutive low-water checks needed (XNU: 11)
      max_files      most files at once (default and ceiling 62)
      clock          anything with .now() -> seconds, used by tick() without `now`
      check_interval seconds between low-water checks (XNU PF_INTERVAL: 3)
      max_bytes      cap on the pool's total logical size (a size-capped pool), or None
      reserve_pages  pages that must stay free elsewhere for swapoff (XNU: 100)
      status_interval  seconds of real time between status-file rewrites for I/O counters
    """

    def __init__(self, directory: str = "var/vm", page_size: int = 4096, cluster_pages: int = 4,
                 scale: float = 1.0 / 64, hi_water: int | None = None,
                 lo_water: int | None = None, lo_checks: int = wm.LO_CHECKS_DEFAULT,
                 max_files: int | None = None, clock=None, *,
                 check_interval: float = wm.PF_INTERVAL, max_bytes: int | None = None,
                 reserve_pages: int = wm.CLUSTER_TRANSFER_MINIMUM,
                 status_interval: float = 1.0):
        if not isinstance(page_size, int) or page_size <= 0 or page_size % 512:
            raise SwapConfigError(f"page_size must be a positive multiple of 512, not {page_size!r}")
        if cluster_pages not in (1, 2, 4, 8):
            raise SwapConfigError(f"cluster_pages must be 1, 2, 4 or 8, not {cluster_pages!r}")
        if not scale > 0:
            raise SwapConfigError(f"scale must be > 0, not {scale!r}")
        if max_files is not None and not 1 <= max_files <= MAX_FILES:
            raise SwapConfigError(f"max_files must be between 1 and {MAX_FILES}, not {max_files!r}")
        if lo_checks < 1:
            raise SwapConfigError(f"lo_checks must be >= 1, not {lo_checks!r}")
        if hi_water is not None and hi_water < 0 or lo_water is not None and lo_water < 0:
            raise SwapConfigError("watermarks must be >= 0 bytes")
        if hi_water is not None and lo_water is not None and lo_water <= hi_water:
            raise SwapConfigError(f"lo_water ({lo_water} B) must be above hi_water "
                                  f"({hi_water} B), or the pool would add and remove files forever")
        self.directory = os.path.abspath(os.fspath(directory))
        self.page_size = page_size
        self.cluster_pages = cluster_pages
        self.cluster_bytes = page_size * cluster_pages
        if max_bytes is not None and max_bytes < self.cluster_bytes:
            raise SwapConfigError(f"max_bytes {max_bytes} is smaller than one cluster "
                                  f"({self.cluster_bytes} B)")
        self.scale = scale
        self.hi_water = int(wm.HI_WATER_DEFAULT * scale) if hi_water is None else int(hi_water)
        self._lo_water_fixed = lo_water
        self.lo_checks = lo_checks
        self.max_files = MAX_FILES if max_files is None else max_files
        self.clock = clock if clock is not None else _MonotonicClock()
        self.check_interval = check_interval
        self.max_bytes = max_bytes
        self.reserve_pages = reserve_pages
        self.status_interval = status_interval

        self._lock = threading.RLock()
        self.closed = False
        self.space = SwapSpace(page_size, cluster_pages)
        self._pagers: dict[int, SwapPager] = {}
        self._wm = wm.WatermarkState()
        self.counters = dict(pageouts=0, pageins=0, pageout_requests=0, pagein_requests=0,
                             writes=0, reads=0, failures=0, error_pages=0, enospc=0,
                             files_added=0, files_removed=0, swapoffs_refused=0,
                             growth_failures=0, clusters_moved=0, stale_removed=0, ticks=0)
        self.last_error: str | None = None
        self.last_growth_failure: str | None = None
        self.last_action: str | None = None
        self.errors: list[str] = []  # damage reports, most recent last (bounded)
        self._status_written = 0.0
        self._status_dirty = True
        self.status_path = os.path.join(self.directory, STATUS_NAME)
        self.lock_path = os.path.join(self.directory, LOCK_NAME)

        self._open_directory()
        self._lock_fd_box = [self._lock_fd]
        self._files_for_cleanup: list[SwapFile] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._lock_fd_box,
                                           self._files_for_cleanup)
        try:
            self._remove_stale()
            f, msg = self._add_file("initial file")
            if f is None:
                raise SwapDirError(f"cannot create the first swap file in {self.directory}: {msg}")
            self.counters["files_added"] = 0  # swapfile0 is the pool itself, not a growth
            self._write_status()
        except BaseException:
            self.close()
            raise

    # ---- start-up -----------------------------------------------------------------------------

    def _open_directory(self) -> None:
        d = self.directory
        if os.path.exists(d) and not os.path.isdir(d):
            raise SwapDirError(f"swap directory {d} exists and is not a directory")
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
        except OSError as e:
            raise SwapDirError(f"cannot create swap directory {d}: {e.strerror}") from None
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SwapDirError(f"swap directory {d} is not writable: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = None
            try:
                pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
            except (OSError, ValueError):
                pass
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SwapLockedError(d, pid) from None
            raise SwapDirError(f"cannot lock {self.lock_path}: {e.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise SwapDirError(f"swap directory {d} is not writable: {e.strerror}") from None
        self._lock_fd = fd

    def _remove_stale(self) -> None:
        for name in sorted(os.listdir(self.directory)):
            if SWAPFILE_RE.fullmatch(name) or name.startswith(STATUS_NAME):
                path = os.path.join(self.directory, name)
                try:
                    os.unlink(path)
                except IsADirectoryError:
                    raise SwapDirError(f"{path} is a directory, not a stale swap file") from None
                except OSError as e:
                    raise SwapDirError(f"cannot remove stale swap file {path}: "
                                       f"{e.strerror}") from None
                if name.startswith("swapfile"):
                    self.counters["stale_removed"] += 1

    # ---- files --------------------------------------------------------------------------------

    def _fs_cap(self) -> int:
        """1/8 of the free space of the swap file system (XNU's cap for a new file)."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize // 8

    def _add_file(self, reason: str) -> tuple[SwapFile | None, str]:
        """Create the next swap file. Returns (file, description) or (None, why not)."""
        files = list(self.space)
        number = files[-1].number + 1 if files else 0
        name = f"swapfile{number}"
        if len(files) >= self.max_files:
            return None, self._growth_failed(f"cannot add {name}: max_files {self.max_files} "
                                             f"reached")
        try:
            cap = self._fs_cap()
        except OSError as e:
            return None, self._growth_failed(f"cannot add {name}: statvfs {self.directory}: "
                                             f"{e.strerror}")
        limit = cap
        if self.max_bytes is not None:
            limit = min(limit, self.max_bytes - sum(f.size for f in files))
        size = wm.file_size(len(files), self.scale, self.cluster_bytes, limit)
        if size < self.cluster_bytes:
            why = (f"the pool is capped at max_bytes {self.max_bytes} B"
                   if self.max_bytes is not None and limit < cap
                   else f"1/8 of the free space of {self.directory} is {cap} B")
            return None, self._growth_failed(f"cannot add {name}: no room ({why})")
        path = os.path.join(self.directory, name)
        try:
            f = SwapFile(path, number, size, self.page_size, self.cluster_pages)
        except OSError as e:
            return None, self._growth_failed(f"cannot add {name}: {e.strerror} creating {path}")
        self.space.add(f)
        self._files_for_cleanup.append(f)
        self.counters["files_added"] += 1
        self.last_growth_failure = None
        self._status_dirty = True
        return f, f"added {name} ({_human(size)}): {reason}"

    def _growth_failed(self, msg: str) -> str:
        self.counters["growth_failures"] += 1
        self.last_growth_failure = msg
        return msg

    def _allocate(self, nclusters: int):
        """Clusters for a pageout; grows the pool at once when it is short (called by pagers)."""
        runs = self.space.allocate(nclusters)
        got = sum(r[2] for r in runs)
        while got < nclusters:
            f, _msg = self._add_file(f"no free cluster for a pageout of {nclusters} clusters")
            if f is None:
                break
            more = self.space.allocate(nclusters - got)
            got += sum(r[2] for r in more)
            runs.extend(more)
        return runs

    def lo_water(self) -> int | None:
        """The newest file's low-water mark in bytes (None with a single file: never shrink)."""
        if self._lo_water_fixed is not None:
            return self._lo_water_fixed
        sizes = [f.size for f in self.space]
        if len(sizes) < 2:
            return None
        return wm.low_water(len(sizes) - 1, sizes, self.hi_water)

    # ---- the dynamic pager's loop body --------------------------------------------------------

    def tick(self, now: float | None = None) -> str | None:
        """One watermark check: maybe add the next file (free swap below hi-water) or, after
        `lo_checks` consecutive low-water checks, empty and delete the newest file. Returns what
        it did (or why a removal was refused), or None."""
        with self._lock:
            self._check_open()
            if now is None:
                now = self.clock.now()
            self.counters["ticks"] += 1
            for f in self.space:
                if f.damaged is None and not f.healthy():
                    self._note_damage(f)
            d = wm.decide(self._wm, now=now, free_bytes=self.space.free_bytes(),
                          file_count=len(self.space), hi_water=self.hi_water,
                          lo_water=self.lo_water(), lo_checks=self.lo_checks,
                          interval=self.check_interval,
                          can_grow=len(self.space) < self.max_files)
            self._wm = d.state
            msg = None
            if d.action is wm.Action.GROW:
                _f, msg = self._add_file(d.reason)
            elif d.action is wm.Action.SHRINK:
                msg = self._swapoff(self.space.newest(), d.reason)
            if msg:
                self.last_action = msg
            self._status_dirty = True
            self._write_status()
            return msg

    def swapoff(self, number: int | None = None) -> str:
        """Empty swap file `number` (default: the newest) into the others and delete it, as the
        low-water path does; returns what happened (a refusal names its reason)."""
        with self._lock:
            self._check_open()
            if number is None:
                f = self.space.newest()
            elif number in self.space.files:
                f = self.space.file(number)
            else:
                raise SwapConfigError(f"no swapfile{number} in {self.directory}")
            msg = self._swapoff(f, "asked")
            self.last_action = msg
            self._status_dirty = True
            self._write_status()
            return msg

    def _swapoff(self, f: SwapFile, reason: str) -> str:
        name = os.path.basename(f.path)
        if len(self.space) < 2:
            self.counters["swapoffs_refused"] += 1
            return f"refused to remove {name}: it is the only swap file"
        used_clusters = f.nclusters - f.free_clusters
        cp = self.cluster_pages
        refusal = None
        if f.healthy():  # a damaged file holds nothing readable: it is removed without a check
            refusal = wm.swapoff_refusal(
                free_pages_elsewhere=self.space.free_clusters(exclude=f) * cp,
                file_used_pages=used_clusters * cp, file_name=name,
                reserve_pages=self.reserve_pages)
        if refusal:
            self.counters["swapoffs_refused"] += 1
            return refusal
        f.going_away = True
        moved = 0
        try:
            for pager in list(self._pagers.values()):
                moved += pager.transfer_from(f)
        except TransferFailed as e:
            f.going_away = False
            self.counters["clusters_moved"] += moved
            self.counters["swapoffs_refused"] += 1
            return f"failed to empty {name}: {e} ({moved} clusters moved out)"
        self.counters["clusters_moved"] += moved
        if f.free_clusters != f.nclusters:  # pragma: no cover - a bookkeeping bug
            raise AssertionError(f"{name} still has {f.nclusters - f.free_clusters} clusters "
                                 f"in use after swapoff")
        self.space.remove(f.number)
        self._files_for_cleanup.remove(f)
        try:
            f.unlink()
        except OSError as e:
            self._note_error(f"cannot delete {f.path}: {e.strerror}")
        self.counters["files_removed"] += 1
        return f"removed {name} after moving {moved} clusters into the other files: {reason}"

    # ---- pagers -------------------------------------------------------------------------------

    def pager_factory(self) -> Callable[[int], Pager]:
        """A vmcore.pager.PagerFactory: one SwapPager (memory object) per anonymous object."""
        self._check_open()

        def make_swap_pager(size: int) -> Pager:
            with self._lock:
                self._check_open()
                p = SwapPager(self, size)
                self._pagers[id(p)] = p
                return p

        return make_swap_pager

    def _unregister(self, pager: SwapPager) -> None:
        self._pagers.pop(id(pager), None)
        self._note_change()

    def _check_open(self) -> None:
        if self.closed:
            raise SwapClosedError(f"swap pool {self.directory} is closed")

    # ---- counters (called by pagers under the lock) -------------------------------------------

    def _note_pageout(self, ok: int, writes: int, again: int, error: int) -> None:
        c = self.counters
        c["pageouts"] += ok
        c["pageout_requests"] += 1
        c["writes"] += writes
        c["failures"] += again
        c["error_pages"] += error
        if again or error:
            self._status_dirty = True
            self._write_status()
        else:
            self._note_change()

    def _note_pagein(self, ok: int, reads: int, error: int) -> None:
        c = self.counters
        c["pageins"] += ok
        c["pagein_requests"] += 1
        c["reads"] += reads
        if error:
            c["error_pages"] += error
        self._status_dirty = True  # _note_change() inlined: this is the pagein fast path
        if time.monotonic() - self._status_written >= self.status_interval:
            self._write_status()

    def _note_enospc(self) -> None:
        self.counters["enospc"] += 1

    def _note_error(self, msg: str) -> None:
        self.last_error = msg

    def _note_damage(self, f: SwapFile) -> None:
        if f.damaged and f.damaged not in self.errors:
            self.errors = (self.errors + [f.damaged])[-16:]
            self.last_error = f.damaged
            self._status_dirty = True
            self._write_status()

    def _note_change(self) -> None:
        self._status_dirty = True
        if time.monotonic() - self._status_written >= self.status_interval:
            self._write_status()

    # ---- status -------------------------------------------------------------------------------

    def status(self) -> dict:
        """Everything `swapd status --json` prints for a live pool (see swapd/FORMAT.md)."""
        with self._lock:
            cp = self.cluster_pages
            files = []
            for f in self.space:
                f.healthy()  # refresh the damage flag
                used = f.nclusters - f.free_clusters
                try:
                    allocated = f.allocated_bytes()
                except OSError:
                    allocated = 0
                state = ("damaged" if f.damaged else "going_away" if f.going_away else "ok")
                files.append(dict(
                    name=os.path.basename(f.path), path=f.path, number=f.number, size=f.size,
                    allocated=allocated, clusters=f.nclusters, used_clusters=used,
                    free_clusters=f.free_clusters, slots=f.nclusters * cp,
                    used_slots=f.used_slots, free_slots=f.free_clusters * cp,
                    state=state, error=f.damaged))
            total = {k: sum(x[k] for x in files)
                     for k in ("size", "allocated", "clusters", "used_clusters", "free_clusters",
                               "slots", "used_slots", "free_slots")}
            lo = self.lo_water()
            return dict(
                format="swapd-status", version=FORMAT_VERSION, live=not self.closed,
                pid=os.getpid(), directory=self.directory, time=time.time(),
                page_size=self.page_size, cluster_pages=cp, cluster_bytes=self.cluster_bytes,
                scale=self.scale, max_files=self.max_files, max_bytes=self.max_bytes,
                files=files, total=total, free_bytes=self.space.free_bytes(),
                hi_water=self.hi_water, lo_water=lo, lo_checks=self.lo_checks,
                lo_count=self._wm.lo_count, check_interval=self.check_interval,
                objects=len(self._pagers), healthy=not any(f.damaged for f in self.space),
                errors=list(self.errors), last_error=self.last_error,
                last_action=self.last_action, last_growth_failure=self.last_growth_failure,
                **self.counters)

    def publish(self) -> None:
        """Rewrite DIR/.swapd.status.json now (normally done on every tick and file change, and at
        most every `status_interval` seconds while pages move)."""
        with self._lock:
            self._status_dirty = True
            self._write_status()

    def _write_status(self) -> None:
        if self.closed or not self._status_dirty:
            return
        tmp = f"{self.status_path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as fh:
                json.dump(self.status(), fh, indent=1)
            os.replace(tmp, self.status_path)
        except OSError as e:  # e.g. ENOSPC: the status is advisory, the pool goes on
            self.last_error = f"cannot write {self.status_path}: {e.strerror}"
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return
        self._status_written = time.monotonic()
        self._status_dirty = False

    # ---- life ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the lock and delete the swap files (anonymous memory does not outlive its
        tasks). Pagers of a closed pool answer ERROR. Idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._pagers.clear()  # their calls now answer ERROR ("pool is closed")
            for f in list(self.space):
                try:
                    f.unlink()
                except OSError:
                    pass
                self.space.remove(f.number)
            if hasattr(self, "_files_for_cleanup"):
                self._files_for_cleanup.clear()
            for path in (self.status_path,):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            fd = getattr(self, "_lock_fd", -1)
            if fd >= 0:
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
                os.close(fd)
                self._lock_fd = -1
                if hasattr(self, "_lock_fd_box"):
                    self._lock_fd_box[0] = -1
            if hasattr(self, "_finalizer"):
                self._finalizer.detach()

    def __enter__(self) -> "SwapPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"SwapPool({self.directory!r}, {len(self.space)} files, "
                f"{self.space.free_bytes()} B free{', closed' if self.closed else ''})")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
