"""Checking code against its tests in the sandbox, and repairing it (``app.checks``): which
tests a program holds, each test's result with why it failed, and the repair loop's rounds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.checks.harness import CaseResult
from app.checks.repair import (
    Answer,
    Ask,
    Done,
    Version,
    merged,
    repair_messages,
    repaired,
    rounds,
)
from app.checks.run import Checked, check
from app.checks.tests import Case, examples, parse, split
from app.snippets.bwrap import languages
from app.snippets.limits import RunLimits

pytestmark = pytest.mark.usefixtures("sandbox")

PRIME = '''def is_prime(n):
    """Whether n is prime.

    >>> is_prime(7)
    True
    is_prime(4) == False
    """
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))
'''

REPLY_TESTS = '''
assert is_prime(2) == True
assert is_prime(3) == False

def test_big():
    x = is_prime(97)
    assert x is True

class TestSmall:
    def test_one(self):
        assert not is_prime(1)

if __name__ == "__main__":
    assert is_prime(5)
    print("done")
'''


@pytest.fixture
def sandbox() -> None:
    if "python" not in languages():
        pytest.fail("the sandbox cannot run Python here: scripts/test installs bubblewrap")


def test_a_program_is_split_into_its_code_and_each_of_its_tests() -> None:
    program = split(PRIME + REPLY_TESTS, "reply")
    assert program.code == PRIME
    assert [test.name for test in program.tests] == [
        "assert is_prime(2) == True", "assert is_prime(3) == False", "test_big",
        "TestSmall.test_one", "assert is_prime(5)",
    ]
    assert {test.origin for test in program.tests} == {"reply"}


def test_docstring_examples_are_tests_in_both_forms() -> None:
    found = examples(PRIME)
    assert [(t.name, t.want) for t in found] == [(">>> is_prime(7)", "True\n"),
                                                  ("is_prime(4) == False", None)]
    assert all(test.origin == "examples" for test in found)


def test_docstring_examples_are_read_in_the_forms_docstrings_use() -> None:
    code = (
        'def cube(a):\n'
        '    """Whether a is a cube.\n\n'
        '    >>> cube(8) == True\n'
        '    cube(2) ==> False\n'
        '    >>> cube(27)\n'
        '    True\n'
        '    """\n'
    )
    assert [(t.name, t.source, t.want) for t in examples(code)] == [
        (">>> cube(8) == True", "assert cube(8) == True", None),
        (">>> cube(27)", "cube(27)", "True\n"),
        ("cube(2) == False", "assert cube(2) == False", None),
    ]


def test_an_example_doctest_cannot_read_leaves_the_others() -> None:
    # "\n" in a docstring that is not raw breaks the example's line in two.
    code = ('def strip(text):\n    """\n    >>> strip("ab\\ncd")\n    \'abcd\'\n'
            '    >>> strip("a")\n    \'a\'\n    """\n')
    assert [t.name for t in examples(code)] == ['>>> strip("a")']


def test_lines_that_state_a_rule_or_lost_their_quotes_are_not_examples() -> None:
    code = (
        "import math\n\nLIMIT = 3\n\n"
        "def fib(n):\n"
        '    """fib(n) == fib(n - 1) + fib(n - 2)\n'
        "    happy(abc) == True\n"
        "    fib(LIMIT) == math.floor(2.5)\n"
        "    fib(len([k for k in range(2)])) == 1\n"
        '    """\n\n'
        "def happy(s):\n    return True\n"
    )
    assert [t.name for t in examples(code)] == [
        "fib(LIMIT) == math.floor(2.5)", "fib(len([k for k in range(2)])) == 1"]


def test_tests_given_apart_keep_their_imports_and_helpers() -> None:
    tests = parse("import math\n\ndef test_root():\n    assert math.isqrt(16) == 4\n", "user")
    assert len(tests) == 1
    assert tests[0].source.startswith("import math")


async def test_each_test_passes_or_fails_on_its_own_with_the_values_it_compared() -> None:
    program = split(PRIME + REPLY_TESTS, "reply")
    checked = await check(program.code, program.tests + examples(program.code), RunLimits())
    assert checked.code_error is None
    by_name = {result.test.name: result for result in checked.results}
    assert by_name["assert is_prime(3) == False"].status == "failed"
    assert by_name["assert is_prime(3) == False"].error == (
        "assert is_prime(3) == False → is_prime(3) is True, expected False")
    assert [r.status for r in checked.results].count("passed") == 6
    assert checked.badge() == "1 of 7 fails"


async def test_a_test_that_hangs_is_stopped_and_the_others_still_run() -> None:
    tests = (Case("hangs", "while True:\n    pass", "user"),
             Case("after", "assert 1 + 1 == 2", "user"))
    checked = await check("x = 1\n", tests, RunLimits())
    assert [r.status for r in checked.results] == ["timeout", "passed"]
    assert "ran over" in (checked.results[0].error or "")


async def test_code_that_does_not_run_says_why_and_runs_no_test() -> None:
    checked = await check("def f(:\n", (Case("t", "assert f()", "user"),), RunLimits())
    assert checked.code_error is not None
    assert "SyntaxError" in checked.code_error
    assert [r.status for r in checked.results] == ["not run"]
    assert checked.badge().startswith("the code does not run")


async def test_output_is_kept_per_test_and_cut() -> None:
    tests = (Case("loud", "print('x' * 10_000)\nassert False", "user"),)
    checked = await check("", tests, RunLimits())
    [result] = checked.results
    assert result.status == "failed"
    assert result.output.startswith("x" * 100)
    assert "cut at 2000 characters" in result.output


def test_a_repair_keeps_the_functions_the_model_left_out() -> None:
    old = "import math\n\ndef helper(x):\n    return x * 2\n\ndef f(x):\n    return 0\n"
    new = "def f(x):\n    return helper(x) + math.floor(0.5)\n"
    code = merged(old, new)
    assert "def helper" in code
    assert "import math" in code
    assert "return 0" not in code


def asker(*answers: str) -> tuple[list[list[dict[str, str]]], Ask]:
    """A stand-in for the model, answering ``answers`` in turn; the prompts are kept."""
    asked: list[list[dict[str, str]]] = []

    async def ask(messages: list[dict[str, str]]) -> AsyncIterator[str]:
        asked.append(messages)
        yield answers[len(asked) - 1]

    return asked, ask


async def test_a_failing_test_goes_back_to_the_model_and_the_fixed_version_passes() -> None:
    program = split("def double(x):\n    return x + 2\n\nassert double(3) == 6\n", "user")
    asked, ask = asker("Fixed:\n```python\ndef double(x):\n    return x * 2\n```\n")
    events = [e async for e in rounds(program.code, program.tests, ask, 3, RunLimits(),
                                      task="Write double(x).")]
    versions = [e for e in events if isinstance(e, Version)]
    assert [v.checked.badge() for v in versions] == ["1 of 1 fails", "1/1 test passes"]
    assert versions[1].changed == "code"
    assert "-    return x + 2" in versions[1].diff
    assert "+    return x * 2" in versions[1].diff
    assert isinstance(events[-1], Done)
    assert events[-1].reason == "passed"
    assert any(isinstance(e, Answer) for e in events)
    prompt = asked[0][1]["content"]
    assert "Write double(x)." in prompt
    assert "double(3) is 5, expected 6" in prompt
    assert "never the tests" in asked[0][0]["content"], "the user's tests are not to change"


async def test_a_wrong_test_of_the_reply_may_be_fixed_instead_of_the_code() -> None:
    program = split(PRIME + "\nassert is_prime(3) == False\n", "reply")
    answer = ("The test was wrong.\n```python\n# tests\nassert is_prime(3) == True\n```\n")
    asked, ask = asker(answer)
    events = [e async for e in rounds(program.code, program.tests, ask, 3, RunLimits())]
    last = [e for e in events if isinstance(e, Version)][-1]
    assert last.changed == "tests"
    assert last.checked.ok
    assert "may themselves be wrong" in asked[0][0]["content"]


async def test_the_loop_stops_at_the_round_limit() -> None:
    program = split("def f():\n    return 1\n\nassert f() == 2\n", "user")
    wrong = [f"```python\ndef f():\n    return {n}\n```" for n in (3, 4, 5)]
    asked, ask = asker(*wrong)
    events = [e async for e in rounds(program.code, program.tests, ask, 2, RunLimits())]
    assert len(asked) == 2
    done = events[-1]
    assert isinstance(done, Done)
    assert done.reason == "round limit"
    assert done.version.number == 2


def test_the_users_tests_never_change_in_a_repair() -> None:
    program = split("def f():\n    return 1\n\nassert f() == 2\n", "user")
    version = Version(0, program.code, program.tests, Checked((), None, 0.0))
    code, tests = repaired(version, "```python\ndef f():\n    return 2\n\nassert f() == 9\n```")
    assert "return 2" in code
    assert tests == program.tests


def test_an_answer_that_echoes_the_task_and_the_tests_leaves_them_out_of_the_code() -> None:
    tests = examples('def double(x):\n    """\n    >>> double(3)\n    6\n    """\n')
    version = Version(0, "def double(x):\n    return x + 2\n", tests, Checked((), None, 0.0))
    answer = (
        "The task:\n```python\ndef double(x):\n    \"\"\"\n    >>> double(3)\n```\n"
        "The code:\n```python\ndef double(x):\n    return x * 2\n```\n"
        "Its tests:\n```python\n>>> double(3)\n6\n```\n"
    )
    code, kept = repaired(version, answer)
    assert code == "def double(x):\n    return x * 2\n"
    assert kept == tests


def test_a_function_with_no_body_replaces_none_that_has_one() -> None:
    old = "def f(x):\n    return x\n"
    new = 'def f(x):\n    """The task\'s stub."""\n\ndef g(x):\n    return f(x) + 1\n'
    code = merged(old, new)
    assert "return x\n" in code
    assert "stub" not in code
    assert "def g(x)" in code
    assert merged("def f(x):\n    ...\n", new) == new, "a stub may replace a stub"


def test_the_request_shows_examples_as_a_session_and_ends_with_what_to_answer() -> None:
    tests = examples('def f(x):\n    """\n    >>> f(1)\n    2\n    """\n')
    failed = Checked((CaseResult(tests[0], "not run", "The code failed before the tests."),),
                     "SyntaxError: invalid syntax", 0.0)
    [_, user] = repair_messages(Version(0, "def f(x):\n    return (\n", tests, failed), "")
    assert "```pycon\n>>> f(1)\n2\n```" in user["content"]
    assert "SyntaxError: invalid syntax" in user["content"]
    assert "not run" not in user["content"], "the code's own error says it all"
    assert user["content"].endswith("Answer with the corrected code in one ```python block.")


async def test_an_example_passes_when_its_value_is_the_literal_shown() -> None:
    code = 'def twice(s):\n    return s * 2\n\ndef half(n):\n    return n // 2\n'
    tests = (Case("quotes", "twice('ab')", "examples", '"abab"\n'),
             Case("wrong", "twice('a')", "examples", '"ab"\n'),
             Case("type", "half(4)", "examples", "2.0\n"),
             Case("none", "print()", "examples", "[]\n"))
    checked = await check(code, tests, RunLimits())
    assert [r.status for r in checked.results] == ["passed", "failed", "failed", "failed"]
    assert checked.results[1].error == "twice('a') → 'aa', expected \"ab\""
    assert checked.results[3].error == "print() → None, expected []", "not '→ ,'"


async def test_code_that_does_not_parse_says_where() -> None:
    checked = await check("x = 1\ny = [1, 2)\n", (Case("t", "assert y", "user"),), RunLimits())
    assert checked.code_error is not None
    assert checked.code_error.startswith("line 2: y = [1, 2) → SyntaxError: closing parenthesis")


async def test_an_answer_that_changes_nothing_is_asked_again_without_the_code() -> None:
    program = split("def f():\n    return 1\n\nassert f() == 2\n", "user")
    same = "```python\ndef f():\n    return 1\n```"
    asked, ask = asker(same, same, "```python\ndef f():\n    return 2\n```")
    events = [e async for e in rounds(program.code, program.tests, ask, 3, RunLimits(),
                                      task="Write f, which returns 2.")]
    assert [v.changed for v in events if isinstance(v, Version)][1:] == ["nothing", "nothing"]
    done = events[-1]
    assert isinstance(done, Done)
    assert (done.reason, len(asked)) == ("no change", 2), "twice the same: it stops"
    first, second = (messages[1]["content"] for messages in asked)
    assert "return 1" in first
    assert "return 1" not in second, "the second request leaves the code out"
    assert second.startswith("Write f, which returns 2.\n\nA version written for this fails")
    assert "f() is 1, expected 2" in second
    assert "Write the code again, in another way" in second
    without_task = repair_messages(done.version, "", repeated=True)[1]["content"]
    assert "return 1" in without_task, "with no task, the code is all there is to change"
    assert "repeated this code" in without_task
