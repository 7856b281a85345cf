"""Code that checks itself, for the page and the REST API alike: a reply's code blocks run in
the sandbox, and a reply checked against tests and repaired.

``Checks.run_block`` runs one code block of a reply (Python, JavaScript or Bash) and keeps the
run with the reply (``Message.runs``, by the block's index): its output, exit code, time, and
why it was stopped. ``Checks.check`` checks a reply's Python code against tests, preferring,
in order, the user's own (given with the check, or a test file attached to the message), the
tests the reply holds, or tests the model is asked to write; then, while some fail, repairs it
(``app.checks.repair``) for at most the rounds asked (``CHECK_ROUNDS`` at most). Each repaired
version is kept as a version of the reply (the conversation's tree holds them beside the
first) and now on screen. The check's trace, as it stands, is kept with each version
(``Message.check``) and yielded after every step, so that a page or a client shows it grow:

    {"tests": {"origin": "user" | "reply" | "model", "source": "..."},
     "versions": [{"number", "reply_id", "badge", "ok", "code_error", "changed", "diff",
                   "results": [{"name", "origin", "status", "error", "output"}]}, ...],
     "rounds": 3, "outcome": null | "passed" | "round limit" | "not repaired" | "no change"
                | "no tests",
     "reply_id": the reply checked}

Every call of the model goes through the one door (``Turns.calling``): it counts against the
user's message rate and running replies, fails over, and is measured. Runs use the sandbox's
limits (``app.snippets.limits``), ``SNIPPET_RUNS_AT_ONCE`` of them at a time, and only where
runs are allowed (``SNIPPET_RUNS``). Refusals raise ``CheckRefused``, with a sentence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import Any

from app.chat.conversations import Conversations
from app.chat.service import ChatService
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.checks.harness import CaseResult
from app.checks.repair import Answer, Ask, Done, Version, rounds
from app.checks.run import Checked, check
from app.checks.tests import Case, Origin, parse, source_of, split
from app.snippets.bwrap import SandboxUnavailable, languages
from app.snippets.extract import CodeBlock, extract_blocks
from app.snippets.limits import RunLimits
from app.snippets.sandbox import RunResult, run_snippet

RUNS_OFF = "Code does not run on this server (SNIPPET_RUNS)."

WRITE_TESTS = (
    "You write tests for Python code. Answer with one ```python block of plain `assert` "
    "statements (at most eight), each checking one input against the output the task asks "
    "for; no other code, no explanations."
)
TEST_FILE_NAMES = ("test_", "tests.py")


class CheckRefused(Exception):
    """A run or a check that cannot be done: ``str(err)`` says why and what to do;
    ``status`` is the HTTP status the REST API answers with, ``retry_after`` (seconds) set
    where trying again later helps."""

    def __init__(self, message: str, status: int = 422, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class CheckProgress:
    """The check as it stands (``trace``, as it is kept), and the model's answer so far in the
    round under way (``answer``; empty between rounds); ``done`` on the last one."""

    trace: dict[str, Any]
    answer: str = ""
    done: bool = False


class Checks:
    def __init__(self, service: ChatService, turns: Turns) -> None:
        self.settings = service.settings
        self.turns = turns
        # The sandbox runs going at once: a run asked for past them is refused, a check's
        # next run waits for one to end.
        self._slots = asyncio.Semaphore(self.settings.snippet_runs_at_once)

    # -- runs ------------------------------------------------------------------------------

    async def run_code(self, code: str, language: str) -> RunResult:
        """``code`` run in the sandbox (a saved snippet's, or a reply's block); refused where
        runs are off, for a language the sandbox does not run, or with as many runs going as
        ``SNIPPET_RUNS_AT_ONCE`` allows."""
        if not self.settings.runs_allowed:
            raise CheckRefused(RUNS_OFF, 403)
        if language not in languages():
            raise CheckRefused(_not_runnable(language))
        if self._slots.locked():
            raise CheckRefused(
                f"The sandbox is busy: it runs {self.settings.snippet_runs_at_once} at once on "
                "this server (SNIPPET_RUNS_AT_ONCE). Try again in a few seconds.", 503,
                retry_after=5.0,
            )
        async with self._slots:
            try:
                return await run_snippet(code, language, RunLimits())
            except SandboxUnavailable as err:
                raise CheckRefused(str(err), 503) from err

    async def _checked(self, code: str, tests: tuple[Case, ...], limits: RunLimits) -> Checked:
        """A check's run, once one of the sandbox's places is free."""
        async with self._slots:
            try:
                return await check(code, tests, limits)
            except SandboxUnavailable as err:
                raise CheckRefused(str(err), 503) from err

    async def run_block(self, mine: Conversations, reply_id: int, index: int) -> RunResult:
        """Run the code block ``index`` (0-based, in the reply's order) of one of the user's
        replies, and keep the run with the reply. Raises ``NotFound``, ``CheckRefused``."""
        _, _, reply = await mine.exchange_of(reply_id)
        blocks = extract_blocks(reply.content)
        if not 0 <= index < len(blocks):
            raise CheckRefused(_no_block(len(blocks), index), 404)
        block = blocks[index]
        result = await self.run_code(block.code, block.language)
        # The runs as they are now: another block's run may have ended while this one ran.
        _, _, reply = await mine.exchange_of(reply_id)
        runs = {**(reply.runs or {}), str(index): {"language": block.language, **asdict(result)}}
        await mine.save_notes(reply_id, runs=runs)
        return result

    # -- checks ----------------------------------------------------------------------------

    async def check(
        self, mine: Conversations, reply_id: int, tests: str = "", repair: bool = True,
        most: int | None = None,
    ) -> AsyncGenerator[CheckProgress]:
        """Check the reply ``reply_id`` against tests (``tests``: the user's own, as Python;
        empty: see the module docstring), repairing it for at most ``most`` rounds
        (``CHECK_ROUNDS`` by default and at most; none without ``repair``). Raises
        ``NotFound`` and ``CheckRefused`` before the first progress."""
        limit = self.settings.check_rounds if most is None else most
        if not 0 <= limit <= self.settings.check_rounds:
            raise CheckRefused(f"A check may repair at most {self.settings.check_rounds} "
                               "times on this server (CHECK_ROUNDS).")
        if not self.settings.runs_allowed:
            raise CheckRefused(RUNS_OFF, 403)
        conversation_id, asked, reply = await mine.exchange_of(reply_id)
        code, held = _program(extract_blocks(reply.content))
        if not code.strip():
            raise CheckRefused(_no_python(extract_blocks(reply.content)))
        given = parse(tests, "user") if tests.strip() else attached_tests(asked.attachments)
        if tests.strip() and not given:
            raise CheckRefused("The tests given hold no test: write `assert` statements or "
                               "`test_…` functions.")
        ask = self._asker(mine.user_id, asked.content, reply.model)
        chosen = given or held or await self._written(ask, code, asked.content)
        origin: Origin | None = chosen[0].origin if chosen else None
        trace: dict[str, Any] = {
            "reply_id": reply_id, "rounds": limit if repair else 0, "outcome": None,
            "tests": {"origin": origin, "source": source_of(chosen)}, "versions": [],
        }
        answer: list[str] = []
        steps = rounds(code, chosen, ask, limit if repair else 0, RunLimits(), asked.content,
                       self._checked)
        async with aclosing(steps) as events:
            async for event in events:
                if isinstance(event, Answer):
                    answer.append(event.added)
                    yield CheckProgress(trace, "".join(answer))
                    continue
                if isinstance(event, Version):
                    version_id = reply_id if event.number == 0 else await mine.add_version(
                        conversation_id, asked.id, event.answer, reply.model, reply.backend,
                        trace,
                    )
                    trace["versions"].append(_version(event, version_id))
                    answer = []
                elif isinstance(event, Done):
                    trace["outcome"] = event.reason
                for version in trace["versions"]:
                    await mine.save_notes(version["reply_id"], check=trace)
                yield CheckProgress(trace, done=isinstance(event, Done))

    def _asker(self, user_id: int, task: str, model: str | None) -> Ask:
        """Ask the model through the door (``Turns.calling``) and yield its answer as it comes;
        a refusal or a failing backend ends the check with ``CheckRefused``."""

        async def ask(messages: list[dict[str, str]]) -> AsyncIterator[str]:
            system, user = messages[0]["content"], messages[-1]["content"]
            settings = {"temperature": 0.0, "model": model or ""}  # the reply's own model
            request = TurnRequest(task[:200] or "check", system, settings)
            try:
                async with (self.turns.calling(user_id, request, user) as call,
                            aclosing(call.reply(asyncio.Event())) as stream):
                    async for progress in stream:
                        if progress.error is not None:
                            raise CheckRefused(str(progress.error), 503)
                        yield progress.added
            except TurnRefused as err:
                raise CheckRefused(str(err), err.status, err.retry_after) from err

        return ask

    async def _written(self, ask: Ask, code: str, task: str) -> tuple[Case, ...]:
        """Tests the model writes for ``code``, marked as the model's."""
        request = [{"role": "system", "content": WRITE_TESTS},
                   {"role": "user", "content": f"The task:\n{task}\n\nThe code:\n"
                                               f"```python\n{code}\n```"}]
        answer = "".join([piece async for piece in ask(request)])
        written: tuple[Case, ...] = ()
        for block in extract_blocks(answer):
            if block.language == "python":
                written += split(block.code, "model").tests
        return written


def _version(version: Version, reply_id: int) -> dict[str, Any]:
    checked: Checked = version.checked
    return {
        "number": version.number, "reply_id": reply_id, "badge": checked.badge(),
        "ok": checked.ok, "code_error": checked.code_error, "changed": version.changed,
        "diff": version.diff, "results": [_result(result) for result in checked.results],
    }


def _result(result: CaseResult) -> dict[str, Any]:
    return {"name": result.test.name, "origin": result.test.origin, "status": result.status,
            "error": result.error, "output": result.output}


def _program(blocks: list[CodeBlock]) -> tuple[str, tuple[Case, ...]]:
    """The reply's Python code (its blocks' code, one after the other) and the tests its
    blocks hold."""
    code = ""
    tests: tuple[Case, ...] = ()
    for block in blocks:
        if block.language != "python":
            continue
        program = split(block.code, "reply")
        code += ("\n\n" if code else "") + program.code
        tests += program.tests
    return code, tests


def attached_tests(attachments: tuple[dict[str, str], ...]) -> tuple[Case, ...]:
    """The tests of the Python test files attached to the message (``test_*.py``,
    ``*_test.py``, ``tests.py``): the user's own."""
    found: tuple[Case, ...] = ()
    for attached in attachments:
        name = attached["name"].rsplit("/", 1)[-1]
        if name.endswith(".py") and (name.startswith(TEST_FILE_NAMES[0])
                                     or name.endswith("_test.py") or name == TEST_FILE_NAMES[1]):
            found += parse(attached["text"], "user")
    return found


def _no_python(blocks: list[CodeBlock]) -> str:
    kinds = sorted({block.language for block in blocks})
    if not kinds:
        return "The reply has no code block to check."
    return (f"Check runs Python code; this reply's code is {', '.join(kinds)}. "
            "Its blocks can still be run, where the sandbox runs their language.")


def _no_block(count: int, index: int) -> str:
    if not count:
        return "The reply has no code block to run."
    blocks = "1 code block" if count == 1 else f"{count} code blocks"
    return f"The reply has {blocks}, numbered from 0; there is no block {index}."


def _not_runnable(language: str) -> str:
    runnable = ", ".join(sorted(languages())) or "none here"
    return f"The sandbox runs {runnable}; a {language} block cannot run."

