"""The tests a reply's code is checked against: what counts as one, and where each comes from.

A test is one case that passes or fails on its own (``Case``):

- a function ``test_…`` at the top level, or a method ``test_…`` of a class ``Test…`` (a
  ``unittest.TestCase`` runs with its ``setUp`` and ``tearDown``);
- an ``assert`` at the top level, or in an ``if __name__ == "__main__":`` block;
- an example in a function's docstring: ``>>> call(...)`` followed by the value it shows
  (doctest's form), ``>>> call(...) == value`` with nothing shown (an assertion written as an
  example), or a line ``call(...) == value`` (also with ``==>``, ``➞``, ``=>`` or ``->``), where
  ``call`` is a function the code defines. An example doctest cannot read (its lines indented
  unlike the others, say by a ``\n`` in a docstring that is not raw) is left out, not the
  docstring's other examples.

``split`` takes a program apart into its code and its tests (the tests' lines leave the code),
``examples`` reads the docstrings' examples, and ``parse`` reads tests given on their own (a
user's tests box, an attached test file). Python only: the code is parsed here with ``ast``,
never run (``app.checks.harness`` runs it, in the sandbox).
"""

from __future__ import annotations

import ast
import builtins
import doctest
import re
from dataclasses import dataclass
from typing import Literal

# Who wrote the tests, in the order a check prefers them: the user's own, those the reply
# holds, the examples of the problem's docstring, or those the model is asked to write (which
# may be wrong, and are shown as the model's).
Origin = Literal["user", "reply", "examples", "model"]

# Whose tests a check ran, as users read it (the page's trace, the Markdown export).
TESTS_TEXT: dict[str, str] = {
    "user": "your tests",
    "reply": "the tests the reply holds",
    "examples": "the examples in its docstrings",
    "model": "tests the model wrote (they may be wrong)",
}

BUILTINS = frozenset(dir(builtins))

# The ways docstrings show a call's value on one line, besides doctest's ``>>>``.
ARROW = re.compile(
    r"^\s*(?P<call>[A-Za-z_]\w*\(.*\))\s*(?:==>|==|➞|=>|->)\s*(?P<want>.+?)\s*$"
)


@dataclass(frozen=True)
class Case:
    """One test: its name (as a user reads it), its source (run in the code's namespace) and
    who wrote it. ``want`` is set for a doctest example: the output its value must show."""

    name: str
    source: str
    origin: Origin
    want: str | None = None


@dataclass(frozen=True)
class Program:
    """Python source taken apart: the code, and the tests it held (their lines left out)."""

    code: str
    tests: tuple[Case, ...]


def split(source: str, origin: Origin) -> Program:
    """The code of ``source`` and its tests (see the module docstring). Source that does not
    parse is all code: running it says why."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return Program(source, ())
    lines = source.splitlines(keepends=True)
    tests: list[Case] = []
    removed: set[int] = set()
    for node in tree.body:
        found = _tests_of(node, lines, origin)
        if found is not None:
            tests.extend(found)
            start = min([node.lineno, *(d.lineno for d in _decorators(node))])
            removed.update(range(start - 1, (node.end_lineno or node.lineno)))
    code = "".join(line for number, line in enumerate(lines) if number not in removed)
    return Program(code.strip("\n") + "\n" if code.strip() else "", tuple(tests))


def parse(source: str, origin: Origin) -> tuple[Case, ...]:
    """The tests of ``source`` given as tests (a tests box, a test file): its test functions,
    classes and asserts; any other statement (imports, helpers) goes before each of them."""
    program = split(source, origin)
    if not program.code.strip():
        return program.tests
    return tuple(
        Case(test.name, f"{program.code}\n{test.source}", test.origin, test.want)
        for test in program.tests
    )


def examples(code: str) -> tuple[Case, ...]:
    """The examples in the docstrings of the functions ``code`` defines, as tests."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ()
    functions = [node for node in ast.walk(tree)
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
    names = {function.name for function in functions}
    known = names | _bound(tree) | BUILTINS
    found: list[Case] = []
    for function in functions:
        docstring = ast.get_docstring(function) or ""
        for example in _doctest_examples(docstring):
            call, want = example.source.strip(), _shown(example.want)
            if not _calls(call, names, known):
                continue
            if want.strip():
                found.append(Case(f">>> {call}", call, "examples", want))
            elif _is_equality(call):
                found.append(Case(f">>> {call}", f"assert {call}", "examples"))
        for line in docstring.splitlines():
            if ">>>" in line or (match := ARROW.match(line)) is None:
                continue
            call, want = match["call"], match["want"].rstrip(".,;")
            if _calls(f"{call} == {want}", names, known):
                found.append(Case(f"{call} == {want}", f"assert {call} == {want}",
                                      "examples"))
    return tuple(found)


def source_of(tests: tuple[Case, ...]) -> str:
    """The tests as one block of Python, as a user (or the model) reads them."""
    return "\n\n".join(
        test.source if test.want is None else f">>> {test.source}\n{test.want.rstrip()}"
        for test in tests
    )


def _doctest_examples(docstring: str) -> list[doctest.Example]:
    """doctest's examples of ``docstring``; where doctest refuses the docstring (an example's
    lines indented unlike the rest), those of each of its examples that it reads alone."""
    parser = doctest.DocTestParser()
    try:
        return parser.get_examples(docstring)
    except ValueError:
        found: list[doctest.Example] = []
        for part in re.split(r"(?m)^(?=[ \t]*>>>)", docstring):
            try:
                found += parser.get_examples(part)
            except ValueError:
                continue
        return found


def _is_equality(source: str) -> bool:
    """Whether ``source`` is one comparison ``a == b``."""
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    body = tree.body
    return isinstance(body, ast.Compare) and [type(op) for op in body.ops] == [ast.Eq]


def _shown(want: str) -> str:
    """What a doctest example shows, up to a line that is an example of its own (docstrings
    often list ``call(...) == value`` lines under one another without a blank line)."""
    kept = []
    for line in want.splitlines(keepends=True):
        if ARROW.match(line):
            break
        kept.append(line)
    return "".join(kept)


def _tests_of(node: ast.stmt, lines: list[str], origin: Origin) -> list[Case] | None:
    """The tests a top-level statement is, or None when it is code."""
    if isinstance(node, ast.Assert):
        text = _source(node, lines)
        return [Case(_first_line(text), text, origin)]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
        text = _source(node, lines)
        call = f"asyncio.run({node.name}())" if isinstance(node, ast.AsyncFunctionDef) else (
            f"{node.name}()")
        prefix = "import asyncio\n" if isinstance(node, ast.AsyncFunctionDef) else ""
        return [Case(node.name, f"{prefix}{text}\n{call}\n", origin)]
    if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
        text = _source(node, lines)
        unittest = any(_name(base).endswith("Case") for base in node.bases)
        methods = [item.name for item in node.body
                   if isinstance(item, ast.FunctionDef) and item.name.startswith("test")]
        return [
            Case(f"{node.name}.{method}", f"{text}\n" + (
                f"{node.name}({method!r}).debug()\n" if unittest
                else f"{node.name}().{method}()\n"), origin)
            for method in methods
        ]
    if _is_main_guard(node):
        assert isinstance(node, ast.If)
        asserts = [item for item in node.body if isinstance(item, ast.Assert)]
        return [Case(_first_line(_source(a, lines)), _dedented(_source(a, lines)), origin)
                for a in asserts]
    return None


def _source(node: ast.stmt, lines: list[str]) -> str:
    start = min([node.lineno, *(d.lineno for d in _decorators(node))])
    return "".join(lines[start - 1:node.end_lineno or node.lineno]).rstrip("\n")


def _decorators(node: ast.stmt) -> list[ast.expr]:
    return list(getattr(node, "decorator_list", []))


def _dedented(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines())


def _first_line(text: str) -> str:
    first = text.strip().splitlines()[0]
    return first if len(first) <= 100 else first[:99] + "…"


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    parts = [node.test.left, *node.test.comparators]
    return any(isinstance(p, ast.Name) and p.id == "__name__" for p in parts)


def _calls(source: str, names: set[str], known: set[str]) -> bool:
    """Whether ``source`` is an expression that calls one of ``names`` and reads no name
    but ``known`` ones and its own (a docstring's ``fib(n) == fib(n-1) + fib(n-2)`` states a
    rule, not an example; ``is_happy(abc) == True`` lost its quotes)."""
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return False
    nodes = list(ast.walk(tree))
    read = {node.id for node in nodes if isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)}
    own = {node.id for node in nodes if isinstance(node, ast.Name)
           and isinstance(node.ctx, ast.Store)} | {node.arg for node in nodes
                                                   if isinstance(node, ast.arg)}
    return read <= known | own and any(
        isinstance(node, ast.Call) and _name(node.func) in names for node in nodes)


def _bound(tree: ast.Module) -> set[str]:
    """The names the module binds at its top level: definitions, imports, assignments."""
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(name.id for target in targets for name in ast.walk(target)
                         if isinstance(name, ast.Name))
    return bound
