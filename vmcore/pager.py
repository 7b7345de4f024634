"""The memory-object (pager) interface: the one contract between VM objects and backing stores.

Owns: `Pager` (the abstract memory object a VM object is backed by), `PagerResult` (expected
outcomes as values, FreeBSD pagerops style), `PagerKind`, and `PagerFactory` (how the kernel gets
the default pager for a new anonymous object).

Theory of operation (Mach's EMMI; docs/mach-vm.md#pagers):
  Every VM object may have one pager. A *pager instance is the memory object*: one instance backs
  exactly one VM object (the vnode pager: one per file; the default pager: one per anonymous
  object, all sharing a swap pool; the in-memory pager: one per object). The kernel never asks a
  pager for pages by name; data flows one way:

    fault  -> object -> pager.data_request(offset, pages)   (pagein: the pager fills the pages)
    pageout-> object -> pager.data_return(offset, pages)    (pageout: the pager stores the pages)

  `pages` is a list of writable/readable buffers, one page each, for consecutive page offsets
  starting at `offset` (a cluster; the frames need not be physically contiguous). A pager serves a
  cluster as ONE backing-store request where it can (e.g. `os.preadv`), which is what makes
  clustering visible in a vnodefs trace.

Contract (checked by `vmcore.testing.check_pager`):
  * offsets are page aligned; `len(pages) >= 1`; every buffer is exactly `page_size` bytes.
  * data_request returns one PagerResult per page, in order:
      OK      the page was filled with the pager's data;
      ABSENT  the pager has no data for that page (the caller looks down the shadow chain or
              zero-fills; the buffer's content is unspecified);
      BAD     the page lies outside what the pager backs (a file page past EOF): the fault fails;
      ERROR   an I/O error (the pager's `last_error` says which).
  * data_return returns one PagerResult per page: OK (stored; the page is now clean), AGAIN (a
    transient shortage such as ENOSPC: the caller keeps the page dirty and resident and retries
    later), ERROR. A pager never loses data it returned OK for.
  * data_return then data_request of the same page returns the same bytes (write-read back).
  * has_page(offset) is True iff a data_request of that page would return OK.
  * data_discard(offset, npages) forgets the pager's copy of those pages (the range was
    deallocated or rewritten); later data_request of them returns ABSENT (or the file bytes for
    the vnode pager, which discards nothing).
  * terminate() releases everything; the instance is not used afterwards.
  Expected outcomes are values, not exceptions; only programming errors raise.

Caveats:
  * Pagers must not call back into vmcore objects (no upward data flow).
  * Thread-safety is the pager's own business; the model itself is single-threaded.
"""

from __future__ import annotations

import abc
import enum
from typing import Callable, Sequence

Buffer = memoryview  # one page, writable for data_request, readable for data_return


class PagerResult(enum.IntEnum):
    """Per-page outcome of a pager call (values, not exceptions)."""

    OK = 0
    ABSENT = 1
    BAD = 2
    ERROR = 3
    AGAIN = 4


class PagerKind(enum.Enum):
    """What kind of memory manager this is (docs/mach-vm.md#pagers: default, vnode, device)."""

    DEFAULT = "default"  # anonymous memory: swap (swapd) or the in-memory test pager
    VNODE = "vnode"  # a real file
    DEVICE = "device"  # non-general-purpose memory, never paged out


class Pager(abc.ABC):
    """An abstract memory object. Subclasses: vmcore.testing.MemoryPager, swapd's default pager,
    vnodefs' vnode pager."""

    kind: PagerKind = PagerKind.DEFAULT
    #: page size this pager was created for; set by the subclass constructor
    page_size: int = 4096
    #: last error text for an ERROR/AGAIN result (e.g. "ENOSPC writing var/vm/swapfile1")
    last_error: str | None = None

    @abc.abstractmethod
    def data_request(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        """Fill `pages` with the data at `offset`, `offset + page_size`, ...; one result per page."""

    @abc.abstractmethod
    def data_return(self, offset: int, pages: Sequence[Buffer]) -> list[PagerResult]:
        """Store `pages` (dirty or precious data) at `offset`, ...; one result per page."""

    @abc.abstractmethod
    def has_page(self, offset: int) -> bool:
        """True iff data_request(offset, [buf]) would return OK."""

    def data_discard(self, offset: int, npages: int) -> None:
        """Forget the pager's copy of npages pages starting at offset (default: nothing kept)."""

    def size(self) -> int | None:
        """Size in bytes of what the pager backs, if bounded (a file's length), else None."""
        return None

    def terminate(self) -> None:
        """The memory object is dead: release its backing store."""


#: Made by the wiring layer and handed to the kernel: returns a new pager (memory object) for an
#: anonymous VM object of `size` bytes. This is Mach's "default memory manager" registration.
PagerFactory = Callable[[int], Pager]
