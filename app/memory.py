"""Few allocator arenas, so that a long-running app's memory stays flat.

glibc's ``malloc`` gives threads that allocate at the same time arenas of their own, up to
eight per core, and keeps what is freed in each for reuse. The app's work runs in many threads
(Gradio's workers, the store's calls), so in a long run the arenas multiplied and the resident
memory climbed steadily though Python's live objects did not
(``bench/results/soak-tracemalloc.md``, ``bench/results/soak-allocator.md``). Two arenas, the
usual setting for Python servers (``MALLOC_ARENA_MAX=2``), keep it flat at no cost measured.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameter number for the arena limit (glibc's malloc.h).
M_ARENA_MAX = -8
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Keep glibc's ``malloc`` to ``arenas`` arenas; call it before threads start. Returns
    False, changing nothing, where ``MALLOC_ARENA_MAX`` is set (the operator's choice) or the C
    library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
