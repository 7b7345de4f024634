"""The kernel: one instance of the model (physical memory, tasks, objects, pageout, policy, stats).

Owns: `Kernel`, the glue every mechanism shares:
  * frame allocation (`page_grab`: vm_page_grab, which wakes the pageout daemon under the mach
    policy or asks the replacement policy for a victim under a reference policy), `page_insert`,
    `page_free`;
  * the pmap layer: `pmap_enter`, `pmap_disconnect` (remove every translation of a frame),
    `pmap_remove_range`, `pmap_write_protect`, with the pv lists in PhysicalMemory;
  * wiring of frames, the replacement-policy hooks, object creation and collapse entry points,
    and the object cache (`vm_object_enter`: one VM object per pager, vm_stat's lookups / hits);
  * `task_create` (64-bit tasks, or 32-bit ones with is64=False), `make_memory_entry`, `make_named_region`, `object_create`, `vm_stat`,
    `format_vm_stat`, `pageout` (a forced scan), `close`;
  * hooks for the subsystem modules: `shared_regions` (the system set new tasks map,
    vmcore.shared_region) and `shared_region_sets`; `kmem` (kernel_map / kernel_object, made by
    vmcore.kmem on first use); `wired_acct` (vmcore.wired, with wired_accounting=True; vm_stat
    syncs it first); object_create enters a DEVICE pager's pages as fictitious frames
    (vmcore.device_pager).

Construction: `Kernel(memory="64MiB", page_size=4096, policy="mach", default_pager=None,
clock=None, ncpu=1, event_sink=None)`. `memory` is bytes or a string ("64MiB", "512KiB", "1GiB");
`default_pager` is a vmcore.pager.PagerFactory (None: vmcore.testing.memory_pager_factory);
`wired_accounting=True` charges Apple's wired cost of kernel resources in real wired pages
(vmcore.wired). `clock` has `.now()` (None: a ManualClock the model advances per fault and per
scan); `policy` is
"mach" (active/inactive queues + pageout daemon) or a reference policy name from vmcore.policy
("lru", "fifo", "clock"), or a ReplacementPolicy object.

Policy contract (vmcore.policy.ReplacementPolicy) as the kernel calls it:
  inserted(frame)      a frame now holds a newly faulted-in page (zero fill, pagein, COW copy),
                       or a page became pageable again (unwired)
  referenced(frames)   hits, in access order, as one numpy array per batch (soft faults too)
  removed(frame)       the frame stops holding a tracked page for a reason other than eviction
                       (deallocate, object death, wire)
  select_victim()      when a fault needs a frame and none is free; the kernel pages the victim out
                       if dirty, then frees it. Wired pages are never handed to the policy.
Under a reference policy all frames are usable, nothing is scanned, clustering is off.

Invariants: see vmcore.invariants. Single-threaded; no real time.
"""

from __future__ import annotations

import numpy as np

from vmcore.clock import ManualClock
from vmcore.errors import InvalidArgument, ResourceShortage, VMError
from vmcore.object import VMObject, object_collapse, object_deallocate
from vmcore.pageout import PageoutDaemon, thresholds
from vmcore.pager import Pager, PagerKind
from vmcore.resident import ACTIVE, PhysicalMemory
from vmcore.stats import VMStats, format_vm_stat
from vmcore.types import format_size, parse_prot, parse_size

#: under the mach policy memory must hold the pageout reserve (96 + ncpu pages) plus this margin
MACH_MIN_MARGIN_PAGES = 32
#: reference policies need at least this many frames (a copy-on-write needs two)
REF_MIN_PAGES = 2

USER_MIN_ADDRESS = 0x1000
#: the end of a 64-bit task's map. Memory Management in Mac OS X gives a 64-bit process "approximately 18 exabytes"
#: (2^64 bytes, the architectural limit); XNU's user limit is lower and depends on the
#: architecture (2^47 on x86_64), and the model keeps 2^47: a larger map gains nothing a model
#: run can use and keeps every address an int64 of the vectorised access path
USER_MAX_ADDRESS = 1 << 47
#: the end of a 32-bit task's map: Memory Management in Mac OS X, "For 32-bit processes, each process has an address
#: space that can grow dynamically up to a limit of four gigabytes" (XNU's VM_MAX_ADDRESS keeps
#: the last page back; the model follows the seed)
USER32_MAX_ADDRESS = 1 << 32


class Kernel:
    #: the Task class this kernel creates (task_create, fork); the wiring layer (vmcore.lab) sets a
    #: subclass that adds file mappings and launch profiles. None: vmcore.task.Task.
    task_class = None

    def __init__(self, memory: int | str = "64MiB", page_size: int = 4096, policy="mach",
                 default_pager=None, clock=None, ncpu: int = 1, event_sink=None,
                 wired_accounting: bool = False):
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 512 \
                or page_size & (page_size - 1) or page_size > (1 << 20):
            raise InvalidArgument(
                f"page_size {page_size!r} must be a power of two between 512 and 1MiB")
        if isinstance(ncpu, bool) or not isinstance(ncpu, int) or not 1 <= ncpu <= 1024:
            raise InvalidArgument(f"ncpu {ncpu!r} must be an integer from 1 to 1024")
        mem = parse_size(memory, "memory")
        if mem <= 0:
            raise InvalidArgument(f"memory {memory!r} must be positive")
        if mem > (1 << 40):
            raise InvalidArgument(f"memory {memory!r} is absurd (more than 1TiB)")
        nframes = mem // page_size
        self.page_size = page_size
        self.page_shift = page_size.bit_length() - 1
        self.nframes = nframes
        self.ncpu = ncpu
        # ---- policy ----
        self.policy = None
        self.policy_name = "mach"
        if isinstance(policy, str):
            name = policy.strip().lower()
            if name != "mach":
                try:
                    from vmcore.policy import make_policy  # the other helper's module
                except ImportError:
                    make_policy = None
                if make_policy is None:
                    raise InvalidArgument(
                        f"policy {policy!r} is not available (vmcore.policy is missing); use 'mach'")
                self.policy = make_policy(name, max(nframes, 1))
                self.policy_name = name
        elif policy is None:
            raise InvalidArgument("policy None is not a policy; use 'mach', 'lru', 'fifo' or 'clock'")
        else:
            for meth in ("inserted", "referenced", "removed", "select_victim"):
                if not callable(getattr(policy, meth, None)):
                    raise InvalidArgument(f"policy object {policy!r} has no {meth}() method")
            self.policy = policy
            self.policy_name = getattr(policy, "name", type(policy).__name__)
        reserved, free_min, free_target = thresholds(nframes, ncpu)
        if self.policy is None:
            need = reserved + MACH_MIN_MARGIN_PAGES
            if nframes < need:
                raise InvalidArgument(
                    f"memory {memory!r} ({nframes} pages of {page_size} bytes) is below the mach "
                    f"policy's minimum of {need} pages ({format_size(need * page_size)}B): the "
                    f"pageout reserve is {reserved} pages (96 + ncpu) plus a margin of "
                    f"{MACH_MIN_MARGIN_PAGES}")
        elif nframes < REF_MIN_PAGES:
            raise InvalidArgument(
                f"memory {memory!r} holds {nframes} pages of {page_size} bytes; a reference policy "
                f"needs at least {REF_MIN_PAGES}")
        # ---- state ----
        self.pm = PhysicalMemory(nframes, page_size)
        self.stats = VMStats()
        self.pageout_daemon = PageoutDaemon(self, ncpu)
        self.free_reserved = self.pageout_daemon.free_reserved
        self.free_min = self.pageout_daemon.free_min
        self.free_target = self.pageout_daemon.free_target
        self.objects: dict[int, VMObject] = {}
        #: the object cache (vm_object_enter's pager hash): id(pager) -> the VM object over it;
        #: an entry counts only while its object is alive and still holds that pager
        self.pager_objects: dict[int, VMObject] = {}
        self.tasks: dict[int, object] = {}
        self.named_entries: list = []
        self.submaps: list = []
        #: the system shared regions new tasks get (vmcore.shared_region), and every set made
        self.shared_regions = None
        self.shared_region_sets: list = []
        self.kmem = None  # vmcore.kmem.KernelMemory (kernel_map, kernel_object), made on first use
        self.wired_acct = None  # vmcore.wired.WiredAccounting when wired_accounting=True
        self.upls: set = set()
        #: (object id, page) -> [(UPL, index)]: UPLs waiting for a page another UPL holds busy
        self.upl_waiters: dict = {}
        #: live vm_map_copy lists (vmcore.map_copy): each holds references on its objects
        self.map_copies: set = set()
        self.tracked: list[bool] = [False] * nframes  # frames the policy tracks (hot: a list)
        from vmcore.policy import ClockPolicy, FIFOPolicy, LRUPolicy

        #: policy_hit's reusable one-frame batch (the reference policies never keep the array)
        self._one = (np.empty(1, dtype=np.int32)
                     if type(self.policy) in (LRUPolicy, FIFOPolicy, ClockPolicy) else None)
        self.ntracked = 0
        self.pmap_epoch = 0
        self.nwired = 0
        #: the working set detection subsystem (vmcore.workingset.TaskWorkingSets): every fault
        #: is recorded per task, and the pagein cluster rule asks it (mach policy only: the
        #: reference policies never cluster)
        self.tws = None
        if self.policy is None:
            from vmcore.workingset import TaskWorkingSets

            self.tws = TaskWorkingSets()
        #: the cluster rule's working-set hook: .contains(task, obj, pidx) -> bool; the kernel's
        #: own TWS by default, another recorder when the wiring layer sets one
        self.working_set = self.tws
        self.last_pageout_error: str | None = None
        self._owns_clock = clock is None
        self.clock = ManualClock() if clock is None else clock
        if not callable(getattr(self.clock, "now", None)):
            raise InvalidArgument(f"clock {clock!r} has no now() method")
        if default_pager is None:
            from vmcore.testing import memory_pager_factory

            default_pager = memory_pager_factory(page_size)
        if not callable(default_pager):
            raise InvalidArgument(f"default_pager {default_pager!r} is not a PagerFactory")
        self.default_pager = default_pager
        self._sink = None
        self.event_sink = event_sink
        self._next_task = 1
        self.closed = False
        if wired_accounting:
            from vmcore.wired import enable_wired_accounting

            enable_wired_accounting(self)

    # ---- event sink -------------------------------------------------------------------------------
    @property
    def event_sink(self):
        return self._sink_obj

    @event_sink.setter
    def event_sink(self, sink) -> None:
        """A callable taking one vmcore.types.FaultEvent, or an object with .fault(event); None
        for no-op."""
        self._sink_obj = sink
        if sink is None:
            self._sink = None
        elif callable(getattr(sink, "fault", None)):
            self._sink = sink.fault
        elif callable(sink):
            self._sink = sink
        else:
            raise InvalidArgument(f"event sink {sink!r} is neither callable nor has fault()")

    # ---- frames -----------------------------------------------------------------------------------
    def page_grab(self) -> int:
        """vm_page_grab: a free frame, waking the pageout daemon (mach) or evicting (reference)."""
        pm = self.pm
        if self.policy is None:
            d = self.pageout_daemon
            free = len(pm.free)
            if free < d.free_min or (free < d.free_target
                                     and len(pm.inactive) < (len(pm.active) + len(pm.inactive)) // 3):
                d.scan()
            if len(pm.free) <= d.free_reserved:
                raise ResourceShortage(
                    f"no free page: {len(pm.free)} free frames is at the reserve "
                    f"({d.free_reserved}); {len(pm.wired)} wired, "
                    f"{len(pm.active) + len(pm.inactive)} pageable could not be freed"
                    + (f" (last pageout error: {self.last_pageout_error})"
                       if self.last_pageout_error else ""))
            return pm.free.pop()
        if not pm.free:
            self.pageout_daemon.evict_one()
        return pm.free.pop()

    def page_insert(self, obj: VMObject, pidx: int, f: int) -> None:
        """vm_page_insert + activate: frame f now holds page pidx of obj (active queue tail)."""
        pm = self.pm
        obj.pages[pidx] = f
        pm.owner[f] = obj
        pm.objid_mv[f] = obj.id
        pm.pidx_mv[f] = pidx
        pm.active[f] = None
        pm.q_mv[f] = ACTIVE

    def page_free(self, f: int, force: bool = False) -> None:
        """vm_page_free: disconnect f from every pmap, remove it from its object, free it."""
        pm = self.pm
        if pm.pv[f]:
            self.pmap_disconnect(f)
        obj = pm.owner[f]
        if obj is not None:
            p = pm.pidx_mv[f]
            pages = obj.pages
            if pages.get(p) == f:
                del pages[p]
        if self.tracked[f]:
            self.tracked[f] = False
            self.ntracked -= 1
            self.policy.removed(f)
        if pm.wc_mv[f]:
            self.nwired -= 1
        pm.release(f)

    # ---- policy hooks -----------------------------------------------------------------------------
    def policy_insert(self, f: int) -> None:
        if not self.tracked[f] and not self.pm.wc_mv[f]:
            self.tracked[f] = True
            self.ntracked += 1
            self.policy.inserted(f)

    def policy_hit(self, f: int) -> None:
        one = self._one
        if one is None:  # a policy object of unknown make gets a fresh array (it may keep it)
            self.policy.referenced(np.array([f], dtype=np.int32))
        else:  # the reference policies use the batch at once: reuse one array
            one[0] = f
            self.policy.referenced(one)

    def frame_wire(self, f: int) -> None:
        pm = self.pm
        if self.tracked[f]:
            self.tracked[f] = False
            self.ntracked -= 1
            self.policy.removed(f)
        if pm.wire_count[f] == 0:
            self.nwired += 1
        pm.wire(f)

    def frame_unwire(self, f: int) -> None:
        pm = self.pm
        pm.unwire(f)
        if pm.wire_count[f] == 0:
            self.nwired -= 1
            if self.policy is not None:
                self.policy_insert(f)

    # ---- pmap -------------------------------------------------------------------------------------
    def pmap_enter(self, e, slot: int, f: int, writable: bool) -> None:
        pmv = e.pmv
        old = pmv[slot]
        if old == f:
            e.pwv[slot] = writable
            return
        if old >= 0:
            self.pv_remove(old, e, slot)
        pmv[slot] = f
        e.pwv[slot] = writable
        pv = self.pm.pv
        lst = pv[f]
        if lst is None:
            pv[f] = [(e, slot)]
        else:
            lst.append((e, slot))

    def pv_remove(self, f: int, e, slot: int) -> None:
        lst = self.pm.pv[f]
        if lst:
            for j, (pe, s) in enumerate(lst):
                if pe is e and s == slot:
                    del lst[j]
                    break
            if not lst:
                self.pm.pv[f] = None

    def pmap_disconnect(self, f: int) -> None:
        """Remove every translation of frame f."""
        pv = self.pm.pv
        lst = pv[f]
        if lst:
            for e, s in lst:
                e.pmv[s] = -1
                e.pwv[s] = False
            pv[f] = None
            self.pmap_epoch += 1

    def pmap_write_protect(self, f: int) -> None:
        lst = self.pm.pv[f]
        if lst:
            for e, s in lst:
                e.pmw[s] = False
            self.pmap_epoch += 1

    def pmap_remove_range(self, e, lo: int = 0, hi: int | None = None) -> None:
        """Remove the translations of entry slots [lo, hi)."""
        hi = len(e.pmap) if hi is None else hi
        seg = e.pmap[lo:hi]
        idx = np.flatnonzero(seg >= 0)
        if idx.size:
            for s in idx.tolist():
                self.pv_remove(int(seg[s]), e, lo + s)
            seg[:] = -1
            e.pmw[lo:hi] = False
            self.pmap_epoch += 1

    def pmap_protect_entry(self, e) -> None:
        """Write-protect every translation in entry e (fork's copy strategy)."""
        if e.pmw.any():
            e.pmw[:] = False
            self.pmap_epoch += 1

    # ---- objects ----------------------------------------------------------------------------------
    def object_create(self, size: int, pager: Pager | None = None, internal: bool = True,
                      name: str = "") -> VMObject:
        """A new VM object (ref_count 1). A file object is one whose pager has kind VNODE."""
        obj = VMObject(size, self.page_size, pager=pager, internal=internal, name=name)
        if pager is not None and pager.kind is PagerKind.DEVICE:
            from vmcore.device_pager import device_object_populate

            device_object_populate(self, obj)  # fictitious frames over the device buffer
        self.objects[obj.id] = obj
        return obj

    def vm_object_enter(self, pager: Pager, size: int, internal: bool = False,
                        name: str = "") -> tuple[VMObject, bool]:
        """vm_object_enter: the VM object of a memory object (pager), from the object cache when
        one is alive for it (a hit: the caller gets a new reference on it), else a new object
        (ref_count 1) entered in the cache. Counts vm_stat's object cache lookups and hits.
        Returns (object, hit)."""
        st = self.stats
        st.lookups += 1
        obj = self.pager_objects.get(id(pager))
        if obj is not None and obj.alive and obj.pager is pager:
            st.hits += 1
            obj.ref_count += 1
            return obj, True
        obj = self.object_create(size, pager=pager, internal=internal, name=name)
        self.pager_objects[id(pager)] = obj
        return obj, False

    def object_deallocate(self, obj) -> None:
        object_deallocate(self, obj)

    def collapse(self, obj: VMObject) -> None:
        object_collapse(self, obj)

    def entry_resolve_needs_copy(self, e) -> None:
        """vm_object_shadow on a needs_copy entry: give it a private shadow object."""
        from vmcore.object import object_shadow

        old = e.object
        if old.ref_count == 1 and old.internal and not old.shadowers and not old.true_share:
            e.needs_copy = False  # nobody else can see the object: no copy needed
            return
        new = object_shadow(self, old, e.offset >> self.page_shift, e.npages)
        e.object = new
        e.offset = 0
        e.needs_copy = False

    # ---- tasks and handles ------------------------------------------------------------------------
    def task_create(self, name: str = "task", is64: bool = True, **kwargs):
        """A new task with an empty address space: a 64-bit one (is64=True), or a 32-bit one
        whose map ends at 4 GiB (USER32_MAX_ADDRESS)."""
        from vmcore.task import Task

        if self.closed:
            raise InvalidArgument("kernel is closed")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"task name {name!r} must be a non-empty string")
        if not isinstance(is64, bool):
            raise InvalidArgument(f"is64 {is64!r} must be True (a 64-bit task) or False (32-bit)")
        if kwargs:
            raise InvalidArgument(f"task_create got unknown arguments: {', '.join(sorted(kwargs))}")
        t = (self.task_class or Task)(self, name, is64=is64)
        if self.shared_regions is not None:
            self.shared_regions.attach(t)
        if self.wired_acct is not None:
            self.wired_acct.sync()
        return t

    def external_object_refs(self):
        """The objects on which something outside the model's maps, named entries and shadows
        holds one reference each (vmcore.invariants counts them). The model holds none; the
        wiring layer's file cache overrides this."""
        return ()

    def make_memory_entry(self, task, addr: int, size: int, prot="rw"):
        """mach_make_memory_entry_64: a named entry for [addr, addr+size) of task's map."""
        from vmcore.memory_entry import make_memory_entry

        return make_memory_entry(self, task, addr, size, parse_prot(prot))

    def make_named_region(self, size: int | str, name: str = "region"):
        """vm_region_object_create: a named entry backed by a submap (a map fragment that several
        tasks can map; changes to its structure are seen by all of them)."""
        from vmcore.memory_entry import make_named_region

        return make_named_region(self, parse_size(size), name)

    # ---- statistics -------------------------------------------------------------------------------
    def vm_stat(self) -> dict[str, int]:
        pm = self.pm
        if self.wired_acct is not None:
            self.wired_acct.sync()  # "Pages wired down" includes the kernel resources' pages
        d = {
            "Pages free": len(pm.free),
            "Pages active": len(pm.active),
            "Pages inactive": len(pm.inactive),
            "Pages wired down": len(pm.wired),
        }
        d.update(self.stats.as_dict())
        d["Pages resident"] = self.nframes - len(pm.free)
        d["Pages dirty"] = int(pm.dirty.sum())
        d["Memory pages"] = self.nframes
        d["Free target"] = self.free_target if self.policy is None else 0
        d["Free min"] = self.free_min if self.policy is None else 0
        d["Free reserved"] = self.free_reserved if self.policy is None else 0
        if self.wired_acct is not None:
            d["Pages wired (kernel resources)"] = self.wired_acct.pages_held
        return d

    def format_vm_stat(self) -> str:
        return format_vm_stat(self.vm_stat(), self.page_size)

    def pageout(self, target: int | None = None) -> int:
        """Force a pageout scan until `target` frames are free (default: page out everything
        pageable). Under a reference policy, evict through the policy. Returns frames freed."""
        if target is not None and (isinstance(target, bool) or not isinstance(target, int)
                                   or target < 0):
            raise InvalidArgument(f"pageout target {target!r} must be a non-negative page count")
        want = self.nframes if target is None else min(target, self.nframes)
        if self.policy is None:
            return self.pageout_daemon.scan(want)
        freed = 0
        while len(self.pm.free) < want and self.ntracked > 0:
            try:
                self.pageout_daemon.evict_one()
            except ResourceShortage:
                break
            freed += 1
        return freed

    def pageout_step(self) -> int:
        """One step of the daemon: scan if vm_page_grab's wake-up condition holds."""
        if self.policy is None and self.pageout_daemon.should_wake():
            return self.pageout_daemon.scan()
        return 0

    # ---- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Terminate every task (freeing swap), then release physical memory."""
        if self.closed:
            return
        for t in list(self.tasks.values()):
            try:
                t.terminate()
            except VMError:
                pass
        for ne in list(self.named_entries):
            ne.release()
        if self.map_copies:
            from vmcore.map_copy import vm_map_copy_discard

            for c in list(self.map_copies):
                vm_map_copy_discard(c)
        self.closed = True

    def __enter__(self) -> "Kernel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Kernel {format_size(self.nframes * self.page_size)}B {self.nframes} frames "
                f"policy={self.policy_name} tasks={len(self.tasks)}>")
