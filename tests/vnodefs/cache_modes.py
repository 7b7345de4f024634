"""The ways a vnodefs mount can cache, for tests that must hold in each."""

#: page mode, direct mode, and page mode with the kernel's writeback cache
CACHE_MODES = ["page", "direct", "writeback"]


def cache_kwargs(mode: str) -> dict:
    """vnodefs.mount.mount() keyword arguments of a CACHE_MODES entry."""
    return {"cache": "page", "writeback_cache": True} if mode == "writeback" else {"cache": mode}
