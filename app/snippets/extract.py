"""Code blocks out of a reply: its fenced code blocks, and a guess at their language.

``extract_blocks`` takes the fenced blocks ``app.markdown`` reads (CommonMark, with HTML off as
the page shows replies): a fence indented in a list item or a block quote counts, and its lines
lose the container's indentation and the fence's own; a fence left open runs to the end of its
container (the reply, a list item, a block quote); an indented code block is not extracted, and
nothing inside one or inside a fenced block starts a block; a fence inside ``<pre>`` counts.

A block's language is the first word of its info string, mapped through the aliases of
``LANGUAGES`` (ignoring case); a word that names no language there gives ``"text"`` (a
``console`` session is not code to save). A block without an info string gets
``guess_language``'s guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.markdown import code_fences

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
        Language("html", ".html", ("htm",)),
        Language("svg", ".svg"),
        Language("mermaid", ".mmd", ("mmd",)),
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
    blocks: list[CodeBlock] = []
    for index, fence in enumerate(code_fences(markdown)):
        word = fence.info.split(maxsplit=1)[0] if fence.info else ""
        language = language_of(word) if word else guess_language(fence.code)
        blocks.append(CodeBlock(index, language, fence.code, tagged=bool(word)))
    return blocks


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
