"""Large array temporaries from reused memory rather than fresh mappings.

glibc's malloc maps every block over its mmap threshold (at most 32 MB) afresh and unmaps
it on free, so each large numpy temporary of an array pass costs the kernel a page fault
per page, which the kernel zeroes (docs/scale.md measures what that costs a snapshot).
`reused_heap` serves such blocks from the main heap instead, where a freed block is taken
by the next, and gives the free memory back when the work is done.

Only the main arena can do that: a thread with an arena of its own still maps blocks over
64 MB (its heaps' size). A process that runs such work off its main thread starts with
`ONE_ARENA` in its environment (the scheduler's actor does), so every thread allocates
from the main arena.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
# the values they keep after the first use: a mallopt call ends glibc's own raising of the
# mmap threshold for the process's life, so these are where that raising ends (glibc has
# no getter to read the earlier values back)
RESTORE = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}
KEEP = 2**31 - 1  # a trim threshold never reached: freed blocks stay for reuse
ONE_ARENA = {"MALLOC_ARENA_MAX": "1"}


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc and its malloc is left at its defaults."""
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or \
            "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return None  # tuned by the operator: theirs to keep
    try:
        libc = ctypes.CDLL(None)  # the symbols the process itself resolves
    except OSError:
        return None
    glibc = all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim"))
    return libc if glibc else None


_libc = _glibc()
_lock = threading.Lock()
_depth = 0


@contextmanager
def reused_heap() -> Iterator[None]:
    """Inside, large blocks come from the heap and freed ones are reused; on leaving (the
    last of nested or concurrent users), blocks are mapped again over `RESTORE`'s threshold
    and the free memory goes back to the system (`malloc_trim`). A no-op where the C
    library is not glibc or the environment tunes malloc (MALLOC_*_, GLIBC_TUNABLES)."""
    global _depth
    if _libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _libc.mallopt(M_MMAP_MAX, 0)
            _libc.mallopt(M_TRIM_THRESHOLD, KEEP)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for param, value in RESTORE.items():
                    _libc.mallopt(param, value)
                _libc.malloc_trim(0)
