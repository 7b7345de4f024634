"""vnodefs package (see README.md)."""

from vmcore import __version__  # noqa: F401  (one version for the three packages)
