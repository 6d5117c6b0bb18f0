"""The sync SDK, generated from ``hutch.sdk._async`` by scripts/unasync.py (except _backend)."""
