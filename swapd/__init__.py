"""swapd: the default pager (anonymous memory in real sparse swap files) and the dynamic pager
(adding and removing swap files at the watermarks), after Mac OS X's default_pager and
dynamic_pager (docs/mach-vm.md#pagers).

Public API (what the wiring layer, vmcore.lab, uses):

    from swapd import SwapPool
    pool = SwapPool(directory="var/vm", page_size=4096, cluster_pages=4, scale=1/64)
    kernel = Kernel(..., default_pager=pool.pager_factory())   # one SwapPager per anonymous object
    pool.tick(now)          # one watermark check of the dynamic pager (step-driven)
    pool.status()           # the dict `swapd status --json` prints
    pool.close()            # releases the lock, deletes the swap files

Modules: swapfile (one sparse file + cluster bitmap), swapmap (per-object page -> slot map),
swapspace (the set of files, cluster allocation), watermark (pure grow/shrink decisions), pager
(SwapPager, the memory object), pool (SwapPool), status (reading a pool from another process),
cli (`swapd status`). The on-disk layout is specified in swapd/FORMAT.md.
swapd imports nothing of vmcore but vmcore.pager (and never vnodefs or FUSE).
"""

from vmcore import __version__  # noqa: F401  (one version for the three packages)
from swapd.errors import (  # noqa: F401
    SwapClosedError,
    SwapConfigError,
    SwapDirError,
    SwapError,
    SwapLockedError,
)
from swapd.pager import SwapPager  # noqa: F401
from swapd.pool import SwapPool  # noqa: F401
from swapd.status import format_status, read_status  # noqa: F401
from swapd.swapfile import SwapFileDamaged  # noqa: F401

__all__ = ["__version__", "SwapPool", "SwapPager", "SwapError", "SwapConfigError", "SwapDirError",
           "SwapLockedError", "SwapClosedError", "SwapFileDamaged", "read_status",
           "format_status"]
