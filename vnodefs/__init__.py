"""vnodefs package (see README.md)."""

from vmcore import __version__  # noqa: F401  (one version for the three packages)
from vnodefs import trace  # noqa: F401,E402  (`vnodefs.trace.load(path)` after a bare `import vnodefs`)
