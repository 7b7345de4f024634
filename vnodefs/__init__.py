"""vnodefs package (see README.md)."""
