"""vmcore's exception hierarchy: Mach kern_return_t names as Python exceptions.

Owns: VMError and its subclasses. Every error the model raises on bad input or a failed access is a
VMError subclass with a one-line message that names what was wrong; the CLI prints that line and
exits non-zero. Expected outcomes at the pager boundary are values (vmcore.pager.PagerResult), not
these exceptions.
"""

from __future__ import annotations


class VMError(Exception):
    """Base of every vmcore error. `kern_return` is the Mach name of the failure."""

    kern_return = "KERN_FAILURE"

    def __str__(self) -> str:  # one line, prefixed with the Mach name
        msg = super().__str__()
        return f"{self.kern_return}: {msg}" if msg else self.kern_return


class InvalidAddress(VMError):
    kern_return = "KERN_INVALID_ADDRESS"


class ProtectionFailure(VMError):
    kern_return = "KERN_PROTECTION_FAILURE"


class NoSpace(VMError):
    """No room in the address space for an allocation (or a fixed range overlaps)."""

    kern_return = "KERN_NO_SPACE"


class InvalidArgument(VMError):
    kern_return = "KERN_INVALID_ARGUMENT"


class ResourceShortage(VMError):
    """No frame could be freed (everything wired, or the pager cannot take pages)."""

    kern_return = "KERN_RESOURCE_SHORTAGE"


class MemoryError_(VMError):
    """A pager reported an I/O error for a page a fault needed (Mach: KERN_MEMORY_ERROR)."""

    kern_return = "KERN_MEMORY_ERROR"


PagerIOError = MemoryError_


class ContractViolation(VMError):
    """A pager broke the contract in vmcore.pager (a programming error in the pager)."""

    kern_return = "KERN_FAILURE"
