"""Invariants guarded: working-set detection records exactly the pages a launch touched (keyed by
file page through the resolver, else by virtual page) within its window; profiles are immutable
sorted tables whose codec round-trips every field and rejects every damaged byte; merging counts
launches; seeding plans cover exactly the profiled pages; a prefetch score always adds up
(used + wasted = prefetched, late <= used)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from vmcore.clock import ManualClock
from vmcore.kernel import Kernel
from vmcore.workingset import (
    ANON, ENTRY_DTYPE, FORMAT_VERSION, HEADER_SIZE, MAX_ENTRIES, AppIdentity, LazySeeder, Profile,
    PrefetchScore, PrefetchScoreboard, ProfileFormatError, ProfileMismatch, ProfileNameError,
    ProfileStore, WorkingSetRecorder, coalesce, decode_profile, encode_profile, merge_profiles,
    score_prefetch, validate_app_name,
)

PS = 4096
IDENT = AppIdentity("bin/app", 1234, 1_700_000_000_123_456_789)


def prof(file_touches=(), anon_touches=(), **kw):
    kw.setdefault("created_ns", 42)
    return Profile.from_touches(IDENT, 501, "app", file_touches, anon_touches, **kw)


# ---- the recorder on a real kernel ---------------------------------------------------------------
def make_kernel(clock=None):
    return Kernel(memory="4MiB", clock=clock)


def test_recorder_records_anonymous_pages_of_a_real_task_in_touch_order():
    k = make_kernel()
    rec = WorkingSetRecorder()
    k.event_sink = rec
    t = k.task_create(name="app")
    rec.start(t, IDENT, "app", uid=501)
    a = t.vm_allocate(16 * PS)
    t.write(a + 5 * PS, b"x" * 10)  # zero fill
    t.write(a + 2 * PS + 100, b"y")  # zero fill
    assert t.read(a + 5 * PS, 10) == b"x" * 10  # hit: no fault, no event
    t.read(a + 9 * PS, 1)  # zero fill on read
    p = rec.finish(t)
    assert p is not None and rec.profiles == [p]
    vp = a // PS
    assert p.anon_pages().tolist() == [vp + 2, vp + 5, vp + 9]
    assert p.nfile_pages == 0 and p.files == ()
    assert [x[2] for x in p.timeline()] == [vp + 5, vp + 2, vp + 9]  # first-touch order
    firsts = [x[0] for x in p.timeline()]
    assert firsts == sorted(firsts) and firsts[-1] > 0  # kernel clock advanced per fault
    assert p.identity == IDENT and p.uid == 501 and p.app == "app" and p.launches == 1
    assert p.page_size == PS and p.window_s == 45.0
    assert rec.finish(t) is None  # once


def test_recorder_uses_the_resolver_for_file_backed_objects_and_the_base_object():
    k = make_kernel()
    seen = []
    t = k.task_create(name="app")
    a = t.vm_allocate(8 * PS)
    b = t.vm_allocate(8 * PS)
    file_obj = t.vm_region(a).object_id

    def resolver(object_id, offset):  # a fake vnode pager wiring: region `a` is "data/db"
        seen.append((object_id, offset))
        return ("data/db", 100 + offset // PS) if object_id == file_obj else None

    rec = WorkingSetRecorder(resolver=resolver, on_profile=lambda p: got.append(p))
    got = []
    k.event_sink = rec
    rec.start(t, IDENT, "app")
    t.write(a + 3 * PS, b"f")
    t.write(b + 1 * PS, b"a")
    t.write(a + 0 * PS, b"f")
    t.terminate()
    p = rec.finish(t)
    assert got == [p]
    assert p.pages_by_file()["data/db"].tolist() == [100, 103]
    assert p.anon_pages().tolist() == [b // PS + 1]
    assert p.files == ("data/db",)
    assert all(oid >= 0 for oid, _ in seen)


def test_recorder_window_closes_at_first_fault_past_it_and_by_poll():
    clock = ManualClock()
    k = make_kernel(clock)
    rec = WorkingSetRecorder(window_s=10.0)
    k.event_sink = rec
    t = k.task_create(name="app")
    u = k.task_create(name="other")  # not recorded
    rec.start(t, IDENT, "app")
    a = t.vm_allocate(8 * PS)
    t.write(a, b"1")
    clock.advance(9.0)
    t.write(a + PS, b"2")
    clock.advance(1.0)  # age 10 s: the window is over
    t.write(a + 2 * PS, b"3")  # closes it; this page is not in the profile
    assert not rec.recording(t)
    assert len(rec.profiles) == 1
    p = rec.profiles[0]
    assert p.anon_pages().tolist() == [a // PS, a // PS + 1]
    assert p.timeline()[1][0] == 9_000_000_000
    assert p.window_ns == 10_000_000_000
    # poll(): a task that stops faulting still gets its profile when the window passes
    t2 = k.task_create(name="app2")
    rec.start(t2, IDENT, "app", window_s=5)
    a2 = t2.vm_allocate(PS)
    t2.write(a2, b"z")
    assert rec.poll() == []
    clock.advance(5.0)
    [p2] = rec.poll()
    assert p2.anon_pages().tolist() == [a2 // PS] and p2.window_s == 5.0
    v = u.vm_allocate(PS)
    u.write(v, b"q")
    assert len(rec.profiles) == 2  # the unrecorded task produced nothing


def test_recorder_contains_hook_answers_for_touched_pages_and_kernel_still_works():
    k = make_kernel()
    rec = WorkingSetRecorder()
    k.event_sink = rec
    k.working_set = rec
    t = k.task_create(name="app")
    a = t.vm_allocate(64 * PS)
    t.write(a + 7 * PS, b"w")
    obj = next(o for o in k.objects.values() if 7 in o.pages)
    assert rec.contains(t, obj, 7)
    assert not rec.contains(t, obj, 8)
    k.pageout()
    assert t.read(a + 7 * PS, 1) == b"w"  # paged in again through the hook
    rec.forget(t)
    assert not rec.contains(t, obj, 7)


def test_recorder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="window"):
        WorkingSetRecorder(window_s=0)
    with pytest.raises(ValueError, match="resolver"):
        WorkingSetRecorder(resolver=42)
    k = make_kernel()
    t = k.task_create()
    rec = WorkingSetRecorder()
    with pytest.raises(ProfileNameError):
        rec.start(t, IDENT, "../etc")
    with pytest.raises(ValueError):
        rec.start(t, ("bin/app", 1, 2), "app")


# ---- profile model and codec ---------------------------------------------------------------------
def big_profile(n=100_000, seed=7, launches=3):
    rng = np.random.default_rng(seed)
    files = [f"lib/mod{i:03d}.so" for i in range(50)] + ["data/db.sqlite", "usr/lib/é-ü.dylib"]
    ft = [(files[int(rng.integers(len(files)))], int(rng.integers(0, 1 << 40)),
           int(rng.integers(0, 45 * 10**9))) for _ in range(n)]
    at = [(int(rng.integers(1, 1 << 35)), int(rng.integers(0, 45 * 10**9))) for _ in range(n // 10)]
    p = Profile.from_touches(IDENT, 501, "Safari Häppy", ft, at, created_ns=-5,
                             window_ns=45 * 10**9 + 1, page_size=16384)
    return p.replace(launches=launches)


def test_codec_round_trips_every_field_of_a_100k_page_profile():
    p = big_profile()
    assert p.npages > 100_000
    data = encode_profile(p)
    assert len(data) == HEADER_SIZE + p.npages * 32 + len(data) - HEADER_SIZE - p.npages * 32
    q = decode_profile(data)
    assert q == p
    for f in ("identity", "uid", "app", "created_ns", "window_ns", "launches", "page_size",
              "files"):
        assert getattr(q, f) == getattr(p, f), f
    assert np.array_equal(q.entries, p.entries) and q.entries.dtype == ENTRY_DTYPE
    assert encode_profile(q) == data  # deterministic
    # invariants
    e = q.entries
    assert sorted(e["order"].tolist()) == list(range(e.size))
    keys = list(zip(e["file"].tolist(), e["page"].tolist()))
    assert keys == sorted(set(keys))
    assert (e["file"][-q.nanon_pages:] == ANON).all()


def _refix(b: bytearray) -> bytes:
    b[92:96] = struct.pack("<I", zlib.crc32(bytes(b[:92])))
    return bytes(b)


@pytest.mark.parametrize("damage,match", [
    (lambda b: b"NOTAPROF" + b[8:], "bad magic"),
    (lambda b: b[:50], "truncated"),
    (lambda b: b[:5], "truncated|bad magic"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\0", "unexpected bytes"),
    (lambda b: _refix(bytearray(b[:8]) + struct.pack("<H", 2) + b[10:]), "version 2"),
    (lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:], "header checksum"),
    (lambda b: b[:-3] + bytes([b[-3] ^ 0x40]) + b[-2:], "payload checksum"),
    (lambda b: _refix(bytearray(b[:12]) + struct.pack("<I", 1) + b[16:]), "flags"),
    (lambda b: _refix(bytearray(b[:76]) + struct.pack("<I", MAX_ENTRIES + 1) + b[80:]), "limit"),
    (lambda b: b"", "truncated"),
])
def test_codec_rejects_damaged_bytes_with_one_line(damage, match):
    data = encode_profile(prof([("a/b", 1, 5), ("a/b", 2, 3)], [(77, 1)]))
    with pytest.raises(ProfileFormatError, match=match) as ei:
        decode_profile(damage(data))
    assert "\n" not in str(ei.value)


def test_codec_rejects_consistent_checksums_over_inconsistent_contents():
    p = prof([("a/b", 1, 5), ("a/b", 2, 3)])
    data = bytearray(encode_profile(p))
    off = len(data) - 2 * 32
    data[off + 24:off + 28] = struct.pack("<I", 0)  # two entries with order 0
    data[off + 32 + 24:off + 32 + 28] = struct.pack("<I", 0)
    pay = bytes(data[HEADER_SIZE:])
    data[24:28] = struct.pack("<I", zlib.crc32(pay))
    with pytest.raises(ProfileFormatError, match="order"):
        decode_profile(_refix(data))
    assert FORMAT_VERSION == 1


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "a\0b", ".hidden",
                                  "x" * 256, "tab\there", " pad", "new\nline", 42, None])
def test_app_names_that_could_escape_or_break_are_refused(name):
    with pytest.raises(ProfileNameError) as ei:
        validate_app_name(name)
    assert isinstance(ei.value, ValueError) and "\n" not in str(ei.value)


def test_profile_refuses_bad_paths_and_tables():
    for bad in ("/etc/passwd", "../x", "a//b", "a/./b", "a\0b"):
        with pytest.raises(ValueError):
            prof([(bad, 1, 1)])
    e = np.zeros(2, dtype=ENTRY_DTYPE)
    e["file"] = [0, 0]
    e["page"] = [5, 5]
    e["count"] = 1
    e["order"] = [0, 1]
    with pytest.raises(ValueError, match="sorted"):
        Profile(IDENT, 1, "app", entries=e, files=["f"])
    e["page"] = [5, 6]
    e["count"] = [1, 2]
    with pytest.raises(ValueError, match="count"):
        Profile(IDENT, 1, "app", entries=e, files=["f"])
    with pytest.raises(ValueError, match="past the file table"):
        Profile(IDENT, 1, "app", entries=e[:1], files=[])
    with pytest.raises(ValueError, match="inode"):
        AppIdentity("x", -1, 0)


# ---- merge ---------------------------------------------------------------------------------------
def test_merge_counts_launches_and_applies_min_count():
    p1 = prof([("a", 1, 30), ("a", 2, 10), ("b", 7, 20)], [(900, 5)], created_ns=1)
    p2 = prof([("a", 2, 4), ("c", 3, 1)], [(900, 50)], created_ns=2)
    p3 = prof([("a", 2, 8), ("b", 7, 2)], created_ns=3)
    m = merge_profiles([p1, p2, p3])
    assert m.launches == 3 and m.created_ns == 3
    got = {(f, pg): (c, t) for t, f, pg, c in m.timeline()}
    assert got == {("a", 1): (1, 30), ("a", 2): (3, 4), ("b", 7): (2, 2), ("c", 3): (1, 1),
                   (None, 900): (2, 5)}
    assert [x[0] for x in m.timeline()] == sorted(x[0] for x in m.timeline())
    m2 = merge_profiles([p1, p2, p3], min_count=2)
    assert {(f, pg) for _, f, pg, _ in m2.timeline()} == {("a", 2), ("b", 7), (None, 900)}
    assert m2.files == ("a", "b")  # c lost every page
    assert decode_profile(encode_profile(m2)) == m2
    m3 = merge_profiles([m2, p1], min_count=3)  # a merged profile merges again (counts add)
    assert m3.launches == 4
    assert {(f, pg) for _, f, pg, _ in m3.timeline()} == {("a", 2), ("b", 7), (None, 900)}
    assert m.with_min_count(3).npages == 1
    assert merge_profiles([p1], min_count=5).npages == 0


def test_merge_refuses_different_identities():
    p1 = prof([("a", 1, 1)])
    p2 = Profile.from_touches(AppIdentity("bin/app", 1234, 1), 501, "app", [("a", 1, 1)])
    with pytest.raises(ProfileMismatch, match="identity"):
        merge_profiles([p1, p2])
    with pytest.raises(ValueError):
        merge_profiles([p1], min_count=0)
    with pytest.raises(ValueError):
        merge_profiles([])


# ---- seeding plans -------------------------------------------------------------------------------
def test_coalesce_sorts_and_makes_few_large_requests():
    pages = {"z": [5, 1, 2, 3, 3], "a": list(range(1000, 1600)) + [7]}
    plan = coalesce(pages, max_request_pages=256)
    assert plan == [("a", 7, 1), ("a", 1000, 256), ("a", 1256, 256), ("a", 1512, 88),
                    ("z", 1, 3), ("z", 5, 1)]
    covered = {(f, q) for f, s, n in plan for q in range(s, s + n)}
    assert covered == {(f, q) for f, ps in pages.items() for q in ps}
    bridged = coalesce({"z": [1, 2, 3, 5, 9]}, max_gap=1)
    assert bridged == [("z", 1, 5), ("z", 9, 1)]
    assert coalesce({"z": [0, 10, 20]}, max_gap=100, max_request_pages=15) == [("z", 0, 11),
                                                                                  ("z", 20, 1)]
    assert coalesce({None: [4, 5], "f": [1]}) == [(None, 4, 2), ("f", 1, 1)]
    with pytest.raises(ValueError):
        coalesce({"a": [1]}, max_request_pages=0)


def test_lazy_seeder_brings_each_32_page_frame_once_on_first_touch():
    pages = {"f": [0, 1, 5, 31, 32, 40, 100], None: [64, 65]}
    ls = LazySeeder(pages)
    assert ls.pending_frames == 4
    assert ls.on_touch("f", 7) == [("f", 0, 2), ("f", 5, 1), ("f", 31, 1)]
    assert ls.on_touch("f", 0) == []  # consumed
    assert ls.on_touch("f", 33, exclude_touched=True) == [("f", 32, 1), ("f", 40, 1)]
    assert ls.on_touch("g", 0) == []
    assert ls.on_touch(None, 70) == [(None, 64, 2)]
    assert ls.frames_seeded == 3 and ls.pending_frames == 1
    xnu = LazySeeder(pages, min_pages=4)  # XNU's community threshold
    assert xnu.pending_frames == 1 and xnu.on_touch("f", 3) == [("f", 0, 2), ("f", 5, 1),
                                                                ("f", 31, 1)]


# ---- prefetch score ------------------------------------------------------------------------------
def test_prefetch_score_adds_up():
    landed = {("f", 1): 1.0, ("f", 2): 2.0, ("f", 3): 3.0, ("f", 4): None, ("f", 5): 1.0}
    touch = {("f", 1): 5.0, ("f", 2): 1.5, ("f", 4): 9.0, ("f", 9): 0.1, ("f", 3): 3.0}
    s = score_prefetch(landed, touch)
    assert s == PrefetchScore(used=4, wasted=1, late=2, missed=1)
    assert s.used + s.wasted == s.prefetched == len(landed)
    assert s.as_dict()["prefetched"] == 5
    rng = np.random.default_rng(3)
    for _ in range(20):
        pre = {int(x): (None if rng.random() < .1 else float(rng.random()))
               for x in rng.integers(0, 200, 80)}
        tch = {int(x): float(rng.random()) for x in rng.integers(0, 200, 80)}
        s = score_prefetch(pre, tch)
        assert s.used + s.wasted == len(pre) and 0 <= s.late <= s.used
        assert s.missed == len(set(tch) - set(pre))
        assert s.late == sum(1 for k, t in pre.items() if k in tch and (t is None or t > tch[k]))
    sb = PrefetchScoreboard()
    for k in ("a", "b", "c"):
        sb.issued(k)
    sb.landed("a", 1.0)
    sb.touched("b", 0.5)  # before it landed: late
    sb.landed("b", 2.0)
    sb.touched("a", 3.0)
    sb.touched("a", 0.0)  # only the first touch counts
    sb.touched("d", 1.0)
    assert sb.score() == PrefetchScore(used=2, wasted=1, late=1, missed=1)


def test_profile_store_is_a_protocol_the_swapd_store_satisfies(tmp_path):
    from swapd.profiles import AppProfileStore  # noqa: PLC0415  (test only; the model never does)

    assert isinstance(AppProfileStore(tmp_path, report=lambda s: None), ProfileStore)
