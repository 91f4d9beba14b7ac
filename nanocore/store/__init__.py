"""Crash-safe SQLite persistence of cluster state in the data dir."""
