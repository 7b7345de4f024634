"""vmcore: a runnable model of the Mach / Mac OS X virtual memory system with real bytes in real
page frames (the mechanisms and their sources: docs/mach-vm.md).

Public surface: Kernel, the error classes, and the pager interface (vmcore.pager). `Kernel` is
resolved lazily (PEP 562) so that backing-store packages can import vmcore.pager without pulling
in the wiring layer.
"""

#: the project's version (pyproject.toml's; vnodefs and swapd report the same)
__version__ = "0.1.0"

from vmcore.errors import (  # noqa: F401,E402
    ContractViolation,
    InvalidAddress,
    InvalidArgument,
    NoSpace,
    PagerIOError,
    ProtectionFailure,
    ResourceShortage,
    VMError,
)
from vmcore.pager import Pager, PagerKind, PagerResult  # noqa: F401,E402

__all__ = [
    "__version__", "Kernel", "VMError", "InvalidAddress", "ProtectionFailure", "NoSpace", "InvalidArgument",
    "ResourceShortage", "PagerIOError", "ContractViolation", "Pager", "PagerKind", "PagerResult",
]


def __getattr__(name: str):
    if name == "Kernel":
        from vmcore.lab import Kernel

        return Kernel
    raise AttributeError(f"module 'vmcore' has no attribute {name!r}")
