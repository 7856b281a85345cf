"""The snippet library's rows: code a user keeps, with every version of it.

Every call names the user, and another user's snippet is ``NotFound``, the same as a missing
one (so is a conversation or message to link that is not the user's). A snippet's versions
are numbered 1, 2, ...: version 1 as saved, each later one with the instruction that produced
it. It may point at the conversation and the message it came from; deleting those keeps the
snippet, with the pointer set to null.

These calls store what they are given: the rules for titles, languages, tags and code are
``app.snippets.library``'s, which checks them first. Calls are synchronous and short; async
callers run them in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from app.store.models import (
    Conversation,
    Message,
    Snippet,
    SnippetVersion,
    as_utc,
    escape_like,
    now,
)
from app.store.store import NotFound, Store

MAX_ID = 2**31 - 1  # ids are PostgreSQL integers: a larger one names nothing


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


class Snippets:
    def __init__(self, store: Store) -> None:
        self.store = store

    def save(
        self,
        user_id: int,
        title: str,
        language: str,
        code: str,
        tags: builtins.list[str],
        conversation_id: str | None = None,
        message_id: int | None = None,
    ) -> int:
        """Keep ``code`` as a new snippet (its version 1); returns the snippet's id.

        ``message_id`` without ``conversation_id`` links the message's conversation too.
        Raises ``NotFound`` when the conversation or the message is not the user's (or the
        message is not in the conversation).
        """
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
        with self.store.transaction() as session:
            _touch(session, user_id, snippet_id, title=title)

    def set_tags(self, user_id: int, snippet_id: int, tags: builtins.list[str]) -> None:
        """Replace the snippet's tags."""
        with self.store.transaction() as session:
            _touch(session, user_id, snippet_id, tags=tags)

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
