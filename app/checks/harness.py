"""The program a check runs in the sandbox, and its results read back.

``program(code, tests, nonce)`` is the source of ``app.checks.sandboxed`` (which imports
nothing of the app) with a call of its ``main``: the code runs in a namespace of its own, then
each test in a copy of that namespace, each under a timer (``CASE_SECONDS``), and each result
is reported as a line of JSON behind ``nonce``, a random mark. A failed ``assert`` is explained
as pytest would: the line that failed and, for a comparison, the value of each side.
``results`` reads those lines back; a run the sandbox stopped (its time limit, a crash) leaves
the test it was in as ``timeout`` and those after it ``not run``.

The code runs as the model wrote it and may print anything, read its own file, or pretend to
report: the marks only keep honest output from being read as results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.checks import sandboxed
from app.checks.tests import Case

SANDBOXED = Path(sandboxed.__file__)

# Seconds one test may run (the sandbox's own limit stops the whole run).
CASE_SECONDS = 3.0
# Characters of a test's output, and of an error, kept.
OUTPUT_CHARS = 2000
ERROR_CHARS = 600

Status = Literal["passed", "failed", "error", "timeout", "not run"]


@dataclass(frozen=True)
class CaseResult:
    """How one test ended: ``failed`` (an assertion), ``error`` (another exception),
    ``timeout``, or ``not run`` (the run stopped before it); ``error`` says why."""

    test: Case
    status: Status
    error: str | None = None
    output: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def program(code: str, tests: tuple[Case, ...], nonce: str) -> str:
    """The script that runs ``code`` and then each of ``tests``, reporting behind ``nonce``."""
    cases = [{"source": test.source, "want": test.want} for test in tests]
    call = (f"\n\nmain({nonce!r}, {code!r}, json.loads({json.dumps(cases)!r}), "
            f"{CASE_SECONDS!r}, {OUTPUT_CHARS}, {ERROR_CHARS})\n")
    return SANDBOXED.read_text(encoding="utf-8") + call


def results(
    stdout: str, nonce: str, tests: tuple[Case, ...], stopped: str | None
) -> tuple[str | None, tuple[CaseResult, ...]]:
    """The code's own failure (None when it ran) and each test's result, from the run's
    ``stdout``; ``stopped``: why the sandbox stopped the run, if it did."""
    code_error, found, started = None, {}, None
    for line in stdout.split("\n"):  # not splitlines(): the nonce starts with \x1e, a break to it
        if not line.startswith(nonce):
            continue
        try:
            report = json.loads(line[len(nonce):])
        except ValueError:
            continue
        if "code_error" in report:
            code_error = str(report["code_error"])
        elif "start" in report:
            started = int(report["start"])
        elif "case" in report and 0 <= int(report["case"]) < len(tests):
            index = int(report["case"])
            found[index] = CaseResult(
                tests[index], report["status"], report.get("error"), report.get("output", ""),
            )
    cut = stopped or "the run stopped"
    ended = []
    for index, test in enumerate(tests):
        if index in found:
            ended.append(found[index])
        elif index == started:
            ended.append(CaseResult(test, "timeout", f"Stopped: {cut}."))
        else:
            why = (code_error and "The code failed before the tests.") or f"Not run: {cut}."
            ended.append(CaseResult(test, "not run", why))
    if code_error is None and not found and started is None and stopped:
        code_error = f"Stopped: {stopped}."
    return code_error, tuple(ended)
