"""The C allocator's settings that keep a long-running app's memory flat.

glibc's ``malloc`` gives threads that allocate at the same time arenas of their own, up to
eight per core, and keeps what is freed in each for reuse. The app's work runs in many threads
(Gradio's workers, the store's calls), so in a long run the arenas multiplied and the resident
memory climbed steadily, far more than Python's live objects did
(``bench/results/soak-allocator.md``). Two arenas, the usual setting for Python servers
(``MALLOC_ARENA_MAX=2``), took most of it away.

What still grew was memory malloc held free inside its heaps (``bench.soak`` reads
``mallinfo2``): blocks of tens of kilobytes (most of them the table Gradio's queue built after
every event, which ``app.ui.gradio_compat.configure_queue`` turns off; a chat's render, an
update sent to the page) freed between long-lived small ones, in pages that could then not go
back. glibc raises its threshold for giving a block pages of its own each time such a block is
freed, up to 32 MiB, so more and more of them landed in the heaps. A fixed threshold
(``MMAP_THRESHOLD``) keeps blocks that big in pages of their own, returned to the system when
freed, and a fixed trim threshold gives back the free top of a heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 64 * 1024
TRIM_THRESHOLD = 128 * 1024
# The environment variables of the same settings: an operator's choice, left alone.
OPERATORS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator() -> bool:
    """Set glibc's ``malloc`` to ``ARENAS`` arenas and fixed mmap and trim thresholds; call it
    before threads start. Returns False, changing nothing, where the environment sets any of
    them (``OPERATORS``) or the C library is not glibc."""
    if any(name in os.environ for name in OPERATORS):
        return False
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return all(mallopt(parameter, value) for parameter, value in (
        (M_ARENA_MAX, ARENAS), (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ))
