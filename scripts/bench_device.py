#!/usr/bin/env python3
"""Benchmark: the device model through a real vnodefs mount, against what the model predicts, and
launch seeding of a many-file launch under it.

Prints, side by side in one run:
  * random 4 KiB reads (direct mode): IOPS measured through the mount vs the model's IOPS, over a
    file short-stroked within a few hundred MiB (real FIEMAP layout) and over a file spanning the
    whole modelled device (synthetic layout, a sparse file as large as the device);
  * sequential 1 MiB reads: MB/s through the mount vs the media rate at the file's address;
  * alternating 4 KiB reads between two adjacent files and two files at opposite ends of the
    device (synthetic layout): the time ratio;
  * `grep -rlc` over N small files (default 2000, 1-12 KB, created in shuffled order so disk order
    differs from the order grep reads): the floor (no device model), cold, and seeded runs with
    every prefetch strategy, and the share of the cold-start penalty each removes,
    (cold - seeded) / (cold - floor).

Usage: .venv/bin/python scripts/bench_device.py [--model hdd] [--files 2000] [--runs 1] [--skip-seeding]
Not a test: nothing here asserts; the figures go in the closing notes.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vnodefs.latency import HDDService, parse_latency  # noqa: E402
from vnodefs.layout import choose  # noqa: E402
from vnodefs.mount import mounted  # noqa: E402

MIB = 1 << 20


def _model_random_iops(spec, span_bytes, base, n=4000, seed=1):
    """Mean IOPS of random 4 KiB reads over [base, base + span) predicted by the model itself."""
    h = HDDService(spec)
    rng = random.Random(seed)
    head, total = -1, 0
    for _ in range(n):
        a = base + rng.randrange(0, span_bytes // 4096) * 4096
        s, r, x = h.service(head, a, 4096)
        total += s + r + x
        head = a + 4096
    return n / (total / 1e9)


def random_reads(work, model, spec):
    out = {}
    # short-stroked: a real file (FIEMAP layout)
    src = os.path.join(work, "rr")
    os.makedirs(src)
    path = os.path.join(src, "f")
    with open(path, "wb") as fh:
        for _ in range(256):
            fh.write(os.urandom(MIB))
        fh.flush()
        os.fsync(fh.fileno())
    lay = choose(src)
    fd = os.open(path, os.O_RDONLY)
    base = lay.address(fd, 0)
    os.close(fd)
    with mounted(src, trace=None, latency=model, cache="direct") as m:
        span = m.info.get("layout", {}).get("device_bytes") or 0
        out["short_stroke"] = _measure_random(os.path.join(m.mountpoint, "f"), 256 * MIB, 150)
    h = HDDService(spec, span)
    out["short_stroke_model"] = _model_random_iops(spec, 256 * MIB, base) if spec.kind == "hdd" else None
    out["short_stroke_position"] = round(h.position(base), 4) if spec.kind == "hdd" else None
    # across the whole device: synthetic layout, a sparse file as large as the modelled device
    src2 = os.path.join(work, "whole")
    os.makedirs(src2)
    with open(os.path.join(src2, "dev"), "wb") as fh:
        fh.truncate(spec.capacity)
    with mounted(src2, trace=None, latency=model, cache="direct", layout="synthetic") as m:
        out["whole_device"] = _measure_random(os.path.join(m.mountpoint, "dev"), spec.capacity, 150)
    out["whole_device_model"] = _model_random_iops(spec, spec.capacity, 0) if spec.kind == "hdd" else None
    return out


def _measure_random(path, size, n):
    fd = os.open(path, os.O_RDONLY)
    rng = random.Random(7)
    try:
        t = time.monotonic()
        for _ in range(n):
            os.pread(fd, 4096, rng.randrange(0, size // 4096) * 4096)
        return n / (time.monotonic() - t)
    finally:
        os.close(fd)


def sequential(work, model, spec, mib=256):
    src = os.path.join(work, "seq")
    os.makedirs(src)
    path = os.path.join(src, "f")
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(MIB))
        fh.flush()
        os.fsync(fh.fileno())
    lay = choose(src)
    fd = os.open(path, os.O_RDONLY)
    base = lay.address(fd, 0)
    os.close(fd)
    buf = mmap.mmap(-1, MIB)  # page-aligned, as a real program's large buffer
    with mounted(src, trace=None, latency=model, cache="direct") as m:
        span = m.info.get("layout", {}).get("device_bytes") or 0
        fd = os.open(os.path.join(m.mountpoint, "f"), os.O_RDONLY)
        try:
            t, n = time.monotonic(), 0
            while True:
                k = os.preadv(fd, [buf], n)
                if not k:
                    break
                n += k
            got = n / (time.monotonic() - t) / 1e6
        finally:
            os.close(fd)
    rate = HDDService(spec, span).rate_mbps(base) if spec.kind == "hdd" else spec.mbps
    return {"measured_mbps": got, "model_mbps": rate, "ratio": got / rate}


def distance(work, model, spec):
    src = os.path.join(work, "dist")
    os.makedirs(src)
    for name in ("a", "b"):
        with open(os.path.join(src, name), "wb") as fh:
            fh.write(b"x" * 16384)
    with open(os.path.join(src, "mid"), "wb") as fh:
        fh.truncate(spec.capacity - 64 * 1024)
    with open(os.path.join(src, "z"), "wb") as fh:
        fh.write(b"z" * 16384)
    with mounted(src, trace=None, latency=model, cache="direct", layout="synthetic") as m:
        def alt(x, y, rounds=20):
            fx = os.open(os.path.join(m.mountpoint, x), os.O_RDONLY)
            fy = os.open(os.path.join(m.mountpoint, y), os.O_RDONLY)
            try:
                t = time.monotonic()
                for i in range(rounds):
                    os.pread(fx, 4096, (i % 4) * 4096)
                    os.pread(fy, 4096, (i % 4) * 4096)
                return time.monotonic() - t
            finally:
                os.close(fx)
                os.close(fy)
        near, far = alt("a", "b"), alt("a", "z")
    return {"adjacent_s": near, "far_apart_s": far, "ratio": far / near}


def make_tree(root, nfiles, seed=1):
    rng = random.Random(seed)
    words = ["shadow", "copy", "pager", "object", "map", "entry", "page", "fault", "upl", "wire"]
    names = [os.path.join(root, f"d{i % 40:02d}", f"f{i:04d}.txt") for i in range(nfiles)]
    rng.shuffle(names)
    for n in names:
        os.makedirs(os.path.dirname(n), exist_ok=True)
        with open(n, "w") as fh:
            fh.write(" ".join(rng.choice(words) for _ in range(rng.randint(150, 2000))))
            fh.flush()
            os.fsync(fh.fileno())


def _vnodefs_run(args):
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "vnodefs", "run", *args], capture_output=True, text=True)
    wall = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"bench_device: vnodefs run failed: {p.stderr.strip().splitlines()[-1:]}")
    return wall


def seeding(work, model, nfiles, runs):
    src = os.path.join(work, "tree")
    make_tree(src, nfiles)
    cmd = ["--", "grep", "-rlc", "shadow", "{mnt}"]
    res = {}
    floor = [_vnodefs_run([src, "--latency", "none", "--no-trace", "--quiet", *cmd]) for _ in range(runs)]
    res["floor_s"] = min(floor)
    var = os.path.join(work, "var")
    for strategy in ("cold", "cache", "read", "fadvise"):
        walls, seeks = [], []
        for i in range(runs if strategy != "cold" else runs):
            tr = os.path.join(work, f"{strategy}{i}.vtrace")
            if os.path.exists(tr):
                os.unlink(tr)
            js = os.path.join(work, f"{strategy}{i}.json")
            pf = "off" if strategy == "cold" else strategy
            if strategy == "cold" and i == 0 and not os.path.exists(os.path.join(var, "vm")):
                pf = "cache"  # the first cold run records the profile
            walls.append(_vnodefs_run(["--profile", "grepr", "--var", var, "--prefetch", pf, src, "--latency", model,
                                       "--trace", tr, "--json", js, "--quiet", *cmd]))
            with open(js) as fh:
                s = json.load(fh)
            seeks.append(s.get("device_run", {}).get("seek_s", 0) + s.get("device_run", {}).get("rotation_s", 0))
        res[strategy] = {"wall_s": min(walls), "device_positioning_s": min(seeks)}
    cold = res["cold"]["wall_s"]
    for strategy in ("cache", "read", "fadvise"):
        w = res[strategy]["wall_s"]
        res[strategy]["penalty_removed"] = (cold - w) / (cold - res["floor_s"]) if cold > res["floor_s"] else None
        res[strategy]["speedup"] = cold / w
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="hdd")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--skip-seeding", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()
    spec = parse_latency(a.model)
    work = tempfile.mkdtemp(prefix="bench-device-", dir=os.environ.get("BENCH_DIR"))
    out = {"model": spec.describe()}
    try:
        print(f"device model {a.model}; work dir {work}", file=sys.stderr)
        out["random"] = random_reads(work, a.model, spec)
        r = out["random"]
        print(f"random 4 KiB   short-stroked (256 MiB file at radius {r['short_stroke_position']}): "
              f"{r['short_stroke']:.0f} IOPS through the mount vs {r['short_stroke_model'] or 0:.0f} model")
        print(f"random 4 KiB   whole device ({spec.capacity / 1e9:.0f} GB, synthetic layout): "
              f"{r['whole_device']:.0f} IOPS through the mount vs {r['whole_device_model'] or 0:.0f} model")
        out["sequential"] = sq = sequential(work, a.model, spec)
        print(f"sequential     {sq['measured_mbps']:.1f} MB/s through the mount vs media rate "
              f"{sq['model_mbps']:.1f} MB/s there: ratio {sq['ratio']:.3f}")
        out["distance"] = d = distance(work, a.model, spec)
        print(f"alternating    adjacent files {d['adjacent_s']:.3f} s, opposite ends {d['far_apart_s']:.3f} s: "
              f"ratio {d['ratio']:.2f}")
        if not a.skip_seeding:
            out["seeding"] = s = seeding(work, a.model, a.files, a.runs)
            print(f"seeding        grep -rlc over {a.files} files: floor {s['floor_s']:.2f} s, cold "
                  f"{s['cold']['wall_s']:.2f} s (positioning {s['cold']['device_positioning_s']:.2f} s)")
            for st in ("cache", "read", "fadvise"):
                x = s[st]
                print(f"  seeded {st:8s} {x['wall_s']:.2f} s ({x['speedup']:.2f}x, penalty removed "
                      f"{100 * (x['penalty_removed'] or 0):.0f}%, positioning {x['device_positioning_s']:.2f} s)")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(out, fh, indent=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
