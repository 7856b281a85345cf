"""Store benchmark: how fast replies are written while they stream, and how long a long
conversation takes to load, on SQLite and on a throwaway PostgreSQL server.

    python -m bench.store            # full run; writes bench/results/store.json
    python -m bench.store --quick    # a few iterations and 100 messages, to check the
                                     # harness; writes nothing unless --output is given

Writes are made the way the app makes them for a turn: ``begin_turn`` (the message and its
empty reply, in one transaction), then ``save_reply`` with the whole reply so far at each save
(the app saves about once a second), then a last ``save_reply`` with the status and stats; each
call is one transaction. The load is ``get_conversation`` on a conversation of 1,000 messages
(500 questions, 500 replies), written the same way.

PostgreSQL is started like the tests' fixture (``tests/postgres.py``): Debian's binaries, a
temporary folder, 127.0.0.1 on a free port, default settings (so each commit waits for its WAL
flush). It is measured again with ``synchronous_commit=off``, which is closer to SQLite's WAL
mode with ``synchronous=NORMAL`` (neither waits for the disk at each commit).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy

from app.store import BegunTurn, Store
from bench.machine import describe
from tests.postgres import PostgresServer

RESULTS = Path(__file__).resolve().parent / "results" / "store.json"
CHUNK = "The quick brown fox jumps over the lazy dog; `print(fox)` returns None. " * 3
USER_TEXT = "How do I read a file line by line in Python, and what about very large files?"
# The page's controls, as each turn writes them with the conversation (``kept_settings``).
PAGE_SETTINGS: dict[str, Any] = {
    "max_new_tokens": 512, "temperature": 0.2, "top_p": 0.95, "top_k": 40,
    "repetition_penalty": 1.1, "frequency_penalty": 0.0, "presence_penalty": 0.0, "stop": "",
    "seed": -1, "model": "bench-model",
}


@dataclass(frozen=True)
class Parameters:
    replies: int  # streamed replies written (after one warm-up reply)
    saves_per_reply: int  # save_reply calls with the growing text, before the final one
    chunk_chars: int  # text added between two saves
    load_messages: int  # messages in the conversation that is loaded
    load_reply_chars: int  # length of each reply in that conversation
    load_runs: int  # get_conversation calls timed (the median is reported)


FULL = Parameters(replies=100, saves_per_reply=20, chunk_chars=len(CHUNK), load_messages=1000,
                  load_reply_chars=2000, load_runs=31)
QUICK = Parameters(replies=2, saves_per_reply=3, chunk_chars=len(CHUNK), load_messages=100,
                   load_reply_chars=2000, load_runs=3)


@dataclass(frozen=True)
class Result:
    database: str
    writes: int
    seconds: float
    writes_per_second: float
    write_ms_median: float
    write_ms_p95: float
    load_messages: int
    load_ms_median: float
    load_ms_min: float


def begin_turn(store: Store, user: int, after: BegunTurn | None) -> BegunTurn:
    """A message with its empty reply, streaming, as the page begins a turn: the first of a
    conversation, or one after the turn ``after``, in its conversation."""
    return store.begin_turn(
        user, None if after is None else after.conversation_id, "", PAGE_SETTINGS, None,
        message=USER_TEXT, parent=None if after is None else after.reply_id,
        title="Benchmark", model="bench-model", backend="tgi",
    )


def stream_replies(
    store: Store, user: int, parameters: Parameters
) -> tuple[int, float, list[float]]:
    """Write replies as the app does while they stream, each a turn after the last one in
    the same conversation: (writes, seconds spent, latencies)."""
    begun = None
    latencies: list[float] = []
    for number in range(parameters.replies + 1):
        if number == 1:  # reply 0 warms up connections and caches, and starts the conversation
            latencies.clear()
        begin = time.perf_counter()
        begun = begin_turn(store, user, begun)
        latencies.append(time.perf_counter() - begin)
        text = ""
        for _ in range(parameters.saves_per_reply):
            text += CHUNK
            begin = time.perf_counter()
            store.save_reply(user, begun.reply_id, text)
            latencies.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        store.save_reply(user, begun.reply_id, text + CHUNK, status="stop", tokens=400,
                         time_to_first_token=0.2, tokens_per_second=50.0)
        latencies.append(time.perf_counter() - begin)
    return len(latencies), sum(latencies), latencies


def load_conversation(store: Store, user: int, parameters: Parameters) -> list[float]:
    """Time ``get_conversation`` on a conversation of ``load_messages`` messages."""
    reply_text = (CHUNK * (parameters.load_reply_chars // len(CHUNK) + 1))[
        : parameters.load_reply_chars
    ]
    begun = None
    for _ in range(parameters.load_messages // 2):
        begun = begin_turn(store, user, begun)
        store.save_reply(user, begun.reply_id, reply_text, status="stop", tokens=400)
    assert begun is not None, "load_messages is at least 2"
    conversation = begun.conversation_id
    record = store.get_conversation(user, conversation)  # warm-up, and a check
    if 2 * len(record.exchanges) != parameters.load_messages:
        raise RuntimeError(f"loaded {2 * len(record.exchanges)} messages, expected "
                           f"{parameters.load_messages}")
    timings = []
    for _ in range(parameters.load_runs):
        begin = time.perf_counter()
        store.get_conversation(user, conversation)
        timings.append(time.perf_counter() - begin)
    return timings


def measure(database: str, url: str, parameters: Parameters) -> Result:
    store = Store(url)
    try:
        store.migrate()
        user = store.user_id()
        writes, seconds, latencies = stream_replies(store, user, parameters)
        loads = load_conversation(store, user, parameters)
    finally:
        store.engine.dispose()
    ordered = sorted(latencies)
    return Result(
        database=database, writes=writes, seconds=round(seconds, 4),
        writes_per_second=round(writes / seconds, 1),
        write_ms_median=round(1000 * statistics.median(ordered), 3),
        write_ms_p95=round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        load_messages=parameters.load_messages,
        load_ms_median=round(1000 * statistics.median(loads), 2),
        load_ms_min=round(1000 * min(loads), 2),
    )


def machine(postgres_version: str) -> dict[str, Any]:
    return {
        **describe(),
        "sqlite_version": sqlite3.sqlite_version,
        "postgres_version": postgres_version,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
    }


def markdown(results: list[Result]) -> str:
    messages = results[0].load_messages if results else 0
    lines = [
        "| database | writes/s | write median (ms) | write p95 (ms) "
        f"| load {messages:,} messages, median (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.database} | {r.writes_per_second:,.0f} | {r.write_ms_median:.2f} "
                     f"| {r.write_ms_p95:.2f} | {r.load_ms_median:.1f} |")
    return "\n".join(lines)


def run(parameters: Parameters) -> tuple[list[Result], str]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        sqlite_url = f"sqlite:///{Path(folder) / 'store.db'}"
        results.append(measure("sqlite (WAL, synchronous=NORMAL)", sqlite_url, parameters))
    with PostgresServer() as server:
        results.append(
            measure("postgresql (default: synchronous_commit=on)",
                    server.create_database("bench"), parameters)
        )
        no_wait = server.create_database("bench_async") + "?options=-csynchronous_commit%3Doff"
        results.append(measure("postgresql (synchronous_commit=off)", no_wait, parameters))
        version = server.version
    return results, version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.store", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true",
                        help="a few iterations, to check that the harness works")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"where to write the JSON results (default: {RESULTS} for a "
                             "full run, nothing for --quick)")
    args = parser.parse_args(argv)
    parameters = QUICK if args.quick else FULL
    output = args.output or (None if args.quick else RESULTS)

    results, postgres_version = run(parameters)
    report = {
        "benchmark": "store",
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(postgres_version),
        "parameters": asdict(parameters),
        "results": [asdict(result) for result in results],
    }
    print(markdown(results))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
