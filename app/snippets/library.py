"""The snippet library: code a user keeps, with every version of it, in the app's database.

    StoreError
    ├── NotFound        the snippet does not exist or belongs to another user (also a
    │                   conversation or message to link that is not the user's)
    └── InvalidSnippet  a title, language, tag or code breaks the rules below; ``str(err)``
                        says what to change

A snippet has a title (1-200 characters, surrounding spaces dropped), a language (a key of
``app.snippets.extract.LANGUAGES``), up to 20 tags of 1-40 characters (spaces around them
dropped, empty ones and repeats left out) and versions numbered 1, 2, ... of its code (at most
1,000,000 characters each): version 1 as saved, each later one with the instruction that
produced it. It may point at the conversation and the message it came from; deleting those
keeps the snippet, with the pointer set to null.

Every call names the user, and another user's snippet is ``NotFound``, the same as a missing
one. The rules are checked here, before anything is written; the rows and their queries are
the store's (``app.store.snippets``). Calls are synchronous and short; async callers run them
in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable

from app.snippets.extract import LANGUAGES, TEXT
from app.store.snippets import SnippetRecord, Snippets, SnippetSummary, StoredVersion
from app.store.store import NotFound, StoreError

__all__ = [
    "InvalidSnippet",
    "NotFound",
    "SnippetLibrary",
    "SnippetRecord",
    "SnippetSummary",
    "StoreError",
    "StoredVersion",
    "diff_text",
    "filename",
]

MAX_TITLE_CHARS = 200
MAX_TAGS = 20
MAX_TAG_CHARS = 40
MAX_CODE_CHARS = 1_000_000
MAX_FILENAME_CHARS = 80


class InvalidSnippet(StoreError):
    """Raised when a title, language, tag or code breaks the library's rules."""


class SnippetLibrary(Snippets):
    """The store's snippets with the rules above checked before each write."""

    def save(
        self,
        user_id: int,
        title: str,
        language: str,
        code: str,
        tags: Iterable[str] = (),
        conversation_id: str | None = None,
        message_id: int | None = None,
    ) -> int:
        """Keep ``code`` as a new snippet (its version 1); returns the snippet's id.

        ``message_id`` without ``conversation_id`` links the message's conversation too.
        Raises ``InvalidSnippet``, or ``NotFound`` when the conversation or the message is not
        the user's (or the message is not in the conversation).
        """
        title, cleaned = _title(title), _tags(tags)
        _check_language(language)
        _check_code(code)
        return super().save(user_id, title, language, code, cleaned, conversation_id,
                            message_id)

    def add_version(self, user_id: int, snippet_id: int, code: str, instruction: str) -> int:
        """A new latest version of the snippet's code, made for ``instruction``; returns its
        number."""
        _check_code(code)
        return super().add_version(user_id, snippet_id, code, instruction)

    def rename(self, user_id: int, snippet_id: int, title: str) -> None:
        super().rename(user_id, snippet_id, _title(title))

    def set_tags(self, user_id: int, snippet_id: int, tags: Iterable[str]) -> None:
        """Replace the snippet's tags."""
        super().set_tags(user_id, snippet_id, _tags(tags))


# -- download file names -----------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows keeps for devices, whatever the extension.
_DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{port}{n}" for port in ("com", "lpt") for n in range(10)}
)


def filename(
    record_or_title: SnippetRecord | SnippetSummary | str, language: str | None = None
) -> str:
    """A safe file name to download the snippet as: its title in ASCII letters, digits, ``.``,
    ``_`` and ``-`` (accents dropped, anything else a ``-``), no leading dot, at most 80
    characters, ending in the language's extension (``language`` defaults to the record's;
    an unknown one gives ``.txt``)."""
    if isinstance(record_or_title, str):
        title = record_or_title
    else:
        title, language = record_or_title.title, language or record_or_title.language
    extension = LANGUAGES.get(language or TEXT, LANGUAGES[TEXT]).extension
    ascii_title = (
        unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii")
    )
    stem = _UNSAFE.sub("-", ascii_title)
    stem = re.sub(r"\.{2,}", ".", stem).strip(".-_")
    if stem.lower().endswith(extension):  # "fizzbuzz.py" is not "fizzbuzz.py.py"
        stem = stem[: -len(extension)]
    stem = stem[: MAX_FILENAME_CHARS - len(extension)].rstrip(".-_")
    if not stem:
        stem = "snippet"
    elif stem.split(".", 1)[0].lower() in _DEVICE_NAMES:
        stem = f"{stem}_"
    return stem + extension


# -- rules and helpers -------------------------------------------------------------------


def _title(title: str) -> str:
    title = title.strip()
    if not title:
        raise InvalidSnippet("A snippet needs a title.")
    if len(title) > MAX_TITLE_CHARS:
        raise InvalidSnippet(
            f"A title is at most {MAX_TITLE_CHARS} characters; this one has {len(title)}."
        )
    return title


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise InvalidSnippet(
            f"Unknown language {language!r}; use one of: {', '.join(LANGUAGES)}."
        )


def _tags(tags: Iterable[str]) -> list[str]:
    if isinstance(tags, str):
        raise InvalidSnippet("Tags are a list of words, not one string.")
    cleaned: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise InvalidSnippet(f"A tag is text, not {type(tag).__name__}.")
        tag = tag.strip()
        if len(tag) > MAX_TAG_CHARS:
            raise InvalidSnippet(
                f"A tag is at most {MAX_TAG_CHARS} characters; {tag[:MAX_TAG_CHARS]!r}... "
                f"has {len(tag)}."
            )
        if tag and tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise InvalidSnippet(f"A snippet has at most {MAX_TAGS} tags; these are {len(cleaned)}.")
    return cleaned


def _check_code(code: str) -> None:
    if len(code) > MAX_CODE_CHARS:
        raise InvalidSnippet(
            f"A snippet's code is at most {MAX_CODE_CHARS:,} characters; this has "
            f"{len(code):,}."
        )


def diff_text(old: str, new: str, old_name: str, new_name: str) -> str:
    """A unified diff of two versions of code; empty when they are the same."""
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name,
                                 lineterm="")
    return "\n".join(lines)
