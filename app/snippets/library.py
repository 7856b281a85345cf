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
one. Calls are synchronous and short, on the ``Store``'s engine; async callers run them in a
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import builtins
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from app.snippets.extract import LANGUAGES, TEXT
from app.store.models import (
    Conversation,
    Message,
    Snippet,
    SnippetVersion,
    as_utc,
    escape_like,
    now,
)
from app.store.store import NotFound, Store, StoreError

MAX_TITLE_CHARS = 200
MAX_TAGS = 20
MAX_TAG_CHARS = 40
MAX_CODE_CHARS = 1_000_000
MAX_FILENAME_CHARS = 80
MAX_ID = 2**31 - 1  # ids are PostgreSQL integers: a larger one names nothing


class InvalidSnippet(StoreError):
    """Raised when a title, language, tag or code breaks the library's rules."""


@dataclass(frozen=True)
class SnippetSummary:
    id: int
    title: str
    language: str
    tags: tuple[str, ...]
    latest_version: int  # its number
    conversation_id: str | None
    updated_at: datetime


@dataclass(frozen=True)
class StoredVersion:
    number: int
    code: str
    instruction: str | None  # the request that produced it; None for version 1
    created_at: datetime


@dataclass(frozen=True)
class SnippetRecord:
    id: int
    title: str
    language: str
    tags: tuple[str, ...]
    conversation_id: str | None
    message_id: int | None
    created_at: datetime
    updated_at: datetime
    versions: list[StoredVersion]  # oldest first

    @property
    def code(self) -> str:
        """The latest version's code."""
        return self.versions[-1].code


class SnippetLibrary:
    def __init__(self, store: Store) -> None:
        self.store = store

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
        title, tags = _title(title), _tags(tags)
        _check_language(language)
        _check_code(code)
        try:
            with self.store.transaction() as session:
                if message_id is not None:
                    conversation_id = _owned_message(session, user_id, message_id,
                                                     conversation_id)
                elif conversation_id is not None:
                    _owned_conversation(session, user_id, conversation_id)
                snippet = Snippet(
                    user_id=user_id, title=title, language=language, tags=tags,
                    conversation_id=conversation_id, message_id=message_id,
                )
                snippet.versions.append(SnippetVersion(number=1, code=code))
                session.add(snippet)
                session.flush()
                return snippet.id
        except IntegrityError as err:  # the user, conversation or message went away meanwhile
            raise NotFound(
                "The user, conversation or message of this snippet does not exist."
            ) from err

    def list(self, user_id: int, search: str = "") -> builtins.list[SnippetSummary]:
        """The user's snippets, most recently saved or changed first; ``search`` matches the
        title, a tag or the latest version's code, ignoring case (``%`` and ``_`` literal)."""
        latest = _latest_number()
        query = (
            select(Snippet, latest.label("latest"))
            .where(Snippet.user_id == user_id)
            .order_by(Snippet.updated_at.desc(), Snippet.id.desc())
        )
        if search.strip():
            pattern = f"%{escape_like(search.strip())}%"
            query = query.where(or_(
                Snippet.title.ilike(pattern, escape="\\"),
                self._tag_matches(pattern),
                exists().where(
                    SnippetVersion.snippet_id == Snippet.id,
                    SnippetVersion.number == latest,
                    SnippetVersion.code.ilike(pattern, escape="\\"),
                ),
            ))
        with self.store.transaction() as session:
            return [
                SnippetSummary(
                    id=snippet.id, title=snippet.title, language=snippet.language,
                    tags=tuple(snippet.tags), latest_version=number,
                    conversation_id=snippet.conversation_id,
                    updated_at=as_utc(snippet.updated_at),
                )
                for snippet, number in session.execute(query)
            ]

    def get(self, user_id: int, snippet_id: int) -> SnippetRecord:
        """The snippet with all its versions, oldest first."""
        with self.store.transaction() as session:
            snippet = _owned(session, user_id, snippet_id)
            return SnippetRecord(
                id=snippet.id, title=snippet.title, language=snippet.language,
                tags=tuple(snippet.tags), conversation_id=snippet.conversation_id,
                message_id=snippet.message_id, created_at=as_utc(snippet.created_at),
                updated_at=as_utc(snippet.updated_at),
                versions=[
                    StoredVersion(v.number, v.code, v.instruction, as_utc(v.created_at))
                    for v in snippet.versions
                ],
            )

    def add_version(self, user_id: int, snippet_id: int, code: str, instruction: str) -> int:
        """A new latest version of the snippet's code, made for ``instruction``; returns its
        number."""
        _check_code(code)
        with self.store.transaction() as session:
            # Write first: that locks the snippet's row (PostgreSQL) or the database (SQLite)
            # until the commit, so two new versions at once cannot take the same number.
            _touch(session, user_id, snippet_id)
            number = session.scalar(
                select(func.max(SnippetVersion.number))
                .where(SnippetVersion.snippet_id == snippet_id)
            )
            version = SnippetVersion(
                snippet_id=snippet_id, number=(number or 0) + 1, code=code,
                instruction=instruction,
            )
            session.add(version)
            session.flush()
            return version.number

    def rename(self, user_id: int, snippet_id: int, title: str) -> None:
        title = _title(title)
        with self.store.transaction() as session:
            _touch(session, user_id, snippet_id, title=title)

    def set_tags(self, user_id: int, snippet_id: int, tags: Iterable[str]) -> None:
        """Replace the snippet's tags."""
        cleaned = _tags(tags)
        with self.store.transaction() as session:
            _touch(session, user_id, snippet_id, tags=cleaned)

    def delete(self, user_id: int, snippet_id: int) -> None:
        """Delete the snippet with every version of it."""
        with self.store.transaction() as session:
            session.delete(_owned(session, user_id, snippet_id))

    def _tag_matches(self, pattern: str) -> ColumnElement[bool]:
        """Whether one of the snippet's tags matches ``pattern`` (the JSON list taken apart
        by the database, so that its quotes and commas never match)."""
        if self.store.engine.dialect.name == "postgresql":
            elements = func.json_array_elements_text(Snippet.tags)
        else:
            elements = func.json_each(Snippet.tags)
        tag = elements.table_valued("value").alias("tag")
        return (
            select(tag.c.value).where(tag.c.value.cast(String).ilike(pattern, escape="\\"))
            .exists()
        )


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


def _owned(session: Session, user_id: int, snippet_id: int) -> Snippet:
    snippet = session.get(Snippet, snippet_id) if 0 < snippet_id <= MAX_ID else None
    if snippet is None or snippet.user_id != user_id:
        raise NotFound(f"No snippet {snippet_id}.")
    return snippet


def _touch(session: Session, user_id: int, snippet_id: int, **values: object) -> None:
    """Set ``values`` and the change time on the user's snippet; ``NotFound`` if it is not."""
    if not 0 < snippet_id <= MAX_ID:
        raise NotFound(f"No snippet {snippet_id}.")
    result = session.execute(
        update(Snippet)
        .where(Snippet.id == snippet_id, Snippet.user_id == user_id)
        .values(updated_at=now(), **values)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"No snippet {snippet_id}.")


def _owned_conversation(session: Session, user_id: int, conversation_id: str) -> None:
    owner = session.scalar(select(Conversation.user_id).where(Conversation.id == conversation_id))
    if owner != user_id:
        raise NotFound(f"No conversation {conversation_id}.")


def _owned_message(
    session: Session, user_id: int, message_id: int, conversation_id: str | None
) -> str:
    """The conversation of the user's message ``message_id`` (which must be
    ``conversation_id`` when that is given)."""
    missing = NotFound(f"No message {message_id} in this conversation.")
    if not 0 < message_id <= MAX_ID:
        raise missing
    row = session.execute(
        select(Message.conversation_id, Conversation.user_id)
        .join(Conversation, Message.conversation_id == Conversation.id)
        .where(Message.id == message_id)
    ).one_or_none()
    if row is None or row.user_id != user_id or conversation_id not in (
        None, row.conversation_id
    ):
        raise missing
    found: str = row.conversation_id
    return found


def _latest_number() -> ColumnElement[int]:
    """The number of the snippet's latest version, in a query over ``Snippet``."""
    version = aliased(SnippetVersion)
    return (
        select(func.max(version.number)).where(version.snippet_id == Snippet.id)
        .correlate(Snippet).scalar_subquery()
    )
