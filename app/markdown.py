"""Markdown helpers shared by the page and the exports: code fences that cannot clash, and
HTML shown as text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)


@dataclass
class _Run:
    """Consecutive lines that are all prose, or one fenced block with its fence lines."""

    fenced: bool
    lines: list[str] = field(default_factory=list)


def _runs(text: str) -> tuple[list[_Run], str | None]:
    """``text`` split into prose and fenced runs (CommonMark rules: a closing fence is the same
    character, at least as long, with nothing after it; a backtick fence's info string has no
    backticks), and the fence left open at the end, if any."""
    runs: list[_Run] = []
    opener: str | None = None
    for line in text.split("\n"):
        match = _FENCE_LINE.match(line)
        if opener is None:
            run, rest = match.groups() if match else ("", "")
            if match is not None and not (run[0] == "`" and "`" in rest):
                opener = run
                runs.append(_Run(fenced=True))
            elif not runs or runs[-1].fenced:
                runs.append(_Run(fenced=False))
        elif match is not None:
            run, rest = match.groups()
            if run[0] == opener[0] and len(run) >= len(opener) and not rest.strip():
                runs[-1].lines.append(line)
                opener = None
                continue
        runs[-1].lines.append(line)
    return runs, opener


def fenced(text: str, info: str = "text") -> str:
    """``text`` verbatim in a backtick fence that no line inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def close_open_fence(text: str) -> str:
    """``text`` with a code fence it leaves open closed by a matching fence."""
    _, opener = _runs(text)
    if opener is None:
        return text
    return text.rstrip("\n") + "\n" + opener


def escape_html(text: str) -> str:
    """``text`` with HTML outside code shown as text: ``&`` and ``<`` become entities (``>``
    stays, so block quotes still work; without a ``<`` no tag can start).

    Fenced blocks and inline code spans are left alone: Markdown already shows them as text,
    and entities there would show literally.
    """
    runs, _ = _runs(text)
    return "\n".join(
        "\n".join(run.lines) if run.fenced else _escape_prose("\n".join(run.lines))
        for run in runs
    )


def _escape_prose(text: str) -> str:
    pieces: list[str] = []
    position = 0
    for span in _INLINE_CODE.finditer(text):
        pieces.append(_entities(text[position:span.start()]))
        pieces.append(span.group(0))
        position = span.end()
    pieces.append(_entities(text[position:]))
    return "".join(pieces)


def _entities(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")
