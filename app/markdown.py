"""Markdown helpers shared by the page and the exports: code fences that cannot clash."""

from __future__ import annotations

import re

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def fenced(text: str, info: str = "text") -> str:
    """``text`` verbatim in a backtick fence that no line inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def close_open_fence(text: str) -> str:
    """``text`` with a code fence it leaves open closed by a matching fence (CommonMark rules:
    the same character, at least as long, nothing after it)."""
    opener: str | None = None
    for line in text.splitlines():
        match = _FENCE_LINE.match(line)
        if match is None:
            continue
        run, rest = match.groups()
        if opener is None:
            if not (run[0] == "`" and "`" in rest):  # a backtick fence's info has no backticks
                opener = run
        elif run[0] == opener[0] and len(run) >= len(opener) and not rest.strip():
            opener = None
    if opener is None:
        return text
    return text.rstrip("\n") + "\n" + opener
