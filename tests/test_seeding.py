"""Invariant guarded: launch profiles work end to end on a real vnodefs mount. The first launch of a
modeled application is recorded into VAR/vm/app_profile/<uid>/; a later launch seeded from it
(eager: sorted, coalesced requests before it runs; lazy: per 32-page frame on first touch) takes
fewer hard faults and issues fewer, larger reads in the vnodefs trace than the cold launch; the
prefetch score adds up (used + wasted == prefetched); seeded launches are not recorded unless
asked; merging keeps pages seen in >= min_count launches; a changed executable is a new identity."""

import os
import random

import numpy as np
import pytest

from vmcore import Kernel
from vmcore.errors import InvalidArgument
from vmcore.workingset import AppIdentity
from swapd.profiles import AppProfileStore
from vnodefs import trace as vtrace

pytestmark = pytest.mark.fuse
PS = 4096
FILES = {"bin/app": 128, "data/a": 512, "data/b": 256}  # pages


def our_mounts():
    with open("/proc/mounts") as fh:
        return [ln for ln in fh if "vmcore-files-" in ln]


def touch_plan(seed=11):
    """The app's fixed, scattered access order: (file, page) pairs."""
    rnd = random.Random(seed)
    plan = [("bin/app", p) for p in range(0, 12)]
    plan += [("bin/app", p) for p in rnd.sample(range(12, 128), 20)]
    plan += [("data/a", p) for p in rnd.sample(range(512), 60)]
    plan += [("data/b", p) for p in rnd.sample(range(256), 40)]
    rnd.shuffle(plan)
    return plan


@pytest.fixture
def world(tmp_path):
    src = tmp_path / "src"
    rnd = random.Random(3)
    for name, n in FILES.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rnd.randbytes(n * PS))
    yield src, tmp_path / "var"
    assert not our_mounts()


def launch(src, var, trace, seed="eager", plan=None, **kw):
    """One boot + one launch of the modeled app; returns (vm_stat delta, score, read records)."""
    plan = plan if plan is not None else touch_plan()
    with Kernel(memory="32MiB", files=src, var=var, trace=trace, latency="none",
                **{k: v for k, v in kw.items() if k in ("profile_merge_min",)}) as k:
        before = k.vm_stat()
        t = k.task_create(executable="bin/app", seed=seed,
                          **{k2: v for k2, v in kw.items() if k2 in ("record", "merge_min")})
        base = {f: t.vm_map_file(f, prot="r", shared=False) for f in FILES}
        heap = t.vm_allocate(16 * PS)
        seeded_hard = k.vm_stat()["Hard faults"] - before["Hard faults"]
        host = {f: (src / f).read_bytes() for f in FILES}
        for f, p in plan:
            assert t.read(base[f] + p * PS, 8) == host[f][p * PS:p * PS + 8]
            t.write(heap + (p % 16) * PS, b"x")
        after = k.vm_stat()
        score = t.prefetch_score()
        t.terminate()
        delta = {key: after[key] - before.get(key, 0) for key in
                 ("Hard faults", "Soft faults", "Pagein requests", "Pageins")}
        delta["seed hard"] = seeded_hard
        delta["Prefetched pages"] = after.get("Prefetched pages", 0)
    tr = vtrace.load(trace)
    reads = tr.records[tr.op_mask("read")]
    return delta, score, reads


def test_seeded_launch_beats_cold(world, tmp_path):
    src, var = world
    cold, cscore, creads = launch(src, var, tmp_path / "cold.trace")
    store = AppProfileStore(var)
    uid = os.getuid()
    prof_path = store.path_for(uid, "app")
    assert os.path.exists(prof_path)
    assert oct(os.stat(prof_path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(prof_path)).st_mode & 0o777) == "0o700"
    st = os.stat(src / "bin" / "app")
    prof = store.load(uid, "app", AppIdentity.of_stat("bin/app", st))
    assert prof is not None and prof.nfile_pages == len(set(touch_plan())) and prof.nanon_pages > 0
    assert cscore["prefetched"] == 0
    saved = open(prof_path, "rb").read()

    eager, escore, ereads = launch(src, var, tmp_path / "eager.trace", seed="eager")
    lazy, lscore, lreads = launch(src, var, tmp_path / "lazy.trace", seed="lazy")
    # the seeded launches were not recorded (the profile file is unchanged)
    assert open(prof_path, "rb").read() == saved

    figures = {name: (d["Hard faults"], len(r), int(r["result"].sum()),
                      int(r["result"].sum()) // max(len(r), 1))
               for name, d, r in (("cold", cold, creads), ("eager", eager, ereads),
                                  ("lazy", lazy, lreads))}
    print("\n(hard faults, read requests, bytes read, bytes/request):", figures)
    print("eager score", escore, "lazy score", lscore)
    for name, d, r in (("eager", eager, ereads), ("lazy", lazy, lreads)):
        assert d["Hard faults"] < cold["Hard faults"], name
        assert len(r) < len(creads), name
        assert r["result"].sum() / len(r) > creads["result"].sum() / len(creads), name
    # eager: every profiled page came in before the task ran, so the task never hard-faults a
    # file page; each request is one coalesced run
    assert eager["Hard faults"] == 0
    assert eager["seed hard"] == 0
    for s in (escore, lscore):
        assert s["used"] + s["wasted"] == s["prefetched"] > 0
        assert s["used"] == len(set(touch_plan()))  # every profiled file page came in and was used
        assert s["missed"] == 16  # the heap: fresh zero-fill pages, nothing to seed from swap
        assert s["late"] == 0  # synchronous model: seeding lands before the touch
    assert escore["prefetched"] == eager["Prefetched pages"]


def test_record_merge_and_identity(world, tmp_path):
    src, var = world
    uid = os.getuid()
    store = AppProfileStore(var)
    plan1 = touch_plan(1)
    plan2 = touch_plan(2)
    launch(src, var, tmp_path / "1.trace", plan=plan1)
    # a seeded launch asked to record, merging with min count 2: only pages of both launches stay
    launch(src, var, tmp_path / "2.trace", seed="off", plan=plan2, record=True, merge_min=2)
    prof = store.read(uid, "app")
    both = set(plan1) & set(plan2)
    assert prof.launches == 2
    got = {(f, int(p)) for f, pages in prof.pages_by_file().items() for p in pages}
    assert got == both
    # a rebuilt executable (new mtime) is a new identity: the old profile is stale, not used
    os.utime(src / "bin" / "app", ns=(1, 1))
    d, score, _ = launch(src, var, tmp_path / "3.trace", seed="eager", plan=plan1)
    assert score["prefetched"] == 0
    prof = store.read(uid, "app")
    assert prof.identity.mtime_ns == 1 and prof.launches == 1  # recorded afresh


def test_launch_window_closes_recording(world, tmp_path):
    src, var = world
    with Kernel(memory="16MiB", files=src, var=var, launch_window=0.005) as k:
        t = k.task_create(executable="bin/app")
        a = t.vm_map_file("bin/app", prot="r")
        t.read(a, 4 * PS)  # pageins advance model time by 1 ms each
        for p in range(4, 40):
            t.read(a + p * PS, 1)
        prof = AppProfileStore(var).read(os.getuid(), "app")
        assert 0 < prof.nfile_pages < 40  # written at the first fault past the window
        t.terminate()
    with Kernel(memory="16MiB", files=src, var=var) as k:
        for bad in dict(seed="fast"), dict(uid=-1), dict(record="yes"):
            with pytest.raises(InvalidArgument):
                k.task_create(executable="bin/app", **bad)
        with pytest.raises(InvalidArgument):
            k.task_create(executable="../etc/passwd")
        with pytest.raises(InvalidArgument):
            k.task_create(executable="bin/missing")
        assert len(k.tasks) == 0


def test_caller_sink_still_called_and_bad_options(world):
    src, var = world
    seen = []
    with Kernel(memory="16MiB", files=src, var=var, event_sink=seen.append) as k:
        t = k.task_create(executable="bin/app")
        t.read(t.vm_map_file("data/a", prot="r"), 3 * PS)
        assert len(seen) == 3 and all(ev.task is t for ev in seen)
    for bad in (dict(tws_cluster=True), dict(var=var, launch_window=0),
                dict(var=var, profile_merge_min=0)):
        with pytest.raises(InvalidArgument):
            Kernel(memory="16MiB", files=src, **bad)
        assert not our_mounts()


def test_merge_asked_records_seeded_launches(world, tmp_path):
    src, var = world
    store = AppProfileStore(var)
    for i, seed in enumerate(("eager", "eager", "lazy")):
        launch(src, var, tmp_path / f"m{i}.trace", seed=seed, plan=touch_plan(i + 1),
               profile_merge_min=1)
    prof = store.read(os.getuid(), "app")
    assert prof.launches == 3
    union = set(touch_plan(1)) | set(touch_plan(2)) | set(touch_plan(3))
    got = {(f, int(p)) for f, pages in prof.pages_by_file().items() for p in pages}
    assert got == union
    counts = dict(zip(((f, int(p)) for f, pages in prof.pages_by_file().items() for p in pages),
                      prof.entries["count"][prof.entries["file"] != 0xFFFFFFFF].tolist()))
    assert max(counts.values()) == 3  # bin/app pages 0..11 are touched by every launch


def test_eager_seeding_reads_in_device_order(tmp_path):
    """With a device model, an eager seeded launch issues its reads in ascending device address
    across files: the files of one directory, written in the reverse of their name order, lie on
    the disk in reverse name order, and the seeding sweep reads them that way."""
    from vnodefs.layout import choose

    src = tmp_path / "src"
    src.mkdir()
    files = {"app": 32, "d1": 64, "d2": 64, "d3": 64}  # pages
    rnd = random.Random(5)
    for name in sorted(files, reverse=True):
        with open(src / name, "wb") as fh:
            fh.write(rnd.randbytes(files[name] * PS))
            fh.flush()
            os.fsync(fh.fileno())
    lay = choose(str(src))
    first_addr = {}
    for name in files:
        fd = os.open(src / name, os.O_RDONLY)
        try:
            first_addr[name] = min(a for _o, a, _n in lay.pieces(fd, 0, files[name] * PS))
        finally:
            os.close(fd)
    disk_order = sorted(files, key=first_addr.get)
    if disk_order == sorted(files):
        pytest.skip("the host file system placed the files in name order; nothing to tell apart")
    var = tmp_path / "var"
    rng = random.Random(2)
    plan = [(f, p) for f in files for p in rng.sample(range(files[f]), 10)]
    rng.shuffle(plan)
    for i in range(2):  # cold (records), then eager seeded
        trace = tmp_path / f"d{i}.trace"
        with Kernel(memory="32MiB", files=src, var=var, trace=trace, latency="nvme") as k:
            t = k.task_create(executable="app", seed="eager")
            base = {f: t.vm_map_file(f, prot="r", shared=False) for f in files}
            for f, p in plan:
                t.read(base[f] + p * PS, 8)
            t.terminate()
    tr = vtrace.load(trace)
    assert tr.header["device"]["model"] == "nvme"
    reads = tr.records[tr.op_mask("read")]
    reads = reads[reads["dev_addr"] >= 0]
    # the seeding runs come first, before the task runs: one upward sweep of the device
    down = np.flatnonzero(np.diff(reads["dev_addr"]) < 0)
    seeding = reads[:int(down[0]) + 1] if down.size else reads
    seen = []
    for f in seeding["file"].tolist():
        if tr.files[f] not in seen:
            seen.append(tr.files[f])
    assert seen == disk_order, (seen, first_addr)
    assert not our_mounts()
