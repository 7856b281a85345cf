"""Soak run: 32 users stream from the app for 10 minutes; errors, and the app's memory over time.

    python -m bench.soak            # 32 users, 10 minutes; writes bench/results/soak.json,
                                    # soak.md and soak.png
    python -m bench.soak --quick    # 4 users, 20 seconds: checks the harness
    python -m bench.soak --trace    # the same under tracemalloc: what grew, where; writes
                                    # bench/results/soak-tracemalloc.md only

Each user opens the page once and keeps it: it sends a message, reads the reply to its end,
sends the next, and every ``messages_per_conversation`` messages presses "New conversation".
So the app holds a fixed number of sessions and a growing database: what grows in memory with
the number of replies shows here. (Gradio also keeps about 0.4 MiB for every page ever opened,
up to ``state_session_capacity`` pages; ``docs/scaling.md`` has that figure. Opening a new page
for every conversation would measure that instead.)

Memory is the app's resident set, sampled every second. Growth is measured from the end of the
warm-up (``warmup_seconds``) to the end: the median of the last minute's samples over the
median of the minute after the warm-up. At both ends, while the users still send, the app's
mappings (``/proc/PID/smaps``) are read, and its allocator and SQLite counters (the app runs
under ``bench/traced.py``). With ``--trace`` that also runs ``tracemalloc`` (from halfway
through the warm-up; several times slower): a snapshot at the end of the warm-up and one at
the end, and the allocation sites that grew most between them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cli, procs, traced
from bench.client import (
    GradioTarget,
    StreamResult,
    find_endpoint,
    gradio_stream,
    new_conversation,
    open_page,
)


@dataclass(frozen=True)
class Parameters:
    users: int
    seconds: float
    warmup_seconds: float
    tokens: int
    rate: float
    messages_per_conversation: int
    window_seconds: float  # how much of the run the growth compares at each end


FULL = Parameters(users=32, seconds=600, warmup_seconds=120, tokens=200, rate=50.0,
                  messages_per_conversation=5, window_seconds=60)
QUICK = Parameters(users=4, seconds=20, warmup_seconds=5, tokens=20, rate=50.0,
                   messages_per_conversation=3, window_seconds=5)
# Under tracemalloc the app runs about four times slower. Each session's conversation list
# grows until it holds the 200 newest (``Store.list_conversations``): a new conversation for
# every message, and the first snapshot at 5 minutes, get it there before the comparison
# starts, so what grows between the snapshots is not that list.
TRACED = replace(FULL, warmup_seconds=300, messages_per_conversation=1)
READ_BEFORE_END = 2.0  # seconds before the end: the app's second reading, under load


async def user(
    target: GradioTarget, p: Parameters, deadline: float, delay: float,
) -> list[StreamResult]:
    await asyncio.sleep(delay)
    session = await open_page(target)
    results: list[StreamResult] = []
    while time.perf_counter() < deadline:
        results.append(await gradio_stream(target, session=session))
        if len(results) % p.messages_per_conversation == 0:
            await new_conversation(target, session)
    return results


def summarize(
    p: Parameters, results: list[StreamResult], samples: list[tuple[float, int]],
    cpu_seconds: float, wall: float, start: float,
) -> dict[str, Any]:
    failed = [r for r in results if r.error is not None or r.tokens != p.tokens]
    after = [rss for t, rss in samples if p.warmup_seconds <= t < p.warmup_seconds
             + p.window_seconds]
    last = [rss for t, rss in samples if t >= wall - p.window_seconds]
    begin, end = statistics.median(after or [0]), statistics.median(last or [0])
    minutes = []
    for m in range(int(wall // 60) + (1 if wall % 60 else 0)):
        inside = [r for r in results if start + 60 * m <= r.started < start + 60 * (m + 1)]
        ttfts = [1000 * r.ttft for r in inside if r.ttft is not None]
        minutes.append({
            "minute": m + 1, "messages": len(inside),
            "errors": sum(1 for r in inside if r in failed),
            "ttft_ms_median": round(statistics.median(ttfts), 1) if ttfts else None,
        })
    return {
        "messages": len(results),
        "errors": len(failed),
        "first_errors": sorted({r.error or f"{r.tokens} tokens" for r in failed})[:3],
        "tokens": sum(r.tokens for r in results),
        "aggregate_tokens_per_second": round(sum(r.tokens for r in results) / wall, 1),
        "rss_mib_after_warmup": round(begin / 2**20, 1),
        "rss_mib_at_end": round(end / 2**20, 1),
        "rss_peak_mib": round(max(rss for _, rss in samples) / 2**20, 1),
        "memory_growth_after_warmup": round(end / begin - 1, 4) if begin else None,
        "server_cpu_percent": round(100 * cpu_seconds / wall, 1),
        "per_minute": minutes,
    }


async def written(app: procs.Child, path: Path, signum: int) -> Path:
    """Send the traced app ``signum`` and wait for the file it writes, ``path``."""
    os.kill(app.pid, signum)
    for _ in range(600):
        if await asyncio.to_thread(path.exists):
            return path
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the app wrote no {path.name} in 5 minutes; its log:\n{app.tail()}")


async def snapshot(app: procs.Child, folder: Path, number: int) -> Path:
    """Have the traced app write its ``number``-th snapshot; its path once written."""
    return await written(app, folder / f"{number}.snapshot", signal.SIGUSR1)


async def counters(app: procs.Child, folder: Path, number: int) -> dict[str, int]:
    """The app's allocator and SQLite counters (``bench.traced.memory``), ``number``-th read."""
    path = await written(app, folder / f"{number}.memory.json", signal.SIGUSR2)
    found: dict[str, int] = json.loads(path.read_text())
    return found


def mapping_growth(
    before: dict[int, procs.Mapping], after: dict[int, procs.Mapping], threads: tuple[int, int],
) -> dict[str, Any]:
    """What the app's resident memory grew by between two reads of its mappings: in all, by
    kind (the main heap, other anonymous memory, files), and the mappings that grew most
    (a mapping that is gone counts as shrunk to nothing, a new one as grown from nothing)."""
    def kind(m: procs.Mapping) -> str:
        return m.name if m.name in ("[heap]", "[stack]") else "files" if m.name else "anonymous"

    changes = []
    for start in before.keys() | after.keys():
        old, new = before.get(start), after.get(start)
        seen = new or old
        assert seen is not None
        changes.append((seen, (new.rss if new else 0) - (old.rss if old else 0),
                        old.rss if old else 0, new.rss if new else 0))
    by_kind: dict[str, float] = {}
    for seen, grew, _, _ in changes:
        by_kind[kind(seen)] = by_kind.get(kind(seen), 0) + grew / 2**20
    top = sorted(changes, key=lambda c: -abs(c[1]))[:8]
    return {
        "threads": list(threads),
        "mappings": [len(before), len(after)],
        "grew_mib_by_kind": {k: round(v, 2) for k, v in sorted(by_kind.items())},
        "most_changed": [
            {"start": hex(m.start), "name": m.name or "anonymous",
             "size_mib": round(m.size / 2**20, 2), "rss_kib": [old // 1024, new // 1024]}
            for m, _, old, new in top
        ],
    }


def growth_table(found: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v:+.2f} MiB" for k, v in found["grew_mib_by_kind"].items())
    lines = [
        f"Resident memory by mapping (`/proc/PID/smaps`), end of warm-up to end: {kinds}; "
        f"threads {found['threads'][0]} → {found['threads'][1]}, mappings "
        f"{found['mappings'][0]} → {found['mappings'][1]}. The mappings that changed most:", "",
        "| start | mapping | size (MiB) | resident (KiB), warm-up → end |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {m['start']} | {m['name']} | {m['size_mib']:g} | {m['rss_kib'][0]:,} → "
              f"{m['rss_kib'][1]:,} |" for m in found["most_changed"]]
    before, after = found["counters"]
    lines += ["", "Inside the process (`bench/traced.py`), end of warm-up → end:", "",
              "| counter | warm-up | end |", "|---|---:|---:|"]
    lines += [f"| {name} | {before[name]:,} | {after[name]:,} |" for name in before]
    return "\n".join(lines)


async def run(
    p: Parameters, folder: Path, app_path: Path, trace: bool = False,
) -> tuple[dict[str, Any], list[Any], list[Path]]:
    snapshots = folder / "snapshots"
    taken: list[Path] = []
    with procs.standin(folder, p.rate, p.tokens) as standin:
        app = procs.app(folder / "app", standin.url, app_path, snapshots=snapshots).start()
        try:
            target = GradioTarget(app.url, await find_endpoint(app.url))
            sampler = procs.Sampler(app.pid, interval=1.0).start()
            start = time.perf_counter()
            deadline = start + p.seconds
            length = p.tokens / p.rate
            sessions = asyncio.gather(*(
                user(target, p, deadline, i * length / p.users) for i in range(p.users)
            ))
            await asyncio.sleep(p.warmup_seconds / 2)
            if trace:
                os.kill(app.pid, signal.SIGUSR1)  # starts tracing
            await asyncio.sleep(p.warmup_seconds / 2)
            warm = procs.mappings(app.pid), procs.threads(app.pid)
            held = [await counters(app, snapshots, 1)]
            if trace:
                taken.append(await snapshot(app, snapshots, 1))
            # The second reading while the users still send, as the first was taken: what
            # replies in flight hold is in both.
            await asyncio.sleep(deadline - READ_BEFORE_END - time.perf_counter())
            grew = mapping_growth(warm[0], procs.mappings(app.pid),
                                  (warm[1], procs.threads(app.pid)))
            held.append(await counters(app, snapshots, 2))
            if trace:
                taken.append(await snapshot(app, snapshots, 2))
            users = await sessions
            usage = sampler.stop()
            wall = time.perf_counter() - start
        finally:
            app.stop()
    results = [result for one in users for result in one]
    summary = summarize(p, results, usage.samples, usage.cpu_seconds, wall, start)
    summary["memory_by_mapping"] = grew | {"counters": held}
    series = [(round(t, 1), round(rss / 2**20, 1)) for t, rss in usage.samples]
    return summary, series, taken


def grown(before: Path, after: Path, title: str) -> str:
    """The Markdown of what grew between two snapshots of ``bench/traced.py``."""
    lines = [f"# {title}", "",
             "The allocation sites (tracebacks, innermost frame last) that grew most from the "
             "end of the warm-up to the end, still allocated at the end.", ""]
    for size, count, traceback in traced.compare(before, after):
        lines += [f"## +{size / 2**10:,.0f} KiB in {count:+,} blocks", "", "```",
                  *traceback, "```", ""]
    return "\n".join(lines)


def plot(series: list[Any], p: Parameters, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=110)
    axes.plot([t / 60 for t, _ in series], [mib for _, mib in series])
    axes.axvline(p.warmup_seconds / 60, color="0.6", linestyle="--", label="end of warm-up")
    axes.set_xlabel("minutes")
    axes.set_ylabel("app resident memory (MiB)")
    axes.set_ylim(bottom=0)
    axes.set_title(title, fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    made = cli.parser("soak", __doc__, "4 users for 20 seconds",
                      "soak.json, soak.md and soak.png (with --trace: soak-tracemalloc.md)")
    made.add_argument("--trace", action="store_true",
                      help="run the app under tracemalloc and write what grew, where")
    args = made.parse_args(argv)
    p = QUICK if args.quick else TRACED if args.trace else FULL
    output = cli.output_folder(args)
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        summary, series, taken = asyncio.run(
            run(p, Path(folder), args.app_path.resolve(), args.trace))
        title = (f"What grew in the soak run under tracemalloc, {started:%Y-%m-%d} "
                 f"({p.users} users, {p.seconds / 60:g} minutes)")
        found = grown(taken[0], taken[-1], title) if taken else ""
    growth = summary["memory_growth_after_warmup"]
    table = "\n".join([
        "| users | minutes | messages | errors | aggregate tokens/s | RSS after warm-up (MiB) "
        "| RSS at end (MiB) | growth | server CPU (% of a core) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {p.users} | {p.seconds / 60:.3g} | {summary['messages']} | {summary['errors']} "
        f"| {summary['aggregate_tokens_per_second']:,.0f} | {summary['rss_mib_after_warmup']} "
        f"| {summary['rss_mib_at_end']} | {'—' if growth is None else format(growth, '.2%')} "
        f"| {summary['server_cpu_percent']:.0f} |",
    ])
    print(f"{table}\n\n{growth_table(summary['memory_by_mapping'])}")
    if found:
        print(f"\n{found}\nfirst errors: {summary['first_errors']}")
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            (output / "soak-tracemalloc.md").write_text(f"{found}\n{table}\n")
        return 0 if summary["errors"] == 0 else 1
    report = cli.report("soak", args, started, parameters=asdict(p), results=summary,
                        rss_mib_series=series)
    machine = report["machine"]
    if output is not None:
        cli.write_json(output, "soak.json", report)
        (output / "soak.md").write_text(
            f"# Soak run, {started:%Y-%m-%d}\n\n{p.tokens} tokens a reply at {p.rate:g} "
            f"tokens/s; machine: {machine['cpu_count']} x {machine['cpu_model']}.\n\n"
            f"{table}\n\n{growth_table(summary['memory_by_mapping'])}\n")
        plot(series, p, output / "soak.png",
             f"{p.users} users for {p.seconds / 60:g} min; {machine['cpu_count']} x "
             f"{machine['cpu_model']}")
        print(f"\nwrote {output}/soak.json, soak.md and soak.png", file=sys.stderr)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
