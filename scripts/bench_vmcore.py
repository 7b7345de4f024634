#!/usr/bin/env python3
"""Benchmark of the vmcore model's access paths: measured, never asserted.

For each policy (mach, lru, fifo, clock), through the real replay path (vmcore.replay.replay ->
Task.access -> vm_fault / the policy), on seeded synthetic traces:
  hits    a hit-heavy trace (uniform over half of memory, after one first touch of each page,
          which the kernel replays as an untimed warm-up)         -> accesses per second
  faults  a fault-heavy trace (a loop over twice memory: under lru / fifo / clock every access
          faults; under mach nearly every one)                   -> faults (misses) per second
  zipf    a Zipf(0.9) trace over 4x memory (a realistic mix)      -> accesses/s and faults/s
Side by side, in the same run and on the same traces:
  * the policy objects alone, driven by vmcore.policy.simulate (a plain cache simulator with the
    same vectorised hit detection as Task.access), plus raw `referenced` throughput on one big
    batch and `select_victim` + `inserted` cycles per second;
  * a plain-Python reference cache (OrderedDict LRU; deque FIFO) fed one access at a time,
    and the ratio model / reference.
Targets: >= 2 M accesses/s on hits, >= 200 k faults/s. Each figure is the median of
--repeat rounds (default 3); a round runs every measurement once, interleaved, so background load
affects the model and the reference alike. Misses are printed so runs can be checked against each
other (kernel, simulator and reference must agree exactly for the reference policies).

Usage: scripts/bench_vmcore.py [--memory 64MiB] [--repeat 3] [--quick] [--json FILE] [--profile]
`--profile` also prints the top of a cProfile of the fault-heavy replay for each policy.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_trace  # noqa: E402  (scripts/make_trace.py: the seeded generators)

from vmcore.kernel import Kernel  # noqa: E402
from vmcore.policy import make_policy, simulate  # noqa: E402
from vmcore.replay import AccessTrace, replay  # noqa: E402
from vmcore.types import parse_size  # noqa: E402

POLICIES = ("mach", "lru", "fifo", "clock")
PS = 4096


def median_run(fn, repeat):
    """Run fn() `repeat` times; fn returns (seconds, payload). Median seconds, last payload."""
    times, payload = [], None
    for _ in range(repeat):
        dt, payload = fn()
        times.append(dt)
    return statistics.median(times), payload


def ref_lru(trace):
    def run(capacity):
        cache, misses = OrderedDict(), 0
        t0 = time.perf_counter()
        for p in trace:
            if p in cache:
                cache.move_to_end(p)
            else:
                misses += 1
                if len(cache) >= capacity:
                    cache.popitem(last=False)
                cache[p] = None
        return time.perf_counter() - t0, misses
    return run


def ref_fifo(trace):
    def run(capacity):
        resident, order, misses = set(), deque(), 0
        t0 = time.perf_counter()
        for p in trace:
            if p not in resident:
                misses += 1
                if len(resident) >= capacity:
                    resident.discard(order.popleft())
                resident.add(p)
                order.append(p)
        return time.perf_counter() - t0, misses
    return run


def kernel_run(policy, memory, tr, warmup=0):
    def run():
        k = Kernel(memory=memory, page_size=PS, policy=policy)
        try:
            res = replay(k, tr, warmup=warmup)
        finally:
            k.close()
        return res.wall_s, res.misses
    return run


def sim_run(policy, nframes, pages):
    def run():
        t0 = time.perf_counter()
        m = simulate(policy, pages, nframes)
        return time.perf_counter() - t0, m
    return run


def policy_micro(policy, nframes, repeat):
    """Raw policy costs: `referenced` on one 1 M-hit batch, and cycles of a 3-hit `referenced`,
    `select_victim` and `inserted` (what the kernel calls around one fault)."""
    rng = np.random.default_rng(9)
    batch = rng.integers(0, nframes, 1 << 20)

    def hits():
        pol = make_policy(policy, nframes)
        for f in range(nframes):
            pol.inserted(f)
        t0 = time.perf_counter()
        pol.referenced(batch)
        return time.perf_counter() - t0, None

    def evictions():
        pol = make_policy(policy, nframes)
        for f in range(nframes):
            pol.inserted(f)
        pol.referenced(batch[: nframes // 2])
        n = 100_000
        small = batch[:3]
        t0 = time.perf_counter()
        for _ in range(n):
            pol.referenced(small)
            pol.inserted(pol.select_victim())
        return (time.perf_counter() - t0) / n, None

    t_hits, _ = median_run(hits, repeat)
    t_ev, _ = median_run(evictions, repeat)
    return batch.size / t_hits, 1.0 / t_ev


def profile_faults(policy, memory, tr, top=14):
    k = Kernel(memory=memory, page_size=PS, policy=policy)
    prof = cProfile.Profile()
    prof.enable()
    replay(k, tr)
    prof.disable()
    k.close()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


def fmt_rate(x):
    if x >= 1e6:
        return f"{x / 1e6:6.2f} M/s"
    return f"{x / 1e3:6.0f} k/s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Prints a table; --json FILE also writes the figures.")
    ap.add_argument("--memory", default="64MiB", help="kernel memory (default 64MiB = 16384 pages)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure, median reported (default 3)")
    ap.add_argument("--quick", action="store_true", help="smaller traces (a smoke run)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--profile", action="store_true", help="cProfile the fault-heavy replay per policy")
    args = ap.parse_args(argv)
    memory = parse_size(args.memory, "memory")
    nframes = memory // PS
    scale = 0.1 if args.quick else 1.0
    rng = np.random.default_rng(1)
    traces = {
        # first touch of each page (the kernel's warm-up, not timed there), then uniform hits
        "hits": np.concatenate([rng.permutation(nframes // 2),
                                rng.integers(0, nframes // 2, int(4_000_000 * scale))]).astype(np.int64),
        "faults": make_trace.loop(int(300_000 * scale), 2 * nframes),
        "zipf": make_trace.zipf(int(1_000_000 * scale), 4 * nframes, seed=2, alpha=0.9),
    }
    results: dict = {"memory": memory, "nframes": nframes, "repeat": args.repeat,
                     "trace_lengths": {k: int(v.size) for k, v in traces.items()}, "rows": []}
    print(f"vmcore benchmark: memory {args.memory} ({nframes} frames of {PS} B), median of {args.repeat}; "
          f"traces: " + ", ".join(f"{k} {v.size}" for k, v in traces.items()), file=sys.stderr)

    def row(what, policy, trace, secs, misses, warmup=0):
        n = traces[trace].size - warmup
        r = {"what": what, "policy": policy, "trace": trace, "accesses": n, "misses": misses,
             "seconds": secs, "accesses_per_s": n / secs, "faults_per_s": misses / secs}
        results["rows"].append(r)
        print(f"  {what:<10s} {policy:<6s} {trace:<7s} {n:>9d} acc {misses:>9d} miss "
              f"{fmt_rate(n / secs)} acc  {fmt_rate(misses / secs)} faults", file=sys.stderr)
        return r

    # Rounds interleave every measurement (python reference, policy simulator, kernel) so that
    # load from other processes on the machine hits them alike; each figure is a median over rounds.
    samples: dict = {}
    lists = {t: p.tolist() for t, p in traces.items()}
    atraces = {t: AccessTrace.from_pages(p) for t, p in traces.items()}
    warm = {t: (nframes // 2 if t == "hits" else 0) for t in traces}  # the kernel's untimed warm-up
    for rnd in range(args.repeat):
        print(f"round {rnd + 1}/{args.repeat}", file=sys.stderr)
        for trace in traces:
            for name, mk in (("lru", ref_lru), ("fifo", ref_fifo)):
                samples.setdefault(("python-ref", name, trace), []).append(mk(lists[trace])(nframes))
            for policy in POLICIES[1:]:
                samples.setdefault(("policy-sim", policy, trace), []).append(
                    sim_run(policy, nframes, traces[trace])())
            for policy in POLICIES:
                samples.setdefault(("kernel", policy, trace), []).append(
                    kernel_run(policy, memory, atraces[trace], warm[trace])())

    def med(key):
        runs = samples[key]
        return statistics.median(r[0] for r in runs), runs[-1][1]

    refs = {(t, n): row("python-ref", n, t, *med(("python-ref", n, t))) for t in traces for n in ("lru", "fifo")}
    sims = {(p, t): row("policy-sim", p, t, *med(("policy-sim", p, t))) for p in POLICIES[1:] for t in traces}
    kern = {(p, t): row("kernel", p, t, *med(("kernel", p, t)), warm[t]) for p in POLICIES for t in traces}
    micro = {p: policy_micro(p, nframes, args.repeat) for p in POLICIES[1:]}
    results["policy_micro"] = {p: {"referenced_hits_per_s": h, "evict_insert_per_s": e}
                               for p, (h, e) in micro.items()}

    # ---- the table ----
    print()
    print(f"vmcore replay benchmark: memory {args.memory} = {nframes} frames of {PS} bytes; median of "
          f"{args.repeat} interleaved rounds; traces: hits = {traces['hits'].size - nframes // 2} uniform accesses over {nframes // 2} "
          f"pages (after one untimed first touch of each: the kernel's warm-up), "
          f"faults = loop of {traces['faults'].size} over {2 * nframes} pages, zipf = {traces['zipf'].size} "
          f"Zipf(0.9) accesses over {4 * nframes} pages")
    print()
    hdr = (f"{'policy':<7s}| {'kernel hits':>13s} | {'kernel faults':>13s} | {'kernel zipf acc':>15s} "
           f"{'zipf faults':>12s} | {'sim hits':>11s} {'sim faults':>11s} | {'python ref (same trace)':>34s}")
    print(hdr)
    print("-" * len(hdr))
    for policy in POLICIES:
        kh, kf, kz = kern[policy, "hits"], kern[policy, "faults"], kern[policy, "zipf"]
        refname = "fifo" if policy == "fifo" else "lru"
        rh, rf = refs["hits", refname], refs["faults", refname]
        if policy == "mach":
            sim = f"{'-':>11s} {'-':>11s}"
        else:
            sim = (f"{fmt_rate(sims[policy, 'hits']['accesses_per_s']):>11s} "
                   f"{fmt_rate(sims[policy, 'faults']['faults_per_s']):>11s}")
        ref = (f"{refname} {fmt_rate(rh['accesses_per_s'])} hits x{kh['accesses_per_s'] / rh['accesses_per_s']:5.1f}, "
               f"{fmt_rate(rf['faults_per_s'])} x{kf['faults_per_s'] / rf['faults_per_s']:4.2f}")
        print(f"{policy:<7s}| {fmt_rate(kh['accesses_per_s']):>13s} | {fmt_rate(kf['faults_per_s']):>13s} | "
              f"{fmt_rate(kz['accesses_per_s']):>15s} {fmt_rate(kz['faults_per_s']):>12s} | {sim} | {ref}")
    print()
    print("policy objects alone: referenced() on one 1M-hit batch; cycles of referenced(3 hits) + "
          "select_victim() + inserted()")
    for p, (h, e) in micro.items():
        ref = "  (no-op)  " if p == "fifo" else fmt_rate(h)
        print(f"  {p:<6s} referenced {ref} hits   evict+insert {fmt_rate(e)}")
    print()
    print("misses over the whole trace (kernel: measured + warm-up; reference policies must agree exactly):")
    for trace in traces:
        parts = [f"{p}={kern[p, trace]['misses'] + warm[trace]}" for p in POLICIES]
        sparts = [f"{p}={sims[p, trace]['misses']}" for p in POLICIES[1:]]
        print(f"  {trace:<7s} kernel {' '.join(parts)} | sim {' '.join(sparts)} | "
              f"ref lru={refs[trace, 'lru']['misses']} fifo={refs[trace, 'fifo']['misses']}")
    ok_h = all(kern[p, "hits"]["accesses_per_s"] >= 2e6 for p in POLICIES)
    ok_f = all(kern[p, "faults"]["faults_per_s"] >= 2e5 for p in POLICIES)
    print()
    print(f"targets: hits >= 2 M accesses/s: {'met' if ok_h else 'NOT met'} for all policies; "
          f"faults >= 200 k/s: {'met' if ok_f else 'NOT met'} "
          f"(worst {fmt_rate(min(kern[p, 'faults']['faults_per_s'] for p in POLICIES)).strip()})")
    agree = all(kern[p, t]["misses"] + warm[t] == sims[p, t]["misses"] for p in POLICIES[1:] for t in traces) \
        and all(kern["lru", t]["misses"] + warm[t] == refs[t, "lru"]["misses"] and
                kern["fifo", t]["misses"] + warm[t] == refs[t, "fifo"]["misses"] for t in traces)
    print(f"miss counts: kernel == simulator == python reference for lru/fifo: {'yes' if agree else 'NO'}")
    results["targets_met"] = {"hits": ok_h, "faults": ok_f}
    results["misses_agree"] = agree
    if args.profile:
        for policy in POLICIES:
            print(f"\n==== cProfile, fault-heavy replay, policy {policy} ====")
            print(profile_faults(policy, memory, AccessTrace.from_pages(traces["faults"][: 100_000])))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
