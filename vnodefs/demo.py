"""`vnodefs demo`: the project's main job until the seeding experiment exists.

Owns: `run_demo(size_mib, keep, seed, latency, json_path) -> exit status`, `DemoError`.
Called by vnodefs.cli.

What it does, in well under a minute, cleaning up everything (unless --keep DIR):
  1. generates a seeded data directory (four files, --size MiB in total);
  2. mounts it in `direct` mode (every access reaches vnodefs, so the trace holds every access);
  3. phase "sequential": reads every file front to back in 256 KiB reads;
  4. phase "random": 4 KiB reads at seeded random page offsets;
  5. phase "mmap": maps a file shared and touches every 8th page (MADV_RANDOM), dirties a few pages
     and msyncs them. In direct mode this kernel refuses shared mmap (ENODEV); the demo says so,
     suggests `--cache page`, and runs this phase on a second mount in `page` mode, where the
     trace holds page-cache misses and the msync writeback shows up as kernel (pid 0) writes;
  6. unmounts, checks every byte read against the generated data, and prints the locality
     summary of each phase (requests, bytes, pages, mean request size, sequential fraction, time
     blocked) from the traces.
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import sys
import tempfile
import time

import numpy as np

from vnodefs.mount import MountError, mounted
from vnodefs.summary import summarize
from vnodefs.trace import load

SHARED_MMAP_HINT = ("the kernel refused a shared mmap in direct mode (ENODEV: this kernel/libfuse pair "
                    "does not negotiate FUSE_DIRECT_IO_ALLOW_MMAP); mount with --cache page to map files shared")


class DemoError(Exception):
    """Bad demo input or a failed step (one line)."""


def _progress(msg: str) -> None:
    print(f"vnodefs demo: {msg}", file=sys.stderr, flush=True)


def _make_data(root: str, size_mib: float, seed: int) -> dict[str, str]:
    """Four files of about size/10, 2/10, 3/10, 4/10 of the total; returns name -> sha256."""
    rng = np.random.default_rng(seed)
    total = int(size_mib * (1 << 20))
    digests = {}
    for i, frac in enumerate((0.1, 0.2, 0.3, 0.4)):
        n = max(4096, int(total * frac) // 4096 * 4096)
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        name = f"file{i}.bin"
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def _window(tr, t0: int, t1: int, pid: int):
    r = tr.records
    return (r["start_ns"] >= t0) & (r["start_ns"] < t1) & ((r["pid"] == pid) | (r["pid"] == 0))


def run_demo(size_mib: float = 32, keep: str | None = None, seed: int = 1, latency: str = "none",
             json_path: str | None = None) -> int:
    if not (0.1 <= size_mib <= 4096):
        raise DemoError(f"--size {size_mib:g} MiB is out of range (0.1 .. 4096)")
    if keep is not None:
        if os.path.exists(keep) and not os.path.isdir(keep):
            raise DemoError(f"--keep {keep} exists and is not a directory")
        try:
            os.makedirs(keep, exist_ok=True)
        except OSError as e:
            raise DemoError(f"cannot create --keep directory {keep}: {e.strerror}") from None
        if not os.access(keep, os.W_OK):
            raise DemoError(f"--keep directory {keep} is not writable")
    t_start = time.monotonic()
    work = tempfile.mkdtemp(prefix="vnodefs-demo-")
    base = keep if keep is not None else work
    data = os.path.join(base, "data")
    try:
        os.makedirs(data, exist_ok=True)
        if os.listdir(data) and keep is not None:
            raise DemoError(f"{data} is not empty: give --keep an empty or new directory")
        _progress(f"generating {size_mib:g} MiB of seeded data in {data}")
        digests = _make_data(data, size_mib, seed)
        trace_direct = os.path.join(base, "demo-direct.vtrace")
        trace_page = os.path.join(base, "demo-page.vtrace")
        phases = {}
        me = os.getpid()
        rng = random.Random(seed)
        names = sorted(digests)
        mmap_note = None
        with mounted(data, trace=trace_direct, latency=latency, cache="direct") as m:
            _progress(f"mounted on {m.mountpoint} (direct mode, latency {latency}); phase 1: sequential reads")
            t0 = time.monotonic_ns()
            for name in names:
                h = hashlib.sha256()
                with open(os.path.join(m.mountpoint, name), "rb", buffering=0) as fh:
                    while chunk := fh.read(256 * 1024):
                        h.update(chunk)
                if h.hexdigest() != digests[name]:
                    raise DemoError(f"{name}: bytes read through the mount differ from the host file")
            t1 = time.monotonic_ns()
            phases["sequential"] = (trace_direct, t0, t1)
            _progress("phase 2: random 4 KiB reads")
            sizes = {n: os.path.getsize(os.path.join(data, n)) for n in names}
            fds = {n: os.open(os.path.join(m.mountpoint, n), os.O_RDONLY) for n in names}
            hostfds = {n: os.open(os.path.join(data, n), os.O_RDONLY) for n in names}
            try:
                nreads = max(64, min(2000, int(size_mib * 16)))
                t0 = time.monotonic_ns()
                for _ in range(nreads):
                    n = rng.choice(names)
                    off = rng.randrange(sizes[n] // 4096) * 4096
                    if os.pread(fds[n], 4096, off) != os.pread(hostfds[n], 4096, off):
                        raise DemoError(f"{n}: random read at {off} differs from the host file")
                t1 = time.monotonic_ns()
            finally:
                for fd in (*fds.values(), *hostfds.values()):
                    os.close(fd)
            phases["random"] = (trace_direct, t0, t1)
            target = names[-1]
            fd = os.open(os.path.join(m.mountpoint, target), os.O_RDWR)
            try:
                mm = mmap.mmap(fd, 0, mmap.MAP_SHARED)
                mm.close()
                direct_mmap = True
            except OSError as e:
                if e.errno != errno.ENODEV:
                    raise
                direct_mmap = False
                mmap_note = SHARED_MMAP_HINT
            finally:
                os.close(fd)
        if mmap_note:
            _progress(mmap_note)
        _progress(f"phase 3: mmap {target} and touch every 8th page "
                  f"({'direct' if direct_mmap else 'page'} mode)")
        mode = "direct" if direct_mmap else "page"
        with mounted(data, trace=trace_page, latency=latency, cache=mode) as m:
            fd = os.open(os.path.join(m.mountpoint, target), os.O_RDWR)
            try:
                t0 = time.monotonic_ns()
                mm = mmap.mmap(fd, 0, mmap.MAP_SHARED)
                mm.madvise(mmap.MADV_RANDOM)
                npages = len(mm) // 4096
                touched = 0
                for p in range(0, npages, 8):
                    touched ^= mm[p * 4096]
                dirty = [rng.randrange(npages) for _ in range(4)]
                for p in dirty:
                    mm[p * 4096:p * 4096 + 5] = b"DEMO!"
                mm.flush()
                mm.close()
                t1 = time.monotonic_ns()
            finally:
                os.close(fd)
        with open(os.path.join(data, target), "rb") as fh:
            for p in dirty:
                fh.seek(p * 4096)
                if fh.read(5) != b"DEMO!":
                    raise DemoError(f"{target}: a write through the shared mapping did not reach the host file")
        phases["mmap"] = (trace_page, t0, t1)
        results = {}
        loaded = {}
        for phase, (tpath, a, b) in phases.items():
            tr = loaded.get(tpath) or loaded.setdefault(tpath, load(tpath))
            s = summarize(tr, _window(tr, a, b, me))
            s["cache_mode"] = tr.header["cache_mode"]
            s["wall_s"] = (b - a) / 1e9
            results[phase] = s
        out = sys.stderr if json_path == "-" else sys.stdout  # stdout holds only the JSON then
        print(_table(results, size_mib, mmap_note), file=out)
        if keep is not None:
            print(f"data and traces kept in {keep} (vnodefs trace {trace_direct})", file=out)
        if json_path:
            from vnodefs.cli import write_json

            write_json(json_path, {"size_mib": size_mib, "seed": seed, "latency": latency, "phases": results,
                                   "mmap_note": mmap_note})
        _progress(f"done in {time.monotonic() - t_start:.1f} s; everything unmounted"
                  + ("" if keep else " and removed"))
        return 0
    except MountError as e:
        raise DemoError(str(e)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def _table(results: dict, size_mib: float, note: str | None) -> str:
    from vmcore.report import render_table

    rows = []
    for phase, s in results.items():
        kern = next((p["requests_all"] for p in s["by_pid"] if p["pid"] == 0), 0)
        rows.append((phase, s["cache_mode"], s["requests"], f"{s['bytes_read'] / (1 << 20):.2f}",
                     _kib(s["mean_read_bytes"]), s["pages_read"], s["distinct_pages_read"],
                     f"{100 * s['sequential_fraction']:.1f}", f"{s['time_blocked_s']:.3f}", kern))
    lines = [f"vnodefs demo: locality of {size_mib:g} MiB of data read three ways "
             f"(one row per phase; requests = reads + writes that reached vnodefs)",
             render_table(("phase", "cache", "requests", "MiB read", "mean KiB", "pages", "distinct", "seq %",
                           "blocked s", "kernel req"), rows, right=range(2, 10), rule=True)]
    lines.append("sequential: large requests that continue each other; random: one 4 KiB request per read, "
                 "none sequential;")
    lines.append("mmap: page-cache misses only (page mode), one request per touched page with MADV_RANDOM; "
                 "kernel (pid 0) writes are the msync writeback.")
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)
