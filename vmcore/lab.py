"""The wiring layer: a complete system built from the model and its backing stores.

Owns: `Kernel`, the class users get from `from vmcore import Kernel`. It is the model's kernel
(vmcore.kernel.Kernel) with its pagers chosen and its backing stores opened and closed:

  * `swap=DIR`: anonymous memory is backed by swapd's default pager over a pool of real sparse swap
    files in DIR (Mach's default memory manager, registered here at start-up rather than through a
    global); the dynamic pager's watermark check runs after every pageout scan (model time).
  * without `swap=`: the in-memory pager of vmcore.testing.

This is the only vmcore module (with the CLI) that may import swapd and vnodefs: the model modules
define the pager interface and know no backing store (tests/test_architecture.py holds that line).

Caveats:
  * Close the kernel (`k.close()` or a `with` block): that terminates the tasks, frees their swap,
    deletes the swap files and releases the pool's lock. A kernel that is garbage-collected
    unclosed still removes its swap files (swapd's finalizer).
"""

from __future__ import annotations

import os

from vmcore import kernel as _model
from vmcore.errors import InvalidArgument


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

    def __init__(self, memory: int | str = "64MiB", page_size: int = 4096, policy="mach", *,
                 swap: str | os.PathLike | None = None, swap_scale: float = 1.0 / 64,
                 swap_options: dict | None = None, **model):
        self.swap_pool = None
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

    # the dynamic pager runs beside the pageout daemon, in model time
    def dynamic_pager_tick(self) -> str | None:
        """One watermark check of the swap pool (add or remove a swap file); None without swap."""
        if self.swap_pool is None or self.swap_pool.closed:
            return None
        return self.swap_pool.tick()

    def pageout(self, target: int | None = None) -> int:
        freed = super().pageout(target)
        self.dynamic_pager_tick()
        return freed

    def pageout_step(self) -> int:
        freed = super().pageout_step()
        self.dynamic_pager_tick()
        return freed

    def vm_stat(self) -> dict[str, int]:
        d = super().vm_stat()
        if self.swap_pool is not None and not self.swap_pool.closed:
            st = self.swap_pool.status()
            d["Swap files"] = len(st.get("files", []))
            d["Swap used bytes"] = int(st["total"]["used_slots"]) * self.page_size
        return d

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.swap_pool is not None:
                self.swap_pool.close()
