"""swapd's exceptions: bad configuration and unusable swap directories, as one-line errors.

Owns: `SwapError` and its subclasses. Raised only for bad input and for a pool that cannot start
(directory not writable, already locked, no room for the first file). Expected outcomes of paging
(ENOSPC during pageout, a damaged swap file) are *values* at the pager boundary
(vmcore.pager.PagerResult AGAIN / ERROR with `last_error`), never these exceptions.
"""

from __future__ import annotations


class SwapError(Exception):
    """Base of every swapd error; str() is one line naming what was wrong."""


class SwapConfigError(SwapError, ValueError):
    """A SwapPool parameter is out of range (page size, cluster size, watermarks, scale)."""


class SwapDirError(SwapError):
    """The swap directory cannot be used (not a directory, not writable, no room)."""


class SwapLockedError(SwapError):
    """Another live pool holds the directory's lock."""

    def __init__(self, directory: str, pid: int | None):
        self.directory = directory
        self.pid = pid
        who = f"pid {pid}" if pid else "an unknown process"
        super().__init__(f"swap directory {directory} is in use by another swap pool ({who} holds "
                         f"{directory}/.swapd.lock)")


class SwapClosedError(SwapError):
    """The pool was closed; its pagers can no longer be used."""
