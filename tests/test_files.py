"""Invariant guarded: Kernel(files=SOURCE) pages against real host files through its own vnodefs
mount: a mapping reads exactly the host's bytes, each pagein is one cluster-sized read in the
vnodefs trace from this process, shared writes reach the host (msync, pageout), private writes do
not, one VM object per file is shared by every task, truncation underneath is a clear fault error
(through the mount: at the very next access, from the daemon's setsize report, even for pages
still resident and mapped; growth drops nothing; a flooded report channel never stalls the daemon),
behaviour RANDOM disables clustering, working-set widening stops at resident pages, and the mount
is gone after close even when the body raised."""

import os
import random

import pytest

from vmcore import Kernel
from vmcore.errors import InvalidAddress, InvalidArgument
from vnodefs import trace as vtrace

pytestmark = pytest.mark.fuse
PS = 4096


def our_mounts():
    with open("/proc/mounts") as fh:
        return [ln for ln in fh if "vmcore-files-" in ln]


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    (d / "data").mkdir(parents=True)
    rnd = random.Random(5)
    (d / "data" / "db").write_bytes(rnd.randbytes(2 << 20))
    (d / "small").write_bytes(rnd.randbytes(3 * PS + 100))
    yield d
    assert not our_mounts()


def test_map_reads_host_bytes_in_cluster_requests(src, tmp_path):
    tr = tmp_path / "t.trace"
    host = (src / "data" / "db").read_bytes()
    with Kernel(memory="16MiB", files=src, trace=tr, latency="ssd") as k:
        t = k.task_create(name="reader")
        m = t.vm_map_file("data/db", shared=False, prot="r")
        assert t.read(m, len(host)) == host
        small = t.vm_map_file("small")
        assert t.read(small, 3 * PS + 100) == (src / "small").read_bytes()
        st = k.vm_stat()
        hard, reqs = st["Hard faults"], st["Pagein requests"]
        live = k.load_trace()
        assert live.op_mask("read").sum() == reqs  # flushed while still mounted
        assert k.mountpoint and os.path.ismount(k.mountpoint)
    tra = vtrace.load(tr)
    r = tra.records[tra.op_mask("read")]
    fid = {v: kk for kk, v in tra.files.items()}["data/db"]
    rd = r[r["file"] == fid]
    assert len(r) == hard == reqs  # one request per hard fault
    assert len(rd) == 57  # 512 pages in 1 + 8 page clusters
    assert set(rd["pid"].tolist()) == {os.getpid()}
    # blind launch read-ahead of a > 1 MiB file: 1 + 8 pages per request, page aligned, back to back
    assert (rd["length"] == 9 * PS).sum() >= len(rd) - 1
    assert (rd["offset"] % PS == 0).all()
    offs = sorted(rd["offset"].tolist())
    assert offs[:3] == [0, 9 * PS, 18 * PS]
    assert not our_mounts()


def test_shared_writes_reach_host_private_do_not(src):
    p = src / "data" / "db"
    orig = p.read_bytes()
    with Kernel(memory="2MiB", files=src) as k:
        t = k.task_create(name="w")
        sh = t.vm_map_file("data/db", shared=True)
        pr = t.vm_map_file("data/db", shared=False)
        t.write(pr + 10, b"private!")
        t.write(sh + 100, b"shared-msync")
        assert t.vm_msync(sh, PS) == 1
        assert p.read_bytes()[100:112] == b"shared-msync"
        assert p.read_bytes()[10:18] == orig[10:18]
        # pageout: dirty a page far away, force the pageout daemon to write it
        t.write(sh + (1 << 20) + 7, b"by-pageout")
        k.pageout()
        assert p.read_bytes()[(1 << 20) + 7:(1 << 20) + 17] == b"by-pageout"
        assert k.vm_stat()["Pageouts"] >= 1
        # the private copy still reads its own bytes, the shared one the file's
        assert t.read(pr + 10, 8) == b"private!"
        assert t.read(sh + 10, 8) == orig[10:18]
    assert p.read_bytes()[10:18] == orig[10:18]


def test_two_tasks_share_one_object(src):
    with Kernel(memory="16MiB", files=src) as k:
        a = k.task_create(name="a")
        b = k.task_create(name="b")
        ma = a.vm_map_file("data/db")
        mb = b.vm_map_file("data/db", prot="r")
        a.read(ma, 64 * PS)
        before = k.vm_stat()
        b.read(mb, 64 * PS)
        after = k.vm_stat()
        assert after["Pages resident"] == before["Pages resident"]
        assert after["Hard faults"] == before["Hard faults"]
        ea, eb = a.map.lookup(ma), b.map.lookup(mb)
        assert ea.object is eb.object
        assert (ea.pmap[:64] == eb.pmap[:64]).all() and (ea.pmap[:64] >= 0).all()
        a.write(ma, b"X")
        assert b.read(mb, 1) == b"X"


def test_truncate_underneath(src):
    p = src / "data" / "db"
    with Kernel(memory="16MiB", files=src) as k:
        t = k.task_create(name="trunc")
        m = t.vm_map_file("data/db")
        t.read(m, 4 * PS)
        t.read(m + 100 * PS, PS)
        obj = t.map.lookup(m).object
        os.truncate(p, 10 * PS)
        # a page-in past the new end fails, naming the file, and drops the resident tail
        with pytest.raises(InvalidAddress, match="data/db"):
            t.read(m + 50 * PS, 1)
        assert all(q < 10 for q in obj.pages)
        with pytest.raises(InvalidAddress, match="past the end of file 'data/db'"):
            t.read(m + 100 * PS, 1)
        assert t.read(m, 4) == p.read_bytes()[:4]
        os.truncate(p, 2 * PS)
        t.vm_msync(m, PS)  # msync fstat's first: pages 2.. go
        assert all(q < 2 for q in obj.pages)


def test_mount_gone_after_error_and_bad_input(src):
    with pytest.raises(RuntimeError):
        with Kernel(memory="4MiB", files=src) as k:
            t = k.task_create(name="x")
            t.read(t.vm_map_file("small"), 10)
            assert our_mounts()
            raise RuntimeError("boom")
    assert not our_mounts()
    with Kernel(memory="4MiB", files=src) as k:
        t = k.task_create(name="x")
        for bad in ("../etc/passwd", "/etc/passwd", "nope", "data"):
            with pytest.raises(InvalidArgument):
                t.vm_map_file(bad)
    with pytest.raises(InvalidArgument):
        Kernel(memory="4MiB", files=src / "missing")
    # garbage collection without close still unmounts
    k = Kernel(memory="4MiB", files=src)
    mp = k.mountpoint
    assert os.path.ismount(mp)
    k.files._finalizer()
    assert not os.path.ismount(mp)


def test_behavior_random_and_ws_widening(src, tmp_path):
    tr = tmp_path / "b.trace"
    with Kernel(memory="16MiB", files=src, trace=tr, var=tmp_path / "var",
                tws_cluster=True) as k:
        t = k.task_create(name="b")
        m = t.vm_map_file("data/db", prot="r", behavior="random")
        t.read(m, 16 * PS)
        assert k.vm_stat()["Pagein requests"] == 16  # one page per request
        t.vm_behavior_set(m, 2 << 20, "default")
        n0 = k.vm_stat()["Pagein requests"]
        t.read(m + 100 * PS, 40 * PS)  # no history: one page each (no blind read-ahead with TWS)
        assert k.vm_stat()["Pagein requests"] - n0 == 40
        obj = t.map.lookup(m).object
        k.file_cache_purge()  # still mapped: stays
        for q in list(obj.pages):
            if 100 <= q < 140:
                k.page_free(obj.pages[q])
        t.vm_behavior_set(m, 2 << 20, "random")
        t.read(m + 120 * PS, 1)  # make page 120 resident again alone ...
        t.vm_behavior_set(m, 2 << 20, "default")
        n1 = k.vm_stat()["Pagein requests"]
        t.read(m + 100 * PS, 1)  # ... the re-fault widens over touched pages, stops at 120
        assert k.vm_stat()["Pagein requests"] - n1 == 1
        assert all(q in obj.pages for q in range(100, 121))
        assert 121 not in obj.pages
    tra = vtrace.load(tr)
    r = tra.records[tra.op_mask("read")]
    assert (r["length"] == 20 * PS).sum() == 1


def test_interpreter_exit_without_close_unmounts(src):
    import subprocess
    import sys

    code = ("import sys; from vmcore import Kernel; k = Kernel(memory='4MiB', files=sys.argv[1]); "
            "t = k.task_create(name='x'); t.read(t.vm_map_file('small'), 10); "
            "print(k.mountpoint, flush=True)")
    res = subprocess.run([sys.executable, "-c", code, str(src)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    mp = res.stdout.strip()
    assert mp and not os.path.ismount(mp) and not os.path.exists(mp)


def test_behavior_clustering_option(src, tmp_path):
    """cluster="behavior": 10.5's vm_object_cluster_size for file objects (xnu-1228)."""
    tr = tmp_path / "c.trace"
    with Kernel(memory="16MiB", files=src, trace=tr, cluster="behavior") as k:
        t = k.task_create(name="c")
        m = t.vm_map_file("data/db", prot="r")
        t.read(m + 40 * PS, 1)  # default, no run: the aligned 32-page window [32, 64)
        obj = t.map.lookup(m).object
        assert sorted(obj.pages) == list(range(32, 64))
        t.read(m + 64 * PS, 1)  # continues the request: a run of 32 -> 33 pages ahead
        assert sorted(obj.pages) == list(range(32, 64 + 34))
        s = t.vm_map_file("data/db", offset=1 << 20, size=256 * PS, prot="r",
                          behavior="sequential")
        t.read(s, 1)  # sequential, no run yet: the page + 1 ahead, nothing behind
        assert sorted(q for q in obj.pages if q >= 256) == [256, 257]
        r = t.vm_map_file("data/db", offset=400 * PS, size=50 * PS, prot="r", behavior="rseqntl")
        t.read(r + 10 * PS, 1)  # reverse sequential: the page and 1 behind
        assert sorted(q for q in obj.pages if q >= 400) == [409, 410]
        # never bridges a resident page: 36..40 free again, a fault at 33 stops at the resident 41
        for q in range(33, 41):
            k.page_free(obj.pages[q])
        t.read(m + 33 * PS, 1)
        assert all(q in obj.pages for q in range(33, 41))
    lens = vtrace.load(tr).records["length"]
    assert sorted(set((lens // PS).tolist()) - {0}) == [2, 8, 32, 34]
    with pytest.raises(InvalidArgument):
        Kernel(memory="4MiB", cluster="10.6")


def test_vnode_pager_contract_on_a_mount(tmp_path):
    from vmcore.testing import check_pager
    from vnodefs.mount import mounted
    from vnodefs.pager import VnodePager

    d = tmp_path / "c"
    d.mkdir()
    (d / "f64").write_bytes(bytes(64 * PS))
    (d / "tail").write_bytes(b"t" * (3 * PS + 5))
    made = []

    def make(name, **kw):
        made.append(VnodePager(os.path.join(m.mountpoint, name), PS, **kw))
        return made[-1]

    with mounted(str(d), cache="direct") as m:
        try:
            check_pager(lambda: make("f64"), npages=64)
            check_pager(lambda: make("tail", writable=False), writable=False)
            p = make("tail", writable=False)
            bufs = [memoryview(bytearray(b"z" * PS)) for _ in range(5)]
            assert [r.name for r in p.data_request(0, bufs)] == ["OK"] * 4 + ["BAD"]
            assert bytes(bufs[3]) == b"t" * 5 + bytes(PS - 5)  # tail page zero-filled past EOF
            assert p.requests == 1
            assert p.data_return(0, bufs[:1])[0].name == "ERROR" and "read-only" in p.last_error
            w = make("tail")
            assert [r.name for r in w.data_return(3 * PS, bufs[:2])] == ["OK", "ERROR"]
            assert "past the end" in w.last_error
        finally:
            for pg in made:
                pg.terminate()
    assert (d / "f64").stat().st_size == 64 * PS  # write-backs never extend the file


# ---- truncation through the mount: the daemon's setsize reports (vnodefs.events) -----------------

def _check(k):
    """vmcore.invariants.check on a files kernel (it counts the file cache's reference on each file
    object through Kernel.external_object_refs)."""
    from vmcore import invariants

    invariants.check(k)


def _run(code, *args):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_truncate_through_mount_drops_resident_pages(src):
    p = src / "data" / "db"
    host = p.read_bytes()
    new = 100 * PS + 10
    with Kernel(memory="16MiB", files=src) as k:
        t = k.task_create(name="trunc")
        m = t.vm_map_file("data/db")
        other = k.task_create(name="other")
        m2 = other.vm_map_file("data/db", prot="r")
        assert t.read(m + 500 * PS, 12 * PS) == host[500 * PS:512 * PS]  # resident near the end
        assert other.read(m2 + 505 * PS, 8) == host[505 * PS:505 * PS + 8]  # mapped in 2 tasks
        t.write(m + 510 * PS, b"dirty past the new end")
        t.read(m, 4 * PS)
        t.read(m + 100 * PS, PS)  # the new tail page, resident
        obj = t.map.lookup(m).object
        assert {500, 505, 510, 100} <= set(obj.pages)
        hard = k.vm_stat()["Hard faults"]
        # another process truncates the file through the kernel's own mount
        _run("import os, sys; os.truncate(sys.argv[1], int(sys.argv[2]))",
             os.path.join(k.mountpoint, "data", "db"), new)
        # no msync, no revalidate: the very next access past the new end fails, naming the file
        with pytest.raises(InvalidAddress, match="past the end of file 'data/db'"):
            t.read(m + 505 * PS, 1)
        assert all(q <= 100 for q in obj.pages)
        assert obj.size == new
        with pytest.raises(InvalidAddress, match="data/db"):
            other.read(m2 + 505 * PS, 1)
        with pytest.raises(InvalidAddress, match="data/db"):
            t.access([m + 101 * PS])
        # pages before the end still read the right bytes, without a page-in
        assert t.read(m, 4 * PS) == host[:4 * PS]
        assert t.read(m + 100 * PS, 10) == host[100 * PS:new]
        assert t.read(m + 100 * PS + 10, 6) == bytes(6)  # the tail page past EOF reads as zeros
        assert k.vm_stat()["Hard faults"] == hard
        assert k.vm_stat()["File events"] == 1 and k.vm_stat()["File events dropped"] == 0
        _check(k)
        k.pageout()  # the dropped dirty page is not written back (it would re-extend the file)
        _check(k)
    assert p.stat().st_size == new
    assert p.read_bytes() == host[:new]


def test_o_trunc_open_through_mount(src):
    p = src / "small"
    with Kernel(memory="4MiB", files=src) as k:
        t = k.task_create(name="o")
        m = t.vm_map_file("small")
        pr = t.vm_map_file("small", shared=False)
        t.read(m, 3 * PS + 100)
        t.write(pr + PS, b"my private copy")  # copied into the private mapping's shadow object
        t.read(pr + 2 * PS, 1)  # resident in the file object only
        obj = t.map.lookup(m).object
        # open(O_TRUNC) in this process, through the mount path
        with open(os.path.join(k.mountpoint, "small"), "wb") as fh:
            fh.write(b"")
        with pytest.raises(InvalidAddress, match="small"):
            t.read(m, 1)
        assert not obj.pages
        # the private mapping keeps the page it copied (it belongs to its shadow object, as in
        # XNU); the pages it never copied fault past the end like the shared mapping's
        assert t.read(pr + PS, 15) == b"my private copy"
        with pytest.raises(InvalidAddress, match="small"):
            t.read(pr + 2 * PS, 1)
        _check(k)
    assert p.stat().st_size == 0


def test_grow_through_mount_drops_nothing(src):
    p = src / "small"
    host = p.read_bytes()
    with Kernel(memory="4MiB", files=src) as k:
        t = k.task_create(name="g")
        m = t.vm_map_file("small")
        t.read(m, 3 * PS + 100)
        obj = t.map.lookup(m).object
        before = dict(obj.pages)
        os.truncate(os.path.join(k.mountpoint, "small"), 8 * PS)
        hard = k.vm_stat()["Hard faults"]
        assert t.read(m, 3 * PS + 100) == host
        assert dict(obj.pages) == before
        assert k.vm_stat()["Hard faults"] == hard
        assert k.vm_stat()["File events"] == 0


def test_flooded_channel_daemon_keeps_serving(src):
    """Nobody consumes the reports: the daemon drops and counts them, never blocks; the kernel then
    revalidates every file and still drops the pages past the end."""
    name = "f" * 200  # ~220-byte records: a 64 KiB pipe holds ~300
    p = src / name
    p.write_bytes(bytes(range(256)) * (1024 * PS // 256))
    with Kernel(memory="16MiB", files=src) as k:
        t = k.task_create(name="flood")
        m = t.vm_map_file(name)
        t.read(m + 900 * PS, 100 * PS)
        obj = t.map.lookup(m).object
        mp = os.path.join(k.mountpoint, name)
        n = 600
        _run("import os, sys\n"
             "p, n = sys.argv[1], int(sys.argv[2])\n"
             "for i in range(1, n + 1): os.truncate(p, (1024 - i) * 4096)\n", mp, n)
        st = k.vm_stat()
        assert st["File events"] + st["File events dropped"] == n
        assert st["File events dropped"] > 0
        with open(mp, "rb") as fh:  # the daemon still serves
            assert fh.read(PS) == p.read_bytes()[:PS]
        with pytest.raises(InvalidAddress, match=name[:20]):
            t.read(m + 1000 * PS, 1)
        assert all(q < 1024 - n for q in obj.pages)
        assert obj.size == (1024 - n) * PS
        assert k.files.event_stats()["dropped"] == st["File events dropped"]
        assert t.read(m + 400 * PS, 4) == bytes(range(4))
