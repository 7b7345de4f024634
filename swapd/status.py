"""Reading a swap directory's state from outside the pool: what `swapd status` shows.

Owns: `read_status(directory)` (works from any process, with or without a live pool) and
`format_status(status)` (the human table).

Theory of operation: a live pool holds an flock on DIR/.swapd.lock and republishes its status
to DIR/.swapd.status.json (swapd.pool). The reader never takes the lock (that could make a pool
starting at the same moment fail): it finds the holder in /proc/locks by the lock file's inode,
falling back to a non-blocking shared-lock probe where /proc/locks is unreadable. It then takes
the pool's published counters and overlays what the files on disk say *now* (logical size and
allocated bytes from st_size / st_blocks; a file the pool lists but that is missing or shorter is
flagged). Without a live pool it lists whatever swapfileN files it finds and says that no pool
holds the lock.

Who calls: swapd.cli. Caveats: Linux only (/proc/locks, st_blocks); counters are as fresh as the
pool's last status write (at most `status_interval` seconds old while it pages).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time

from swapd.errors import SwapDirError
from swapd.pool import LOCK_NAME, STATUS_NAME, SWAPFILE_RE, _human
from vmcore.report import render_table


def lock_holder(directory: str) -> int | None:
    """pid of the live pool holding DIR/.swapd.lock, or None (0 if held by an unknown pid)."""
    path = os.path.join(directory, LOCK_NAME)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    try:
        with open("/proc/locks") as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = None
    if lines is not None:
        want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in lines:
            parts = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (blocked waiters carry "->")
            if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
                continue
            if parts[5].lower() == want:
                try:
                    return int(parts[4])
                except ValueError:
                    return 0
        return None
    try:  # fallback: probe with a shared lock, released at once
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            try:
                return int(os.pread(fd, 32, 0).decode().strip() or 0)
            except (OSError, ValueError):
                return 0
        return None
    finally:
        os.close(fd)
    return None


def _disk_files(directory: str) -> list[dict]:
    out = []
    for name in os.listdir(directory):
        m = SWAPFILE_RE.fullmatch(name)
        if not m:
            continue
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        out.append(dict(name=name, path=path, number=int(m.group(1)), size=st.st_size,
                        allocated=st.st_blocks * 512, mode=f"{st.st_mode & 0o7777:04o}"))
    out.sort(key=lambda f: f["number"])
    return out


def read_status(directory: str) -> dict:
    """The state of a swap directory as a dict (the JSON `swapd status --json` prints)."""
    directory = os.path.abspath(directory)
    if not os.path.exists(directory):
        raise SwapDirError(f"swap directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise SwapDirError(f"{directory} is not a directory")
    holder = lock_holder(directory)
    disk = {f["name"]: f for f in _disk_files(directory)}
    published = None
    if holder is not None:
        try:
            with open(os.path.join(directory, STATUS_NAME)) as fh:
                published = json.load(fh)
        except (OSError, ValueError):
            published = None
    if holder is None or published is None:
        files = list(disk.values())
        msg = (f"no pool holds the lock on {directory}" if holder is None else
               f"pool pid {holder} holds the lock on {directory} but has published no status")
        return dict(format="swapd-status", directory=directory, live=holder is not None,
                    pid=holder or None, message=msg, files=files,
                    total=dict(size=sum(f["size"] for f in files),
                               allocated=sum(f["allocated"] for f in files)))
    st = published
    st["live"] = True
    st["pid"] = holder or st.get("pid")
    st["age_s"] = round(max(0.0, time.time() - st.get("time", time.time())), 3)
    problems = []
    for f in st.get("files", []):
        d = disk.pop(f["name"], None)
        if d is None:
            f["state"] = "missing"
            f["error"] = f"swap file {f['path']} is missing from the directory"
        else:
            f["allocated"] = d["allocated"]
            if d["size"] < f["size"]:
                f["state"] = "truncated"
                f["error"] = (f"swap file {f['path']} is {d['size']} bytes, the pool made it "
                              f"{f['size']}")
            f["disk_size"] = d["size"]
        if f.get("error"):
            problems.append(f["error"])
    st["total"]["allocated"] = sum(f.get("allocated", 0) for f in st.get("files", []))
    st["strays"] = list(disk.values())  # swapfileN the pool does not know about
    if problems:
        st["healthy"] = False
        st["errors"] = list(dict.fromkeys(list(st.get("errors", [])) + problems))
    st["message"] = f"pool pid {st['pid']} holds the lock on {directory}"
    return st


def format_status(st: dict) -> str:
    lines = [f"swap directory {st['directory']}: {st['message']}"]
    files = st.get("files", [])
    if "page_size" not in st:  # no live pool: just the files on disk
        if not files:
            lines.append("no swap files")
        else:
            lines.append(render_table(("FILE", "SIZE", "ALLOCATED", "MODE"),
                                      [(f["name"], _human(f["size"]), _human(f["allocated"]), f["mode"])
                                       for f in files], right=(1, 2)))
        return "\n".join(lines)
    lines.append(
        f"page {st['page_size']} B, cluster {st['cluster_pages']} pages "
        f"({_human(st['cluster_bytes'])}); free {_human(st['free_bytes'])}; hi-water "
        f"{_human(st['hi_water'])}; lo-water "
        f"{_human(st['lo_water']) if st['lo_water'] is not None else 'none (one file)'} "
        f"for {st['lo_checks']} checks ({st['lo_count']} so far); status {st['age_s']:.1f} s old")
    lines.append(render_table(
        ("FILE", "SIZE", "ALLOCATED", "CLUSTERS", "USED", "FREE", "SLOTS USED", "SLOTS FREE", "STATE"),
        [(f["name"], _human(f["size"]), _human(f["allocated"]), f["clusters"], f["used_clusters"],
          f["free_clusters"], f["used_slots"], f["free_slots"], f["state"])
         for f in files + [dict(name="total", state="", **st["total"])]], right=range(1, 8)))
    lines.append(f"files added {st['files_added']}, removed {st['files_removed']}, swapoffs "
                 f"refused {st['swapoffs_refused']}, clusters moved {st['clusters_moved']}; "
                 f"{st['objects']} objects")
    lines.append(f"pageouts {st['pageouts']} pages in {st['writes']} writes, pageins "
                 f"{st['pageins']} pages in {st['reads']} reads, failures {st['failures']} "
                 f"(AGAIN, {st['enospc']} ENOSPC), error pages {st['error_pages']}")
    for e in st.get("errors", []):
        lines.append(f"ERROR: {e}")
    if st.get("last_action"):
        lines.append(f"last action: {st['last_action']}")
    for s in st.get("strays", []):
        lines.append(f"stray file not in the pool: {s['name']}")
    return "\n".join(lines)
