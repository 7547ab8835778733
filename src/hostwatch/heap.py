"""The C library's allocator, set for a daemon that runs for months (and for the /metrics
renderer process), and for the short-lived config parse child.

glibc serves a request of 128 KiB or more with its own mapping, returned to the system when
freed, but each time such a block is freed it raises that threshold to the block's size (up
to 32 MiB). After the first large buffer (the result of the config parse, 1.4 MB at 10,000
targets) the later ones come from the heap instead: a reload's file text, a /metrics piece in
transit. Python's small objects never reuse that heap (they live in their own arenas), so its
pages stay with the process; measured at 10,000 targets, ~0.6 MiB more resident for good
after a reload. Setting the threshold once turns the adjustment off (mallopt(3)).

The forked config parse child wants the opposite: it makes megabytes of objects and exits.
With its own mapping per large buffer, every one is faulted in page by page, so it puts them
back in the heap (`reuse_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Final

__all__ = ["LARGE", "return_large_buffers", "reuse_freed_memory"]

M_TRIM_THRESHOLD: Final = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD: Final = -3
LARGE: Final = 128 * 1024  # glibc's own initial threshold
MMAP_THRESHOLD_MAX: Final = 32 * 1024 * 1024  # glibc's largest, on 64-bit
NEVER_TRIM: Final = 1 << 30


def return_large_buffers() -> bool:
    """Keep buffers of LARGE bytes and more in mappings of their own, returned when freed.
    True if the C library took the setting (glibc does; elsewhere nothing changes)."""
    return _mallopt(M_MMAP_THRESHOLD, LARGE)


def reuse_freed_memory() -> bool:
    """For a process that lives for one task: large buffers from the heap, and a heap that
    is never given back, so that a freed buffer's pages serve the next one."""
    return _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and _mallopt(M_TRIM_THRESHOLD,
                                                                        NEVER_TRIM)


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)  # the C library the interpreter itself runs on
        return bool(libc.mallopt(param, value))
    return False
