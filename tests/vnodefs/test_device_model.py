"""Invariant guarded: the device models check out against their spec sheets (hdd seek curve: track-to-
track, average over random address pairs, full stroke; zoned media rate; flash latency and rate),
requests that continue the previous one on the device cost transfer only, the device queue serves
one request at a time (hdd in mq-deadline order, flash in parallel up to its channels), and bad
specifications are refused in one line."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vnodefs.devqueue import Device
from vnodefs.latency import PRESETS, HDDService, LatencyError, cylinders, parse_latency, seek_curve

MB = 10**6


def test_hdd_seek_curve_matches_the_spec_sheet():
    spec = parse_latency("hdd")
    c = seek_curve(spec)
    n = cylinders(spec)
    assert c.scalar(1) == pytest.approx(1.0e6, rel=1e-6)  # track to track 1 ms
    assert c.scalar(n - 1) == pytest.approx(17.0e6, rel=1e-6)  # full stroke 17 ms
    assert c.scalar(0) == 0
    d = np.arange(1, n, 997)
    assert np.all(np.diff(c(d)) >= 0), "seek time grows with distance"
    # the mean over uniformly random pairs of device addresses is the average seek (8.5 ms)
    h = HDDService(spec)
    rng = np.random.default_rng(7)
    a = rng.integers(0, spec.capacity, 20000)
    b = rng.integers(0, spec.capacity, 20000)
    seeks = [h.service(int(x), int(y), 0)[0] for x, y in zip(a, b)]
    assert np.mean(seeks) == pytest.approx(8.5e6, rel=0.05)
    # the curve has the Ruemmler-Wilkes form: sqrt below d0, linear above, continuous at d0
    assert 1 < c.d0 < n
    assert c.settle_ns + c.a_ns * np.sqrt(c.d0) == pytest.approx(c.b_ns + c.c_ns * c.d0, rel=1e-9)


def test_hdd_rotation_and_zoned_media_rate():
    spec = parse_latency("hdd")
    h = HDDService(spec)
    assert h.rot_ns == pytest.approx(4.1667e6, rel=1e-3)  # half a revolution at 7200 rpm
    assert h.rate_mbps(0) == pytest.approx(150.0)
    assert h.rate_mbps(spec.capacity - 1) == pytest.approx(75.0, rel=1e-6)
    # continuing where the head is: transfer only, at the media rate
    seek, rot, xfer = h.service(4096, 4096, MB)
    assert (seek, rot) == (0, 0) and xfer == pytest.approx(1e9 / 150, rel=0.01)
    # a random position: seek + mean rotation + transfer
    seek, rot, xfer = h.service(0, spec.capacity // 2, 4096)
    assert seek > 1e6 and rot == h.rot_ns
    # a short skip forward on the same track: the platter carries the head there
    seek, rot, xfer = h.service(0 + 4096, 0 + 4096 + 8192, 4096)
    assert seek == 0 and rot == pytest.approx(8192 * 1e9 / (150 * MB), rel=0.01)


def test_hdd_read_ahead_buffer_fills_while_idle():
    h = HDDService(parse_latency("hdd"))
    full = h.service(0, 0, MB)[2]
    # idle long enough to read 1 MB ahead: a continuing 1 MB read is served from the buffer
    assert h.service(0, 0, MB, idle_ns=full * 2)[2] == 0
    assert h.service(0, 0, MB, idle_ns=full // 2)[2] == pytest.approx(full / 2, rel=0.01)
    assert h.service(0, 0, MB, idle_ns=full * 2, write=True)[2] == full  # no read-ahead for writes
    none = HDDService(parse_latency("hdd,readahead_kib=0"))
    assert none.service(0, 0, MB, idle_ns=full * 2)[2] == full


def test_presets_and_overrides():
    assert parse_latency("none").active is False and parse_latency(None).name == "none"
    s, n = parse_latency("ssd"), parse_latency("nvme")
    assert (s.latency_us, s.mbps, s.parallelism) == (90.0, 500.0, 4)
    assert (n.latency_us, n.mbps, n.parallelism) == (20.0, 3000.0, 32)
    f = parse_latency("2000:200")
    assert (f.name, f.kind, f.seek_us, f.mbps) == ("flat", "flat", 2000.0, 200.0)
    small = parse_latency("hdd,capacity=1GiB")
    assert small.capacity == 1 << 30 and small.avg_seek_ms == 8.5
    assert seek_curve(small).scalar(cylinders(small) - 1) == pytest.approx(17e6, rel=1e-6)
    d = PRESETS["hdd"].describe()
    for key in ("capacity", "rpm", "track_to_track_ms", "avg_seek_ms", "full_stroke_ms", "outer_mbps",
                "inner_mbps", "seek_curve", "scheduler", "readahead_kib"):
        assert key in d


@pytest.mark.parametrize("bad", ["fast", "1:0", "-1:100", "a:b", "", "100:", ":5", "hdd,foo=1",
                                 "hdd,capacity=lots", "hdd,avg_seek_ms=30", "ssd,parallelism=0",
                                 "hdd,inner_mbps=300", "nvme,latency_us"])
def test_bad_models_are_refused_in_one_line(bad):
    with pytest.raises(LatencyError) as ei:
        parse_latency(bad)
    assert "\n" not in str(ei.value)


def test_flat_device_serves_one_request_at_a_time():
    dev = Device(parse_latency("100000:100"), sleep=False)  # 100 ms seek
    now = time.monotonic_ns()
    first = dev.submit([(0, 1)], now=now)
    second = dev.submit([(10**9, 1)], now=now)
    assert first.delay_ns == pytest.approx(100_000_000, abs=1_000_000)
    assert second.delay_ns == pytest.approx(200_000_000, abs=1_000_000)  # queued behind the first
    third = dev.submit([(10**9 + 1, 100)], now=now + 10**9)  # idle, continues: transfer only
    assert third.delay_ns == 1000 and not third.seeked and third.seek_ns == 0


def test_flash_device_runs_requests_in_parallel_and_shares_the_link():
    dev = Device(parse_latency("ssd"), sleep=False)
    now = time.monotonic_ns()
    waits = [dev.submit([(i * 10**9, 4096)], now=now).delay_ns for i in range(8)]
    one = 90_000 + int(4096 * 1e9 / (500 * MB))
    assert waits[0] == one
    assert max(waits[:4]) < 2 * one  # four channels: the first four overlap their access latency
    assert waits[4] >= 2 * 90_000  # the fifth waits for a channel


def test_hdd_queue_serves_waiting_requests_in_elevator_order():
    """Requests that arrive while the disk is busy are served in ascending address from the head,
    not in arrival order (mq-deadline's sort), with real threads and a real (short) sleep."""
    dev = Device(parse_latency("hdd,capacity=1GiB"))
    order, lock = [], threading.Lock()

    def req(addr, n=4096):
        s = dev.submit([(addr, n)])
        with lock:
            order.append(addr)
        return s

    first = threading.Thread(target=req, args=(1000 << 20, 4 << 20))  # a far seek + 4 MiB: ~45 ms
    first.start()
    time.sleep(0.003)  # the first is in service; queue the rest in descending order
    ts = []
    for addr in (900 << 20, 600 << 20, 300 << 20):
        t = threading.Thread(target=req, args=(addr,))
        t.start()
        ts.append(t)
        time.sleep(0.001)
    for t in [first] + ts:
        t.join()
    # after the first the head is past every waiting request: the sweep wraps to the lowest
    assert order == [1000 << 20, 300 << 20, 600 << 20, 900 << 20]


def test_alternating_far_apart_costs_more_than_adjacent():
    dev_near = Device(parse_latency("hdd"), sleep=False)
    dev_far = Device(parse_latency("hdd"), sleep=False)
    cap = PRESETS["hdd"].capacity
    t = time.monotonic_ns()
    near = sum(dev_near.submit([((i % 2) * (8 << 20) + i * 8192, 4096)], now=t + i * 10**8).delay_ns
               for i in range(20))
    far = sum(dev_far.submit([((i % 2) * (cap // 2) + i * 8192, 4096)], now=t + i * 10**8).delay_ns
              for i in range(20))
    assert far > near * 1.3
