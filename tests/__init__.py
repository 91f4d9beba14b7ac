"""nanocore tests."""
