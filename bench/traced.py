"""``python -m bench.traced FOLDER``: the app (``python -m app``) that ``tracemalloc`` can watch,
for ``python -m bench.soak``. The first SIGUSR1 starts tracing (from the start, tracing
would make the app take minutes to import); each one after it writes a snapshot of every
allocation made since and still live, with its ``FRAMES`` innermost frames, to
``FOLDER/<n>.snapshot`` (n = 1, 2, ...); ``compare`` says what grew between two of them.

SIGUSR2 writes ``FOLDER/<n>.memory.json``, at no cost to the app between signals: what the C
allocator holds (glibc's ``mallinfo2``: in use, free inside its heaps, mapped apart), what
SQLite holds (``sqlite3_memory_used``: its page caches and statements, every connection
together), what Python's small-object allocator holds (its blocks in use, and the arenas of
1 MiB, mapped apart from malloc's heaps, that hold them, with their free space; nothing while
tracemalloc runs, which goes around it) and what the cyclic garbage collector has done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import linecache
import os
import re
import runpy
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 12
# Allocations made by tracing, by the import system and by the snapshots themselves.
IGNORED = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
           "<unknown>", tracemalloc.__file__, linecache.__file__)


def compare(before: Path, after: Path, top: int = 10) -> list[tuple[int, int, list[str]]]:
    """The ``top`` allocation sites (by traceback) that grew most from ``before`` to
    ``after``: bytes grown, allocations grown, and the traceback, innermost frame last."""
    filters = [tracemalloc.Filter(False, name) for name in IGNORED]
    old, new = (tracemalloc.Snapshot.load(str(path)).filter_traces(filters)
                for path in (before, after))
    # compare_to sorts by the size of the change: sites that shrank come among them.
    grown = [stat for stat in new.compare_to(old, "traceback") if stat.size_diff > 0]
    return [(stat.size_diff, stat.count_diff, stat.traceback.format()) for stat in grown[:top]]


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h)."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def python_allocator() -> dict[str, int]:
    """Bytes in Python's small-object arenas, and in their blocks in use and free, from
    ``sys._debugmallocstats``, which writes them to the standard error (file descriptor 2)."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")

    def number(pattern: str) -> int:
        found = re.search(pattern + r"\s*=\s*([\d,]+)", text)
        return int(found.group(1).replace(",", "")) if found else 0

    return {
        "python_arena_bytes": number(r"\d+ arenas \* \d+ bytes/arena"),
        "python_block_bytes": number(r"# bytes in allocated blocks"),
        "python_free_bytes": number(r"# bytes in available blocks")
        + number(r"\d+ unused pools \* \d+ bytes"),
    }


def memory() -> dict[str, int]:
    """Bytes the C allocator, SQLite and Python's small-object allocator hold, and the
    garbage collector's full collections and objects collected so far."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    # The library the app's sqlite3 module was linked with, loaded already: the same counters.
    library = ctypes.CDLL(ctypes.util.find_library("sqlite3"))
    library.sqlite3_memory_used.restype = ctypes.c_int64
    return {
        "malloc_heap_bytes": info.arena, "malloc_mapped_bytes": info.hblkhd,
        "malloc_in_use_bytes": info.uordblks + info.hblkhd, "malloc_free_bytes": info.fordblks,
        "sqlite_bytes": library.sqlite3_memory_used(),
        "python_blocks": sys.getallocatedblocks(),
        "gc_full_collections": gc.get_stats()[-1]["collections"],
        "gc_collected_objects": sum(generation["collected"] for generation in gc.get_stats()),
    } | python_allocator()


def main() -> None:
    folder = Path(sys.argv.pop(1))
    folder.mkdir(parents=True, exist_ok=True)
    taken = 0

    def snapshot(signum: int, frame: FrameType | None) -> None:
        nonlocal taken
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
            return
        taken += 1
        target = folder / f"{taken}.snapshot"
        tracemalloc.take_snapshot().dump(str(target.with_suffix(".part")))
        target.with_suffix(".part").rename(target)

    counted = 0

    def count(signum: int, frame: FrameType | None) -> None:
        nonlocal counted
        counted += 1
        target = folder / f"{counted}.memory.json"
        target.with_suffix(".part").write_text(json.dumps(memory()))
        target.with_suffix(".part").rename(target)

    signal.signal(signal.SIGUSR1, snapshot)
    signal.signal(signal.SIGUSR2, count)
    runpy.run_module("app", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
