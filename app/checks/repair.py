"""Check and repair: run the code against its tests and, while some fail, send the failures
back to the model for a next version, up to a number of rounds.

``rounds`` yields what happens as it happens: each ``Version`` as it is tried (version 0 is
the code as given), the model's answer as it comes (``Answer``), and the end (``Done``: the
first version that passes, or the last one tried). What goes back to the model is what a
person would look at: each failing test, the line that failed with the values it compared
(``app.checks.harness``), and the test's output, trimmed; with the task it was given and the
code and tests as they stand, and last what to answer. An answer's blocks are merged into the
code before (``repaired``, ``merged``): a block that does not parse, or a function with no
body, never replaces code that parses. An answer that changes nothing is asked again once,
without the code (a model shown it again copies it again), then the loop stops.

Tests the user gave, or the problem's own examples, are never changed: the model is told to
fix the code. Tests the reply held or the model wrote may themselves be wrong (a reply's
``assert is_prime(3) == False``): the model is told so, and may answer corrected tests in a
block of their own; the version then says which of the two changed.
"""

from __future__ import annotations

import ast
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from app.checks.run import Checked, check
from app.checks.tests import Case, parse, source_of, split
from app.snippets.extract import extract_blocks
from app.snippets.library import diff_text
from app.snippets.limits import RunLimits

# A function that asks the model ``messages`` and yields its answer as it comes.
Ask = Callable[[list[dict[str, str]]], AsyncIterator[str]]
# A function that runs code against tests (``app.checks.run.check``).
Runner = Callable[[str, tuple[Case, ...], RunLimits], Awaitable[Checked]]

# Characters of a failing test's output sent back to the model.
FEEDBACK_OUTPUT_CHARS = 600
# Failing tests described to the model, at most.
FEEDBACK_TESTS = 5
TESTS_MARK = "# tests"

REPAIR_SYSTEM = (
    "You fix Python code so that its tests pass. Answer with the complete corrected code, "
    "every function and import it needs, in one ```python block, then at most two sentences "
    "on what was wrong. Keep the functions' names and parameters."
)
FIXED_TESTS = " The tests are right: change the code, never the tests."
# The request's last line: small models follow the end of a message more than its system
# prompt (SmolLM2-135M answered prose alone to a message that ended with the failures).
ANSWER_WITH = "Answer with the corrected code in one ```python block."
# After an answer that changed nothing: the task as the user wrote it, what failed and this
# (no code: a model shown it again copies it again); with no task, the code and this.
AFRESH = "Write the code again, in another way, so that they pass."
AGAIN = "The last answer repeated this code, which fails. Change it."
MODEL_TESTS = (
    " The tests were written by a model and may themselves be wrong. When a test is wrong "
    "rather than the code, also answer the corrected tests in a second ```python block whose "
    f"first line is `{TESTS_MARK}`."
)


@dataclass(frozen=True)
class Version:
    """One version of the code, tried against its tests: ``number`` 0 is the code as given,
    each later one a repair (``answer``: the model's text that gave it; ``changed``: "code",
    "tests", "code and tests" or "nothing"; ``diff``: against the version before)."""

    number: int
    code: str
    tests: tuple[Case, ...]
    checked: Checked
    answer: str = ""
    changed: str = ""
    diff: str = ""


@dataclass(frozen=True)
class Answer:
    """A piece of the model's answer in round ``number``, as it comes."""

    number: int
    added: str


# How a check ended (``Done.reason``), as users read it (the page's trace, the Markdown export).
OUTCOME_TEXT = {
    "passed": "passed",
    "round limit": "still failing at the round limit",
    "not repaired": "failing (repair was off)",
    "no change": "the model answered the same code twice",
    "no tests": "no tests to run",
}


@dataclass(frozen=True)
class Done:
    """The end: the version kept (the first that passes, else the last tried) and why the
    loop stopped ("passed", "round limit", "not repaired": no round was asked for, "no
    tests", "no change": the model answered the same code and tests again, twice in a row)."""

    version: Version
    reason: str


def tests_fixed(tests: Sequence[Case]) -> bool:
    """Whether the tests may not be changed: the user's own, or the problem's examples."""
    return any(test.origin in ("user", "examples") for test in tests)


async def rounds(
    code: str, tests: tuple[Case, ...], ask: Ask, most: int, limits: RunLimits,
    task: str = "", run: Runner = check,
) -> AsyncGenerator[Version | Answer | Done]:
    """Check ``code`` against ``tests`` (with ``run``), then repair it at most ``most`` times
    (see the module docstring). ``task`` is what the code was written for (the user's
    message), sent with the failures. Raises ``SandboxUnavailable`` where the sandbox cannot
    run, and whatever ``ask`` and ``run`` raise."""
    version = Version(0, code, tests, await run(code, tests, limits))
    yield version
    if not tests:
        yield Done(version, "no tests")
        return
    repeated = False
    for number in range(1, most + 1):
        if version.checked.ok:
            break
        parts: list[str] = []
        async for piece in ask(repair_messages(version, task, repeated)):
            parts.append(piece)
            yield Answer(number, piece)
        answer = "".join(parts)
        new_code, new_tests = repaired(version, answer)
        changed = " and ".join(
            what for what, differs in (("code", new_code != version.code),
                                       ("tests", new_tests != version.tests)) if differs
        ) or "nothing"
        diff = diff_text(version.code, new_code, f"v{version.number}", f"v{number}")
        if new_tests != version.tests:
            diff += "\n" + diff_text(source_of(version.tests), source_of(new_tests),
                                     f"tests v{version.number}", f"tests v{number}")
        version = Version(number, new_code, new_tests,
                          await run(new_code, new_tests, limits), answer, changed, diff)
        yield version
        if changed == "nothing" and repeated:
            yield Done(version, "no change")
            return
        repeated = changed == "nothing"
    ended = "round limit" if most else "not repaired"
    yield Done(version, "passed" if version.checked.ok else ended)


def repair_messages(
    version: Version, task: str, repeated: bool = False
) -> list[dict[str, str]]:
    """What the model is asked for the next version of ``version``. ``repeated``: the answer
    to the last request was the same code; this one then leaves the code out, where there is
    a task to write it from, and asks for it written again, otherwise (a model shown the code
    again copies it again, at temperature 0 word for word)."""
    system = REPAIR_SYSTEM + (FIXED_TESTS if tests_fixed(version.tests) else MODEL_TESTS)
    checked = version.checked
    failures = []
    if checked.code_error:
        failures.append(f"The code itself fails before any test runs:\n{checked.code_error}")
    ran = [result for result in checked.failed if result.status != "not run"]
    for result in ran[:FEEDBACK_TESTS]:
        line = f"- {result.status}: {result.error or result.test.name}"
        if result.output.strip():
            output = result.output.strip()[-FEEDBACK_OUTPUT_CHARS:]
            line += f"\n  its output:\n{_indented(output)}"
        failures.append(line)
    more = len(ran) - FEEDBACK_TESTS
    if more > 0:
        failures.append(f"… and {more} more failing tests.")
    what_failed = (f"{checked.passed} of {len(checked.results)} tests pass. What failed:\n"
                   + "\n".join(failures))
    if repeated and task.strip():
        parts = [task.strip(), f"A version written for this fails its tests. {what_failed}",
                 AFRESH, ANSWER_WITH]
    else:
        examples = all(test.want is not None for test in version.tests)
        parts = [f"The task:\n{task.strip()}" if task.strip() else "",
                 f"The code:\n```python\n{version.code.rstrip()}\n```",
                 f"Its tests:\n```{'pycon' if examples else 'python'}\n"
                 f"{source_of(version.tests)}\n```",
                 what_failed, AGAIN if repeated else "", ANSWER_WITH]
    return [{"role": "system", "content": system},
            {"role": "user", "content": "\n\n".join(part for part in parts if part)}]


def repaired(version: Version, answer: str) -> tuple[str, tuple[Case, ...]]:
    """The code and tests of the model's ``answer`` to the repair of ``version``: its Python
    blocks, the code merged into the code before (a function it rewrites replaces the old
    one; those it leaves out stay), its tests taken only where they may change. A block that
    does not parse is left out while the code before does (a small model echoes the task's
    stub cut short, or the tests' doctest session, in blocks tagged python)."""
    fixed = tests_fixed(version.tests)
    code, tests = version.code, version.tests
    origin = version.tests[0].origin if version.tests else "model"
    parses = _parses(version.code)
    for block in extract_blocks(answer):
        if block.language != "python" or (parses and not _parses(block.code)):
            continue
        if block.code.lstrip().startswith(TESTS_MARK):
            if not fixed:
                tests = parse(block.code, origin) or tests
            continue
        program = split(block.code, origin)
        if program.code.strip():
            code = merged(code, program.code)
        if program.tests and not fixed:
            tests = program.tests
    return code, tests


def merged(old: str, new: str) -> str:
    """``new`` over ``old``: the top-level functions and classes ``new`` defines replace those
    of ``old`` of the same name, and those it leaves out are kept, with the imports of both
    (a model often answers only the function it fixed). A function of ``new`` with no body (a
    docstring, ``pass`` or ``...`` alone: the task's stub, echoed) replaces none that has one.
    Either side that does not parse: ``new`` as it is."""
    try:
        old_tree, new_tree = ast.parse(old), ast.parse(new)
    except SyntaxError:
        return new
    bodies = {node.name for node in old_tree.body
              if isinstance(node, _DEFINITIONS) and not _stub(node)}
    stubs = [node for node in new_tree.body
             if isinstance(node, _DEFINITIONS) and _stub(node) and node.name in bodies]
    if stubs:
        new = _without(new, stubs)
        new_tree = ast.parse(new)
    defined = {node.name for node in new_tree.body if isinstance(node, _DEFINITIONS)}
    kept = [ast.get_source_segment(old, node, padded=False) or "" for node in old_tree.body
            if isinstance(node, (*_DEFINITIONS, ast.Import, ast.ImportFrom))
            and getattr(node, "name", None) not in defined]
    missing = [segment for segment in kept if segment and segment not in new]
    if not missing:
        return new
    imports = [s for s in missing if s.startswith(("import ", "from "))]
    rest = [s for s in missing if s not in imports]
    return "\n\n".join([*imports, *rest, new.strip()]) + "\n"


def _stub(node: ast.stmt) -> bool:
    """Whether a function has no body: a docstring, ``pass`` or ``...`` alone."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        return False
    return all(isinstance(item, ast.Pass) or (isinstance(item, ast.Expr)
                                              and isinstance(item.value, ast.Constant))
               for item in node.body)


def _without(source: str, nodes: Sequence[ast.stmt]) -> str:
    """``source`` without the lines of ``nodes`` (top-level statements, decorators included)."""
    dropped = {number for node in nodes for number in range(
        min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]),
        (node.end_lineno or node.lineno) + 1)}
    return "".join(line for number, line in enumerate(source.splitlines(keepends=True), 1)
                   if number not in dropped)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines())


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
