"""Launch profiles of a lab Kernel: working-set recording, app_profile storage, seeding, scoring.

Owns (wiring layer): `LaunchProfiles`, built by vmcore.lab.Kernel when it has
both `files=` and `var=`. It is the kernel's event sink (every FaultEvent goes to the
WorkingSetRecorder and to the faulting task's PrefetchScoreboard) and does, per
`task_create(executable=...)`:

  1. identity: stat SOURCE_DIR/executable on the host -> AppIdentity(path relative to SOURCE_DIR,
     inode, mtime); app name = the executable's last path component; uid = the task's uid;
  2. `AppProfileStore(VAR).load(uid, app, identity)` (a damaged file is reported, moved aside and
     treated as absent; a stale one (other inode/mtime) is treated as absent);
  3. no profile -> record this launch (WorkingSetRecorder.start: the faults of its first
     `launch_window` seconds of task time, model time); the profile is written at the first fault
     past the window, at `poll()`, or at `t.terminate()` (XNU's twin rule: an existing profile of
     the same identity is kept, `save(if_absent=True)`), or merged with the stored one keeping
     pages seen in >= merge_min launches when merging was asked (`profile_merge_min` / merge_min);
  4. a profile and seed="eager": before the task runs, the profiled file pages that are not
     resident are sorted and coalesced (holes of up to `seed_max_gap` pages bridged, runs of at most
     MAX_UPL_TRANSFER pages), put in device-address order when the mount has a device model (the
     order the vnodefs playlist uses), and each run is brought in by
     vmcore.prefetch.object_prefetch as one pager request (one vnodefs read);
     seed="lazy": a LazySeeder; the first touch of a page in a 32-page frame (of a file, or of the
     address space for anonymous pages) first prefetches that frame's profiled pages (file: one
     request spanning them, minus resident pages; anonymous: the pages still in swap, from the
     object that holds them), then the access proceeds (a soft fault);
     a seeded launch is not recorded unless record=True, or merging was asked
     (profile_merge_min= / merge_min=: then every launch is merged in unless record=False).

Scoring: every page a seeding request brought in is `issued` + `landed` on the task's
PrefetchScoreboard at that moment (model time); every fault event of the task is a `touched` (its
first one counts). So used + wasted == pages prefetched, and late counts pages touched before they
landed (0 in this synchronous model unless a seeding request failed).

Caveats: anonymous pages of an eager launch are not seeded (a new task has no anonymous memory
in swap before it runs); profiles with another page size than the kernel's are ignored (said once).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from vmcore.errors import InvalidArgument
from vmcore.prefetch import object_prefetch
from vmcore.workingset import (
    CLUSTER_FRAME_PAGES, AppIdentity, LazySeeder, PrefetchScoreboard, ProfileError,
    WorkingSetRecorder, coalesce, validate_app_name,
)

SEED_MODES = ("eager", "lazy", "off")
#: eager seeding bridges holes of up to this many pages (one TWS frame; XNU's path A read the
#: profiled pages of a frame "and any gaps between them")
SEED_MAX_GAP = CLUSTER_FRAME_PAGES - 1


class LaunchProfiles:
    def __init__(self, kernel, fs, var, window_s: float = 45.0, merge_min: int | None = None,
                 seed_max_gap: int = SEED_MAX_GAP, report=None):
        from swapd.profiles import AppProfileStore

        self.kernel = kernel
        self.fs = fs
        self.report = report or (lambda line: print(f"vmcore: {line}", file=sys.stderr))
        self.store = AppProfileStore(var)
        self.merge_min = _merge_min(merge_min)
        if isinstance(seed_max_gap, bool) or not isinstance(seed_max_gap, int) or seed_max_gap < 0:
            raise InvalidArgument(f"seed_max_gap {seed_max_gap!r} must be a non-negative integer")
        self.seed_max_gap = seed_max_gap
        self._layout = None  # vnodefs.layout.Layout of the mount's source, for device order
        try:
            self.rec = WorkingSetRecorder(fs.resolve, window_s=window_s, on_profile=self._save)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        self._merge: dict[tuple[int, str], int | None] = {}
        self.saved: list = []  # profiles written (after merging), in order
        self.notices: list[str] = []
        self.chain = None  # another event sink to pass every event on to

    # ---- the event sink -----------------------------------------------------------------------------
    def __call__(self, ev) -> None:
        self.rec(ev)
        if self.chain is not None:
            self.chain(ev)
        t = ev.task
        sb = getattr(t, "scoreboard", None)
        if sb is not None:
            if ev.base_object_id >= 0:
                where = self.fs.resolve(ev.base_object_id, ev.base_offset)
            else:
                where = self.fs.resolve(ev.object_id, ev.offset)
            key = where if where is not None else (None, ev.address >> self.kernel.page_shift)
            sb.touched(key, self.kernel.clock.now())

    def contains(self, task, obj, pidx: int) -> bool:
        return self.rec.contains(task, obj, pidx)

    def _notice(self, line: str) -> None:
        self.notices.append(line)
        self.report(line)

    # ---- launch -------------------------------------------------------------------------------------
    def launch(self, t, executable, seed: str = "eager", uid: int | None = None,
               record: bool | None = None, merge_min: int | None = None) -> None:
        if seed not in SEED_MODES:
            raise InvalidArgument(f"seed {seed!r} must be one of {', '.join(SEED_MODES)}")
        if record is not None and not isinstance(record, bool):
            raise InvalidArgument(f"record={record!r} must be True, False or None")
        uid = os.getuid() if uid is None else uid
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 0xFFFFFFFF:
            raise InvalidArgument(f"uid {uid!r} must be an integer from 0 to 2**32-2")
        rel = self.fs.relpath(executable)
        try:
            st = os.stat(os.path.join(self.fs.source, rel))
        except OSError as e:
            raise InvalidArgument(f"executable {rel!r}: {e.strerror}") from None
        app = os.path.basename(rel)
        try:
            validate_app_name(app)
            identity = AppIdentity.of_stat(rel, st)
        except ValueError as e:
            raise InvalidArgument(f"executable {rel!r}: {e}") from None
        t.executable, t.identity, t.uid = rel, identity, uid
        try:
            prof = self.store.load(uid, app, identity)
        except ProfileError as e:
            self._notice(f"profile of {app!r} unusable: {e}")
            prof = None
        if prof is not None and prof.page_size != self.kernel.page_size:
            self._notice(f"profile of {app!r} has page size {prof.page_size}, the kernel "
                         f"{self.kernel.page_size}: not used")
            prof = None
        seeded = prof is not None and seed != "off"
        t.seed_mode = seed if seeded else "off"
        if seeded:
            t.profile = prof
            t.scoreboard = PrefetchScoreboard()
            if seed == "eager":
                self.seed_eager(t, prof)
            else:
                pbf = dict(prof.pages_by_file())
                anon = prof.anon_pages()
                if len(anon):
                    pbf[None] = anon
                t.lazy_seeder = LazySeeder(pbf)
        mm = _merge_min(merge_min) if merge_min is not None else self.merge_min
        # merging asked (profile_merge_min / merge_min): every launch contributes unless record=False
        do_record = record if record is not None else (prof is None or mm is not None)
        if do_record:
            self._merge[(uid, app)] = mm
            self.rec.start(t, identity, app, uid)

    def task_ended(self, t) -> None:
        if self.rec.recording(t):
            self.rec.finish(t)
        else:
            self.rec.forget(t)

    def poll(self) -> list:
        """Close every recording whose launch window has passed (writes their profiles)."""
        return self.rec.poll()

    def _save(self, p) -> None:
        mm = self._merge.get((p.uid, p.app))
        try:
            if mm is None:
                if self.store.save(p, if_absent=True):
                    self.saved.append(p)
                return
            try:
                self.store.read(p.uid, p.app)
                have = True
            except ProfileError:
                have = False
            self.saved.append(self.store.save_merged(p, mm) if have else
                              (self.store.save(p) and p))
        except (ProfileError, OSError) as e:
            self._notice(f"could not write the profile of {p.app!r}: {e}")

    # ---- seeding ------------------------------------------------------------------------------------
    def _prefetch(self, t, obj, path, first: int, n: int) -> int:
        landed = object_prefetch(self.kernel, obj, first, n)
        if landed:
            now = self.kernel.clock.now()
            sb = t.scoreboard
            for p in landed:
                key = (path, p)
                sb.issued(key)
                sb.landed(key, now)
        return len(landed)

    def seed_eager(self, t, prof) -> int:
        """Bring the profile's non-resident file pages in: sorted, coalesced, one request per run."""
        fs = self.fs
        want = {}
        objs = {}
        for path, pages in prof.pages_by_file().items():
            try:
                obj = fs.object_for(path)
            except InvalidArgument as e:
                self._notice(f"seeding {prof.app!r}: skipped {path!r}: {e}")
                continue
            pages = np.asarray(pages, dtype=np.int64)
            pages = pages[pages < obj.npages]
            if obj.pages:
                res = np.fromiter(obj.pages.keys(), dtype=np.int64, count=len(obj.pages))
                pages = pages[~np.isin(pages, res)]
            if pages.size:
                want[path] = pages
                objs[path] = obj
        total = 0
        for path, first, n in self._device_order(coalesce(want, max_gap=self.seed_max_gap)):
            total += self._prefetch(t, objs[path], path, first, n)
        return total

    def _device_order(self, runs) -> list:
        """The runs in the order of their first byte's address on the mount's modelled device (as
        the daemon's playlist is), so one seeded launch sweeps the disk once; file order when the
        mount has no device model."""
        from vnodefs.latency import parse_latency
        from vnodefs.layout import LayoutError, choose

        runs = list(runs)
        if not parse_latency(self.fs.latency).active:
            return runs
        if self._layout is None:
            try:
                self._layout = choose(self.fs.source)
            except LayoutError:
                return runs
        ps = self.kernel.page_size
        keys = {}
        for path in {r[0] for r in runs}:
            try:
                fd = os.open(os.path.join(self.fs.source, path), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                for r in runs:
                    if r[0] == path:
                        keys[r] = self._layout.address(fd, r[1] * ps)
            except OSError:
                pass
            finally:
                os.close(fd)
        far = 1 << 62
        return sorted(runs, key=lambda r: (keys.get(r) if keys.get(r) is not None else far, r))

    def lazy_touch(self, t, addr: int) -> int:
        """Lazy seeding before the access at addr (called by FileTask._touch on a miss)."""
        k = self.kernel
        seeder = t.lazy_seeder
        e = t.map.lookup(addr)
        if e is None or e.is_submap:
            return 0
        shift = k.page_shift
        p = (e.offset >> shift) + ((addr - e.start) >> shift)
        obj = e.object
        while obj.shadow is not None and p not in obj.pages:
            p += obj.shadow_offset
            obj = obj.shadow
        path = self.fs.path_of(obj)
        if path is not None:
            reqs = seeder.on_touch(path, p)
            if not reqs:
                return 0
            pages = np.concatenate([np.arange(f, f + n) for _, f, n in reqs])
            pages = pages[pages < obj.npages]
            pages = [q for q in pages.tolist() if q not in obj.pages]
            if not pages:
                return 0
            return self._prefetch(t, obj, path, pages[0], pages[-1] + 1 - pages[0])
        # anonymous: the profiled virtual pages of this frame that are still in swap
        vpn = addr >> shift
        reqs = seeder.on_touch(None, vpn)
        got = 0
        for _, first, n in reqs:
            for v in range(first, first + n):
                a = v << shift
                ent = t.map.lookup(a)
                if ent is None or ent.is_submap:
                    continue
                q = (ent.offset >> shift) + ((a - ent.start) >> shift)
                o = ent.object
                while o is not None and q not in o.pages and q not in o.existence:
                    q += o.shadow_offset
                    o = o.shadow
                if o is None or q in o.pages or not o.internal:
                    continue
                landed = object_prefetch(k, o, q, 1)
                if landed:
                    t.scoreboard.issued((None, v))
                    t.scoreboard.landed((None, v), k.clock.now())
                    got += 1
        return got


def _merge_min(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InvalidArgument(f"profile merge min count {v!r} must be a positive integer")
    return v
