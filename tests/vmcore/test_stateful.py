"""Invariant guarded: the VM model never loses or mixes up a byte, and its structures stay
consistent, under any sequence of Mach VM calls with memory far smaller than the tasks' footprint.

A hypothesis RuleBasedStateMachine drives allocate / fill / write / read / fork / protect /
inherit / deallocate / forced pageout / wire / unwire / vm_copy / named entry / terminate against a
plain model: per task, a dict page address -> [bytearray, prot, max_prot, inheritance, wired].
Pages that are shared (inheritance shared, named entries) share one bytearray object in the model;
copies (fork with copy inheritance, which the kernel does by copy-on-write) copy it.
After every step `vmcore.invariants.check(kernel)` runs.

Reuse: subclass `VMStateMachine` and override `make_kernel(self)` (e.g. to run with a swap pool),
then `TestX = XMachine.TestCase` with your own settings. Default settings are short; VM_SOAK=1
runs long.
"""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from vmcore import invariants
from vmcore.errors import InvalidAddress, InvalidArgument, ProtectionFailure, VMError
from vmcore.kernel import Kernel

PS = 4096
R, W = 1, 2
PROTS = {"---": 0, "r--": R, "rw-": R | W, "-w-": W}
SOAK = os.environ.get("VM_SOAK") == "1"


class VMStateMachine(RuleBasedStateMachine):
    #: memory of the default kernel: the mach minimum plus a little (the footprint grows far past it)
    memory_pages = 160
    max_tasks = 4
    max_wired_pages = 12

    def make_kernel(self) -> Kernel:
        return Kernel(memory=self.memory_pages * PS, page_size=PS)

    def __init__(self):
        super().__init__()
        self.kernel = self.make_kernel()
        self.tasks: dict[int, object] = {}
        self.model: dict[int, dict[int, list]] = {}
        self.handles: list = []  # (named entry, [bytearray per page], prot)
        self.counter = 0

    def teardown(self):
        try:
            if self.tasks:
                self._compare_all()
                invariants.check(self.kernel)
        finally:
            self.kernel.close()

    # ---- helpers ----------------------------------------------------------------------------
    def _stamp(self) -> int:
        self.counter += 1
        return self.counter

    def _new_task(self, name: str):
        t = self.kernel.task_create(name)
        self.tasks[t.id] = t
        self.model[t.id] = {}
        return t

    def _pick_task(self, data):
        tid = data.draw(st.sampled_from(sorted(self.tasks)), label="task")
        return self.tasks[tid], self.model[tid]

    def _pick_range(self, data, m, maxpages=8):
        """A page-aligned range near mapped memory (sometimes straddling holes)."""
        if m and data.draw(st.integers(0, 9), label="near") > 0:
            base = data.draw(st.sampled_from(sorted(m)), label="base")
        else:
            base = data.draw(st.sampled_from([0x1000, 0x10000, 0x200000]), label="base")
        start = base + PS * data.draw(st.integers(-2, 2), label="shift")
        start = max(start, 0x1000)
        n = data.draw(st.integers(1, maxpages), label="npages")
        return start, n

    def _expect(self, m, start, n, need):
        """The error the kernel must raise for an access of `need` to pages [start, start+n)."""
        pages = [start + i * PS for i in range(n)]
        if any(p not in m for p in pages):
            return InvalidAddress
        if any(not (m[p][1] & need) for p in pages):
            return ProtectionFailure
        return None

    def _compare_all(self):
        for tid, t in self.tasks.items():
            for addr, rec in sorted(self.model[tid].items()):
                if rec[1] & R:
                    got = t.read(addr, PS)
                    assert got == bytes(rec[0]), (
                        f"task {t.name} page {addr:#x}: read {got[:16].hex()}..., "
                        f"expected {bytes(rec[0][:16]).hex()}...")

    # ---- rules ------------------------------------------------------------------------------
    @initialize()
    def first_task(self):
        self._new_task("init")

    @invariant()
    def consistent(self):
        invariants.check(self.kernel)

    @rule(data=st.data(), npages=st.integers(1, 48), fixed=st.booleans())
    def allocate(self, data, npages, fixed):
        t, m = self._pick_task(data)
        if fixed:
            addr = 0x1000 * data.draw(st.integers(1, 600), label="fixed page")
            overlap = any(addr + i * PS in m for i in range(npages))
            if overlap:
                try:
                    t.vm_allocate(npages * PS, address=addr)
                except VMError as e:
                    assert type(e).__name__ == "NoSpace", e
                    return
                raise AssertionError("overlapping fixed allocation succeeded")
            got = t.vm_allocate(npages * PS, address=addr)
            assert got == addr
        else:
            addr = t.vm_allocate(npages * PS)
        for i in range(npages):
            assert addr + i * PS not in m
            m[addr + i * PS] = [bytearray(PS), R | W, 7, "copy", 0]

    @rule(data=st.data())
    def fill(self, data):
        """Write a stamped pattern over every writable page of a run: memory pressure."""
        t, m = self._pick_task(data)
        if not m:
            return
        start = data.draw(st.sampled_from(sorted(m)), label="start")
        n = 0
        while start + n * PS in m and m[start + n * PS][1] & W and n < 64:
            n += 1
        if n == 0:
            return
        stamp = self._stamp()
        buf = bytearray()
        for i in range(n):
            buf += bytes([(stamp + i) % 251 + 1]) * 8 + (start + i * PS).to_bytes(8, "little") \
                + bytes(PS - 16)
        t.write(start, bytes(buf))
        for i in range(n):
            m[start + i * PS][0][:] = buf[i * PS:(i + 1) * PS]

    @rule(data=st.data(), length=st.integers(1, 2 * PS))
    def write(self, data, length):
        t, m = self._pick_task(data)
        start, _ = self._pick_range(data, m, 1)
        off = data.draw(st.integers(0, PS - 1), label="offset")
        addr = start + off
        npg = (off + length + PS - 1) // PS
        payload = data.draw(st.binary(min_size=length, max_size=length), label="payload") \
            if length <= 64 else bytes([self._stamp() % 256]) * length
        exp = self._expect(m, start, npg, W)
        if exp is not None:
            try:
                t.write(addr, payload)
            except exp:
                return
            raise AssertionError(f"write at {addr:#x} should raise {exp.__name__}")
        t.write(addr, payload)
        pos = 0
        a = addr
        while pos < length:
            page = a // PS * PS
            o = a - page
            c = min(PS - o, length - pos)
            m[page][0][o:o + c] = payload[pos:pos + c]
            pos += c
            a += c

    @rule(data=st.data(), length=st.integers(1, 2 * PS))
    def read(self, data, length):
        t, m = self._pick_task(data)
        start, _ = self._pick_range(data, m, 1)
        off = data.draw(st.integers(0, PS - 1), label="offset")
        addr = start + off
        npg = (off + length + PS - 1) // PS
        exp = self._expect(m, start, npg, R)
        if exp is not None:
            try:
                t.read(addr, length)
            except exp:
                return
            raise AssertionError(f"read at {addr:#x} should raise {exp.__name__}")
        got = t.read(addr, length)
        want = bytearray()
        for i in range(npg):
            want += m[start + i * PS][0]
        assert got == bytes(want[off:off + length]), f"read at {addr:#x}+{length} differs"

    @precondition(lambda self: len(self.tasks) < self.max_tasks)
    @rule(data=st.data())
    def fork(self, data):
        t, m = self._pick_task(data)
        c = t.fork(name=f"{t.name}.{len(self.tasks)}")
        self.tasks[c.id] = c
        cm = {}
        for addr, rec in m.items():
            if rec[3] == "none":
                continue
            page = rec[0] if rec[3] == "shared" else bytearray(rec[0])
            cm[addr] = [page, rec[1], rec[2], rec[3], 0]
        self.model[c.id] = cm

    @rule(data=st.data(), prot=st.sampled_from(sorted(PROTS)), set_max=st.booleans())
    def protect(self, data, prot, set_max):
        t, m = self._pick_task(data)
        start, n = self._pick_range(data, m)
        new = PROTS[prot]
        pages = [start + i * PS for i in range(n)]
        exp = InvalidAddress if any(p not in m for p in pages) else (
            ProtectionFailure if any(new & ~m[p][2] for p in pages) else None)
        if exp is not None:
            try:
                t.vm_protect(start, n * PS, prot, set_maximum=set_max)
            except exp:
                return
            raise AssertionError(f"vm_protect should raise {exp.__name__}")
        t.vm_protect(start, n * PS, prot, set_maximum=set_max)
        for p in pages:
            if set_max:
                m[p][2] = new
                m[p][1] &= new
            else:
                m[p][1] = new

    @rule(data=st.data(), inh=st.sampled_from(["shared", "copy", "none"]))
    def inherit(self, data, inh):
        t, m = self._pick_task(data)
        start, n = self._pick_range(data, m)
        pages = [start + i * PS for i in range(n)]
        if any(p not in m for p in pages):
            try:
                t.vm_inherit(start, n * PS, inh)
            except InvalidAddress:
                return
            raise AssertionError("vm_inherit over a hole should raise InvalidAddress")
        t.vm_inherit(start, n * PS, inh)
        for p in pages:
            m[p][3] = inh

    @rule(data=st.data())
    def deallocate(self, data):
        t, m = self._pick_task(data)
        start, n = self._pick_range(data, m)
        t.vm_deallocate(start, n * PS)
        for i in range(n):
            m.pop(start + i * PS, None)

    @rule(want=st.sampled_from([None, 0, 50]))
    def forced_pageout(self, want):
        self.kernel.pageout(want)

    @rule(data=st.data())
    def wire(self, data):
        t, m = self._pick_task(data)
        start, n = self._pick_range(data, m, 4)
        pages = [start + i * PS for i in range(n)]
        wired = sum(1 for mm in self.model.values() for r in mm.values() if r[4])
        if any(p not in m for p in pages):
            exp = InvalidAddress
        elif any(m[p][1] == 0 for p in pages):
            exp = ProtectionFailure
        else:
            exp = None
        if exp is None and wired + n > self.max_wired_pages:
            return
        if exp is not None:
            try:
                t.vm_wire(start, n * PS)
            except exp:
                return
            raise AssertionError(f"vm_wire should raise {exp.__name__}")
        t.vm_wire(start, n * PS)
        for p in pages:
            m[p][4] += 1

    @rule(data=st.data())
    def unwire(self, data):
        t, m = self._pick_task(data)
        start, n = self._pick_range(data, m, 4)
        pages = [start + i * PS for i in range(n)]
        if any(p not in m for p in pages):
            exp = InvalidAddress
        elif any(m[p][4] == 0 for p in pages):
            exp = InvalidArgument
        else:
            exp = None
        if exp is not None:
            try:
                t.vm_unwire(start, n * PS)
            except exp:
                return
            raise AssertionError(f"vm_unwire should raise {exp.__name__}")
        t.vm_unwire(start, n * PS)
        for p in pages:
            m[p][4] -= 1

    @rule(data=st.data(), length=st.integers(1, 3 * PS))
    def vm_copy(self, data, length):
        t, m = self._pick_task(data)
        src, _ = self._pick_range(data, m, 1)
        dst, _ = self._pick_range(data, m, 1)
        src += data.draw(st.integers(0, PS - 1), label="src offset")
        dst += data.draw(st.integers(0, PS - 1), label="dst offset")

        def span(a):
            first = a // PS * PS
            return first, (a + length - first + PS - 1) // PS

        exp = self._expect(m, *span(src), R) or self._expect(m, *span(dst), W)
        if exp is not None:
            try:
                t.vm_copy(src, length, dst)
            except exp:
                return
            raise AssertionError(f"vm_copy should raise {exp.__name__}")
        # model: read everything first, then write
        first, npg = span(src)
        blob = bytearray()
        for i in range(npg):
            blob += m[first + i * PS][0]
        payload = bytes(blob[src - first:src - first + length])
        t.vm_copy(src, length, dst)
        pos, a = 0, dst
        while pos < length:
            page = a // PS * PS
            o = a - page
            c = min(PS - o, length - pos)
            m[page][0][o:o + c] = payload[pos:pos + c]
            pos += c
            a += c

    @rule(data=st.data())
    def vm_copy_pages(self, data):
        """A page-aligned vm_copy: copy-on-write through a copy object (vmcore.map_copy), which
        must read exactly like a byte copy whatever the other rules do to either side later."""
        t, m = self._pick_task(data)
        src, n = self._pick_range(data, m, 4)
        dst, _ = self._pick_range(data, m, 4)
        exp = self._expect(m, src, n, R) or self._expect(m, dst, n, W)
        if exp is not None:
            try:
                t.vm_copy(src, n * PS, dst)
            except exp:
                return
            raise AssertionError(f"vm_copy should raise {exp.__name__}")
        payload = [bytes(m[src + i * PS][0]) for i in range(n)]
        t.vm_copy(src, n * PS, dst)
        for i in range(n):
            m[dst + i * PS][0][:] = payload[i]

    @rule(data=st.data())
    def named_entry(self, data):
        """make_memory_entry over (part of) one map entry of a task, vm_map it into another."""
        t, m = self._pick_task(data)
        if not m:
            return
        addr = data.draw(st.sampled_from(sorted(m)), label="addr")
        e = t.map.lookup(addr)
        n = data.draw(st.integers(1, (e.end - addr) // PS), label="npages")
        prot = "rw" if (e.max_protection & 3) == 3 else "r" if e.max_protection & R else ""
        if not prot:
            return
        h = self.kernel.make_memory_entry(t, addr, n * PS, prot)
        pages = [m[addr + i * PS][0] for i in range(n)]
        t2, m2 = self._pick_task(data)
        a2 = t2.vm_map(h)
        p = PROTS["rw-" if prot == "rw" else "r--"]
        for i in range(n):
            m2[a2 + i * PS] = [pages[i], p, p, "shared", 0]
        if data.draw(st.booleans(), label="release handle"):
            h.release()

    @precondition(lambda self: len(self.tasks) > 1)
    @rule(data=st.data())
    def terminate(self, data):
        t, _ = self._pick_task(data)
        t.terminate()
        del self.tasks[t.id]
        del self.model[t.id]

    @rule()
    def check_all_bytes(self):
        self._compare_all()


VMStateMachine.TestCase.settings = settings(
    max_examples=1000 if SOAK else 60,
    stateful_step_count=100 if SOAK else 40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestVMStateful = VMStateMachine.TestCase
