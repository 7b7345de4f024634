"""Narrated scenarios: the modelled mechanisms (docs/mach-vm.md) run step by step, for teaching and
checking.

Owns: `SCENARIOS` (name -> (one-line description, function)), `Narrator` (prints / records each
step: what happened, a vmmap-style region listing per task and the vm_stat deltas), `run_scenario`
(-> the JSON-able record), the command-line wiring `add_scenario_parser(subparsers)` +
`run_scenario_command(args)` for `vmcore scenario NAME [--step] [--json]` / `vmcore scenario
--list`, and `main(argv)` for `python -m vmcore.scenario ...`.

Scenarios: fork-cow, pageout, shadow-collapse, named-entry, shared-region, wired-pressure,
address-space-32, map-copy (see `--list`). Each builds its own small kernel, so runs are deterministic
(ManualClock, no real I/O).

Region listing (vmmap's report format 2.4 columns):
  REGION TYPE    START-END  [ VSIZE  RSDNT  DIRTY   SWAP] PRT/MAX SHRMOD DETAIL
one line per map entry (vmcore.task.Region.format); submap entries are followed by their own
entries, indented. vm_stat deltas: every vm_stat entry that changed during the step, as
"+n"/"-n" (queue sizes included).

JSON (`--json`): {"scenario", "description", "page_size", "memory_pages", "steps": [{"step",
"title", "narration", "vm_stat_delta": {label: n}, "vm_stat": {label: n}, "tasks": {name:
[{"type", "start", "end", "vsize", "resident", "dirty", "swapped", "protection",
"max_protection", "share_mode", "detail", "submap": [...]}]}, "notes": {...}}]}; sizes in bytes.

`--step` waits for Enter between steps when stdin is a TTY (the prompt goes to stderr), else runs
through. Errors: an unknown scenario name -> one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

import numpy as np

from vmcore.errors import VMError
from vmcore.types import format_size

PS = 4096
HEADER = (f"{'REGION TYPE':<14s} {'START':>16s}-{'END':<16s} [{'VSIZE':>6s} {'RSDNT':>6s} "
          f"{'DIRTY':>6s} {'SWAP':>6s}] PRT/MAX SHRMOD DETAIL")


def _region_dict(r, ps: int) -> dict:
    return {"type": r.tag or "VM_ALLOCATE", "start": r.start, "end": r.end, "vsize": r.size,
            "resident": r.resident * ps, "dirty": r.dirty * ps, "swapped": r.swapped * ps,
            "protection": r.protection, "max_protection": r.max_protection,
            "share_mode": r.share_mode, "detail": r.detail}


def region_listing(task) -> list[dict]:
    """The task's regions as dicts; a submap entry carries its submap's own entries."""
    from vmcore.task import Region

    k = task.kernel
    ps = k.page_size
    out = []
    for e in task.map.entries:
        r = task._region(e)
        d = _region_dict(r, ps)
        if e.is_submap:
            sub = e.object
            lo, hi = e.offset, e.offset + (e.end - e.start)
            inner = []
            for se in sub.entries_in(lo, hi):
                a, b = max(se.start, lo), min(se.end, hi)
                first = (se.offset + a - se.start) >> k.page_shift
                res, dirty, sw = task._page_counts(se.object, first, (b - a) >> k.page_shift)
                obj = se.object
                detail = f"obj {obj.id} {obj.kind.value}" + (f" {obj.name}" if obj.name else "")
                sr = Region(e.start + a - lo, e.start + b - lo, _prot(se.protection),
                            _prot(se.max_protection), se.inheritance.label, se.behavior.label,
                            "SHM", res, dirty, sw, obj.id, detail, tag=" " + (se.tag or "region"))
                inner.append(_region_dict(sr, ps))
            d["submap"] = inner
        out.append(d)
    return out


def _prot(p: int) -> str:
    from vmcore.types import prot_str

    return prot_str(p)


def format_region(d: dict, indent: str = "") -> str:
    def sz(n: int) -> str:
        return format_size(n) if n else "0K"

    return (f"{indent}{d['type']:<14s} {d['start']:016x}-{d['end']:016x} [{sz(d['vsize']):>6s} "
            f"{sz(d['resident']):>6s} {sz(d['dirty']):>6s} {sz(d['swapped']):>6s}] "
            f"{d['protection']}/{d['max_protection']} SM={d['share_mode']:<3s} {d['detail']}")


class Narrator:
    """Collects the steps of one scenario; prints them as text unless json."""

    def __init__(self, name: str, description: str, out=None, as_json: bool = False,
                 step: bool = False, stdin=None):
        self.name = name
        self.description = description
        self.out = out or sys.stdout
        self.as_json = as_json
        self.step_mode = step
        self.stdin = stdin or sys.stdin
        self.kernel = None
        self.prev: dict[str, int] = {}
        self.steps: list[dict] = []
        if not as_json:
            self._p(f"== scenario {name}: {description}")

    def _p(self, s: str = "") -> None:
        print(s, file=self.out)

    def start(self, kernel) -> None:
        self.kernel = kernel
        self.prev = kernel.vm_stat()

    def step(self, title: str, narration: str, tasks=(), notes: dict | None = None) -> dict:
        k = self.kernel
        now = k.vm_stat()
        delta = {key: now[key] - self.prev.get(key, 0) for key in now
                 if now[key] != self.prev.get(key, 0)}
        self.prev = now
        rec = {"step": len(self.steps) + 1, "title": title, "narration": narration,
               "vm_stat_delta": delta,
               "vm_stat": {key: now[key] for key in ("Pages free", "Pages active",
                                                     "Pages inactive", "Pages wired down")},
               "tasks": {t.name: region_listing(t) for t in tasks if t.alive},
               "notes": notes or {}}
        self.steps.append(rec)
        if not self.as_json:
            self._print(rec)
        if self.step_mode and _isatty(self.stdin):
            print("-- press Enter for the next step --", file=sys.stderr, end="", flush=True)
            self.stdin.readline()
        return rec

    def _print(self, rec: dict) -> None:
        self._p()
        self._p(f"-- step {rec['step']}: {rec['title']}")
        for line in rec["narration"].splitlines():
            self._p(f"   {line}")
        for name, regions in rec["tasks"].items():
            self._p(f"   task {name}:")
            self._p(f"   {HEADER}")
            for d in regions:
                self._p("   " + format_region(d))
                for sd in d.get("submap", []):
                    self._p("   " + format_region(sd, indent="  "))
        if rec["vm_stat_delta"]:
            items = ", ".join(f"{k_} {v:+d}" for k_, v in rec["vm_stat_delta"].items())
            self._p(f"   vm_stat deltas: {items}")
        else:
            self._p("   vm_stat deltas: none")
        for key, val in rec["notes"].items():
            if isinstance(val, str) and "\n" in val:
                self._p(f"   {key}:")
                for line in val.splitlines():
                    self._p(f"     {line}")
            else:
                self._p(f"   {key}: {val}")

    def record(self) -> dict:
        k = self.kernel
        return {"scenario": self.name, "description": self.description,
                "page_size": k.page_size if k else PS, "memory_pages": k.nframes if k else 0,
                "steps": self.steps}


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False


def _frame(task, addr: int) -> int:
    e = task.map.lookup(addr)
    return int(e.pmap[(addr - e.start) // task.kernel.page_size])


# ---- the scenarios ---------------------------------------------------------------------------------

def fork_cow(n: Narrator) -> None:
    from vmcore.kernel import Kernel

    k = Kernel(memory="2MiB")
    n.start(k)
    parent = k.task_create("parent")
    a = parent.vm_allocate(4 * PS)
    parent.write(a, b"P" * (4 * PS))
    n.step("parent allocates and writes 4 pages",
           "vm_allocate maps an anonymous object; each first write is a zero-fill fault.",
           [parent])
    child = parent.fork("child")
    n.step("fork: copy inheritance",
           "Both entries become needs_copy and the parent's translations lose write permission;\n"
           "no page is copied yet: the child gets a copy using copy-on-write (Kernel Programming\n"
           "Guide, Memory and Virtual Memory).",
           [parent, child], {"same frame": _frame(parent, a) == _frame(child, a)
                             if _frame(child, a) >= 0 else "not mapped yet"})
    child.read(a, 4 * PS)
    n.step("child reads all 4 pages",
           "Soft faults: the child maps the parent's resident pages read-only.",
           [parent, child], {"same frame for page 0": _frame(parent, a) == _frame(child, a)})
    child.write(a, b"c")
    n.step("child writes page 0",
           "A copy-on-write fault: the child gets a shadow object and a private copy of page 0;\n"
           "the parent's page is untouched.",
           [parent, child], {"parent sees": parent.read(a, 1).decode(),
                             "child sees": child.read(a, 1).decode()})
    parent.write(a + PS, b"p")
    n.step("parent writes page 1",
           "The parent also copies on write (symmetric copy-on-write): its own shadow object.",
           [parent, child], {"child page 1 still": child.read(a + PS, 1).decode()})
    k.close()


def pageout(n: Narrator) -> None:
    from vmcore.kernel import Kernel

    k = Kernel(memory="1MiB")
    n.start(k)
    t = k.task_create("big")
    size = 2 * k.nframes * PS
    a = t.vm_allocate(size)
    n.step("allocate twice the physical memory",
           f"{format_size(size)}B of anonymous memory on a {format_size(k.nframes * PS)}B kernel: "
           "nothing resident yet.", [t],
           {"free_min": k.free_min, "free_target": k.free_target})
    for off in range(0, size, PS):
        t.write(off + a, off.to_bytes(8, "little"))
    n.step("write every page",
           "Zero-fill faults until free falls below free_min; then the pageout daemon moves\n"
           "unreferenced active pages to inactive and writes dirty ones to the default pager\n"
           "in clusters (Memory Management in Mac OS X, 'Paging Virtual Memory Out').", [t])
    ok = all(int.from_bytes(t.read(a + off, 8), "little") == off for off in range(0, 64 * PS, PS))
    n.step("read back the first 64 pages",
           "Hard faults: the pager returns the pages (pageins); other pages are paged out to\n"
           "make room.", [t], {"bytes intact": ok})
    freed = k.pageout()
    n.step("forced pageout scan",
           "Kernel.pageout() pages out everything pageable.", [t], {"frames freed": freed})
    k.close()


def shadow_collapse(n: Narrator) -> None:
    from vmcore.kernel import Kernel

    k = Kernel(memory="2MiB")
    n.start(k)
    t = k.task_create("shell")
    a = t.vm_allocate(8 * PS)
    t.write(a, b"s" * (8 * PS))
    n.step("a task with 8 dirty pages", "One anonymous object.", [t])
    living, after = [], []
    for i in range(6):
        c = t.fork(f"job{i}")
        t.write(a + (i % 8) * PS, bytes([i]))
        c.write(a + ((i + 1) % 8) * PS, bytes([i]))
        living.append(t.vm_region(a).shadow_depth)
        c.terminate()
        after.append(t.vm_region(a).shadow_depth)
    n.step("six fork / write / exit rounds",
           "Each fork makes both sides shadow the old object (depth 1 while the child lives);\n"
           "when the child exits its shadow dies and the parent's chain is collapsed into one\n"
           "object again (vm_object_collapse), so repeated fork does not grow the chain.",
           [t], {"depth while the child lives": living, "depth after it exits": after,
                 "collapses": k.stats.collapses, "bypasses": k.stats.bypasses})
    keep = []
    for i in range(3):
        keep.append(t.fork(f"keep{i}"))
        t.write(a + i * PS, b"gen%d" % i)
    n.step("three generations of children stay alive",
           "Each fork followed by a parent write adds one shadow level: every level still holds\n"
           "pages some living child can see, so none may be collapsed.",
           [t] + keep, {"parent shadow depth": t.vm_region(a).shadow_depth})
    for c in keep:
        c.terminate()
    t.write(a + 7 * PS, b"!")
    n.step("the children exit",
           "Their references go; each backing object left with one reference is collapsed\n"
           "into its shadower, and the parent's chain shrinks back.",
           [t], {"parent shadow depth": t.vm_region(a).shadow_depth,
                 "collapses": k.stats.collapses, "bypasses": k.stats.bypasses})
    k.close()


def named_entry(n: Narrator) -> None:
    from vmcore.kernel import Kernel

    k = Kernel(memory="2MiB")
    n.start(k)
    a = k.task_create("server")
    b = k.task_create("client")
    x = a.vm_allocate(4 * PS)
    a.write(x, b"hello from the server")
    n.step("server allocates and writes", "Anonymous memory of the server.", [a, b])
    h = k.make_memory_entry(a, x, 4 * PS)
    y = b.vm_map(h)
    n.step("mach_make_memory_entry + vm_map",
           "A named entry is a handle to the object (Kernel Programming Guide, Named Entries);\n"
           "the client maps it: the same object, shared (SM=SHM).", [a, b], {"client reads": b.read(y, 21).decode()})
    b.write(y + 100, b"reply")
    n.step("client writes", "The server sees the client's write: one object, no copy.",
           [a, b], {"server reads": a.read(x + 100, 5).decode()})
    region = k.make_named_region(16 * PS, name="libs")
    ra = a.vm_map(region)
    rb = b.vm_map(region)
    off = region.vm_allocate(2 * PS)
    a.write(ra + off, b"in the submap")
    faults = k.stats.faults
    got = b.read(rb + off, 13).decode()
    n.step("a named region (submap), use_pmap true",
           "Both tasks map one submap nested: the submap's translations are shared, so the\n"
           "client reads the server's page without a fault; a structure change shows in both.",
           [a, b], {"client reads": got, "client faults": k.stats.faults - faults})
    h.release()
    k.close()


def shared_region(n: Narrator) -> None:
    from vmcore.kernel import Kernel
    from vmcore.shared_region import (
        load_shared_file, new_system_shared_regions, reset_shared_file,
    )

    k = Kernel(memory="4MiB")
    n.start(k)
    blob = bytes((i * 7) % 251 for i in range(10 * PS))
    new_system_shared_regions(k)
    a = k.task_create("app1")
    b = k.task_create("app2")
    lib = load_shared_file(a, "libSystem.B.dylib", blob, text_size=6 * PS)
    load_shared_file(b, "libSystem.B.dylib", lib.object)
    n.step("load_shared_file",
           "The library's text goes into the TEXT submap (nested: use_pmap true), its data into\n"
           "the DATA submap (copy-on-write: use_pmap false). Both tasks map both submaps.",
           [a, b], {"text": hex(lib.text_address), "data": hex(lib.data_address)})
    a.read(lib.text_address, 6 * PS)
    n.step("app1 runs the library's text", "Six page-ins from the library file.", [a])
    b.read(lib.text_address, 6 * PS)
    n.step("app2 runs the same text",
           "No fault at all: the text's translations are shared ('including the underlying pmap\n"
           "entries', Kernel Programming Guide, VM Shared Memory Server Subsystem); one frame\n"
           "per text page.", [b],
           {"same frames": _frame(a, lib.text_address) == _frame(b, lib.text_address)})
    a.write(lib.data_address, b"app1 state")
    n.step("app1 writes its data",
           "The first write takes a private copy-on-write entry for the library's data; only the\n"
           "written page is copied. app2 still sees the file's bytes.", [a, b],
           {"app2 sees original": b.read(lib.data_address, 10) == blob[6 * PS:6 * PS + 10]})
    dropped = reset_shared_file(a, "libSystem.B.dylib")
    n.step("reset_shared_file",
           "app1's private data pages are dropped; the DATA submap shows again.", [a],
           {"pages dropped": dropped,
            "data restored": a.read(lib.data_address, 10) == blob[6 * PS:6 * PS + 10]})
    new_system_shared_regions(k)
    c = k.task_create("app3")
    n.step("new_system_shared_regions",
           "A fresh set for tasks created from now on; app1 and app2 keep the old one, and the\n"
           "library stays loaded there (it cannot be unloaded).", [a, c],
           {"app1 still reads text": a.read(lib.text_address, 4) == blob[:4],
            "app3 libraries": sorted(c.shared_regions.libraries)})
    k.close()


def wired_pressure(n: Narrator) -> None:
    from vmcore.device_pager import DevicePager
    from vmcore.kernel import Kernel
    from vmcore.kmem import kernel_map, kmem_alloc, kmem_alloc_contig
    from vmcore.wired import format_wired_report, thread_create, wired_report

    k = Kernel(memory="4MiB", wired_accounting=True)
    n.start(k)
    n.step("boot", "Only the page and map tables are wired (3/64 of memory, from Memory Management in\n"
           "Mac OS X).", [],
           {"wired report": format_wired_report(wired_report(k))})
    tasks = [k.task_create(f"proc{i}") for i in range(12)]
    for t in tasks:
        thread_create(t, blocked=True)
    km = kernel_map(k)
    buf = kmem_alloc(km, 8 * PS)
    contig = kmem_alloc_contig(km, 4 * PS)
    n.step("12 processes, each with a blocked thread; kmem allocations",
           "Each process costs 16 KB, each blocked thread 21 KB, each in a continuation 5 KB\n"
           "(Memory Management in Mac OS X, Wired Memory); kmem_alloc wires its pages,\n"
           "kmem_alloc_contig takes 4 adjacent frames after sorting the free list.", [],
           {"wired report": format_wired_report(wired_report(k)),
            "contig frames": k.kmem.physical_frames(contig, 4 * PS),
            "kmem_alloc at": hex(buf)})
    for t in tasks[1:]:
        t.terminate()
    n.step("11 processes exit",
           "Their wired memory is not freed at once: it waits for the pageout threshold.", [],
           {"excess pages": k.wired_acct.excess_pages})
    fb = np.zeros(4 * PS, dtype=np.uint8)
    fb[:11] = np.frombuffer(b"framebuffer", np.uint8)
    dev = tasks[0].vm_map_object(DevicePager(fb, wimg="io", name="display0"))
    big = tasks[0].vm_allocate(2 * k.nframes * PS)
    for off in range(0, 2 * k.nframes * PS, PS):
        tasks[0].write(big + off, b"x")
    n.step("memory pressure",
           "free falls below free_min: the pageout daemon first garbage-collects the wired\n"
           "kernel pages no longer needed, then pages out. The device mapping (fictitious\n"
           "frames over the display's buffer, WIMG kept) is never touched.", [tasks[0]],
           {"reclaimed pages": k.wired_acct.reclaimed_pages,
            "device still reads": tasks[0].read(dev, 11).decode(),
            "wired report": format_wired_report(wired_report(k))})
    k.close()


def map_copy(n: Narrator) -> None:
    from vmcore.kernel import Kernel
    from vmcore.kmem import kernel_map, kmem_alloc, kmem_read
    from vmcore.map_copy import vm_map_copy_discard, vm_map_copy_overwrite, vm_map_copyin

    k = Kernel(memory="2MiB")
    n.start(k)
    t = k.task_create("client")
    a = t.vm_allocate(4 * PS)
    t.write(a, b"request from user space")
    t.write(a + 3 * PS, b"last page")
    n.step("a user task fills 4 pages", "Anonymous memory of the client: one object.", [t])
    copy = vm_map_copyin(t.map, a, 4 * PS)
    src = t.map.lookup(a).object
    n.step("vm_map_copyin from the task's map",
           "No byte moves: the copy list holds a copy object that shadows the client's object,\n"
           "and the client's object names it in its copy field (Memory Management in Mac OS X: \"the shadow and copy\n"
           "fields may point to other VM objects\"); the client's translations lose write\n"
           "permission.", [t],
           {"copy list": repr(copy), "source object": src.id,
            "its copy object": src.copy.id if src.copy is not None else None,
            "copy object shadows": src.copy.shadow.id if src.copy is not None else None})
    t.write(a, b"REQUEST")
    n.step("the client writes after the copyin",
           "The write faults: the page's old contents are pushed into the copy object first\n"
           "(Copy-object pushes), so the copy still holds the bytes of the copyin.", [t],
           {"client reads": t.read(a, 7).decode()})
    km = kernel_map(k)
    buf = kmem_alloc(km, 4 * PS)
    vm_map_copy_overwrite(km, buf, copy)
    n.step("vm_map_copy_overwrite into the kernel map",
           "kmem_alloc wired a kernel buffer; the overwrite copies the copy list's bytes into it\n"
           "(a kernel_map entry maps the one kernel_object, so its pages are overwritten, not\n"
           "replaced) and consumes the copy.", [t],
           {"kernel reads": kmem_read(km, buf, 23).decode(),
            "kernel reads page 3": kmem_read(km, buf + 3 * PS, 9).decode(),
            "copy consumed": not copy.alive})
    refs = src.ref_count
    bad = vm_map_copyin(t.map, a, 2 * PS)
    held = src.ref_count
    vm_map_copy_discard(bad)
    n.step("vm_map_copy_discard",
           "A second copyin that is not wanted after all: vm_map_copy_discard drops its\n"
           "references (the Kernel Programming Guide (Memory and Virtual Memory): \"If something goes wrong and you need to throw away this\n"
           "intermediate object, it should be freed with vm_map_copy_discard\").", [t],
           {"source refs before / with copy / after discard": f"{refs} / {held} / {src.ref_count}",
            "live copies": len(k.map_copies)})
    k.close()


def address_space_32(n: Narrator) -> None:
    from vmcore.errors import NoSpace
    from vmcore.kernel import Kernel

    gib = 1 << 30
    k = Kernel(memory="1MiB")
    n.start(k)
    t = k.task_create("app32", is64=False)
    n.step("a 32-bit task",
           "task_create(is64=False): the task's map ends at 4 GiB (Memory Management in Mac OS X: a 32-bit process's\n"
           "address space \"can grow dynamically up to a limit of four gigabytes\").", [t],
           {"map": f"{t.map.min_address:#x}-{t.map.max_address:#x}"})
    regions = [t.vm_allocate(gib) for _ in range(3)]
    n.step("three 1 GiB allocations",
           "vm_allocate finds space first fit; nothing is resident (the address space is sparse:\n"
           "reserving it costs no page).", [t],
           {"addresses": [hex(a) for a in regions]})
    try:
        t.vm_allocate(gib)
        refused = "no"
    except NoSpace as e:
        refused = str(e)
    last = t.vm_allocate(t.map.max_address - (regions[-1] + gib))
    n.step("a fourth 1 GiB allocation is refused",
           "Only 4 GiB - 3 GiB - the unmapped first page is left: the fourth vm_allocate fails\n"
           "(KERN_NO_SPACE); what is left still fits, and after it not one more page.", [t],
           {"fourth 1 GiB": refused, "rest": f"{last:#x}-{t.map.max_address:#x}"})
    t.write(regions[0], b"first")
    t.write(t.map.max_address - 4, b"last")
    n.step("touch the first and the last page",
           "Two zero-fill faults: the whole 4 GiB space is usable, up to its last byte.", [t],
           {"last bytes": t.read(t.map.max_address - 4, 4).decode()})
    t.vm_deallocate(regions[1], gib)
    again = t.vm_allocate(gib // 2)
    n.step("free 1 GiB in the middle and allocate 512 MiB",
           "vm_deallocate gives the range back; first fit reuses the hole.", [t],
           {"new region at": hex(again)})
    t64 = k.task_create("app64")
    big = [t64.vm_allocate(gib) for _ in range(6)]
    n.step("a 64-bit task maps 6 GiB",
           "The same requests in a 64-bit task go past 4 GiB (its map ends at 2^47 in the model).",
           [t64], {"highest end": hex(big[-1] + gib)})
    k.close()


SCENARIOS: dict[str, tuple[str, Callable[[Narrator], None]]] = {
    "fork-cow": ("fork with copy inheritance; pages copied only when written", fork_cow),
    "pageout": ("twice memory's worth of writes: the pageout daemon, pageins", pageout),
    "shadow-collapse": ("repeated fork/exit; shadow chains collapse or are bypassed",
                        shadow_collapse),
    "named-entry": ("mach_make_memory_entry, vm_map, and a named region (submap)", named_entry),
    "shared-region": ("load_shared_file, copy-on-write data, reset_shared_file, new regions",
                      shared_region),
    "wired-pressure": ("wired cost of kernel resources, kmem, lazy reclaim, device memory",
                       wired_pressure),
    "address-space-32": ("a 32-bit task runs out of its 4 GiB address space", address_space_32),
    "map-copy": ("vm_map_copyin from a task, overwrite into the kernel map, discard", map_copy),
}


def run_scenario(name: str, out=None, as_json: bool = False, step: bool = False,
                 stdin=None) -> dict:
    """Run scenario `name`; print it (text) unless as_json; return the JSON-able record."""
    if name not in SCENARIOS:
        raise KeyError(name)
    desc, fn = SCENARIOS[name]
    n = Narrator(name, desc, out=out, as_json=as_json, step=step, stdin=stdin)
    fn(n)
    return n.record()


# ---- command line -----------------------------------------------------------------------------------

def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="scenario to run: " + ", ".join(SCENARIOS))
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--step", action="store_true",
                   help="wait for Enter between steps (only when stdin is a terminal)")
    p.add_argument("--json", action="store_true", help="print the steps as JSON on stdout instead of text")
    return p


def add_scenario_parser(subparsers) -> argparse.ArgumentParser:
    """Add `scenario` to a CLI's subparsers (vmcore/cli.py); dispatch with run_scenario_command."""
    p = subparsers.add_parser(
        "scenario", help="narrated runs of the modelled Mach VM mechanisms (fork-cow, pageout, ...)",
        description="Run a narrated scenario: each step prints what happened, a vmmap-style "
                    "region listing and the vm_stat deltas. --list names them.")
    _configure(p)
    p.set_defaults(func=run_scenario_command)
    return p


def run_scenario_command(args) -> int:
    if args.list:
        for name, (desc, _) in SCENARIOS.items():
            print(f"{name:<16s} {desc}")
        return 0
    if not args.name:
        print("vmcore scenario: give a scenario NAME or --list", file=sys.stderr)
        return 2
    if args.name not in SCENARIOS:
        print(f"vmcore scenario: unknown scenario {args.name!r} (one of: "
              f"{', '.join(SCENARIOS)})", file=sys.stderr)
        return 2
    try:
        rec = run_scenario(args.name, as_json=args.json, step=args.step)
    except VMError as e:
        print(f"vmcore scenario {args.name}: {e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(rec, sys.stdout, indent=1)
        print()
    return 0


def main(argv=None) -> int:
    p = _configure(argparse.ArgumentParser(
        prog="python -m vmcore.scenario",
        description="Run a narrated vmcore scenario (same as `vmcore scenario`)."))
    return run_scenario_command(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
