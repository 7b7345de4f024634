"""The wiring layer: a complete system built from the model and its backing stores.

Owns: `Kernel`, the class users get from `from vmcore import Kernel`. It is the model's kernel
(vmcore.kernel.Kernel) with its pagers chosen and its backing stores opened and closed:

  * `swap=DIR`: anonymous memory is backed by swapd's default pager over a pool of real sparse swap
    files in DIR (Mach's default memory manager, registered here at start-up rather than through a
    global); the dynamic pager's watermark check runs after every pageout scan (model time).
  * without `swap=`: the in-memory pager of vmcore.testing (or, with `var=VAR`, swapd over VAR/vm);
  * `files=SOURCE_DIR`: the kernel mounts SOURCE_DIR with vnodefs in `direct` cache mode (latency
    model `latency=`, trace file `trace=`) and tasks map its files with `t.vm_map_file(path, ...)`
    (vmcore.lab_files: one vnode object per file, page-ins and write-backs through the mount);
  * `files=` and `var=` together: launch profiles under VAR/vm/app_profile (vmcore.lab_profiles):
    `k.task_create(name, executable="bin/app", seed="eager"|"lazy"|"off", uid=None, record=None,
    merge_min=None)` records a first launch and seeds later ones; `t.prefetch_score()`.
  * the files mount reports truncations made through it (vnodefs.events); the kernel applies them
    before its pageout entry points and every FileTask page access (vmcore.lab_files has what is
    and is not detected); vm_stat's "File events" / "File events dropped" count the reports.

This is the only vmcore module (with the CLI) that may import swapd and vnodefs: the model modules
define the pager interface and know no backing store (tests/test_architecture.py holds that line).

Caveats:
  * Close the kernel (`k.close()` or a `with` block): that terminates the tasks (writing launch
    profiles still recording), writes back dirty file pages, unmounts the files mount, frees their
    swap, deletes the swap files and releases the pool's lock. A kernel that is garbage-collected
    unclosed still removes its swap files (swapd's finalizer) and its mount (lab_files'
    finalizer, also at interpreter exit).
  * Clustering: fault._cluster follows 10.4 (xnu-792): behaviour RANDOM disables clustering,
    the others cluster alike; a task's first 45 s get a small blind read-ahead on file objects
    (unless a launch profile seeded it), and every pagein, file or anonymous, widens over pages
    this task touched before (the model kernel's own working set, on by default: up to 64 pages,
    stopping at resident pages). `tws_cluster=True` sets the kernel's working_set hook to the
    launch-profile recorder instead: clusters then come from the recorder's pages alone, with no
    blind read-ahead.
    `cluster="behavior"` replaces the 10.4 rule for file objects by 10.5's behaviour-driven
    vm_object_cluster_size (vmcore.prefetch.behavior_cluster, through `kernel.cluster_hook`).
"""

from __future__ import annotations

import os

from vmcore import kernel as _model
from vmcore.errors import InvalidArgument
from vmcore.lab_files import FileSystem, FileTask


#: what one page frame costs beyond its bytes: the model's per-frame metadata and its memoryview
#: (measured: about 620 bytes a frame on CPython 3.11)
FRAME_OVERHEAD_BYTES = 640


def check_memory_fits(memory, page_size: int = 4096) -> None:
    """InvalidArgument (one line naming this machine's memory) if a kernel of `memory` would not fit
    in the host's available memory: its page frames (memory bytes, one mmap) plus about
    FRAME_OVERHEAD_BYTES of bookkeeping a frame. Called before anything is allocated or created."""
    from vmcore.types import parse_size

    mem = parse_size(memory, "memory")
    if mem <= 0 or not isinstance(page_size, int) or page_size <= 0:
        return  # the model's own checks name these
    need = mem + (mem // page_size) * FRAME_OVERHEAD_BYTES
    try:
        import psutil

        vm = psutil.virtual_memory()
        total, avail = int(vm.total), int(vm.available)
    except (ImportError, OSError):  # pragma: no cover - psutil is a dependency
        total = avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > avail:
        raise InvalidArgument(
            f"memory {memory!r} does not fit in this machine: its {mem // page_size} page frames need about "
            f"{_human(need)} ({_human(mem)} of frames plus {FRAME_OVERHEAD_BYTES} bytes of bookkeeping "
            f"each), but this machine has {_human(total)} of RAM, {_human(avail)} available")


def _human(n: int) -> str:
    for unit in ("EiB", "PiB", "TiB", "GiB", "MiB", "KiB"):
        mult = 1 << (10 * (("KiB", "MiB", "GiB", "TiB", "PiB", "EiB").index(unit) + 1))
        if n >= mult:
            return f"{n / mult:.1f}{unit}"
    return f"{n}B"


class _KernelClock:
    """The swap pool reads model time from the kernel it serves (set after construction)."""

    def __init__(self):
        self.kernel = None

    def now(self) -> float:
        return self.kernel.clock.now() if self.kernel is not None else 0.0


class Kernel(_model.Kernel):
    """`Kernel(memory="64MiB", page_size=4096, policy="mach", swap=None, swap_scale=1/64, **model)`.

    `swap`: a directory for the swap pool (created if missing, locked while in use), or None for
    the in-memory default pager. `swap_scale` scales XNU's swap file sizes (64, 64, 128, 256, 512
    MiB, 1 GiB); the default 1/64 gives 1, 1, 2, 4, 8, 16 MiB files. Other keyword arguments go to
    the model (vmcore.kernel.Kernel): default_pager, clock, ncpu, event_sink.
    """

    task_class = FileTask

    def __init__(self, memory: int | str = "64MiB", page_size: int = 4096, policy="mach", *,
                 swap: str | os.PathLike | None = None, swap_scale: float = 1.0 / 64,
                 swap_options: dict | None = None, files: str | os.PathLike | None = None,
                 var: str | os.PathLike | None = None, latency: str | None = "none",
                 trace: str | os.PathLike | None = None, launch_window: float = 45.0,
                 profile_merge_min: int | None = None, tws_cluster: bool = False,
                 seed_max_gap: int | None = None, cluster: str = "tws", **model):
        self.swap_pool = None
        self.files = None
        self.profiles = None
        check_memory_fits(memory, page_size)  # before any frame, swap file or mount exists
        self.var = os.fspath(var) if var is not None else None
        if swap is None and var is not None and model.get("default_pager") is None:
            swap = os.path.join(self.var, "vm")
        if swap is not None:
            if model.get("default_pager") is not None:
                raise InvalidArgument("give either swap= or default_pager=, not both")
            from swapd import SwapError, SwapPool

            clock = _KernelClock()
            try:
                self.swap_pool = SwapPool(directory=os.fspath(swap), page_size=page_size,
                                          scale=swap_scale, clock=clock, **(swap_options or {}))
            except SwapError as e:
                raise InvalidArgument(f"swap {os.fspath(swap)!r}: {e}") from None
            model["default_pager"] = self.swap_pool.pager_factory()
        try:
            super().__init__(memory=memory, page_size=page_size, policy=policy, **model)
        except BaseException:
            if self.swap_pool is not None:
                self.swap_pool.close()
            raise
        if self.swap_pool is not None:
            clock.kernel = self
        if cluster not in ("tws", "behavior"):
            self.close()
            raise InvalidArgument(f"cluster {cluster!r} must be 'tws' (10.4) or 'behavior' (10.5)")
        if cluster == "behavior":
            from vmcore.prefetch import behavior_cluster

            self.cluster_hook = behavior_cluster
        if files is not None:
            try:
                self.files = FileSystem(self, files, latency=latency, trace=trace)
                if var is not None:
                    from vmcore.lab_profiles import SEED_MAX_GAP, LaunchProfiles

                    self.profiles = LaunchProfiles(
                        self, self.files, self.var, window_s=launch_window,
                        merge_min=profile_merge_min,
                        seed_max_gap=SEED_MAX_GAP if seed_max_gap is None else seed_max_gap)
                    self.profiles.chain = self._sink  # a caller's event_sink= still gets events
                    self.event_sink = self.profiles
                    if tws_cluster:
                        self.working_set = self.profiles
                elif tws_cluster:
                    raise InvalidArgument("tws_cluster=True needs files= and var= (the recorder)")
            except BaseException:
                self.close()
                raise
        elif trace is not None:
            self.close()
            raise InvalidArgument("trace= needs files= (the trace is the files mount's)")

    @property
    def trace_path(self) -> str | None:
        """The vnodefs trace of the files mount (complete once the kernel is closed)."""
        return self.files.trace_path if self.files is not None else None

    def load_trace(self):
        """vnodefs.trace.load of the files mount's trace (None without one). While mounted it holds
        what the daemon's flusher has written (it flushes every 0.2 s; this waits 0.5 s first);
        after close() it is complete."""
        if self.trace_path is None:
            return None
        from vnodefs import trace as vtrace

        if self.files is not None and self.files.mounted:
            import time

            time.sleep(0.5)
        return vtrace.load(self.trace_path)

    @property
    def mountpoint(self) -> str | None:
        return self.files.mountpoint if self.files is not None else None

    def task_create(self, name: str | None = None, executable=None, seed: str = "eager",
                    uid: int | None = None, record: bool | None = None,
                    merge_min: int | None = None, **kwargs):
        """A new task. With `executable` (a path relative to files=): its launch profile is
        recorded (first launch) or used to seed it (seed="eager" | "lazy" | "off")."""
        if name is None:
            name = os.path.basename(os.fspath(executable)) if executable is not None else "task"
        t = super().task_create(name=name, **kwargs)
        if executable is not None:
            if self.profiles is None:
                t.terminate()
                raise InvalidArgument("task_create(executable=...) needs Kernel(files=..., var=...)")
            try:
                self.profiles.launch(t, executable, seed=seed, uid=uid, record=record,
                                     merge_min=merge_min)
            except BaseException:
                t.terminate()
                raise
        return t

    def external_object_refs(self):
        """The file cache's reference on each live file object (one VM object per vnode, kept
        after unmap as the UBC keeps it)."""
        if self.files is None:
            return ()
        return [o for o in self.files.by_ino.values() if o.alive]

    def file_revalidate(self, path=None) -> None:
        """fstat one mapped file (or all) and drop pages past a new end of file."""
        if self.files is not None:
            self.files.sync_events()
            self.files.revalidate(self.files.object_for(path) if path is not None else None)

    def file_cache_purge(self) -> int:
        """Release cached file objects nobody maps (their pages go; dirty ones written back)."""
        return self.files.purge() if self.files is not None else 0

    # the dynamic pager runs beside the pageout daemon, in model time
    def dynamic_pager_tick(self) -> str | None:
        """One watermark check of the swap pool (add or remove a swap file); None without swap."""
        if self.swap_pool is None or self.swap_pool.closed:
            return None
        return self.swap_pool.tick()

    def _file_events(self) -> None:
        """Apply the files mount's pending setsize reports (vmcore.lab_files) before a pageout
        scan can write back a page that now lies past the end of its file."""
        if self.files is not None:
            self.files.sync_events()

    def pageout(self, target: int | None = None) -> int:
        self._file_events()
        freed = super().pageout(target)
        self.dynamic_pager_tick()
        return freed

    def pageout_step(self) -> int:
        self._file_events()
        freed = super().pageout_step()
        self.dynamic_pager_tick()
        return freed

    def vm_stat(self) -> dict[str, int]:
        d = super().vm_stat()
        if self.swap_pool is not None and not self.swap_pool.closed:
            st = self.swap_pool.status()
            d["Swap files"] = len(st.get("files", []))
            d["Swap used bytes"] = int(st["total"]["used_slots"]) * self.page_size
        fs = self.files
        if fs is not None:
            st = fs.event_stats()
            d["File events"] = st["emitted"]
            d["File events dropped"] = st["dropped"]
        pc = self.__dict__.get("prefetch_counts")
        if pc is not None:
            d["Prefetch requests"] = pc["requests"]
            d["Prefetched pages"] = pc["pages"]
        return d

    def close(self) -> None:
        try:
            try:
                super().close()
            finally:
                if self.files is not None:
                    self.files.close()
        finally:
            if self.swap_pool is not None:
                self.swap_pool.close()
