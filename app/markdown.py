"""Markdown helpers shared by the page, the exports and the snippets: code fences that cannot
clash, HTML shown as text, a fence left open closed, and the fenced code blocks of a text.

One tokenizer reads Markdown for all of them: markdown-it-py, CommonMark with GFM tables, with
raw HTML, autolinks and entities off. That is how the page reads a text once ``escape_html``
has turned its ``<`` and ``&`` outside code into entities, so what is code here is code there:
a fence indented in a list item or a block quote, an indented code block, a fence inside
``<pre>`` (which is text). ``to_html`` renders with the same reading, code blocks highlighted
by Pygments, for pages the app writes itself (a shared conversation).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline, backtick
from markdown_it.token import Token
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")  # markdown-it's line breaks
_CELL_PIPE = re.compile(r"(?<!\\)(\|)")  # a pipe between table cells, as markdown-it splits them
_LINE_START_TAG = re.compile(r"(\n[ \t>]*)<")
_SPECIAL = re.compile(r"\\[\\&<]|[&<]")  # a backslash escape already shows its character
_ENTITIES = {"&": "&amp;", "<": "&lt;"}
_SHOWN_SPECIAL = re.compile(r"\\[\\&<]|&amp;|&lt;")  # what _entities wrote
_CHARACTERS = {"&amp;": "&", "&lt;": "<"}
_INLINE_SPECIAL = re.compile(r"([\\`*_\[\]<>&#!|~])")


def _code_span(state: StateInline, silent: bool) -> bool:
    """markdown-it's code span rule, noting where each span is in the source as
    ``meta["span"]``: ``(start, end)``."""
    start, count = state.pos, len(state.tokens)
    if not backtick(state, silent):
        return False
    if len(state.tokens) > count and state.tokens[-1].type == "code_inline":
        state.tokens[-1].meta["span"] = (start, state.pos)
    return True


# With the core rule "inline" off a parse gives the blocks alone, in about a third of the time
# of a full parse; _code_spans parses inline only a block's text that holds a backtick and
# needs entities.
_MD = (
    MarkdownIt("commonmark", {"html": False})
    .enable("table")
    .disable(["autolink", "entity", "inline", "text_join"])
)
_MD.inline.ruler.at("backticks", _code_span)

# Classes, not inline styles: the stylesheet is ``highlight_css``'s.
_FORMATTER = HtmlFormatter(nowrap=True)


def _highlighted(code: str, info: str, _attrs: object) -> str:
    """A code block's code as HTML spans for its language (the first word of the fence's
    info string); "" for a language Pygments does not know, which markdown-it then escapes."""
    name = info.split(maxsplit=1)[0] if info.strip() else ""
    try:
        lexer = get_lexer_by_name(name)
    except ClassNotFound:
        return ""
    spans: str = highlight(code, lexer, _FORMATTER)
    return spans


_HTML = (
    MarkdownIt("commonmark", {"html": False, "highlight": _highlighted})
    .enable("table")
    .disable(["autolink", "entity"])
)


def to_html(text: str) -> str:
    """``text`` as HTML: Markdown read as everywhere else here (raw HTML shows as text), code
    blocks of a known language highlighted with the classes of ``highlight_css``."""
    html: str = _HTML.render(text)
    return html


def highlight_css() -> str:
    """The colours of ``to_html``'s highlighted code."""
    css: str = _FORMATTER.get_style_defs("pre code")
    return css


def fenced(text: str, info: str = "text") -> str:
    """``text`` verbatim in a backtick fence that no line inside it can close."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"


def escape_markdown(text: str) -> str:
    """One line of plain text (a file's name) that Markdown shows as it is, in a link's text
    too: each character with an inline meaning behind a backslash."""
    return _INLINE_SPECIAL.sub(r"\\\1", " ".join(text.split()))


@dataclass(frozen=True)
class Fence:
    """A fenced code block."""

    info: str  # the info string, stripped
    code: str  # its lines less the fence's indentation, joined by "\n", no newline at the end


def code_fences(text: str) -> list[Fence]:
    """The fenced code blocks of ``text``, in document order; a fence left open runs to the end
    of its container (the text, a list item, a block quote)."""
    if "```" not in text and "~~~" not in text:
        return []
    return [
        Fence(token.info.strip(), token.content.removesuffix("\n"))
        for token in _MD.parse(text)
        if token.type == "fence"
    ]


@dataclass(frozen=True)
class FenceEnd:
    """Where a fenced code block ends, for text to go right after it: ``line``, the number
    (from 0) of the line after its closing fence, None for a fence left open (it runs to the
    end of its container); ``containers``, what a line after it starts with to stay in the
    block quotes and list items the block is in (spaces and ``>``)."""

    line: int | None
    containers: str


def fence_ends(text: str) -> list[FenceEnd]:
    """Where each of the fenced code blocks of ``text`` (``code_fences``' blocks) ends."""
    if "```" not in text and "~~~" not in text:
        return []
    lines = _LINE_BREAK.split(text)[::2]
    return [
        FenceEnd(token.map[1] if _closed(token) else None, _containers(lines, token))
        for token in _MD.parse(text)
        if token.type == "fence" and token.map is not None
    ]


def behind(text: str, containers: str) -> list[str]:
    """The lines of ``text`` behind ``containers`` (block quote markers, list indentation:
    ``FenceEnd.containers``), an empty line behind them without their trailing spaces."""
    return [containers + line if line else containers.rstrip() for line in text.split("\n")]


def close_open_fence(text: str) -> str:
    """``text`` with the code fence it ends inside, if any, closed: a reply cut off or still
    streaming shows its last block as code, and what follows it is not taken into the block.

    The closing fence is the opening one, behind the same block quote markers and list item
    indentation; line breaks at the end of ``text`` go.
    """
    if "```" not in text and "~~~" not in text:
        return text
    closing = _closing_fence(_LINE_BREAK.split(text)[::2], _MD.parse(text))
    return text if closing is None else text.rstrip("\r\n") + "\n" + closing


def escape_html(text: str, *, close_fence: bool = False) -> str:
    """``text`` with HTML outside code shown as text: ``&`` and ``<`` become entities (``>``
    stays, so block quotes still work; without a ``<`` no tag can start). With
    ``close_fence``, also the fence ``text`` ends inside closed, as by ``close_open_fence``
    (one parse instead of two).

    Code blocks (fenced or indented) and code spans are left alone: Markdown already shows them
    as text, and entities there would show literally. So is a backslash escape: ``\\<`` shows
    a ``<`` already.
    """
    return _escaped(text, close_fence)[0]


def escape_html_open(text: str) -> tuple[str, bool]:
    """``escape_html(text, close_fence=True)``, and whether it closed a fence: whether ``text``
    (a reply being written) ends inside a fenced code block."""
    return _escaped(text, True)


def _escaped(text: str, close_fence: bool) -> tuple[str, bool]:
    close_fence = close_fence and ("```" in text or "~~~" in text)
    if not close_fence and "<" not in text and "&" not in text:
        return text, False
    tokens = _MD.parse(text)
    shown = _outside_code(
        text, tokens, _entities, lambda span: _LINE_START_TAG.sub(r"\1&lt;", span)
    )
    closing = _closing_fence(_LINE_BREAK.split(text)[::2], tokens) if close_fence else None
    if closing is None:
        return shown, False
    return shown.rstrip("\r\n") + "\n" + closing, True


def unescape_html(shown: str) -> str:
    """The text ``escape_html`` showed as ``shown``: its entities outside code back to ``&``
    and ``<``, for a text shown that way and edited (code spans, blocks and backslash escapes
    are kept as they are, as ``escape_html`` keeps them)."""
    if "&" not in shown:
        return shown
    return _outside_code(shown, _MD.parse(shown), _characters, lambda span: span)


def _outside_code(
    text: str, tokens: list[Token], plain: Callable[[str], str], span: Callable[[str], str]
) -> str:
    """``text`` with ``plain`` applied to what is outside code and ``span`` to its code
    spans; code blocks (fenced or indented) are left alone. ``tokens`` are ``text`` parsed."""
    pieces = _LINE_BREAK.split(text)
    lines = pieces[::2]
    done = [False] * len(lines)
    for token in tokens:
        if token.map is None or done[token.map[0]]:
            continue
        start, end = token.map
        if token.type == "table_open":
            for number in range(start, end):
                cells = _CELL_PIPE.split(lines[number])
                lines[number] = "".join(_inline(cell, plain, span) for cell in cells)
        elif token.type == "inline":
            lines[start:end] = _inline("\n".join(lines[start:end]), plain, span).split("\n")
        elif token.type not in ("fence", "code_block"):
            continue
        done[start:end] = [True] * (end - start)
    for number, line in enumerate(lines):
        if not done[number]:  # blank, or a link reference definition
            lines[number] = plain(line)
    pieces[::2] = lines
    return "".join(pieces)


def _closing_fence(lines: list[str], tokens: list[Token]) -> str | None:
    """The line that closes the fence the text of ``lines`` ends inside, if any."""
    fence = next((token for token in reversed(tokens) if token.type == "fence"), None)
    if fence is None or fence.map is None:
        return None
    if any(line.strip(" \t") for line in lines[fence.map[1]:]):
        return None  # the text goes on after it
    if _closed(fence):
        return None
    return _containers(lines, fence) + fence.markup


def _closed(fence: Token) -> bool:
    """Whether a fence token (with its ``map``) has a closing fence."""
    assert fence.map is not None
    start, end = fence.map
    content = fence.content.removesuffix("\n")  # a line break ends each line but the text's last
    return end - start - 1 > (len(content.split("\n")) if fence.content else 0)


def _containers(lines: list[str], fence: Token) -> str:
    """What the lines of a fence token start with for the block quotes and list items it is
    in: its opening line up to the fence, the quote markers kept and the rest as spaces."""
    assert fence.map is not None
    opening = lines[fence.map[0]]
    return re.sub(r"[^\s>]", " ", opening[: opening.index(fence.markup)])


def _inline(source: str, plain: Callable[[str], str], span: Callable[[str], str]) -> str:
    """``source``, the text of a paragraph, a heading or a table cell, with ``plain`` applied
    outside its code spans and ``span`` to them.

    ``escape_html`` makes a ``<`` that starts a line inside a code span an entity too: where
    HTML is on, it could start an HTML block, which would end the paragraph and the span with
    it.
    """
    if "<" not in source and "&" not in source:
        return source
    if "`" not in source:
        return plain(source)
    pieces: list[str] = []
    position = 0
    for start, end in _code_spans(source):
        pieces += [plain(source[position:start]), span(source[start:end])]
        position = end
    pieces.append(plain(source[position:]))
    return "".join(pieces)


def _code_spans(source: str) -> list[tuple[int, int]]:
    """Where the code spans of ``source`` start and end once its ``<`` outside them are
    entities (which no longer open a link target in angle brackets)."""
    link = source.find("](")
    if "\\`" in source or (link != -1 and "`" in source[link:]):  # escaped, or a link's target
        tokens = _MD.inline.parse(source.replace("<", "\ue000"), _MD, {}, [])
    else:  # no other rule takes a backtick: run the code span rule at each one
        state = StateInline(source, _MD, {}, [])
        while (start := source.find("`", state.pos)) != -1:
            state.pos = start
            _code_span(state, silent=False)
        tokens = state.tokens
    return [token.meta["span"] for token in tokens if token.type == "code_inline"]


def _entities(text: str) -> str:
    if "\\" not in text:
        return text.replace("&", "&amp;").replace("<", "&lt;")
    return _SPECIAL.sub(lambda match: _ENTITIES.get(match[0], match[0]), text)


def _characters(shown: str) -> str:
    """What ``_entities`` was given to show ``shown``."""
    return _SHOWN_SPECIAL.sub(lambda match: _CHARACTERS.get(match[0], match[0]), shown)
