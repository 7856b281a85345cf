"""The tables: users, their conversations, and the messages in them.

The messages of a conversation form a tree through ``reply_to_id``, each message's parent: a
reply points at the user message it answers, a user message at the reply it follows (none for
a first message). A retry adds a sibling reply and an edit a sibling user message; the earlier
ones are kept. The conversation's ``leaf_id`` is the last message of the branch on screen.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time the store writes is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def escape_like(text: str) -> str:
    """``text`` matched literally by ``LIKE ... ESCAPE '\\'``: ``%``, ``_`` and ``\\``
    lose their meaning."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# The settings a conversation keeps (``Conversation.settings``): the page's generation controls
# and the model, each with the type its value must have.
SETTING_TYPES: dict[str, type] = {
    "max_new_tokens": int, "temperature": float, "top_p": float, "top_k": int,
    "repetition_penalty": float, "frequency_penalty": float, "presence_penalty": float,
    "stop": str, "seed": int, "model": str,
}


def kept_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``settings`` a conversation keeps, as it keeps them: the known ones
    with a usable value (finite numbers, whole where they must be; text for the stop
    sequences and the model). The rest is left out, so that the page keeps its own value.
    Settings are cleaned so once, as they are written (a turn's request, an import); what is
    read back is used as it is."""
    kept: dict[str, Any] = {}
    for name, kind in SETTING_TYPES.items():
        value = settings.get(name)
        if kind is str:
            if isinstance(value, str):
                kept[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value) and (kind is float or float(value).is_integer()):
            kept[name] = float(value) if kind is float else int(value)
    return kept


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    backend: Mapped[str | None] = mapped_column(String(50), default=None)
    language: Mapped[str | None] = mapped_column(String(50), default=None)
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=now, index=True
    )
    # The last message of the branch on screen; None, or a message since deleted, reads as
    # "the newest child at each step from the first message".
    leaf_id: Mapped[int | None] = mapped_column(Integer, default=None)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan", passive_deletes=True,
        order_by="Message.id",
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text, default="")
    reply_to_id: Mapped[int | None] = mapped_column(  # the parent
        ForeignKey("messages.id", ondelete="CASCADE"), default=None, index=True
    )
    # user messages: "complete"; replies: "streaming" until they end as "stop", "length",
    # "stopped" or "interrupted" (a failure, or the app died while it streamed). Indexed for
    # the replies streaming now, which every process looks up every few seconds.
    status: Mapped[str] = mapped_column(String(20), default="complete", index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    tokens: Mapped[int | None] = mapped_column(Integer, default=None)
    time_to_first_token: Mapped[float | None] = mapped_column(Float, default=None)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    backend: Mapped[str | None] = mapped_column(String(50), default=None)
    # user messages: the files attached, each {"name", "language", "text"}; None: none.
    attachments: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, default=None)
    # replies: the last run of each code block, by the block's index ("0", "1", ...), each
    # {"language", "stdout", "stderr", "exit_code", "seconds", "stopped", "truncated"}
    # (app.chat.checks); None: none run.
    runs: Mapped[dict[str, dict[str, Any]] | None] = mapped_column(JSON, default=None)
    # replies: the check against tests this reply is a version of (app.chat.checks: its tests,
    # each version with its results, and how it ended); None: not checked.
    check: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # replies: the lease (``Lease.id``) of the process that began it; None for replies
    # begun before leases (migration 0009). Not a foreign key: the lease goes when its
    # process stops, the reply stays.
    lease_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Lease(Base):
    """One running app process (app.store.leases): its heartbeat is renewed every
    LEASE_HEARTBEAT_INTERVAL while it lives; the row goes when the process stops cleanly, or
    once it has gone LEASE_EXPIRY without a heartbeat (the process died)."""

    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    host: Mapped[str] = mapped_column(String(255))  # for an operator reading the table
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ApiToken(Base):
    """A bearer token for the REST API; only its SHA-256 hash is kept, never the token."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Snippet(Base):
    """A piece of code a user kept (app.store.snippets), with every version of it.

    It may point at the conversation and the reply it came from; deleting those leaves the
    snippet, with the pointer set to null.
    """

    __tablename__ = "snippets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(20))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), default=None, index=True
    )
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), default=None, index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=now, index=True
    )

    versions: Mapped[list[SnippetVersion]] = relationship(
        back_populates="snippet", cascade="all, delete-orphan", passive_deletes=True,
        order_by="SnippetVersion.number",
    )


class SnippetVersion(Base):
    """One version of a snippet's code: number 1 as saved, each later one made on request
    (``instruction``)."""

    __tablename__ = "snippet_versions"
    __table_args__ = (UniqueConstraint("snippet_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    snippet_id: Mapped[int] = mapped_column(ForeignKey("snippets.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(Text)
    instruction: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    snippet: Mapped[Snippet] = relationship(back_populates="versions")


class Share(Base):
    """A read-only snapshot of a conversation, readable by anyone with its token
    (app.store.shares).

    ``snapshot`` holds the exchanges as they were shared; the conversation may change or go
    (the pointer is then set to null) without changing it. Lookups go by ``token_hash``, the
    token's SHA-256, so that the database's comparison of the token given with the stored ones
    reveals nothing of a token; the token itself is kept to show its owner the link again.
    """

    __tablename__ = "shares"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), default=None, index=True
    )
    token: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    snapshot: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class LimitEvent(Base):
    """One event counted against a limit shared by every process on the database
    (app.store.limits): a message sent (``kind`` "message", ``key`` the user's id), a failed
    login (per name, per address). It counts until ``until`` (seconds since the epoch: the
    event's time plus its limit's window) and is deleted some time after."""

    __tablename__ = "limit_events"
    __table_args__ = (Index("ix_limit_events_kind_key_until", "kind", "key", "until"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    key: Mapped[str] = mapped_column(String(255))
    until: Mapped[float] = mapped_column(Float, index=True)


class RunningPlace(Base):
    """A place held among a user's running replies (app.store.running): a reply being
    written, or a call of the model that is not stored, by the process of ``lease_id``. It
    counts while that lease is live, and goes with the lease (a process that died) or when
    the reply ends."""

    __tablename__ = "running"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(Integer, index=True)
    # None: a process that serves nothing holds no lease (a test's, a tool's).
    lease_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("leases.id", ondelete="CASCADE"), index=True
    )


class Comparison(Base):
    """One message sent to two models side by side, and the user's vote between the replies
    (app.store.comparisons).

    The replies are two versions of one reply in the conversation's tree (siblings, as a
    retry makes), so the user continues with either; the comparison points at them. Each
    side keeps its model, the backend that answered, and the speed measured in this
    comparison, so that the board keeps the vote and the speed when the conversation is
    deleted (the pointers are then set to null, and the texts are gone with it).
    """

    __tablename__ = "comparisons"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), default=None, index=True
    )
    left_reply_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), default=None, index=True
    )
    right_reply_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="SET NULL"), default=None, index=True
    )
    left_model: Mapped[str] = mapped_column(String(200))
    right_model: Mapped[str] = mapped_column(String(200))
    left_backend: Mapped[str | None] = mapped_column(String(50), default=None)
    right_backend: Mapped[str | None] = mapped_column(String(50), default=None)
    # None: the side wrote no token (it failed first), or wrote too few to measure.
    left_first_token_ms: Mapped[float | None] = mapped_column(Float, default=None)
    right_first_token_ms: Mapped[float | None] = mapped_column(Float, default=None)
    left_tokens_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    right_tokens_per_second: Mapped[float | None] = mapped_column(Float, default=None)
    # Blind: the models' names were hidden until the vote.
    blind: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # "left", "right", "tie" or "both_bad" (app.arena.rating.Outcome); None: no vote yet.
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    voted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
