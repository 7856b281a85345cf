"""A check's trace in the chat (``Exchange.check``, written by ``app.chat.checks``): the
tests and who wrote them, each version tried with each test's result, each repair's diff, and
how the loop ended; and the badge a checked reply carries under it."""

from __future__ import annotations

import re
from html import escape
from typing import Any

from app.checks.repair import OUTCOME_TEXT
from app.checks.tests import TESTS_TEXT
from app.markdown import behind, escape_html_open, fenced


def version_shown(trace: dict[str, Any], reply_id: int | None) -> dict[str, Any] | None:
    """The version of the check that is the reply ``reply_id`` (else the last one)."""
    versions: list[dict[str, Any]] = trace.get("versions") or []
    found = next((v for v in versions if v["reply_id"] == reply_id), None)
    return found or (versions[-1] if versions else None)


def check_badge(version: dict[str, Any] | None) -> str:
    """A version's badge ("3/3 tests pass", "1 of 3 fails", "no tests"), "checking…" before
    the first version is in."""
    if version is None:
        return '<span class="check-badge check-none">checking…</span>'
    badge = escape(version["badge"])
    kind = "pass" if version["ok"] else "none" if badge == "no tests" else "fail"
    return f'<span class="check-badge check-{kind}">{badge}</span>'


def _code_span(text: str) -> str:
    """``text`` on one line as a code span no backtick inside it can close."""
    one = " ".join(text.split())
    longest = max((len(run) for run in re.findall(r"`+", one)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if one.startswith("`") or one.endswith("`") else ""
    return f"{ticks}{pad}{one}{pad}{ticks}"


def check_markdown(trace: dict[str, Any] | None, reply_id: int | None, answer: str | None) -> str:
    """A check's trace (``app.chat.checks``): the tests and who wrote them, each version tried
    (the reply as written, then each repair with its diff to the one before) with each test's
    result, and how it ended; ``answer``: the check is under way, the model's answer so far
    in the round under way (None: it is not under way, as after a reload)."""
    parts = ['<div class="check-trace">']
    if trace is None:
        parts.append("**Checking**: finding the tests, or asking the model to write some, "
                     "then running them in the sandbox…")
        return "\n\n".join([*parts, "</div>"])
    tests, versions, rounds = trace["tests"], trace["versions"], trace["rounds"]
    origin = TESTS_TEXT.get(tests["origin"] or "", "no tests")
    repair = f"repair: at most {rounds} rounds" if rounds else "no repair"
    parts.append(f"**Check** against {origin} · {repair}")
    if tests["source"]:
        parts.append(f"<details><summary>The tests</summary>\n\n{fenced(tests['source'], 'python')}"
                     "\n\n</details>")
    for version in versions:
        parts.extend(_version_markdown(version, version["reply_id"] == reply_id))
    outcome = trace["outcome"]
    if outcome is not None:
        repairs = len(versions) - 1
        after = f" after {repairs} repair{'s' if repairs != 1 else ''}" if repairs else ""
        ended = OUTCOME_TEXT.get(outcome, escape(outcome))
        parts.append(f"**Ended: {ended}**{after}.")
    elif answer is not None:
        parts.append(f"**Repair {len(versions)} of {rounds}**: the model is answering…")
        if answer:  # quoted, as it comes
            parts.append("\n".join(behind(escape_html_open(answer)[0], "> ")))
    else:
        parts.append("_The check stopped before its end._")
    return "\n\n".join([*parts, "</div>"])


def _version_markdown(version: dict[str, Any], on_screen: bool) -> list[str]:
    number = version["number"]
    title = "The reply as written" if number == 0 else f"Repair {number}"
    changed = f" ({escape(version['changed'])} changed)" if number and version["changed"] else ""
    here = " · this version" if on_screen else ""
    parts = [f"**{title}**{changed}: {check_badge(version)}{here}"]
    if version["diff"]:
        parts.append("<details open><summary>Changes from the version before</summary>\n\n"
                     f"{fenced(version['diff'], 'diff')}\n\n</details>")
    if version["code_error"]:
        not_run = len(version["results"])
        parts.append("The code fails before any test runs"
                     + (f" ({not_run} tests not run)" if not_run else "") + ":\n"
                     + fenced(version["code_error"]))
        return parts
    parts.append("\n".join(_result_markdown(result) for result in version["results"]))
    return parts


def _result_markdown(result: dict[str, Any]) -> str:
    status = result["status"]
    kind = "pass" if status == "passed" else "fail"
    line = f'- <span class="check-{kind}">{escape(status)}</span> {_code_span(result["name"])}'
    details = []
    if result["error"] and status != "passed":
        details.append(fenced(result["error"]))
    if result["output"] and status != "passed":
        details.append(f"its output:\n{fenced(result['output'])}")
    return "\n".join([line, *("\n".join(behind(d, "  ")) for d in details)])
