"""swapd package (see README.md)."""
