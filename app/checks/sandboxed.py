"""What runs inside the sandbox for a check (``app.checks.harness`` sends this file's source
there, with a call of ``main``): the code, then each test on its own. It imports nothing of
the app, only Python's standard library, as the sandbox's Python has it.

Each result is a line of JSON behind ``nonce`` on the real standard output: ``{"start": i}``
before test ``i``, then ``{"case": i, "status", "error", "output"}``, or ``{"code_error"}``
when the code fails before any test runs. Output the code and the tests print is caught, test
by test, and trimmed.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import io
import json
import signal
import sys
import traceback
from types import FrameType, TracebackType
from typing import Any


class CaseTimeout(BaseException):
    """A test (or the code) ran past its time: raised by the timer."""


def main(nonce: str, code: str, cases: list[dict[str, Any]], seconds: float,
         output_chars: int, error_chars: int) -> None:
    """Run ``code`` in a namespace of its own, then each case in a copy of it."""
    real = sys.stdout

    def report(what: dict[str, Any]) -> None:
        real.write(nonce + json.dumps(what) + "\n")
        real.flush()

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    namespace: dict[str, Any] = {"__name__": "__check__"}
    caught = io.StringIO()
    try:
        with contextlib.redirect_stdout(caught), contextlib.redirect_stderr(caught):
            signal.setitimer(signal.ITIMER_REAL, seconds)
            exec(compile(code, "code.py", "exec"), namespace)
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as error:
        signal.setitimer(signal.ITIMER_REAL, 0)
        why = (f"It ran over {seconds:g} s." if isinstance(error, CaseTimeout)
               else explained(code, "code.py", error))
        report({"code_error": cut(f"{why}\n{caught.getvalue()}".strip(),
                                  error_chars + output_chars)})
        return
    checker = doctest.OutputChecker()
    for index, case in enumerate(cases):
        report({"start": index})
        filename = f"test {index + 1}"
        caught = io.StringIO()
        status: str = "passed"
        reason: str | None = None
        try:
            with contextlib.redirect_stdout(caught), contextlib.redirect_stderr(caught):
                signal.setitimer(signal.ITIMER_REAL, seconds)
                status, reason = run_case(case, filename, dict(namespace), checker)
                signal.setitimer(signal.ITIMER_REAL, 0)
        except CaseTimeout:
            status, reason = "timeout", f"It ran over {seconds:g} s."
        except AssertionError as failed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            status, reason = "failed", explained(case["source"], filename, failed)
        except BaseException as failed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            status, reason = "error", explained(case["source"], filename, failed)
        report({"case": index, "status": status,
                "error": None if reason is None else cut(reason, error_chars),
                "output": cut(caught.getvalue(), output_chars)})


def run_case(case: dict[str, Any], filename: str, scope: dict[str, Any],
             checker: doctest.OutputChecker) -> tuple[str, str | None]:
    """A test's status and why it failed: its source run, or for a doctest example (``want``
    set) its value compared as doctest compares it, or, where the text differs, as the value
    the example shows when that is a literal (``"21"`` shows ``'21'``, as a person may write
    it)."""
    if case["want"] is None:
        exec(compile(case["source"], filename, "exec"), scope)
        return "passed", None
    value = eval(compile(case["source"], filename, "eval"), scope)
    got = "" if value is None else f"{value!r}\n"
    if checker.check_output(case["want"], got, doctest.NORMALIZE_WHITESPACE):
        return "passed", None
    if same_literal(case["want"], value):
        return "passed", None
    return "failed", f"{case['source']} → {shown(value)}, expected {case['want'].strip()}"


def same_literal(want: str, value: object) -> bool:
    """Whether ``want`` is a Python literal equal to ``value``, of the same type."""
    try:
        shown = ast.literal_eval(want.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    try:
        return type(shown) is type(value) and bool(shown == value)
    except Exception:
        return False


def explained(source: str, filename: str, error: BaseException) -> str:
    """The line of ``source`` that failed and the error; for an assert comparing two values,
    the value of each side (as pytest shows them); for code that does not parse, the line
    where the parser stopped."""
    kind = traceback.format_exception_only(type(error), error)[-1].strip()
    if isinstance(error, SyntaxError) and error.filename == filename and error.lineno:
        text = cut((error.text or "").strip(), 200)
        return f"line {error.lineno}: {text} → {kind}" if text else f"line {error.lineno}: {kind}"
    frames = [frame for frame in _frames(error.__traceback__)
              if frame[0].f_code.co_filename == filename]
    if not frames:
        return kind
    frame, number = frames[-1]
    lines = source.splitlines()
    line = lines[number - 1].strip() if 0 < number <= len(lines) else ""
    text = f"{line} → {kind}" if line else kind
    try:
        node = ast.parse(line).body[0]
    except (SyntaxError, IndexError):
        return text
    test = node.test if isinstance(node, ast.Assert) else None
    if not isinstance(test, ast.Compare) or len(test.ops) != 1:
        return text
    try:
        left, right = (eval(compile(ast.Expression(side), "<assert>", "eval"),
                            frame.f_globals, frame.f_locals)
                       for side in (test.left, test.comparators[0]))
    except BaseException:
        return text
    expected = ast.unparse(test.comparators[0])
    if expected != shown(right):
        expected += f" = {shown(right)}"
    return f"{line} → {ast.unparse(test.left)} is {shown(left)}, expected {expected}"


def _frames(tb: TracebackType | None) -> list[tuple[FrameType, int]]:
    return list(traceback.walk_tb(tb))


def shown(value: object) -> str:
    return cut(repr(value), 200)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n… (cut at {limit} characters)"
