"""Invariant guarded: every byte a program reads through a vnodefs mount is the byte the file holds.

An fsx-style exerciser (seeded, replayable): one file through the mount, a random mix of pwrite,
pread, mmap read, mmap write (page mode: shared mappings), ftruncate, close and reopen, and page
cache drops (POSIX_FADV_DONTNEED), checked against an in-memory model after every operation, and
the host file checked against the model at every fsync and at the end. Both cache modes.

VNODEFS_FSX_OPS sets the operations per run (default 400, a few seconds); VNODEFS_FSX_SEED replays
one seed. A failure names the seed and the operation number.
"""

from __future__ import annotations

import mmap
import os
import random

import pytest
from cache_modes import CACHE_MODES

pytestmark = pytest.mark.fuse

OPS = int(os.environ.get("VNODEFS_FSX_OPS", "400"))
SEEDS = [int(os.environ["VNODEFS_FSX_SEED"])] if "VNODEFS_FSX_SEED" in os.environ else [1, 2]
MAX_SIZE = 384 * 1024


def _check(got: bytes, model: bytearray, off: int, what: str) -> None:
    want = bytes(model[off:off + len(got)])
    if got != want:
        bad = next(i for i in range(len(got)) if got[i:i + 1] != want[i:i + 1])
        raise AssertionError(f"{what}: byte {off + bad} is {got[bad]:#x}, the model says {want[bad]:#x}")


@pytest.mark.parametrize("cache", CACHE_MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_fsx_mixed_access_matches_model(vmount, cache, seed):
    m = vmount(cache=cache, trace=False)
    path = os.path.join(m.mountpoint, "fsx.dat")
    host = os.path.join(m.src, "fsx.dat")
    rng = random.Random(seed)
    model = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    shared = cache == "page"  # direct mode cannot map shared (see fuseops' caveats)
    log = []
    try:
        for n in range(OPS):
            op = rng.choices(["write", "read", "mread", "mwrite", "truncate", "reopen", "drop", "fsync"],
                             [30, 25, 12, 10 if shared else 0, 8, 5, 5, 5])[0]
            size = len(model)
            off = rng.randrange(0, max(size, 1) + 8192)
            ln = rng.choice([1, 7, 512, 4096, 5000, 65536, 100_000])
            log.append((op, off, ln))
            where = f"seed {seed}, op {n} {op}(off={off}, len={ln}), {cache} mode"
            if op == "write":
                off = min(off, MAX_SIZE - ln)
                data = rng.randbytes(ln)
                assert os.pwrite(fd, data, off) == ln
                if off > size:
                    model.extend(bytes(off - size))
                model[off:off + ln] = data
            elif op == "read":
                got = os.pread(fd, ln, off)
                assert len(got) == max(0, min(ln, size - off)), where
                _check(got, model, off, where)
            elif op in ("mread", "mwrite") and size > 0:
                flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if op == "mwrite" else 0)
                mm = mmap.mmap(fd, size, flags=flags, prot=prot)
                try:
                    off = off % size
                    ln = min(ln, size - off)
                    if op == "mread":
                        _check(mm[off:off + ln], model, off, where)
                    else:
                        data = rng.randbytes(ln)
                        mm[off:off + ln] = data
                        model[off:off + ln] = data
                        if rng.random() < 0.5:
                            mm.flush()
                finally:
                    mm.close()
            elif op == "truncate":
                new = rng.choice([0, size // 2, size + 4096, rng.randrange(0, MAX_SIZE)])
                os.ftruncate(fd, new)
                if new < size:
                    del model[new:]
                else:
                    model.extend(bytes(new - size))
            elif op == "reopen":
                os.close(fd)
                fd = os.open(path, os.O_RDWR)
            elif op == "drop":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            elif op == "fsync":
                os.fsync(fd)
                with open(host, "rb") as fh:
                    _check(fh.read(), model, 0, where + " (host file after fsync)")
            assert os.fstat(fd).st_size == len(model), where
        os.fsync(fd)
        assert os.pread(fd, MAX_SIZE + 1, 0) == bytes(model)
    finally:
        os.close(fd)
    m.umount()
    with open(host, "rb") as fh:
        assert fh.read() == bytes(model), f"seed {seed}: host file after unmount"
