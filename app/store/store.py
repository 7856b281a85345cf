"""Conversations that last: one ``Store`` over SQLite (the default, in WAL mode) or PostgreSQL.

Every read and write names the user, and a conversation of another user is ``NotFound``, the
same as one that does not exist. Calls are synchronous and short; async callers run them in a
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, selectinload, sessionmaker

from app.store.models import Conversation, Message, User, as_utc, escape_like, now

MIGRATIONS = Path(__file__).parent / "migrations"
LOCAL_USER = "local"
INTERRUPTED_BY_RESTART = "The app stopped while this reply was streaming."


class StoreError(Exception):
    """Base class for store failures."""


class NotFound(StoreError):
    """The conversation does not exist, or belongs to another user."""


@dataclass(frozen=True)
class BegunTurn:
    """What ``Store.begin_turn`` stored: the conversation, the message answered, the reply."""

    conversation_id: str
    user_message_id: int
    reply_id: int


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    title: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredReply:
    id: int
    content: str
    status: str
    error: str | None
    tokens: int | None
    time_to_first_token: float | None
    tokens_per_second: float | None
    model: str | None
    backend: str | None


@dataclass(frozen=True)
class StoredExchange:
    """A user message and the latest version of the reply to it."""

    user_message_id: int
    user: str
    reply: StoredReply | None


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    title: str
    system_prompt: str
    model: str | None
    backend: str | None
    language: str | None
    settings: dict[str, Any]
    created_at: datetime
    exchanges: list[StoredExchange]


# Each pooled SQLite connection keeps its own page cache, 2 MiB by default, filled as the
# database grows: with a dozen connections that was most of the app's memory growth in a long
# run (bench/results/soak-tracemalloc.md). Pages past it come from the OS's file cache.
SQLITE_CACHE_KIB = 512


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            options["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **options)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: a session whose changes are committed when the block ends, and
        rolled back when it raises. For the store's own modules (``app.store.*``), which hold
        every query of the app."""
        with self._sessions.begin() as session:
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest migration (creating it in an empty database)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def recover_interrupted(self, older_than: timedelta) -> int:
        """Mark replies left streaming, and not saved for ``older_than``, as interrupted: the
        process streaming them has stopped (a live one saves them more often; other replicas
        on the same database may be streaming the recent ones). Returns how many."""
        with self.transaction() as session:
            result = session.execute(
                update(Message)
                .where(Message.status == "streaming", Message.updated_at < now() - older_than)
                .values(status="interrupted", error=INTERRUPTED_BY_RESTART, updated_at=now())
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def user_id(self, name: str = LOCAL_USER) -> int:
        """The id of the user with this name, created on first use."""
        with self.transaction() as session:
            found = session.scalar(select(User.id).where(User.name == name))
            if found is not None:
                return found
            user = User(name=name)
            session.add(user)
            session.flush()
            return user.id

    # -- conversations -------------------------------------------------------------------

    def create_conversation(
        self, user_id: int, title: str, system_prompt: str = "", **fields: Any
    ) -> str:
        with self.transaction() as session:
            conversation = Conversation(
                user_id=user_id, title=title, system_prompt=system_prompt, **fields
            )
            session.add(conversation)
            session.flush()
            return conversation.id

    def list_conversations(
        self, user_id: int, search: str = "", limit: int = 200
    ) -> list[ConversationSummary]:
        """Newest first; ``search`` matches titles and message text, ignoring case."""
        # Only the three columns the list shows: whole ORM objects cost ten times as much,
        # and the page asks for this list at every message sent.
        query = select(Conversation.id, Conversation.title, Conversation.updated_at).where(
            Conversation.user_id == user_id
        )
        if search.strip():
            pattern = f"%{escape_like(search.strip())}%"
            in_messages = select(Message.conversation_id).where(
                Message.content.ilike(pattern, escape="\\")
            )
            query = query.where(
                or_(Conversation.title.ilike(pattern, escape="\\"),
                    Conversation.id.in_(in_messages))
            )
        query = query.order_by(Conversation.updated_at.desc()).limit(limit)
        with self.transaction() as session:
            return [ConversationSummary(*row) for row in session.execute(query)]

    def get_conversation(self, user_id: int, conversation_id: str) -> ConversationRecord:
        with self.transaction() as session:
            conversation = self._owned(session, user_id, conversation_id)
            messages = session.scalars(
                select(Message).where(Message.conversation_id == conversation_id)
                .order_by(Message.id)
            ).all()
            return _record(conversation, messages)

    def rename(self, user_id: int, conversation_id: str, title: str) -> None:
        with self.transaction() as session:
            self._owned(session, user_id, conversation_id).title = title

    def delete(self, user_id: int, conversation_id: str) -> None:
        with self.transaction() as session:
            session.delete(self._owned(session, user_id, conversation_id))

    # -- messages ------------------------------------------------------------------------

    def begin_turn(
        self, user_id: int, conversation_id: str | None, system_prompt: str,
        settings: dict[str, Any], language: str | None, *, message: str | None = None,
        reply_to: int | None = None, title: str = "", model: str | None = None,
        backend: str | None = None,
    ) -> BegunTurn:
        """The start of a turn, in one transaction: the conversation created (for
        ``conversation_id`` None, titled ``title``) or its prompt, settings and language
        (None: as it is, "": none) stored; the user's ``message`` added, or for a retry the
        message ``reply_to`` answered again; and an empty reply, streaming.

        Raises ``NotFound`` for a conversation or message that is not the user's.
        """
        with self.transaction() as session:
            if conversation_id is None:
                conversation = Conversation(
                    user_id=user_id, title=title, system_prompt=system_prompt,
                    settings=settings, language=language or None,
                )
                session.add(conversation)
                session.flush()
            else:
                conversation = self._owned(session, user_id, conversation_id)
                conversation.system_prompt, conversation.settings = system_prompt, settings
                if language is not None:
                    conversation.language = language or None
            if message is not None:
                reply_to = self._add_message(session, conversation, message)
            asked = session.get(Message, reply_to) if reply_to is not None else None
            if asked is None or asked.conversation_id != conversation.id or asked.role != "user":
                raise NotFound(f"No message {reply_to} to answer in this conversation.")
            reply_id = self._start_reply(session, conversation, asked.id, model, backend)
            return BegunTurn(conversation.id, asked.id, reply_id)

    def add_user_message(self, user_id: int, conversation_id: str, content: str) -> int:
        with self.transaction() as session:
            return self._add_message(
                session, self._owned(session, user_id, conversation_id), content
            )

    def start_reply(
        self, user_id: int, conversation_id: str, reply_to: int, model: str | None,
        backend: str | None,
    ) -> int:
        """A new version of the reply to ``reply_to``, streaming; earlier versions are kept."""
        with self.transaction() as session:
            conversation = self._owned(session, user_id, conversation_id)
            return self._start_reply(session, conversation, reply_to, model, backend)

    @staticmethod
    def _add_message(session: Session, conversation: Conversation, content: str) -> int:
        conversation.updated_at = now()
        message = Message(conversation_id=conversation.id, role="user", content=content)
        session.add(message)
        session.flush()
        return message.id

    @staticmethod
    def _start_reply(
        session: Session, conversation: Conversation, reply_to: int, model: str | None,
        backend: str | None,
    ) -> int:
        if model is not None:
            conversation.model, conversation.backend = model, backend
        message = Message(
            conversation_id=conversation.id, role="assistant", reply_to_id=reply_to,
            status="streaming", model=model, backend=backend,
        )
        session.add(message)
        session.flush()
        return message.id

    def save_reply(self, user_id: int, reply_id: int, content: str, **final: Any) -> None:
        """Store the reply so far; with ``status`` (and stats) it is the final version.

        Raises ``NotFound`` when the reply is not in one of the user's conversations (or its
        conversation was deleted while it streamed).
        """
        owned = select(Conversation.id).where(Conversation.user_id == user_id)
        with self.transaction() as session:
            saved = session.execute(
                update(Message)
                .where(Message.id == reply_id, Message.conversation_id.in_(owned))
                .values(content=content, updated_at=now(), **final)
                .execution_options(synchronize_session=False)  # no row of it is loaded
            )
            if not saved.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"No reply {reply_id} in your conversations.")

    def delete_exchange(self, user_id: int, conversation_id: str, user_message_id: int) -> None:
        """Take back a user message with every version of its reply."""
        with self.transaction() as session:
            self._owned(session, user_id, conversation_id)
            message = session.get(Message, user_message_id)
            if message is None or message.conversation_id != conversation_id:
                raise NotFound(f"No message {user_message_id} in this conversation.")
            for reply in session.scalars(
                select(Message).where(Message.reply_to_id == user_message_id)
            ):
                session.delete(reply)
            session.flush()  # the replies first: the unit of work would delete by id order
            session.delete(message)

    def count_messages(self, user_id: int) -> int:
        with self.transaction() as session:
            total = session.scalar(
                select(func.count(Message.id)).join(Conversation)
                .where(Conversation.user_id == user_id)
            )
            return int(total or 0)

    # -- whole conversations, for export and import (app.store.transfer, app.chat.export) --

    def conversation_rows(
        self, user_id: int, conversation_id: str | None = None
    ) -> list[Conversation]:
        """The user's conversations (one, or all oldest first) as detached rows, each with
        every message loaded in id order.

        Raises ``NotFound`` when ``conversation_id`` is not one of the user's conversations.
        """
        query = (
            select(Conversation).where(Conversation.user_id == user_id)
            .options(selectinload(Conversation.messages))
            .order_by(Conversation.created_at, Conversation.id)
        )
        if conversation_id is not None:
            query = query.where(Conversation.id == conversation_id)
        with self.transaction() as session:
            rows = list(session.scalars(query))
        if conversation_id is not None and not rows:
            raise NotFound(f"No conversation {conversation_id}.")
        return rows

    def conversation_records(
        self, user_id: int, conversation_id: str | None = None
    ) -> list[ConversationRecord]:
        """The user's conversations (one, or all oldest first) as ``get_conversation`` gives
        them.

        Raises ``NotFound`` when ``conversation_id`` is not one of the user's conversations.
        """
        return [
            _record(conversation, conversation.messages)
            for conversation in self.conversation_rows(user_id, conversation_id)
        ]

    def add_conversations(
        self,
        user_id: int,
        conversations: Iterable[tuple[Conversation, Sequence[tuple[Message, Message | None]]]],
    ) -> list[str]:
        """Add whole conversations for the user in one transaction: all of them, or none.

        Each conversation comes with its messages in order, each paired with the earlier user
        message of the same conversation that it answers (or ``None``); ids follow that order.
        The rows are consumed inside the transaction, so a failure while building or writing
        any of them rolls back every row. Returns the new conversation ids.
        """
        with self.transaction() as session:
            ids = []
            for conversation, messages in conversations:
                conversation.user_id = user_id
                session.add(conversation)
                for message, answers in messages:
                    if answers is not None:
                        if answers.id is None:
                            session.flush()  # the message answered needs its id
                        message.reply_to_id = answers.id
                    conversation.messages.append(message)
                session.flush()
                ids.append(conversation.id)
            return ids

    @staticmethod
    def _owned(session: Session, user_id: int, conversation_id: str) -> Conversation:
        conversation = session.get(Conversation, conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise NotFound(f"No conversation {conversation_id}.")
        return conversation


def _record(conversation: Conversation, messages: Sequence[Message]) -> ConversationRecord:
    """The conversation with each user message and the latest version of its reply;
    ``messages`` are all of its messages, in id order."""
    latest: dict[int, Message] = {}
    for message in messages:
        if message.role == "assistant" and message.reply_to_id is not None:
            latest[message.reply_to_id] = message
    exchanges = [
        StoredExchange(m.id, m.content, _reply(latest.get(m.id)))
        for m in messages if m.role == "user"
    ]
    return ConversationRecord(
        id=conversation.id, title=conversation.title,
        system_prompt=conversation.system_prompt, model=conversation.model,
        backend=conversation.backend, language=conversation.language,
        settings=dict(conversation.settings or {}), created_at=as_utc(conversation.created_at),
        exchanges=exchanges,
    )


def _reply(message: Message | None) -> StoredReply | None:
    if message is None:
        return None
    return StoredReply(
        id=message.id, content=message.content, status=message.status, error=message.error,
        tokens=message.tokens, time_to_first_token=message.time_to_first_token,
        tokens_per_second=message.tokens_per_second, model=message.model,
        backend=message.backend,
    )
