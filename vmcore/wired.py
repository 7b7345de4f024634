"""Wired-memory accounting of kernel resources ("Wired Memory", table 2), with lazy reclaim.

Owns: `WiredAccounting` (enabled per kernel: `Kernel(wired_accounting=True)` or
`enable_wired_accounting(kernel)`), the per-resource costs of table 2, the model's threads and
ports (`thread_create`, `Thread.block` / `block_in_continuation`, `thread_terminate`,
`port_allocate`, `port_deallocate`), `wired_report` / `format_wired_report`.

Memory Management in Mac OS X: "There is memory overhead associated with each kernel resource expended on behalf of a
program." Table 2 (bytes the kernel wires per resource), charged here:
    process                16 KB                      each live task
    thread                 5 KB blocked in a continuation, 21 KB blocked
    Mach port              116 B                      each task port, thread port, named entry
                                                      (mach_make_memory_entry returns a port) and
                                                      port_allocate'd port
    mapping                32 B                       each pmap translation of a user task
                                                      (a nested shared-region translation once)
    library                2 KB + 200 B per task      each library of vmcore.shared_region
                                                      + each live task using it
    memory region          160 B                      each vm_map_entry of a user task
  and "Wired data structures are also associated with the physical page and map tables ... Both
  of these entities scale with the amount of available physical memory": the model charges
  TABLE_FRACTION = 3/64 of physical memory (192 B per 4 KiB page). Source: Apple's own boot
  figures, "approximately 14 megabytes of a 64 megabyte system and 17 megabytes of a 128 megabyte
  system": (17 - 14) MB / (128 - 64) MB = 3/64. The fixed remainder (14 MB - 3 MB = 11 MB of kernel
  code and boot data) is not charged: the model has no kernel image, and it would not fit the
  small memories the model usually runs with.
A task starts with one thread, blocked in a continuation (its main thread at rest).

The charge is real: the kernel holds ceil(total / page_size) wired pages of kernel_object in a
"zone_map" range of kernel_map (vmcore.kmem), so the frames leave the free list and vm_stat's
"Pages wired down" includes them. When demand grows, pages are wired at once (`sync`, run at
task create / fork / terminate, thread and port calls, library loads, vm_stat and reports).
When demand falls they are NOT freed: "Wired memory is not immediately released back to the free
list when it becomes invalid. Instead it is 'garbage collected' when the free-page count falls
below the threshold that triggers page out events" - the pageout scan calls `collect()` when free
< free_min (vm_page_grab's wake-up threshold), which frees the excess (zone_gc).

Caveats: mappings and regions are counted when a sync point runs, not on every fault (the fault
path stays as fast as without accounting); a growth that finds no frame is recorded as a
shortfall (`deficit_pages`), not raised, so a query never fails.
Who calls: Kernel (vm_stat, task_create), Task (fork, terminate), PageoutDaemon.scan (collect),
vmcore.shared_region (load), vmcore.scenario, users.
"""

from __future__ import annotations

import math

import numpy as np

from vmcore.errors import InvalidArgument, ResourceShortage

KB = 1024
PROCESS_BYTES = 16 * KB
THREAD_CONTINUATION_BYTES = 5 * KB
THREAD_BLOCKED_BYTES = 21 * KB
PORT_BYTES = 116
MAPPING_BYTES = 32
LIBRARY_BYTES = 2 * KB
LIBRARY_PER_TASK_BYTES = 200
REGION_BYTES = 160
#: page and map tables: 3/64 of physical memory (Apple's 14 MB @ 64 MB, 17 MB @ 128 MB)
TABLE_FRACTION = (3, 64)

CONTINUATION = "continuation"
BLOCKED = "blocked"


class Thread:
    """A modeled thread: only its wait state matters here (its kernel stack is wired)."""

    def __init__(self, acct: "WiredAccounting", task, state: str):
        self.acct = acct
        self.task = task
        self.state = state
        self.alive = True

    def block(self) -> None:
        """Blocked with its kernel stack (21 KB)."""
        self._set(BLOCKED)

    def block_in_continuation(self) -> None:
        """Blocked in a continuation: the stack is given back (5 KB)."""
        self._set(CONTINUATION)

    def _set(self, state: str) -> None:
        if not self.alive:
            raise InvalidArgument("thread has terminated")
        self.state = state
        self.acct.sync()

    def __repr__(self) -> str:
        return f"<Thread of {self.task.name!r} {self.state}>"


class WiredAccounting:
    def __init__(self, kernel):
        from vmcore.kmem import kmem_alloc_pageable, kmem_of

        self.kernel = kernel
        km = kmem_of(kernel)
        self.kmem = km
        ps = kernel.page_size
        self.zone_size = kernel.nframes * ps
        self.zone_addr = kmem_alloc_pageable(km.map, self.zone_size)
        self.zone_entry = km.map.lookup(self.zone_addr)
        self.zone_entry.tag = "zone_map"
        self.frames: list[int] = []  # wired zone pages, in zone order
        self.threads: dict[int, list[Thread]] = {}
        self.ports: dict[int, int] = {}
        self.deficit_pages = 0
        self.reclaimed_pages = 0
        self.collections = 0
        self.peak_pages = 0
        self._syncing = False

    # ---- resources ------------------------------------------------------------------------------
    def _threads(self, task) -> list[Thread]:
        lst = self.threads.get(task.id)
        if lst is None:
            lst = [Thread(self, task, CONTINUATION)]
            self.threads[task.id] = lst
        return lst

    def thread_create(self, task, blocked: bool = False) -> Thread:
        if not task.alive:
            raise InvalidArgument(f"task {task.name!r} has terminated")
        th = Thread(self, task, BLOCKED if blocked else CONTINUATION)
        self._threads(task).append(th)
        self.sync()
        return th

    def thread_terminate(self, th: Thread) -> None:
        if not th.alive:
            raise InvalidArgument("thread has already terminated")
        th.alive = False
        lst = self.threads.get(th.task.id, [])
        if th in lst:
            lst.remove(th)
        self.sync()

    def port_allocate(self, task, n: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InvalidArgument(f"port count {n!r} must be a positive integer")
        if not task.alive:
            raise InvalidArgument(f"task {task.name!r} has terminated")
        self.ports[task.id] = self.ports.get(task.id, 0) + n
        self.sync()

    def port_deallocate(self, task, n: int = 1) -> None:
        have = self.ports.get(task.id, 0)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0 or n > have:
            raise InvalidArgument(f"task {task.name!r} holds {have} allocated ports, cannot "
                                  f"deallocate {n!r}")
        self.ports[task.id] = have - n
        self.sync()

    # ---- the charge -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        k = self.kernel
        tasks = [t for t in k.tasks.values() if t.alive]
        live = {t.id for t in tasks}
        for tid in [tid for tid in self.threads if tid not in live]:
            del self.threads[tid]
        for tid in [tid for tid in self.ports if tid not in live]:
            del self.ports[tid]
        cont = blocked = 0
        for t in tasks:
            for th in self._threads(t):
                if th.state == BLOCKED:
                    blocked += 1
                else:
                    cont += 1
        named = sum(1 for ne in k.named_entries if ne.alive)
        ports = len(tasks) + cont + blocked + named + sum(self.ports.values())
        regions = mappings = 0
        for t in tasks:
            regions += len(t.map.entries)
            for e in t.map.entries:
                if not e.nested:
                    mappings += int(np.count_nonzero(e.pmap >= 0))
        for sub in k.submaps:
            if sub.pmap is not None:
                mappings += int(np.count_nonzero(sub.pmap >= 0))
        libs = users = 0
        for regs in k.shared_region_sets:
            for lib in regs.libraries.values():
                libs += 1
                users += len(lib.users())
        return {"processes": len(tasks), "threads in a continuation": cont,
                "threads blocked": blocked, "Mach ports": ports, "mappings": mappings,
                "libraries": libs, "library users": users, "memory regions": regions,
                "physical pages": k.nframes}

    def charges(self) -> dict[str, int]:
        """Bytes per line of table 2 (plus the page and map tables)."""
        c = self.counts()
        k = self.kernel
        num, den = TABLE_FRACTION
        return {
            "processes": c["processes"] * PROCESS_BYTES,
            "threads in a continuation": c["threads in a continuation"] * THREAD_CONTINUATION_BYTES,
            "threads blocked": c["threads blocked"] * THREAD_BLOCKED_BYTES,
            "Mach ports": c["Mach ports"] * PORT_BYTES,
            "mappings": c["mappings"] * MAPPING_BYTES,
            "libraries": c["libraries"] * LIBRARY_BYTES + c["library users"] * LIBRARY_PER_TASK_BYTES,
            "memory regions": c["memory regions"] * REGION_BYTES,
            "page and map tables": k.nframes * k.page_size * num // den,
        }

    def total_bytes(self) -> int:
        return sum(self.charges().values())

    def pages_needed(self) -> int:
        return math.ceil(self.total_bytes() / self.kernel.page_size)

    @property
    def pages_held(self) -> int:
        return len(self.frames)

    @property
    def excess_pages(self) -> int:
        """Wired pages the charge no longer needs (freed by the next collect)."""
        return max(0, len(self.frames) - self.pages_needed())

    # ---- growing and lazy reclaim -----------------------------------------------------------------
    def sync(self) -> int:
        """Wire pages for any growth of the charge (now); a fall is left for collect(). Returns
        pages wired by this call."""
        if self._syncing:
            return 0
        self._syncing = True
        try:
            need = self.pages_needed()
            grown = 0
            while len(self.frames) < need:
                slot = len(self.frames)
                if slot >= self.zone_entry.npages:
                    break
                try:
                    f = self.kmem.grab_wired(self.zone_entry, slot)
                except ResourceShortage:
                    break
                self.frames.append(f)
                grown += 1
            self.deficit_pages = max(0, need - len(self.frames))
            self.peak_pages = max(self.peak_pages, len(self.frames))
            return grown
        finally:
            self._syncing = False

    def collect(self) -> int:
        """zone_gc: free the wired pages the charge no longer needs. Returns pages freed."""
        if self._syncing:
            return 0
        need = self.pages_needed()
        k = self.kernel
        freed = 0
        while len(self.frames) > need:
            f = self.frames.pop()
            k.frame_unwire(f)
            k.page_free(f)
            freed += 1
        if freed:
            self.collections += 1
            self.reclaimed_pages += freed
        return freed


def enable_wired_accounting(kernel) -> WiredAccounting:
    """Turn the accounting on for kernel (idempotent); returns it."""
    if kernel.wired_acct is None:
        kernel.wired_acct = WiredAccounting(kernel)
        kernel.wired_acct.sync()
    return kernel.wired_acct


def _acct(kernel) -> WiredAccounting:
    if kernel.wired_acct is None:
        raise InvalidArgument("wired accounting is off for this kernel "
                              "(Kernel(wired_accounting=True) or enable_wired_accounting)")
    return kernel.wired_acct


def thread_create(task, blocked: bool = False) -> Thread:
    return _acct(task.kernel).thread_create(task, blocked)


def thread_terminate(th: Thread) -> None:
    th.acct.thread_terminate(th)


def port_allocate(task, n: int = 1) -> None:
    _acct(task.kernel).port_allocate(task, n)


def port_deallocate(task, n: int = 1) -> None:
    _acct(task.kernel).port_deallocate(task, n)


def wired_report(kernel) -> dict:
    """The breakdown: per resource its count, unit cost and bytes; totals; pages needed / held /
    excess (awaiting lazy reclaim) / reclaimed so far; all wired pages of the kernel."""
    a = _acct(kernel)
    a.sync()
    c = a.counts()
    ch = a.charges()
    num, den = TABLE_FRACTION
    unit = {"processes": (c["processes"], PROCESS_BYTES),
            "threads in a continuation": (c["threads in a continuation"], THREAD_CONTINUATION_BYTES),
            "threads blocked": (c["threads blocked"], THREAD_BLOCKED_BYTES),
            "Mach ports": (c["Mach ports"], PORT_BYTES),
            "mappings": (c["mappings"], MAPPING_BYTES),
            "libraries": (c["libraries"], LIBRARY_BYTES),
            "memory regions": (c["memory regions"], REGION_BYTES),
            "page and map tables": (c["physical pages"], kernel.page_size * num / den)}
    lines = []
    for name, b in ch.items():
        n, u = unit[name]
        line = {"resource": name, "count": n, "unit_bytes": u, "bytes": b}
        if name == "libraries":
            line["users"] = c["library users"]
            line["per_user_bytes"] = LIBRARY_PER_TASK_BYTES
        lines.append(line)
    total = sum(ch.values())
    return {"resources": lines, "total_bytes": total, "pages_needed": a.pages_needed(),
            "pages_held": a.pages_held, "excess_pages": a.excess_pages,
            "deficit_pages": a.deficit_pages, "reclaimed_pages": a.reclaimed_pages,
            "collections": a.collections, "pages_wired_total": len(kernel.pm.wired),
            "page_size": kernel.page_size}


def format_wired_report(rep: dict) -> str:
    from vmcore.report import render_table

    rows = []
    for ln in rep["resources"]:
        each = f"{ln['unit_bytes']:g} B"
        if "users" in ln:
            each = f"{ln['unit_bytes']}+{ln['per_user_bytes']}/user"
            name = f"libraries ({ln['users']} users)"
        else:
            name = ln["resource"]
        rows.append((name, ln["count"], each, f"{ln['bytes']:,d}"))
    rows.append(("total", "", "", f"{rep['total_bytes']:,d}"))
    out = [render_table(("RESOURCE", "COUNT", "EACH", "BYTES"), rows)]
    out.append(f"kernel resource pages: needed {rep['pages_needed']}, held {rep['pages_held']}, "
               f"awaiting lazy reclaim {rep['excess_pages']}, reclaimed so far "
               f"{rep['reclaimed_pages']} in {rep['collections']} collection(s)"
               + (f", SHORT by {rep['deficit_pages']}" if rep["deficit_pages"] else ""))
    out.append(f"Pages wired down (all): {rep['pages_wired_total']}")
    return "\n".join(out)
