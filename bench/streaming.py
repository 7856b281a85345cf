"""Streaming benchmark: what a browser receives from the paced stand-in directly, through this
app, and through Gradio's own ``gr.load_chat``, with N conversations streaming at once.

    python -m bench.streaming            # full run: N = 1, 16, 64, 128; 200 tokens at 50/s;
                                         # writes bench/results/latest.json, streaming.md and
                                         # streaming.png (about 6 minutes)
    python -m bench.streaming --quick    # N = 1, 4; 20 tokens; checks the harness, writes
                                         # nothing unless --output is given

The targets, one after another for each N, against one stand-in (``bench/standin.py``):

- ``direct``: the load client reads the stand-in's Messages API itself: the ceiling;
- ``app``: ``python -m app`` (a SQLite database in a temporary folder, the per-user rate limit
  off, every other setting at its default), through Gradio's queue as the page speaks it;
- ``gr.load_chat``: ``python -m bench.peer``, Gradio's ``gr.load_chat`` on the stand-in, with
  the same queue concurrency and worker threads as the app;
- ``floor``: ``python -m bench.floor``, the least a Python proxy does (the stand-in's stream
  read with the app's client library, aiohttp, and written on as it comes over uvicorn; no app): the
  app's CPU a token is also given as a multiple of the floor's.

Each Gradio user first opens the page (a session, and its load events), before any clock
starts, as a browser does when the page opens; then it sends messages. Two ways of loading:

- ``steady`` (the headline): N users, the first messages spread evenly over one stream's
  length, each user sending ``rounds`` messages back to back in its conversation (none after
  ``rounds`` stream lengths: a saturated server gets fewer), so that N streams are in
  flight. The aggregate is the tokens received while all N should be in flight (from one
  stream's length after the first message to ``rounds`` stream lengths after it), over that
  window.
- ``burst``: N users press Send at the same instant, once. The aggregate is all tokens over
  the time from the first request to the last token: the herd at the door.

Reported per row: median and p90 time to the first token (from the request leaving the client
to the first update that shows a token), median tokens/s of one stream, the aggregate and its
share of ``direct``, errors (a failed stream or one short of its tokens), and the server's CPU
(share of one core, and milliseconds per token) and peak resident memory. The load client's own
CPU is recorded too: a saturated client would flatter every target but ``direct``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cli, procs
from bench.client import (
    GradioTarget,
    StreamResult,
    direct_stream,
    find_endpoint,
    gradio_stream,
    open_page,
)
from bench.machine import code_version

PEERS = ("direct", "gr.load_chat", "floor")
MODES = ("steady", "burst")


@dataclass(frozen=True)
class Parameters:
    streams: tuple[int, ...]  # N, concurrent conversations per row
    tokens: int  # tokens per stream
    rate: float  # tokens/s of each stream at the stand-in
    rounds: int  # messages each user sends back to back, in the steady mode
    queue_concurrency: int  # events the app and the peer run at once
    modes: tuple[str, ...] = MODES

    @property
    def stream_seconds(self) -> float:
        return self.tokens / self.rate


FULL = Parameters(streams=(1, 16, 64, 128), tokens=200, rate=50.0, rounds=3,
                  queue_concurrency=256)
QUICK = Parameters(streams=(1, 4), tokens=20, rate=50.0, rounds=2, queue_concurrency=256)


@dataclass(frozen=True)
class Row:
    mode: str
    target: str
    streams: int
    messages: int
    errors: int
    ttft_ms_median: float | None
    ttft_ms_p90: float | None
    first_update_ms_median: float | None  # the page's first update (the user's message shown)
    stream_tokens_per_second_median: float | None
    aggregate_tokens_per_second: float
    aggregate_vs_direct: float | None
    cpu_vs_floor: float | None  # CPU a token, as a multiple of the floor's in the same row
    tokens: int
    seconds: float  # the span the aggregate is taken over
    updates_per_stream: float
    server_cpu_percent: float | None  # of one core, over the row
    server_cpu_ms_per_token: float | None
    server_peak_rss_mib: float | None
    client_cpu_percent: float
    page_load_seconds: float | None  # opening the N pages, before the clock starts
    first_errors: list[str]


@dataclass(frozen=True)
class Target:
    name: str
    prepare: Callable[[], Awaitable[Any]]  # before the clock starts: open the page
    send: Callable[[Any], Awaitable[StreamResult]]  # one message, given what prepare made
    pid: int | None  # the server process measured
    multi_turn: bool = True  # whether a user's messages go on in one conversation


async def nothing() -> None:
    return None


async def direct_target(url: str) -> Target:
    return Target("direct", nothing, lambda _: direct_stream(url), None)


async def floor_target(url: str, pid: int) -> Target:
    """The floor speaks the server's own API: its clients are the direct ones."""
    return Target("floor", nothing, lambda _: direct_stream(url), pid)


async def gradio_target(name: str, url: str, pid: int, multi_turn: bool = True) -> Target:
    target = GradioTarget(url, await find_endpoint(url))
    return Target(name, lambda: open_page(target),
                  lambda session: gradio_stream(target, session=session), pid, multi_turn)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _median(values: list[float], digits: int) -> float | None:
    return round(statistics.median(values), digits) if values else None


def summarize(
    mode: str, target: str, streams: int, expected: int, results: list[StreamResult],
    tokens: int, seconds: float, usage: procs.Usage | None, client_cpu: float,
    page_load: float | None,
) -> Row:
    failed = [r for r in results if r.error is not None or r.tokens != expected]
    ttfts = [1000 * r.ttft for r in results if r.ttft is not None]
    echoes = [1000 * (r.first_update - r.started) for r in results if r.first_update]
    rates = [rate for r in results if (rate := r.tokens_per_second) is not None]
    received = sum(r.tokens for r in results)
    return Row(
        mode=mode, target=target, streams=streams, messages=len(results), errors=len(failed),
        ttft_ms_median=_median(ttfts, 1),
        ttft_ms_p90=round(percentile(ttfts, 0.9), 1) if ttfts else None,
        first_update_ms_median=_median(echoes, 1),
        stream_tokens_per_second_median=_median(rates, 2),
        aggregate_tokens_per_second=round(tokens / seconds, 1) if seconds > 0 else 0.0,
        aggregate_vs_direct=None, cpu_vs_floor=None, tokens=tokens, seconds=round(seconds, 3),
        updates_per_stream=round(sum(r.updates for r in results) / len(results), 1),
        server_cpu_percent=round(usage.cpu_percent, 1) if usage else None,
        server_cpu_ms_per_token=(
            round(1000 * usage.cpu_seconds / received, 3) if usage and received else None
        ),
        server_peak_rss_mib=round(usage.peak_rss_bytes / 2**20, 1) if usage else None,
        client_cpu_percent=round(100 * client_cpu / usage.wall_seconds, 1)
        if usage and usage.wall_seconds else round(100 * client_cpu / max(seconds, 1e-9), 1),
        page_load_seconds=None if page_load is None else round(page_load, 3),
        first_errors=sorted({r.error or f"{r.tokens} of {expected} tokens" for r in failed})[:3],
    )


async def _user(
    target: Target, handle: Any, delay: float, rounds: int, until: float,
) -> list[StreamResult]:
    """One user: waits ``delay``, then sends up to ``rounds`` messages, each after the last
    ends, and none after ``until`` (``time.perf_counter()``; a slow server gets fewer); in a
    new page each time for a target that cannot go on with a conversation."""
    await asyncio.sleep(delay)
    results = []
    for number in range(rounds):
        if number and time.perf_counter() >= until:
            break
        if number and not target.multi_turn:
            handle = await target.prepare()
        results.append(await target.send(handle))
    return results


async def measure(target: Target, mode: str, streams: int, p: Parameters) -> Row:
    begin = time.perf_counter()
    handles = await asyncio.gather(*(target.prepare() for _ in range(streams)))
    page_load = time.perf_counter() - begin if target.pid is not None else None
    sampler = procs.Sampler(target.pid).start() if target.pid is not None else None
    client0 = time.process_time()
    length = p.stream_seconds
    if mode == "burst":
        results = list(await asyncio.gather(*(target.send(handle) for handle in handles)))
        start = min(r.started for r in results)
        seconds = max((r.last_token or r.ended) for r in results) - start
        tokens = sum(r.tokens for r in results)
    else:
        until = time.perf_counter() + p.rounds * length
        users = await asyncio.gather(*(
            _user(target, handle, i * length / streams, p.rounds, until)
            for i, handle in enumerate(handles)
        ))
        results = [result for user in users for result in user]
        start = min(r.started for r in results)
        window = (start + length, start + p.rounds * length)
        seconds = window[1] - window[0]
        tokens = sum(r.tokens_at(window[1]) - r.tokens_at(window[0]) for r in results)
    client_cpu = time.process_time() - client0
    usage = sampler.stop() if sampler is not None else None
    return summarize(mode, target.name, streams, p.tokens, results, tokens, seconds, usage,
                     client_cpu, page_load)


def with_ratios(rows: list[Row]) -> list[Row]:
    """Each row's aggregate as a share of direct's, and its CPU a token as a multiple of the
    floor's, in the same mode and N."""
    direct = {(row.mode, row.streams): row.aggregate_tokens_per_second for row in rows
              if row.target == "direct"}
    floor = {(row.mode, row.streams): row.server_cpu_ms_per_token for row in rows
             if row.target == "floor"}
    out = []
    for row in rows:
        base, least = direct.get((row.mode, row.streams)), floor.get((row.mode, row.streams))
        out.append(replace(
            row,
            aggregate_vs_direct=(round(row.aggregate_tokens_per_second / base, 3)
                                 if base else None),
            cpu_vs_floor=(round(row.server_cpu_ms_per_token / least, 2)
                          if least and row.server_cpu_ms_per_token is not None else None),
        ))
    return out


async def run_all(
    p: Parameters, folder: Path, apps: dict[str, Path], targets: tuple[str, ...],
    log: Callable[[str], None], app_settings: dict[str, str],
) -> tuple[list[Row], dict[str, float]]:
    """Every target in ``targets``: ``direct``, an app label of ``apps`` (label: checkout),
    ``gr.load_chat``."""
    rows: list[Row] = []
    startup: dict[str, float] = {}
    with ExitStack() as running, procs.standin(folder, p.rate, p.tokens) as standin:
        available = {"direct": await direct_target(standin.url)}
        for index, (label, path) in enumerate(apps.items()):
            if label not in targets:
                continue
            begin = time.monotonic()
            app = running.enter_context(procs.app(
                folder / f"app-{index}", standin.url, path,
                settings={"queue_concurrency": str(p.queue_concurrency), **app_settings}))
            startup[f"{label}: start_seconds"] = round(time.monotonic() - begin, 2)
            startup[f"{label}: rss_mib_at_start"] = round(procs.rss_bytes(app.pid) / 2**20, 1)
            available[label] = await gradio_target(label, app.url, app.pid)
        if "gr.load_chat" in targets:
            begin = time.monotonic()
            peer = running.enter_context(
                procs.peer(folder / "peer", standin.url, p.queue_concurrency))
            startup["gr.load_chat: start_seconds"] = round(time.monotonic() - begin, 2)
            # gr.load_chat's API cannot take a second message in a session (Gradio 6.31:
            # format_conversation refuses the history it stored itself), so each of its
            # messages opens a new session.
            available["gr.load_chat"] = await gradio_target(
                "gr.load_chat", peer.url, peer.pid, multi_turn=False)
        if "floor" in targets:
            relay = running.enter_context(procs.floor(folder / "floor", standin.url))
            available["floor"] = await floor_target(relay.url, relay.pid)
        chosen = [available[name] for name in targets]
        for target in chosen:  # one warm-up stream each: first-request costs are not load
            warm = await target.send(await target.prepare())
            if warm.error:
                raise RuntimeError(f"{target.name}: the warm-up stream failed: {warm.error}")
        for mode in p.modes:
            for streams in p.streams:
                for target in chosen:
                    row = await measure(target, mode, streams, p)
                    rows.append(row)
                    log(f"{mode:<6} N={streams:<4} {target.name:<13} ttft "
                        f"{row.ttft_ms_median} ms, aggregate "
                        f"{row.aggregate_tokens_per_second:.0f} tokens/s, errors "
                        f"{row.errors}, server CPU {row.server_cpu_percent}%")
                    await asyncio.sleep(1.0)  # let the previous row's connections close
    return with_ratios(rows), startup


def markdown(rows: list[Row], p: Parameters) -> str:
    def show(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    lines = []
    for mode in p.modes:
        if mode == "steady":
            lines.append(f"**steady**: N users, {p.rounds} messages each back to back, first "
                         f"messages spread over {p.stream_seconds:g} s; aggregate over the "
                         "window where all N stream.")
        else:
            lines.append("**burst**: N users press Send at the same instant; aggregate = all "
                         "tokens over the span from the first request to the last token.")
        lines += [
            "",
            "| N | target | TTFT median (ms) | TTFT p90 (ms) | tokens/s a stream (median) "
            "| aggregate tokens/s | of direct | errors | server CPU (% of a core) "
            "| CPU ms a token | of the floor's | peak RSS (MiB) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            if r.mode != mode:
                continue
            lines.append(
                f"| {r.streams} | {r.target} | {show(r.ttft_ms_median, '.0f')} "
                f"| {show(r.ttft_ms_p90, '.0f')} "
                f"| {show(r.stream_tokens_per_second_median, '.1f')} "
                f"| {r.aggregate_tokens_per_second:,.0f} | {show(r.aggregate_vs_direct, '.0%')} "
                f"| {r.errors}/{r.messages} | {show(r.server_cpu_percent, '.0f')} "
                f"| {show(r.server_cpu_ms_per_token, '.2f')} "
                f"| {'—' if r.cpu_vs_floor is None else f'{r.cpu_vs_floor:.1f}x'} "
                f"| {show(r.server_peak_rss_mib, '.0f')} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def targets_check(rows: list[Row], p: Parameters, apps: list[str]) -> dict[str, Any]:
    """The issue's targets for each app, read off this run's rows, by mode."""
    checks: dict[str, Any] = {}
    at = 64 if 64 in p.streams else max(p.streams)
    for mode in p.modes:
        by = {(r.target, r.streams): r for r in rows if r.mode == mode}
        for label in apps:
            app, direct = by.get((label, at)), by.get(("direct", at))
            check: dict[str, Any] = {}
            if app and direct:
                delta = (None if app.ttft_ms_median is None or direct.ttft_ms_median is None
                         else round(app.ttft_ms_median - direct.ttft_ms_median, 1))
                check = {
                    "at_streams": at,
                    "aggregate_vs_direct": app.aggregate_vs_direct,
                    "errors": app.errors,
                    "ttft_median_minus_direct_ms": delta,
                    "aggregate_target_met": bool(app.aggregate_vs_direct is not None
                                                 and app.aggregate_vs_direct >= 0.95
                                                 and app.errors == 0),
                    "ttft_target_met": delta is not None and delta <= 50,
                }
            beats = []
            for n in p.streams:
                a, g = by.get((label, n)), by.get(("gr.load_chat", n))
                if a and g:
                    beats.append(a.errors <= g.errors and a.aggregate_tokens_per_second
                                 >= g.aggregate_tokens_per_second)
            check["beats_gr_load_chat_on_every_row"] = bool(beats) and all(beats)
            checks[f"{mode}: {label}"] = check
    return checks


def plot(rows: list[Row], p: Parameters, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(p.modes), figsize=(6 * len(p.modes), 4.5), dpi=110,
                                  squeeze=False)
    ns = list(p.streams)
    for axes, mode in zip(panels[0], p.modes, strict=True):
        axes.plot(ns, [n * p.rate for n in ns], color="0.8", linestyle="--",
                  label=f"N x {p.rate:g} tokens/s")
        names = list(dict.fromkeys(r.target for r in rows))
        for name, marker in zip(names, "osv^D<>", strict=False):
            points = [(r.streams, r.aggregate_tokens_per_second) for r in rows
                      if r.target == name and r.mode == mode]
            if points:
                axes.plot(*zip(*points, strict=True), marker=marker, label=name)
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(ns, [str(n) for n in ns])
        axes.set_xlabel("concurrent streams (N)")
        axes.set_ylabel("aggregate tokens/s received")
        axes.set_title(f"{mode}", fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("streaming", __doc__,
                        "N = 1 and 4, 20 tokens: checks that the harness works",
                        "latest.json, streaming.md and streaming.png", app_path=False)
    parser.add_argument("--streams", type=int, nargs="+", default=None,
                        help="the values of N (default 1 16 64 128; --quick: 1 4)")
    parser.add_argument("--targets", nargs="+", default=None,
                        help="which to run: direct, floor, gr.load_chat and the app labels "
                             "(default: all)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens a stream (default 200; --quick: 20): with two values in "
                             "two runs, the CPU a token splits into what each token costs "
                             "and what each message costs")
    parser.add_argument("--app", action="append", default=[], metavar="LABEL=PATH",
                        help="an app to measure, run from the checkout at PATH (repeatable, "
                             "to compare changes side by side; default: app=this checkout)")
    parser.add_argument("--app-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an extra setting for the app (repeatable)")
    parser.add_argument("--note", default="", help="a line kept in the results file")
    args = parser.parse_args(argv)
    p = QUICK if args.quick else FULL
    p = replace(p, modes=tuple(args.modes))
    if args.streams:
        p = replace(p, streams=tuple(args.streams))
    if args.tokens:
        p = replace(p, tokens=args.tokens)
    settings = dict(item.split("=", 1) for item in args.app_setting)
    apps = {label: Path(path).resolve() for label, _, path in
            (item.partition("=") for item in args.app)} or {"app": procs.REPO}
    targets = tuple(args.targets or ["direct", "floor", *apps, "gr.load_chat"])
    unknown = set(targets) - {*PEERS, *apps}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    output = cli.output_folder(args)
    started = datetime.now(UTC)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as folder:
        rows, startup = asyncio.run(run_all(
            p, Path(folder), apps, targets, log, settings
        ))
    report = cli.report(
        "streaming", args, started,
        apps={label: code_version(path) for label, path in apps.items()},
        app_settings=settings, note=args.note, parameters=asdict(p), startup=startup,
        targets=targets_check(rows, p, [label for label in apps if label in targets]),
        results=[asdict(row) for row in rows],
    )
    machine = report["machine"]
    table = markdown(rows, p)
    print(table)
    print(json.dumps(report["targets"]))
    if output is not None:
        cli.write_json(output, "latest.json", report)
        header = (f"# Streaming benchmark, {started:%Y-%m-%d}\n\n{p.tokens} tokens a stream at "
                  f"{p.rate:g} tokens/s. Machine: {machine['cpu_count']} x "
                  f"{machine['cpu_model']}, {machine['memory_gib']} GiB, {machine['os']}, "
                  f"Python {machine['python']}.\n\n")
        (output / "streaming.md").write_text(header + table)
        plot(rows, p, output / "streaming.png",
             f"{p.tokens} tokens a stream at {p.rate:g}/s; {machine['cpu_count']} x "
             f"{machine['cpu_model']}")
        print(f"\nwrote {output}/latest.json, streaming.md, streaming.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
