"""Engine benchmark: the embedded engine before and after llama-server, side by side in one
run, through the app's REST API as a user reaches it.

    python -m bench.engines            # 1, 4 and 8 users at once, 128 tokens, 2 repeats; writes
                                       # bench/results/engines.json, engines.md and engines.png
    python -m bench.engines --quick    # 1 and 2 users, 16 tokens, one repeat: checks the
                                       # harness, writes nothing unless --output is given

The targets, each the app (``python -m app``, its SQLite database in a temporary folder, the
per-user rate limit off, ``MAX_RUNNING_REPLIES_PER_USER=16`` so that one local user may send
them all) in front of one engine serving the same model (SmolLM2-135M-Instruct, Q4_1):

- ``old``: llama-cpp-python's server (``python -m llama_cpp.server``, the ``baseline`` extra),
  started as ``python -m app --engine`` started it before llama-server (app/engine.py at
  5986cb4: ``--n_ctx 2048 --interrupt_requests False``), which answers one request at a time
  and generates on half the cores (its default ``n_threads``; llama-server takes them all);
  the app reaches it at ``BACKEND_URL``;
- ``new``: ``python -m app --engine``, which starts llama.cpp's own server (``ENGINE_SERVER``,
  from the environment, else ``llama-server`` on PATH) with ``ENGINE_PARALLEL=4`` slots.

For each number of users, every user sends one coding prompt (a different one each, from
``PROMPTS``) in the same instant: ``POST /api/v1/dialogue`` streamed, ``max_new_tokens`` and
temperature 0. Reported per row: the time to the first token of each user (from sending the
request to the first event with text; median, p90 and slowest); the aggregate tokens/s (the
replies' tokens, as their ``done`` event counts them, over the time from the first request
to the last ``done``); how many users were told they wait for a slot (a ``waiting`` event
before the first text) and the first-token times of those told and of the others; the CPU
seconds of the engine's process and of the app's over the row, and a token; the engine's peak
resident memory; the CPU seconds of every other process (on a shared machine, what competed for
the cores); errors (a status other than 200, a ``done`` with an error, a stream cut).

Repeats alternate the targets (old, new, old, new, ...); each repeat starts a target's engine
and app afresh, sends one warm-up request, then runs its rows. The table shows, for each
target and number of users, the median over the repeats, and the ratios new/old.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import operator
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cli, procs
from bench.client import ClientError, request
from bench.streaming import percentile
from tests.servers import free_port

MODEL = procs.REPO / "volumes/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ("old", "new")
SLOTS = 4  # the new engine's ENGINE_PARALLEL (its default on 2 cores), spelled out
OLD_CONTEXT = 2048  # the old engine's --n_ctx, the app's CONTEXT_TOKENS
PROMPTS = (
    "Write a Python function that reverses a string.",
    "Write a Python function that checks whether a number is prime.",
    "Write a JavaScript function that removes duplicates from an array.",
    "Write a SQL query that counts the orders of each customer.",
    "Write a Bash loop that prints the numbers 1 to 10.",
    "Write a Python class for a stack with push and pop.",
    "Write a Go function that sums a slice of integers.",
    "Write a Python function that counts the words in a sentence.",
)


@dataclass(frozen=True)
class Parameters:
    users: tuple[int, ...]  # users at once, one row each
    max_new_tokens: int
    repeats: int
    temperature: float = 0.0


FULL = Parameters(users=(1, 4, 8), max_new_tokens=128, repeats=2)
QUICK = Parameters(users=(1, 2), max_new_tokens=16, repeats=1)


@dataclass
class Reply:
    """One user's message, as the API's stream brought it back."""

    prompt: int  # its index in PROMPTS
    started: float  # time.perf_counter() when the request left
    ended: float = 0.0
    first_token: float | None = None
    waiting: int | None = None  # the first ``waiting`` event's count, when one came
    tokens: int = 0
    finish: str | None = None
    error: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        return None if self.first_token is None else 1000 * (self.first_token - self.started)

    def outcome(self) -> dict[str, Any]:
        ttft = self.ttft_ms
        return {"prompt": self.prompt, "ttft_ms": None if ttft is None else round(ttft, 1),
                "waiting": self.waiting, "tokens": self.tokens, "finish": self.finish,
                "error": self.error}


async def ask(url: str, prompt: int, p: Parameters) -> Reply:
    """Send ``PROMPTS[prompt]`` as a new dialogue, streamed, and read the reply to its end."""
    reply = Reply(prompt, started=time.perf_counter())
    payload = {"message": PROMPTS[prompt], "stream": True,
               "max_new_tokens": p.max_new_tokens, "temperature": p.temperature}
    try:
        response = await request(url, "POST", "/api/v1/dialogue", payload)
        try:
            if response.status != 200:
                raise ClientError(f"HTTP {response.status}: {(await response.body())[:200]!r}")
            async for data in response.events():
                sent = json.loads(data)
                if sent.get("delta") and reply.first_token is None:
                    reply.first_token = time.perf_counter()
                elif "waiting" in sent and reply.waiting is None:
                    reply.waiting = sent["waiting"]
                elif sent.get("done"):
                    stats = sent["stats"] or {}
                    reply.tokens, reply.finish = stats.get("tokens", 0), stats.get("finish")
                    reply.error = sent["error"]
                    break
            else:
                raise ClientError("the stream ended without its done event")
        finally:
            response.close()
    except (ClientError, OSError, asyncio.IncompleteReadError, ValueError) as err:
        reply.error = f"{type(err).__name__}: {err}"
    reply.ended = time.perf_counter()
    return reply


@dataclass(frozen=True)
class Measures:
    """A row's numbers; for a target and a number of users, each the median over repeats."""

    ttft_ms_median: float | None
    ttft_ms_p90: float | None
    ttft_ms_slowest: float | None
    aggregate_tokens_per_second: float | None
    tokens: float | None
    seconds: float | None  # from the first request to the last reply's end
    told_to_wait: float | None  # users sent a ``waiting`` event
    ttft_ms_told_median: float | None
    ttft_ms_not_told_median: float | None
    engine_cpu_seconds: float | None
    app_cpu_seconds: float | None
    engine_cpu_ms_per_token: float | None
    app_cpu_ms_per_token: float | None
    engine_peak_rss_mib: float | None
    # CPU seconds of every other process on the machine over the row, the load client's
    # included: what shared the cores with the engine and the app.
    others_cpu_seconds: float | None


@dataclass(frozen=True)
class Row:
    target: str
    users: int
    repeat: int
    errors: int
    first_errors: list[str]
    measures: Measures
    replies: list[dict[str, Any]]  # each user's, in the order of PROMPTS


def median(values: Sequence[float | None], digits: int = 1) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), digits) if present else None


def per_token(seconds: float, tokens: int) -> float | None:
    return round(1000 * seconds / tokens, 2) if tokens else None


def machine_cpu_seconds() -> float:
    """CPU time every process has spent so far, all cores together (``/proc/stat``)."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(value) for value in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / procs.CLOCK_TICKS


def row(target: str, repeat: int, replies: list[Reply], engine: procs.Usage,
        app: procs.Usage, machine_cpu: float) -> Row:
    ttfts = [ttft for r in replies if (ttft := r.ttft_ms) is not None]
    failed = [r.error for r in replies if r.error is not None]
    tokens = sum(r.tokens for r in replies)
    seconds = max(r.ended for r in replies) - min(r.started for r in replies)
    return Row(
        target=target, users=len(replies), repeat=repeat, errors=len(failed),
        first_errors=sorted(set(failed))[:3],
        measures=Measures(
            ttft_ms_median=median(ttfts),
            ttft_ms_p90=round(percentile(ttfts, 0.9), 1) if ttfts else None,
            ttft_ms_slowest=round(max(ttfts), 1) if ttfts else None,
            aggregate_tokens_per_second=round(tokens / seconds, 1) if seconds > 0 else None,
            tokens=tokens, seconds=round(seconds, 3),
            told_to_wait=sum(1 for r in replies if r.waiting is not None),
            ttft_ms_told_median=median([r.ttft_ms for r in replies if r.waiting is not None]),
            ttft_ms_not_told_median=median([r.ttft_ms for r in replies if r.waiting is None]),
            engine_cpu_seconds=round(engine.cpu_seconds, 2),
            app_cpu_seconds=round(app.cpu_seconds, 2),
            engine_cpu_ms_per_token=per_token(engine.cpu_seconds, tokens),
            app_cpu_ms_per_token=per_token(app.cpu_seconds, tokens),
            engine_peak_rss_mib=round(engine.peak_rss_bytes / 2**20, 1),
            others_cpu_seconds=round(machine_cpu - engine.cpu_seconds - app.cpu_seconds, 2),
        ),
        replies=[r.outcome() for r in replies],
    )


@dataclass(frozen=True)
class Summary:
    """A target at a number of users over the repeats: errors summed, numbers the medians."""

    target: str
    users: int
    repeats: int
    errors: int
    measures: Measures


def summarize(rows: list[Row]) -> list[Summary]:
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.target, r.users), []).append(r)
    return [
        Summary(target, users, len(group), sum(r.errors for r in group), Measures(**{
            f.name: median([getattr(r.measures, f.name) for r in group], 2)
            for f in fields(Measures)
        }))
        for (target, users), group in sorted(
            groups.items(), key=lambda item: (item[0][1], TARGETS.index(item[0][0])))
    ]


def ratios(summaries: list[Summary]) -> list[dict[str, Any]]:
    """New over old, for each number of users both ran."""
    by = {(s.target, s.users): s.measures for s in summaries}
    found = []
    for users in sorted({s.users for s in summaries}):
        old, new = by.get(("old", users)), by.get(("new", users))
        if old is None or new is None:
            continue
        found.append({
            "users": users,
            "slowest_first_token": quotient(new.ttft_ms_slowest, old.ttft_ms_slowest),
            "aggregate_tokens_per_second": quotient(new.aggregate_tokens_per_second,
                                                    old.aggregate_tokens_per_second),
        })
    return found


def quotient(top: float | None, bottom: float | None) -> float | None:
    return round(top / bottom, 2) if top is not None and bottom else None


def holds(left: float | None, test: Callable[[float, float], bool],
          right: float | None) -> bool:
    return left is not None and right is not None and test(left, right)


def targets_check(summaries: list[Summary], rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets, for the numbers of users this run measured: at 1 user the new
    engine no worse than the old (first token, aggregate tokens/s); at 4, the slowest first
    token under 1 s and the aggregate at least twice the old's; beyond the slots, those who
    wait are told (in every repeat, as many told as users beyond the slots, each told user's
    first token later than every other user's)."""
    by = {(s.target, s.users): s for s in summaries}
    checks: list[dict[str, Any]] = []
    if ("old", 1) in by and ("new", 1) in by:
        old, new = by["old", 1].measures, by["new", 1].measures
        checks.append({
            "users": 1, "target": "first token and tokens/s no worse than old",
            "met": (by["new", 1].errors == 0
                    and holds(new.ttft_ms_slowest, operator.le, old.ttft_ms_slowest)
                    and holds(new.aggregate_tokens_per_second, operator.ge,
                              old.aggregate_tokens_per_second)),
            "numbers": f"first token {new.ttft_ms_slowest} ms new, {old.ttft_ms_slowest} ms "
                       f"old; {new.aggregate_tokens_per_second} tokens/s new, "
                       f"{old.aggregate_tokens_per_second} old",
        })
    if ("old", 4) in by and ("new", 4) in by:
        old, new = by["old", 4].measures, by["new", 4].measures
        gain = quotient(new.aggregate_tokens_per_second, old.aggregate_tokens_per_second)
        checks.append({
            "users": 4, "target": "slowest first token under 1 s, aggregate tokens/s at least "
                                  "2x old",
            "met": (by["new", 4].errors == 0 and holds(new.ttft_ms_slowest, operator.lt, 1000)
                    and holds(gain, operator.ge, 2.0)),
            "numbers": f"slowest first token {new.ttft_ms_slowest} ms new "
                       f"({old.ttft_ms_slowest} old); {new.aggregate_tokens_per_second} "
                       f"tokens/s new, {old.aggregate_tokens_per_second} old ({gain}x)",
        })
    for users in sorted({s.users for s in summaries if s.target == "new" and s.users > SLOTS}):
        runs = [r for r in rows if r.target == "new" and r.users == users]
        new = by["new", users].measures
        checks.append({
            "users": users, "target": f"with {SLOTS} slots, those waiting are told",
            "met": all(told_right(r) for r in runs),
            "numbers": f"told {', '.join(f'{r.measures.told_to_wait:g}' for r in runs)} of "
                       f"{users} ({users - SLOTS} beyond the slots); first token of those told "
                       f"{new.ttft_ms_told_median} ms, of the others "
                       f"{new.ttft_ms_not_told_median} ms (medians)",
        })
    return checks


def told_right(measured: Row) -> bool:
    """Whether exactly the users beyond the slots were told they wait, and got their first
    token after every other user."""
    told = [r["ttft_ms"] for r in measured.replies if r["waiting"] is not None]
    others = [r["ttft_ms"] for r in measured.replies if r["waiting"] is None]
    return (measured.errors == 0 and len(told) == measured.users - SLOTS
            and None not in told + others and min(told) > max(others))


@dataclass(frozen=True)
class Pair:
    """A target running: the app, and the engine's process behind it."""

    target: str
    url: str
    app_pid: int
    engine_pid: int


def old_engine(folder: Path) -> procs.Child:
    """llama-cpp-python's server, with the arguments app/engine.py gave it (5986cb4)."""
    port = free_port()
    return procs.Child(
        "engine",
        [sys.executable, "-m", "llama_cpp.server", "--model", str(MODEL), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(OLD_CONTEXT), "--model_alias", MODEL.stem,
         "--interrupt_requests", "False"],
        procs.base_env(), folder, port, "/v1/models",
    )


@contextmanager
def started(target: str, folder: Path, app_path: Path, server: str) -> Iterator[Pair]:
    """``target``'s engine and app, started (the app answers once its engine has loaded the
    model), stopped on exit."""
    settings = {"max_running_replies_per_user": "16"}
    with ExitStack() as stack:
        if target == "old":
            engine = stack.enter_context(old_engine(folder / "engine"))
            app = stack.enter_context(procs.app(folder / "app", engine.url, app_path,
                                                settings=settings))
            engine_pid = engine.pid
        else:
            port = free_port()
            app = stack.enter_context(procs.app(
                folder / "app", f"http://127.0.0.1:{port}", app_path, args=("--engine",),
                settings=settings | {"engine_server": server, "engine_model_path": str(MODEL),
                                     "engine_port": str(port), "engine_parallel": str(SLOTS)},
            ))
            [engine_pid] = procs.children(app.pid)  # the llama-server it started
        yield Pair(target, app.url, app.pid, engine_pid)


async def measure(pair: Pair, users: int, repeat: int, p: Parameters) -> Row:
    machine = machine_cpu_seconds()
    engine, app = procs.Sampler(pair.engine_pid).start(), procs.Sampler(pair.app_pid).start()
    replies = await asyncio.gather(*(ask(pair.url, i % len(PROMPTS), p) for i in range(users)))
    engine_usage, app_usage = engine.stop(), app.stop()
    return row(pair.target, repeat, list(replies), engine_usage, app_usage,
               machine_cpu_seconds() - machine)


async def run(p: Parameters, folder: Path, app_path: Path, server: str,
              log: Callable[[str], None]) -> list[Row]:
    rows = []
    for repeat in range(1, p.repeats + 1):
        for target in TARGETS:
            with started(target, folder / f"{target}-{repeat}", app_path, server) as pair:
                warm = await ask(pair.url, 0, p)
                if warm.error is not None:
                    raise RuntimeError(f"{target}: the warm-up request failed: {warm.error}")
                for users in p.users:
                    measured = await measure(pair, users, repeat, p)
                    rows.append(measured)
                    m = measured.measures
                    log(f"repeat {repeat} {target:<3} users {users}: first token median "
                        f"{m.ttft_ms_median} ms, slowest {m.ttft_ms_slowest} ms, aggregate "
                        f"{m.aggregate_tokens_per_second} tokens/s, told to wait "
                        f"{show(m.told_to_wait, 'g')}, errors {measured.errors}")
                    await asyncio.sleep(1.0)  # let the row's connections close
    return rows


def show(value: float | None, spec: str = ".0f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(summaries: list[Summary], found: list[dict[str, Any]]) -> str:
    lines = [
        "| users | engine | first token median (ms) | p90 (ms) | slowest (ms) "
        "| aggregate tokens/s | told to wait | first token, told / not told (ms) "
        "| engine CPU (s) | app CPU (s) | CPU ms a token, engine / app | engine peak RSS (MiB) "
        "| others' CPU (s) | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        m = s.measures
        lines.append(
            f"| {s.users} | {s.target} | {show(m.ttft_ms_median)} | {show(m.ttft_ms_p90)} "
            f"| {show(m.ttft_ms_slowest)} | {show(m.aggregate_tokens_per_second, '.1f')} "
            f"| {show(m.told_to_wait, 'g')} | {show(m.ttft_ms_told_median)} / "
            f"{show(m.ttft_ms_not_told_median)} | {show(m.engine_cpu_seconds, '.1f')} "
            f"| {show(m.app_cpu_seconds, '.1f')} | {show(m.engine_cpu_ms_per_token, '.1f')} / "
            f"{show(m.app_cpu_ms_per_token, '.1f')} | {show(m.engine_peak_rss_mib)} "
            f"| {show(m.others_cpu_seconds, '.1f')} | {s.errors}/{s.users * s.repeats} |"
        )
    lines += ["", "| users | slowest first token, new/old | aggregate tokens/s, new/old |",
              "|---:|---:|---:|"]
    lines += [f"| {r['users']} | {show(r['slowest_first_token'], '.2f')} "
              f"| {show(r['aggregate_tokens_per_second'], '.2f')} |" for r in found]
    return "\n".join(lines) + "\n"


def checked(checks: list[dict[str, Any]]) -> str:
    return "".join(
        f"- {c['users']} user{'s' if c['users'] > 1 else ''}, {c['target']}: "
        f"**{'met' if c['met'] else 'missed'}** ({c['numbers']})\n" for c in checks
    )


def plot(summaries: list[Summary], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (slowest, aggregate) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for target, marker in zip(TARGETS, "os", strict=True):
        mine = [s for s in summaries if s.target == target]
        users = [s.users for s in mine]
        slowest.plot(users, [show_seconds(s.measures.ttft_ms_slowest) for s in mine],
                     marker=marker, label=target)
        aggregate.plot(users, [s.measures.aggregate_tokens_per_second for s in mine],
                       marker=marker, label=target)
    slowest.axhline(1.0, color="0.7", linestyle="--", label="1 s")
    for axes, label in ((slowest, "slowest first token (s)"),
                        (aggregate, "aggregate tokens/s")):
        axes.set_xticks(sorted({s.users for s in summaries}))
        axes.set_xlabel("users at once")
        axes.set_ylabel(label)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def show_seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def new_engine() -> str:
    """The llama-server to run: ENGINE_SERVER's, else one on PATH."""
    wanted = os.environ.get("ENGINE_SERVER") or "llama-server"
    found = shutil.which(wanted)
    if found is None:
        raise SystemExit(f"error: no llama-server at {wanted!r}: set ENGINE_SERVER to the binary "
                         "scripts/test builds (it prints where), or put llama-server on PATH.")
    return found


def check_can_run() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("error: the old engine, llama-cpp-python's server, is not installed: "
                         "scripts/test installs it (requirements-baseline.txt).")
    if not MODEL.is_file():
        raise SystemExit(f"error: no model at {MODEL}: python -m app.downloader fetches it.")


def versions(server: str) -> dict[str, str]:
    said = subprocess.run([server, "--version"], capture_output=True, text=True, timeout=30,
                          check=False)
    version = (said.stdout + said.stderr).splitlines()[0].removeprefix("version: ")
    return {
        "old": f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')} "
               f"(python -m llama_cpp.server --n_ctx {OLD_CONTEXT})",
        "new": f"llama-server {version} ({server}, ENGINE_PARALLEL={SLOTS})",
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("engines", __doc__,
                        "1 and 2 users, 16 tokens, one repeat: checks the harness",
                        "engines.json, engines.md and engines.png")
    parser.add_argument("--users", type=int, nargs="+", default=None,
                        help="users at once, one row each (default 1 4 8; --quick: 1 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each target, alternated (default 2; --quick: 1)")
    args = parser.parse_args(argv)
    p = QUICK if args.quick else FULL
    p = replace(p, users=tuple(args.users or p.users), repeats=args.repeats or p.repeats)
    server = new_engine()
    check_can_run()
    output = cli.output_folder(args)
    started_at = datetime.now(UTC)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        rows = asyncio.run(run(p, Path(folder), args.app_path.resolve(), server, log))
    summaries = summarize(rows)
    found = ratios(summaries)
    checks = targets_check(summaries, rows)
    table = markdown(summaries, found)
    print(table)
    print(checked(checks), end="")
    if output is not None:
        engines = versions(server)
        report = cli.report("engines", args, started_at, parameters=asdict(p), engines=engines,
                            prompts=PROMPTS, targets=checks, ratios=found,
                            summary=[asdict(s) for s in summaries],
                            results=[asdict(r) for r in rows])
        machine = report["machine"]
        about = (f"{machine['cpu_count']} x {machine['cpu_model']}, {machine['memory_gib']} GiB, "
                 f"{machine['os']}, Python {machine['python']}")
        header = (
            f"# Engine benchmark, {started_at:%Y-%m-%d}\n\n"
            f"The app's REST API (`POST /api/v1/dialogue`, streamed) in front of each engine, "
            f"{MODEL.name} on both: `old` = {engines['old']}, one request at a time; `new` = "
            f"{engines['new']}. N users send one coding prompt each in the same instant, at "
            f"most {p.max_new_tokens} new tokens, temperature {p.temperature:g}. First token: "
            "from sending the request to the first piece of text; aggregate: every reply's "
            "tokens over the time from the first request to the last reply's end; told to "
            "wait: users sent a `waiting` event; others' CPU: every other process's on the "
            "machine over the row, the load client's included (what shared the cores). "
            f"Medians over repeats ({p.repeats}), old and new alternated, each started afresh "
            f"and warmed up with one request. Machine: {about}.\n\n"
        )
        cli.write_json(output, "engines.json", report)
        (output / "engines.md").write_text(f"{header}{table}\nTargets:\n\n{checked(checks)}")
        plot(summaries, output / "engines.png",
             f"{MODEL.name}, {p.max_new_tokens} new tokens a reply; {about}")
        print(f"\nwrote {output}/engines.json, engines.md, engines.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
