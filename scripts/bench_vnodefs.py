#!/usr/bin/env python3
"""Benchmark vnodefs against the host directory it mounts, side by side in one run.

Prints the median of --reps runs (default 5) of each measurement and the ratio vnodefs / host:
  cold-seq-read   sequential read of one --size MiB file (default 1024) with 1 MiB reads, caches
                  dropped first (`sync; echo 3 > /proc/sys/vm/drop_caches`, needs root; without it
                  the run says "warm host cache" instead), vnodefs on a fresh `page`-mode mount
  warm-reread     the same read again without dropping caches (page mode keeps the file cached)
  rand4k-direct   random page-aligned 4 KiB preads (--random-reads, default 20000) through a
                  `direct`-mode mount, host file cached, vs the same preads on the host file:
                  (a) buffered from the host page cache, (b) with O_DIRECT (the device)
  seq-write       sequential 1 MiB writes of a new --size MiB file, then fsync; `page` mode
  trace overhead  rand4k-direct and a warm 1 MiB sequential direct-mode read with the trace on
                  vs --no-trace, measured in on/off pairs (median of on/off time - 1), plus the
                  daemon's CPU time per random read (psutil), which other load disturbs less
Targets (issue 2): cold-seq-read >= 0.9x, trace overhead <= 5%, rand4k-direct >= 0.5x.
This is a measurement, not a test: nothing is asserted. Progress goes to stderr.

    .venv/bin/python scripts/bench_vnodefs.py [--size MiB] [--reps N] [--dir DIR] [--random-reads N]
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vnodefs.mount import MountError, mount  # noqa: E402

MIB = 1 << 20


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def seq_read(path: str, bufsize: int = MIB, flags: int = 0) -> float:
    """Seconds to read the whole file with `bufsize` reads (into one reused buffer)."""
    buf = mmap.mmap(-1, bufsize)  # page aligned, also fine for O_DIRECT
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        t0 = time.perf_counter()
        while os.readv(fd, [buf]) > 0:
            pass
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        buf.close()


def rand_read(path: str, offsets: list[int], flags: int = 0) -> float:
    buf = mmap.mmap(-1, 4096)
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        t0 = time.perf_counter()
        for off in offsets:
            os.preadv(fd, [buf], off)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        buf.close()


def seq_write(path: str, size: int) -> float:
    chunk = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t0 = time.perf_counter()
        for _ in range(size // MIB):
            os.write(fd, chunk)
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = tempfile.mkdtemp(prefix="vnodefs-bench-", dir=args.dir)
        self.src = os.path.join(self.root, "src")
        self.mnt = os.path.join(self.root, "mnt")
        os.mkdir(self.src)
        os.mkdir(self.mnt)
        self.size = args.size * MIB
        self.big = "big.bin"
        self.rows = []
        self.m = None

    def mount(self, cache, trace=True):
        t = os.path.join(self.root, "bench.vtrace") if trace else None
        self.m = mount(self.src, self.mnt, trace=t, cache=cache)
        return self.m

    def umount(self):
        if self.m is not None:
            self.m.umount()
            self.m = None

    def close(self):
        try:
            self.umount()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def make_file(self):
        log(f"writing a {self.args.size} MiB source file in {self.src}")
        chunk = os.urandom(MIB)
        with open(os.path.join(self.src, self.big), "wb") as fh:
            for _ in range(self.size // MIB):
                fh.write(chunk)
        os.sync()

    def row(self, name, host_s, vfs_s, nbytes=None, nops=None, note=""):
        h, v = statistics.median(host_s), statistics.median(vfs_s)
        if nbytes:
            rate = lambda s: f"{nbytes / s / MIB:8.0f} MiB/s"  # noqa: E731
        else:
            rate = lambda s: f"{nops / s:8.0f} op/s  "  # noqa: E731
        self.rows.append((name, rate(h), rate(v), h / v, note))
        log(f"{name}: host {rate(h)}, vnodefs {rate(v)}, ratio {h / v:.2f}")

    def run(self):
        a = self.args
        self.make_file()
        host_big = os.path.join(self.src, self.big)
        vfs_big = os.path.join(self.mnt, self.big)
        reps = a.reps

        # cold sequential read + warm re-read (page mode)
        can_drop = drop_caches()
        if not can_drop:
            log("cannot drop caches (not root?): 'cold' reads run with a warm host cache")
        host_cold, vfs_cold, host_warm, vfs_warm = [], [], [], []
        for i in range(reps):
            log(f"cold/warm sequential read {i + 1}/{reps}")
            drop_caches()
            host_cold.append(seq_read(host_big))
            host_warm.append(seq_read(host_big))
            self.mount("page")
            drop_caches()
            vfs_cold.append(seq_read(vfs_big))
            vfs_warm.append(seq_read(vfs_big))
            self.umount()
        note = "caches dropped" if can_drop else "warm host cache (could not drop caches)"
        self.row("cold-seq-read", host_cold, vfs_cold, nbytes=self.size, note=note)
        self.row("warm-reread", host_warm, vfs_warm, nbytes=self.size, note="page mode, kernel cache kept")

        # random 4 KiB reads and a warm sequential read, direct mode, host file cached; every rep
        # measures trace on and trace off back to back (pairs), so background load hits both alike
        rng = random.Random(1)
        offsets = [rng.randrange(self.size // 4096) * 4096 for _ in range(a.random_reads)]
        seq_read(host_big)  # warm the host cache
        host_buf, host_dio, vfs_rand, vfs_rand_off, seq_on, seq_off = [], [], [], [], [], []
        cpu_on, cpu_off = [], []
        for i in range(reps):
            log(f"random 4 KiB reads and trace on/off {i + 1}/{reps}")
            host_buf.append(rand_read(host_big, offsets))
            host_dio.append(rand_read(host_big, offsets, os.O_DIRECT))
            order = (True, False) if i % 2 == 0 else (False, True)
            for traced in order:
                m = self.mount("direct", trace=traced)
                daemon = psutil.Process(m.pid)
                c0 = sum(daemon.cpu_times()[:2])
                r = rand_read(vfs_big, offsets)
                (cpu_on if traced else cpu_off).append(sum(daemon.cpu_times()[:2]) - c0)
                q = seq_read(vfs_big)
                self.umount()
                (vfs_rand if traced else vfs_rand_off).append(r)
                (seq_on if traced else seq_off).append(q)
        self.row("rand4k-direct (a)", host_buf, vfs_rand, nops=len(offsets), note="vs host page cache")
        self.row("rand4k-direct (b)", host_dio, vfs_rand, nops=len(offsets), note="vs host O_DIRECT (device)")

        # sequential 1 MiB writes (+ fsync), page mode
        host_w, vfs_w = [], []
        for i in range(reps):
            log(f"sequential 1 MiB writes {i + 1}/{reps}")
            host_w.append(seq_write(os.path.join(self.src, "w.bin"), self.size))
            os.unlink(os.path.join(self.src, "w.bin"))
            self.mount("page")
            vfs_w.append(seq_write(os.path.join(self.mnt, "w.bin"), self.size))
            self.umount()
            os.unlink(os.path.join(self.src, "w.bin"))
        self.row("seq-write", host_w, vfs_w, nbytes=self.size, note="1 MiB writes + fsync, page mode")

        print(f"\nvnodefs benchmark: {a.size} MiB file, median of {reps}, {a.random_reads} random reads "
              f"(kernel {os.uname().release}, {os.cpu_count()} cpus)")
        print(f"{'measurement':<20} {'host':>14} {'vnodefs':>14} {'ratio':>6}  note")
        for name, h, v, r, n in self.rows:
            print(f"{name:<20} {h:>14} {v:>14} {r:6.2f}  {n}")
        pair_r = statistics.median(on / off for on, off in zip(vfs_rand, vfs_rand_off)) - 1
        pair_s = statistics.median(on / off for on, off in zip(seq_on, seq_off)) - 1
        print(f"{'trace overhead':<20} rand4k-direct {100 * pair_r:+.1f}% (trace on "
              f"{len(offsets) / statistics.median(vfs_rand):.0f} op/s, off "
              f"{len(offsets) / statistics.median(vfs_rand_off):.0f} op/s); warm seq direct read "
              f"{100 * pair_s:+.1f}% (on {self.size / statistics.median(seq_on) / MIB:.0f}, off "
              f"{self.size / statistics.median(seq_off) / MIB:.0f} MiB/s); median over on/off pairs")
        con, coff = statistics.median(cpu_on) / len(offsets), statistics.median(cpu_off) / len(offsets)
        print(f"{'':<20} daemon CPU per random 4 KiB read: trace on {1e6 * con:.1f} us, off {1e6 * coff:.1f} us "
              f"({100 * (con / coff - 1):+.1f}%; less sensitive to other load than wall time)")
        print("targets: cold-seq-read >= 0.90, trace overhead <= 5%, rand4k-direct >= 0.50")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--size", type=int, default=1024, help="file size in MiB (default 1024)")
    p.add_argument("--reps", type=int, default=5, help="repetitions; the median is reported (default 5)")
    p.add_argument("--random-reads", type=int, default=20000, help="random 4 KiB reads per run (default 20000)")
    p.add_argument("--dir", default=None, help="where to put the source dir (default $TMPDIR; same disk as the host side)")
    a = p.parse_args(argv)
    if a.size < 1 or a.reps < 1 or a.random_reads < 1:
        print("bench: --size, --reps and --random-reads must be >= 1", file=sys.stderr)
        return 2
    b = Bench(a)
    try:
        b.run()
    except MountError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
