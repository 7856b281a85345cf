"""Code blocks out of a reply: CommonMark's fenced code blocks, and a guess at their language.

``extract_blocks`` follows CommonMark (0.31) for the parts that decide where a fenced block
starts and ends: a fence is a run of 3 or more backticks or tildes indented at most 3 columns;
its content loses up to that much indentation; the closing fence is the same character, at least
as long, with nothing but spaces after it; a backtick fence's info string holds no backticks; a
fence left open runs to the end of its container (the document, a list item, a block quote). Fences
inside list items and block quotes count, so the container structure (list items, block quotes,
paragraphs for lazy continuation lines) is followed too; tabs are tab stops of 4 columns where
they make up indentation. Indented code blocks (4 spaces) are not extracted, and nothing inside
one or inside a fenced block starts a block. HTML blocks are not recognized: a fence inside
``<pre>`` still counts.

A block's language is the first word of its info string, mapped through the aliases of
``LANGUAGES`` (ignoring case); a word that names no language there gives ``"text"`` (a
``console`` session is not code to save). A block without an info string gets
``guess_language``'s guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

TEXT = "text"


@dataclass(frozen=True)
class Language:
    """A canonical language: its name, its file extension, and the other info-string words
    that name it."""

    name: str
    extension: str
    aliases: tuple[str, ...] = ()


LANGUAGES: dict[str, Language] = {
    language.name: language
    for language in (
        Language("python", ".py", ("py", "python3")),
        Language("javascript", ".js", ("js", "node")),
        Language("typescript", ".ts", ("ts",)),
        Language("bash", ".sh", ("sh", "shell", "zsh")),
        Language("sql", ".sql"),
        Language("go", ".go", ("golang",)),
        Language("rust", ".rs", ("rs",)),
        Language("c", ".c", ("h",)),
        Language("cpp", ".cpp", ("c++", "cc", "cxx", "hpp")),
        Language("java", ".java"),
        Language(TEXT, ".txt", ("txt", "plain", "plaintext")),
    )
}

_BY_WORD = {
    word: language.name
    for language in LANGUAGES.values()
    for word in (language.name, *language.aliases)
}


def language_of(info_word: str) -> str:
    """The canonical language an info string's first word names; ``"text"`` when none."""
    word = info_word.lower().lstrip("{.")  # also {.python} (Pandoc's attribute syntax)
    word = re.split(r"[{},]", word, maxsplit=1)[0]  # python{1,3} (highlighted lines)
    return _BY_WORD.get(word, TEXT)


@dataclass(frozen=True)
class CodeBlock:
    index: int  # 0-based, in document order
    language: str  # a key of LANGUAGES
    code: str  # the lines between the fences joined by "\n", with no newline at the end
    tagged: bool  # whether the language came from the info string


def extract_blocks(markdown: str) -> list[CodeBlock]:
    """The fenced code blocks of ``markdown``, in document order (see the module docstring)."""
    parser = _Parser()
    lines = re.split(r"\r\n|\r|\n", markdown)
    if lines[-1] == "":  # the line ending of the last line starts no new line
        lines.pop()
    for line in lines:
        parser.feed(line)
    parser.finish()
    return parser.blocks


# -- the block parser -----------------------------------------------------------------------

_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})(.*)")
_FENCE_CLOSE = re.compile(r"(`{3,}|~{3,})[ \t]*")
_THEMATIC_BREAK = re.compile(r"(?:(?:\*[ \t]*){3,}|(?:-[ \t]*){3,}|(?:_[ \t]*){3,})")
_ATX_HEADING = re.compile(r"#{1,6}(?:[ \t]|$)")
_SETEXT_UNDERLINE = re.compile(r"(?:=+|-+)[ \t]*")
_LIST_MARKER = re.compile(r"(?:[-+*]|(\d{1,9})[.)])(?=[ \t]|$)")


def _indentation(text: str, column: int) -> tuple[int, str]:
    """The width in columns of the whitespace ``text`` starts with (``text`` starting at
    ``column``), and ``text`` after it."""
    width = 0
    for position, char in enumerate(text):
        if char == " ":
            width += 1
        elif char == "\t":
            width += 4 - (column + width) % 4
        else:
            return width, text[position:]
    return width, ""


def _consume(text: str, column: int, columns: int) -> tuple[str, int]:
    """``text`` (starting at ``column``) less up to ``columns`` columns of its leading
    whitespace, and the column it then starts at; a tab only partly consumed leaves spaces."""
    position = 0
    while columns > 0 and position < len(text) and text[position] in " \t":
        width = 1 if text[position] == " " else 4 - column % 4
        if width > columns:
            return " " * (width - columns) + text[position + 1 :], column + columns
        position += 1
        column += width
        columns -= width
    return text[position:], column


def _blank(text: str) -> bool:
    return not text.strip(" \t")


@dataclass
class _Container:
    kind: Literal["quote", "item"]
    width: int = 0  # an item's content column, relative to its parent's
    has_content: bool = False

    def match(self, text: str, column: int) -> tuple[str, int] | None:
        """``text`` after this container's marker or indentation, or None when the line does
        not continue the container."""
        indent, rest = _indentation(text, column)
        if self.kind == "quote":
            if indent > 3 or not rest.startswith(">"):
                return None
            column += indent + 1
            return _consume(rest[1:], column, 1)
        if _blank(text):
            return None if not self.has_content else ("", column + indent)
        if indent < self.width:
            return None
        return _consume(text, column, self.width)


@dataclass
class _Fence:
    char: str
    length: int
    indent: int
    info: str
    lines: list[str] = field(default_factory=list)


@dataclass
class _Start:
    """What a line starts: a container, a fence, or a leaf that ends a paragraph."""

    kind: Literal["quote", "item", "fence", "leaf"]
    fence: _Fence | None = None
    item_width: int = 0
    marker_end: int = 0  # where the list marker ends in the text after the indentation


class _Parser:
    def __init__(self) -> None:
        self.containers: list[_Container] = []
        self.fence: _Fence | None = None
        self.in_paragraph = False
        self.blocks: list[CodeBlock] = []

    def feed(self, line: str) -> None:
        text, column, matched = line, 0, 0
        for container in self.containers:
            continued = container.match(text, column)
            if continued is None:
                break
            text, column = continued
            matched += 1
        all_matched = matched == len(self.containers)

        if self.fence is not None:
            if all_matched:
                if not self._closes(text, column, self.fence):
                    self.fence.lines.append(_consume(text, column, self.fence.indent)[0])
                    return
                self._end_fence()
                return
            self._end_fence()  # its container ended (fenced code has no lazy lines)

        start = self._start(text, column, interrupting=self.in_paragraph and all_matched)
        if not all_matched:
            if start is None and self.in_paragraph and not _blank(text):
                return  # a lazy continuation line of the paragraph: every container stays
            del self.containers[matched:]
            self.in_paragraph = False

        while start is not None and start.kind in ("quote", "item"):
            text, column = self._open_container(start, text, column)
            self.in_paragraph = False
            start = self._start(text, column, interrupting=False)

        if not _blank(text):
            for container in self.containers:
                container.has_content = True
        if start is not None and start.kind == "fence":
            self.fence = start.fence
            self.in_paragraph = False
        elif start is not None or _blank(text):
            self.in_paragraph = False
        elif _indentation(text, column)[0] < 4 or self.in_paragraph:
            self.in_paragraph = True
        # else: a line of an indented code block, which is not extracted

    def finish(self) -> None:
        if self.fence is not None:
            self._end_fence()

    def _start(self, text: str, column: int, interrupting: bool) -> _Start | None:
        """The block ``text`` starts, if any; ``interrupting`` when it would otherwise
        continue a paragraph (then only a list item with content, numbered 1 if ordered)."""
        indent, rest = _indentation(text, column)
        if indent > 3:
            return None
        if rest.startswith(">"):
            return _Start("quote")
        opening = _FENCE_OPEN.fullmatch(rest)
        if opening is not None:
            run, info = opening.groups()
            if not (run[0] == "`" and "`" in info):
                return _Start("fence", fence=_Fence(run[0], len(run), indent, info.strip()))
        if (
            _THEMATIC_BREAK.fullmatch(rest.rstrip()) or _ATX_HEADING.match(rest)
            or (interrupting and _SETEXT_UNDERLINE.fullmatch(rest))
        ):
            return _Start("leaf")
        marker = _LIST_MARKER.match(rest)
        if marker is None:
            return None
        after = rest[marker.end() :]
        if interrupting and (_blank(after) or marker.group(1) not in (None, "1")):
            return None
        spaces = _indentation(after, column + indent + marker.end())[0]
        if _blank(after) or spaces > 4:
            spaces = 1  # the content is blank, or an indented code block after one space
        return _Start("item", item_width=indent + marker.end() + spaces,
                      marker_end=marker.end())

    def _open_container(self, start: _Start, text: str, column: int) -> tuple[str, int]:
        for container in self.containers:
            container.has_content = True  # it holds the new one
        indent, rest = _indentation(text, column)
        column += indent
        if start.kind == "quote":
            self.containers.append(_Container("quote"))
            return _consume(rest[1:], column + 1, 1)
        self.containers.append(_Container("item", width=start.item_width))
        after = rest[start.marker_end :]
        column += start.marker_end
        if _blank(after):
            return "", column
        return _consume(after, column, start.item_width - indent - start.marker_end)

    @staticmethod
    def _closes(text: str, column: int, fence: _Fence) -> bool:
        indent, rest = _indentation(text, column)
        closing = _FENCE_CLOSE.fullmatch(rest)
        return (
            indent <= 3 and closing is not None and closing.group(1)[0] == fence.char
            and len(closing.group(1)) >= fence.length
        )

    def _end_fence(self) -> None:
        fence = self.fence
        assert fence is not None
        self.fence = None
        self.in_paragraph = False
        code = "\n".join(fence.lines)
        word = fence.info.split(maxsplit=1)[0] if fence.info else ""
        language = language_of(word) if word else guess_language(code)
        self.blocks.append(CodeBlock(len(self.blocks), language, code, tagged=bool(word)))


# -- guessing the language of an untagged block --------------------------------------------

_BY_INTERPRETER = {
    "bash": "bash", "sh": "bash", "zsh": "bash", "dash": "bash", "ksh": "bash",
    "node": "javascript", "nodejs": "javascript", "ts-node": "typescript",
}


def _interpreter(shebang: str) -> str | None:
    """The program a ``#!`` line runs: the path's last part, or what ``env`` is asked to run."""
    words = shebang.removeprefix("#!").split()
    name = words[0].rsplit("/", 1)[-1] if words else ""
    if name == "env":
        name = next((word for word in words[1:] if not word.startswith("-")), "")
    return name or None


def _signs(*patterns: str) -> tuple[re.Pattern[str], ...]:
    """The patterns compiled line by line: ``^`` and ``$`` are a line's ends, and ``\\s`` is a
    space or a tab (never a line break, which would make the search quadratic)."""
    return tuple(
        re.compile(pattern.replace(r"\s", r"[ \t]"), re.MULTILINE) for pattern in patterns
    )


# Each sign a block shows counts once; the language with most signs wins, ties going to the
# one listed first. typescript refines javascript and cpp refines c: when a block shows any
# sign of the refinement, the base language's signs count for it too.
_SIGNS: dict[str, tuple[re.Pattern[str], ...]] = {
    "typescript": _signs(
        r":\s*(?:string|number|boolean|void|unknown|any|never)\b(?:\[\])?",
        r"^\s*(?:export\s+)?interface\s+\w+",
        r"^\s*(?:export\s+)?type\s+\w+(?:<[^>]*>)?\s*=",
        r"\bas\s+(?:const|string|number)\b",
        r"^\s*(?:public|private|protected|readonly)\s+\w+\s*[:?]",
    ),
    "javascript": _signs(
        r"\bfunction\b",
        r"^\s*(?:const|let|var)\s+[\w{\[]",
        r"=>",
        r"\bconsole\.(?:log|error|warn)\(",
        r"\brequire\(\s*['\"]",
        r"^\s*import\s.+\sfrom\s+['\"]",
        r"^\s*export\s+(?:default|const|function|class)\b",
        r"\b(?:document|window)\.\w+",
    ),
    "python": _signs(
        r"^\s*(?:async\s+)?def\s+\w+\s*\(.*:\s*$",
        r"^\s*(?:import\s+[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+)*|from\s+[\w.]+\s+import\s+.+)$",
        r"^\s*(?:class|if|elif|else|for|while|try|except|finally|with)\b.*:\s*(?:#.*)?$",
        r"\bprint\(",
        r"\bself\.\w+",
        r"^\s*@\w+(?:\.\w+)*(?:\(.*\))?\s*$",
        r"\b(?:None|True|False)\b",
    ),
    "java": _signs(
        r"\bpublic\s+(?:static\s+|final\s+|abstract\s+)*class\b",
        r"\bSystem\.(?:out|err)\.",
        r"\bpublic\s+static\s+void\s+main\b",
        r"^\s*import\s+java\.",
        r"^\s*@Override\b",
        r"\bString\[\]\s+\w+",
    ),
    "cpp": _signs(
        r"\bstd::",
        r"\bc(?:out|err|in)\s*(?:<<|>>)",
        r"#include\s*<(?:iostream|vector|string|map|memory|algorithm|array|unordered_map)>",
        r"\btemplate\s*<",
        r"^\s*(?:using\s+)?namespace\s+\w+",
        r"\bnullptr\b",
    ),
    "c": _signs(
        r"^\s*#include\s*[<\"]",
        r"\bint\s+main\s*\(",
        r"\bprintf\s*\(",
        r"\b(?:malloc|calloc|free)\s*\(",
        r"\bNULL\b",
        r"\bsizeof\s*\(",
    ),
    "rust": _signs(
        r"^\s*(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?fn\s+\w+",
        r"\blet\s+mut\b",
        r"\b(?:println|print|vec|format|panic|assert|assert_eq|eprintln)!",
        r"^\s*use\s+\w+(?:::[\w{}*, ]+)+;",
        r"^\s*impl\b",
        r"&mut\s",
        r"\b(?:Option|Result|Vec|Box)<",
    ),
    "go": _signs(
        r"^package\s+\w+\s*$",
        r"^\s*func\s",
        r"\w\s*:=",
        r"\bfmt\.\w+\(",
        r"^import\s+(?:\(|\")",
        r"^\s*(?:type\s+\w+\s+)?struct\s*\{",
    ),
    "sql": _signs(
        r"^\s*(?:SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(?:TABLE|INDEX"
        r"|VIEW|UNIQUE\s+INDEX)|ALTER\s+TABLE|DROP\s+TABLE|WITH\s+\w+\s+AS)\b",
        r"(?i)^\s*select\b.*\bfrom\s+\w+",
        r"(?i)\binsert\s+into\s+\w+",
        r"(?i)\bcreate\s+table\b",
        r"\b(?:WHERE|GROUP\s+BY|ORDER\s+BY|JOIN|VALUES)\b",
    ),
    "bash": _signs(
        r"^\s*\$\s+\S",
        r"^\s*echo\b",
        r"^\s*(?:fi|done|esac)\s*$",
        r"(?:^|;)\s*then\s*$",
        r"^\s*(?:if|while)\s+\[\[?\s",
        r"^\s*(?:sudo|apt-get|apt|pip3?|npm|npx|yarn|cd|ls|mkdir|rm|curl|wget|git|chmod|chown"
        r"|brew|docker|cargo)\s+[-\w./~\"'$]",
        r"^\s*export\s+[A-Za-z_]\w*=",
        r"\$\{?\w+\}?",
    ),
}
_REFINES = {"typescript": "javascript", "cpp": "c"}
GUESS_CHARS = 20_000  # the guess reads this much of the code at most


def guess_language(code: str) -> str:
    """A guess at the language of an untagged block: a shebang decides; otherwise the
    language with most of its signs in the code (see ``_SIGNS``); ``"text"`` when none show."""
    code = code[:GUESS_CHARS]
    first = code.lstrip().split("\n", 1)[0]
    if first.startswith("#!"):
        interpreter = _interpreter(first)
        if interpreter is not None and re.fullmatch(r"python[\d.]*", interpreter):
            return "python"
        if interpreter in _BY_INTERPRETER:
            return _BY_INTERPRETER[interpreter]
    scores = {
        name: sum(1 for sign in signs if sign.search(code)) for name, signs in _SIGNS.items()
    }
    for refined, base in _REFINES.items():
        if scores[refined]:
            scores[refined] += scores[base]
    best = max(scores, key=lambda name: scores[name])  # the first of the best, on a tie
    return best if scores[best] else TEXT
