"""Fault runs under load: N users stream from the app while something breaks, and afterwards the
database is checked against what each browser was shown.

    python -m bench.faults            # 32 users a scenario; writes bench/results/faults.json
                                      # and faults.md (about 2 minutes)
    python -m bench.faults --quick    # 6 users, short streams: checks the harness

Scenarios (the stand-in is ``bench/standin.py``; a quarter of the users are "affected"):

- ``cut``: the affected users' streams are dropped by the backend mid-reply (the connection
  closes after ``fault_after`` tokens) while the others stream on;
- ``stall``: the affected users' streams stop sending data mid-reply (only TGI's keep-alive
  comments still come); the app gives up after ``BACKEND_READ_TIMEOUT`` (set short here);
- ``kill``: the backend process is killed (SIGKILL) while every stream is mid-reply, started
  again a second later on the same port, and a second wave of users then streams: it should
  work without restarting the app;
- ``db-lock``: another connection holds SQLite's write lock (``BEGIN EXCLUSIVE``) for a few
  seconds while every stream is mid-reply; nobody is affected by design (writes wait, up to
  SQLite's 30 s busy timeout), so the run records how long updates stopped flowing.

Checked for each scenario: unaffected users get every token and no error; affected users keep
the tokens they were shown and get one line saying what happened; in the database every user
message is there, its reply holds exactly the tokens the browser showed, with the status
``stop`` (finished) or ``interrupted``, and no reply is left ``streaming``.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cli, procs
from bench.client import (
    TOKEN,
    GradioTarget,
    StreamResult,
    find_endpoint,
    get_json,
    gradio_stream,
    open_page,
)

SCENARIOS = ("cut", "stall", "kill", "db-lock")
WARNING = "⚠️"


@dataclass(frozen=True)
class Parameters:
    users: int
    tokens: int
    rate: float
    fault_after: int  # tokens a cut or stalled stream sends first
    read_timeout: float  # BACKEND_READ_TIMEOUT of the app, seconds
    lock_seconds: float  # how long the database stays locked


# The lock starts fault_after tokens into the streams and ends before they would.
FULL = Parameters(users=32, tokens=200, rate=50.0, fault_after=50, read_timeout=3.0,
                  lock_seconds=2.0)
QUICK = Parameters(users=6, tokens=50, rate=50.0, fault_after=10, read_timeout=1.5,
                   lock_seconds=0.4)


@dataclass
class Outcome:
    scenario: str
    users: int
    affected: int
    unaffected_complete: int  # unaffected users shown every token, no error
    affected_with_message: int  # affected users shown a one-line message and their tokens
    messages: list[str]  # the distinct lines affected users were shown
    stored_ok: int  # users whose message and reply in the database match what they saw
    left_streaming: int  # replies still marked streaming in the database afterwards
    max_update_gap_ms: float  # longest pause between updates of an unaffected stream
    ttft_ms_median: float | None
    recovery_seconds: float | None = None  # kill: backend back until a new stream works
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (not self.problems and self.unaffected_complete == self.users - self.affected
                and self.affected_with_message == self.affected and self.stored_ok == self.users
                and self.left_streaming == 0)


def error_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(WARNING)]


class Gaps:
    """Records the time of every update of every stream (for the longest pause)."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}

    def __call__(self, result: StreamResult, text: str) -> None:
        self.times.setdefault(id(result), []).append(time.perf_counter())

    def longest(self, results: list[StreamResult]) -> float:
        longest = 0.0
        for result in results:
            times = self.times.get(id(result), [])
            longest = max([longest, *(b - a for a, b in itertools.pairwise(times))])
        return longest


def stored_replies(database: Path, texts: list[str]) -> dict[str, tuple[str, str] | None]:
    """For each user message text: (reply content, status) of its latest reply, or None."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        found: dict[str, tuple[str, str] | None] = {}
        for text in texts:
            row = connection.execute(
                "SELECT r.content, r.status FROM messages u LEFT JOIN messages r "
                "ON r.reply_to_id = u.id WHERE u.role = 'user' AND u.content = ? "
                "ORDER BY r.id DESC LIMIT 1", (text,),
            ).fetchone()
            found[text] = None if row is None or row[1] is None else (row[0] or "", row[1])
        return found
    finally:
        connection.close()


def count_streaming(database: Path) -> int:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return int(connection.execute(
            "SELECT count(*) FROM messages WHERE status = 'streaming'").fetchone()[0])
    finally:
        connection.close()


def judge(
    scenario: str, p: Parameters, texts: list[str], affected: set[int],
    results: list[StreamResult], database: Path, gaps: Gaps,
) -> Outcome:
    stored = stored_replies(database, texts)
    unaffected_ok = affected_ok = stored_ok = 0
    messages: set[str] = set()
    problems: list[str] = []
    for index, (text, result) in enumerate(zip(texts, results, strict=True)):
        lines = error_lines(result.text)
        if index in affected:
            if result.error is None and len(lines) == 1 and result.tokens >= 1:
                affected_ok += 1
                messages.add(lines[0])
            else:
                problems.append(f"user {index} (affected): {result.error or lines or 'no message'}")
        elif result.error is None and not lines and result.tokens == p.tokens:
            unaffected_ok += 1
        else:
            problems.append(f"user {index}: {result.error or lines} after {result.tokens} tokens")
        record = stored.get(text)
        if record is None:
            problems.append(f"user {index}: no stored reply")
            continue
        content, status = record
        want = "interrupted" if index in affected else "stop"
        shown = len(TOKEN.findall(result.text))
        kept = len(TOKEN.findall(content))
        if status == want and kept == shown:
            stored_ok += 1
        else:
            problems.append(f"user {index}: stored {kept} tokens as {status!r}, shown {shown}")
    unaffected = [r for i, r in enumerate(results) if i not in affected]
    ttfts = [1000 * r.ttft for r in results if r.ttft is not None]
    return Outcome(
        scenario=scenario, users=len(results), affected=len(affected),
        unaffected_complete=unaffected_ok, affected_with_message=affected_ok,
        messages=sorted(messages), stored_ok=stored_ok,
        left_streaming=count_streaming(database),
        max_update_gap_ms=round(1000 * gaps.longest(unaffected), 1),
        ttft_ms_median=round(statistics.median(ttfts), 1) if ttfts else None,
        problems=problems[:10],
    )


def hold_lock(database: Path, seconds: float, held: threading.Event) -> None:
    """Another writer: SQLite's exclusive lock on the database for ``seconds``."""
    connection = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
    finally:
        connection.close()


async def wave(
    target: GradioTarget, texts: list[str],
) -> list[StreamResult]:
    sessions = await asyncio.gather(*(open_page(target) for _ in texts))
    return list(await asyncio.gather(*(
        gradio_stream(target, text, session) for text, session in zip(texts, sessions, strict=True)
    )))


async def scenario_run(
    scenario: str, p: Parameters, folder: Path, app_path: Path, log: Any,
) -> list[Outcome]:
    database = folder / "app" / "bench.db"
    outcomes: list[Outcome] = []
    # Keep-alives more often than the app's timeout: a stalled TGI stream keeps pinging.
    standin = procs.standin(folder, p.rate, p.tokens, fault_after=p.fault_after,
                            keepalive=p.read_timeout / 3).start()
    app = procs.app(folder / "app", standin.url, app_path,
                    settings={"backend_read_timeout": str(p.read_timeout)}).start()
    try:
        gaps = Gaps()
        target = GradioTarget(app.url, await find_endpoint(app.url), on_update=gaps)
        count = max(1, p.users // 4)
        affected = set(range(0, p.users, max(1, p.users // count)))
        if scenario in ("kill", "db-lock"):
            affected = set(range(p.users)) if scenario == "kill" else set()
        marker = {"cut": " [cut]", "stall": " [stall]"}.get(scenario, "")
        texts = [f"Write a function, please (user {i}, {scenario})"
                 + (marker if i in affected else "") for i in range(p.users)]
        mid = p.fault_after / p.rate  # seconds into the streams: mid-reply for everyone
        running = asyncio.create_task(wave(target, texts))
        if scenario == "kill":
            await _when_streaming(standin.url, p.users)
            await asyncio.sleep(mid)
            standin.kill()
            await asyncio.sleep(1.0)
            standin.start()
            back = time.monotonic()
        elif scenario == "db-lock":
            await _when_streaming(standin.url, p.users)
            await asyncio.sleep(mid)
            held = threading.Event()
            locker = threading.Thread(target=hold_lock, args=(database, p.lock_seconds, held))
            locker.start()
            await asyncio.to_thread(held.wait, 30)
            await asyncio.to_thread(locker.join)
        results = await running
        outcome = judge(scenario, p, texts, affected, results, database, gaps)
        if scenario == "kill":
            # The second wave: the app must work again without a restart.
            again = [f"Write a function, please (user {i}, after the kill)"
                     for i in range(p.users)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                probe = await gradio_stream(target, again[0], await open_page(target))
                if probe.error is None and probe.tokens == p.tokens:
                    break
                await asyncio.sleep(0.5)
            outcome.recovery_seconds = round(time.monotonic() - back, 2)
            gaps_after = Gaps()
            target.on_update = gaps_after
            second = await wave(target, again[1:])
            after = judge("kill: second wave", p, again[1:], set(), second, database,
                          gaps_after)
            outcomes.append(outcome)
            outcome = after
        outcomes.append(outcome)
        for item in outcomes:
            log(f"{item.scenario:<18} passed={item.passed} unaffected {item.unaffected_complete}"
                f"/{item.users - item.affected}, affected with a message "
                f"{item.affected_with_message}/{item.affected}, stored {item.stored_ok}/"
                f"{item.users}, longest pause {item.max_update_gap_ms} ms"
                + (f"; problems: {item.problems[:2]}" if item.problems else ""))
    finally:
        app.stop()
        standin.stop()
    return outcomes


async def _when_streaming(standin_url: str, streams: int) -> None:
    """Wait (a minute at most) until the stand-in has ``streams`` streams running."""
    for _ in range(1200):
        if (await get_json(standin_url, "/stats"))["active"] >= streams:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the {streams} streams did not start within a minute")


def markdown(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | users | affected | unaffected complete | affected told "
        "| stored as shown | left streaming | longest pause, unaffected (ms) "
        "| what the affected were told | passed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for o in outcomes:
        told = "; ".join(o.messages) or "—"
        recovery = f" (working again {o.recovery_seconds} s after the restart)" \
            if o.recovery_seconds is not None else ""
        lines.append(
            f"| {o.scenario}{recovery} | {o.users} | {o.affected} "
            f"| {o.unaffected_complete}/{o.users - o.affected} "
            f"| {o.affected_with_message}/{o.affected} | {o.stored_ok}/{o.users} "
            f"| {o.left_streaming} | {o.max_update_gap_ms:.0f} | {told} "
            f"| {'yes' if o.passed else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("faults", __doc__, "6 users, short streams", "faults.json and faults.md")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args(argv)
    p = QUICK if args.quick else FULL
    output = cli.output_folder(args)
    started = datetime.now(UTC)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as folder:
        for scenario in args.scenarios:
            (Path(folder) / scenario).mkdir()
            outcomes += asyncio.run(
                scenario_run(scenario, p, Path(folder) / scenario, args.app_path.resolve(), log)
            )
    table = markdown(outcomes)
    print(table)
    if output is not None:
        cli.write_json(output, "faults.json", cli.report(
            "faults", args, started, parameters=asdict(p),
            results=[asdict(o) | {"passed": o.passed} for o in outcomes]))
        (output / "faults.md").write_text(f"# Fault runs, {started:%Y-%m-%d}\n\n{table}\n")
        print(f"\nwrote {output}/faults.json and faults.md", file=sys.stderr)
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
