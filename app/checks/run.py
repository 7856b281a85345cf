"""One check: Python code run against its tests in the sandbox, each test's result read back."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from app.checks.harness import CaseResult, program, results
from app.checks.tests import Case
from app.snippets.limits import RunLimits
from app.snippets.sandbox import run_snippet


@dataclass(frozen=True)
class Checked:
    """The code's run against its tests: each test's result, or why the code itself failed
    (``code_error``: it does not parse, or raised before any test), and how long it took."""

    results: tuple[CaseResult, ...]
    code_error: str | None
    seconds: float

    @property
    def passed(self) -> int:
        return sum(result.passed for result in self.results)

    @property
    def failed(self) -> tuple[CaseResult, ...]:
        return tuple(result for result in self.results if not result.passed)

    @property
    def ok(self) -> bool:
        """Every test passed (and there was at least one)."""
        return bool(self.results) and self.code_error is None and not self.failed

    def badge(self) -> str:
        """What the page shows on the reply: "3/3 tests pass", "1 of 3 fails"."""
        total = len(self.results)
        if not total:
            return "the code does not run" if self.code_error else "no tests"
        if self.code_error and not self.passed:
            return f"the code does not run ({total} tests not run)"
        failed = total - self.passed
        if not failed:
            return f"{total}/{total} tests pass" if total > 1 else "1/1 test passes"
        return f"{failed} of {total} fail" if failed > 1 else f"1 of {total} fails"


async def check(code: str, tests: tuple[Case, ...], limits: RunLimits) -> Checked:
    """Run ``code``, then each of ``tests``, in the sandbox (``app.checks.harness``). Raises
    ``SandboxUnavailable`` where the sandbox cannot run."""
    nonce = f"\x1e{secrets.token_hex(8)}:"
    run = await run_snippet(program(code, tests, nonce), "python", limits)
    code_error, ended = results(run.stdout, nonce, tests, run.stopped)
    if code_error is None and run.stderr.strip() and not any(r.status != "not run" for r in ended):
        code_error = run.stderr.strip()[-2000:]
    return Checked(ended, code_error, run.seconds)
