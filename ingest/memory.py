"""Giving the memory of request bodies back to the operating system once they are freed.

glibc's malloc serves blocks above a threshold (128 KiB at start) with their own mmap, which
``free`` returns to the system at once; but each time such a block is freed it raises the
threshold to that block's size, so after the first 1 MiB body, bodies and the chunks they
arrive in come from the heap, and a burst of them (hostile clients holding bodies open) stays
in the receiver's RSS after it ended. Pinning the threshold keeps large buffers on mmap.
"""

from __future__ import annotations

import ctypes

__all__ = ["keep_large_buffers_returnable"]

M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number (malloc.h); setting it turns off the dynamic raise."""

LARGE_BUFFER_BYTES = 64 * 1024


def keep_large_buffers_returnable() -> bool:
    """Pin glibc's mmap threshold at 64 KiB; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))
