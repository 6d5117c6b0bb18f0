"""How the server's allocator keeps memory it frees (glibc's malloc, tuned with mallopt).

A relayed file moves as pieces of up to 256 KiB, each a new bytes object. With glibc's
defaults, whether such a piece is served from memory the process already has depends on
what came before: its threshold for giving memory back to the kernel follows the largest
block freed so far, so after a download relayed in loop-sized pieces, every upload piece
was a fresh mapping, page-faulted in and given back again (half as much server CPU again
per uploaded byte, measured). Fixed thresholds make it the same every time: blocks below 4 MiB
come from the heap, and up to 32 MiB of freed heap is kept for the next ones.
"""

from __future__ import annotations

import logging

log = logging.getLogger("hutch.server.heap")

_M_TRIM_THRESHOLD = -1     # glibc's malloc.h
_M_MMAP_THRESHOLD = -3

#: Allocations below this size come from the heap, not a mapping of their own.
MMAP_THRESHOLD = 4 * 1024 * 1024
#: Freed memory at the top of the heap kept for reuse rather than given back.
TRIM_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Set the thresholds; False where the C library has no mallopt (not glibc)."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
          and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not ok:
        log.debug("mallopt refused the heap thresholds")
    return ok
