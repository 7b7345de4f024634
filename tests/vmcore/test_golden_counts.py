"""Invariant guarded: lru / fifo / clock miss counts on seeded traces are exactly those of a cache
simulator, both for the policy objects alone and end to end through the kernel (`Task.access`, the
Python replay API and `vmcore replay --json`), and they do not change without notice.

The reference implementations below are deliberately tiny and independent of vmcore.policy:
an OrderedDict LRU, a deque FIFO and a list-based clock, each fed one access at a time.
tests/vmcore/golden/policy_misses.json freezes the counts; regenerate it deliberately with
`scripts/make_trace.py --regen-golden` after an intended change, and say why in the commit.
"""

from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np
import pytest

from vmcore.policy import make_policy, simulate

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_trace", ROOT / "scripts" / "make_trace.py")
make_trace = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_trace)

GOLDEN = json.loads((ROOT / "tests" / "vmcore" / "golden" / "policy_misses.json").read_text())
FRAMES = GOLDEN["frames"]
TRACES = sorted(GOLDEN["traces"])


# ---- the independent reference simulators -----------------------------------------------------------

def ref_lru(trace, capacity):
    cache, misses = OrderedDict(), 0
    for p in trace:
        if p in cache:
            cache.move_to_end(p)
        else:
            misses += 1
            if len(cache) >= capacity:
                cache.popitem(last=False)
            cache[p] = None
    return misses


def ref_fifo(trace, capacity):
    resident, order, misses = set(), deque(), 0
    for p in trace:
        if p not in resident:
            misses += 1
            if len(resident) >= capacity:
                resident.discard(order.popleft())
            resident.add(p)
            order.append(p)
    return misses


def ref_clock(trace, capacity):
    ring, bit, misses = [], {}, 0  # ring[0] is the oldest page
    for p in trace:
        if p in bit:
            bit[p] = 1
            continue
        misses += 1
        if len(ring) >= capacity:
            while True:
                q = ring.pop(0)
                if bit[q]:
                    bit[q] = 0
                    ring.append(q)
                else:
                    del bit[q]
                    break
        ring.append(p)
        bit[p] = 0
    return misses


REFERENCE = {"lru": ref_lru, "fifo": ref_fifo, "clock": ref_clock}


def one_at_a_time(name, trace, capacity):
    """A tiny cache driver over the policy object: one access per call, no vectorisation."""
    pol = make_policy(name, capacity)
    frame_of, page_in, misses = {}, {}, 0
    for p in trace:
        f = frame_of.get(p)
        if f is not None:
            pol.referenced(np.array([f]))
            continue
        misses += 1
        if len(frame_of) < capacity:
            f = len(frame_of)
        else:
            f = pol.select_victim()
            del frame_of[page_in[f]]
        frame_of[p], page_in[f] = f, p
        pol.inserted(f)
    return misses


@pytest.fixture(scope="module")
def traces():
    return {name: make_trace.golden_trace(name) for name in TRACES}


@pytest.fixture(scope="module")
def reference_counts(traces):
    return {(t, pol): [REFERENCE[pol](traces[t].tolist(), n) for n in FRAMES]
            for t in TRACES for pol in REFERENCE}


def test_golden_file_matches_the_generators():
    assert set(GOLDEN["misses"]) == set(GOLDEN["traces"]) == set(make_trace.GOLDEN_TRACES)
    assert GOLDEN["traces"] == make_trace.GOLDEN_TRACES
    assert FRAMES == list(make_trace.GOLDEN_FRAMES)
    assert GOLDEN["mach_frames"] == list(make_trace.GOLDEN_MACH_FRAMES)
    assert set(GOLDEN["mach_misses"]) == set(GOLDEN["traces"])


@pytest.mark.parametrize("policy", ["lru", "fifo", "clock"])
@pytest.mark.parametrize("trace", TRACES)
def test_reference_equals_golden(traces, reference_counts, trace, policy):
    assert reference_counts[trace, policy] == GOLDEN["misses"][trace][policy]


@pytest.mark.parametrize("policy", ["lru", "fifo", "clock"])
@pytest.mark.parametrize("trace", TRACES)
def test_policy_objects_equal_reference(traces, reference_counts, trace, policy):
    tr = traces[trace]
    assert [simulate(policy, tr, n) for n in FRAMES] == reference_counts[trace, policy]
    # the one-access-at-a-time driver at two sizes (it is slower)
    for i in (1, 3):
        assert one_at_a_time(policy, tr.tolist(), FRAMES[i]) == reference_counts[trace, policy][i]


def test_loop_is_every_policys_worst_case(traces):
    tr = traces["loop-300"].tolist()
    for pol, ref in REFERENCE.items():
        assert ref(tr, 299) == len(tr), pol
        assert ref(tr, 300) == 300, pol


def test_policies_differ_somewhere(reference_counts):
    """The traces are chosen so the three policies are distinguishable (a swapped policy fails)."""
    for t in ("zipf-2000", "mixed-500", "sequential-1000"):
        lru, fifo, clock = (reference_counts[t, p] for p in ("lru", "fifo", "clock"))
        assert lru != fifo and lru != clock and fifo != clock, t


# ---- end to end through the kernel ---------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["lru", "fifo", "clock"])
@pytest.mark.parametrize("trace", TRACES)
def test_kernel_replay_equals_golden(traces, trace, policy):
    """The Python replay API: one task, Task.access in chunks, misses = zero fills + hard faults."""
    from vmcore.kernel import Kernel
    from vmcore.replay import AccessTrace, replay

    tr = AccessTrace.from_pages(traces[trace])
    got = []
    for n in FRAMES:
        k = Kernel(memory=n * 4096, page_size=4096, policy=policy)
        res = replay(k, tr)
        got.append(res.misses)
        assert res.misses == res.counters["Pages zero filled"] + res.counters["Hard faults"]
        k.close()
    assert got == GOLDEN["misses"][trace][policy]


def test_cli_replay_json_equals_golden(traces, tmp_path, capsys):
    """`vmcore replay --json` on the written text and .npy forms of a golden trace."""
    from vmcore.cli import main

    name = "mixed-500"
    txt, npy = tmp_path / "t.txt", tmp_path / "t.npy"
    make_trace.write_text(txt, traces[name])
    make_trace.write_npy(npy, traces[name])
    for path in (txt, npy):
        for policy in ("lru", "fifo", "clock"):
            i = 2
            assert main(["replay", str(path), "--memory", str(FRAMES[i] * 4096), "--policy", policy,
                         "--json"]) == 0
            d = json.loads(capsys.readouterr().out)
            assert d["misses"] == GOLDEN["misses"][name][policy][i], (path.suffix, policy)


@pytest.mark.parametrize("trace", TRACES)
def test_mach_end_to_end_equals_golden(traces, trace):
    """The model's own policy has no independent simulator: its counts are frozen so that a change
    in the active/inactive queues, the pageout scan or the fault path is noticed. If the change is
    intended, regenerate with `scripts/make_trace.py --regen-golden` and say why in the commit."""
    from vmcore.kernel import Kernel
    from vmcore.replay import AccessTrace, replay

    tr = AccessTrace.from_pages(traces[trace])
    got = []
    for n in GOLDEN["mach_frames"]:
        k = Kernel(memory=n * 4096, page_size=4096, policy="mach")
        res = replay(k, tr)
        # sanity that does not depend on the freeze: every distinct page misses at least once
        assert res.misses >= res.footprint
        got.append(res.misses)
        k.close()
    assert got == GOLDEN["mach_misses"][trace], (
        "mach miss counts changed; if intended, run scripts/make_trace.py --regen-golden")
