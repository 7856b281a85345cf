"""``python -m bench.traced FOLDER``: the app (``python -m app``) that ``tracemalloc`` can watch,
for ``python -m bench.soak --trace``. The first SIGUSR1 starts tracing (from the start, tracing
would make the app take minutes to import); each one after it writes a snapshot of every
allocation made since and still live, with its ``FRAMES`` innermost frames, to
``FOLDER/<n>.snapshot`` (n = 1, 2, ...); ``compare`` says what grew between two of them.
"""

from __future__ import annotations

import linecache
import runpy
import signal
import sys
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
    grown = new.compare_to(old, "traceback")
    return [(stat.size_diff, stat.count_diff, stat.traceback.format())
            for stat in grown[:top] if stat.size_diff > 0]


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

    signal.signal(signal.SIGUSR1, snapshot)
    runpy.run_module("app", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
