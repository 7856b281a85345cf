"""Conversations that last: one ``Store`` over SQLite (the default, in WAL mode) or PostgreSQL.

Every read and write names the user, and a conversation of another user is ``NotFound``, the
same as one that does not exist. Calls are synchronous and short; async callers run them in a
thread (``asyncio.to_thread``).

A conversation's messages form a tree (``app.store.models``): a retry adds a sibling reply, an
edit a sibling user message, and earlier versions stay. What is read and continued is the
branch on screen, from the first message to the conversation's leaf; each write moves the leaf
to the message it adds, and ``switch_branch`` moves it to another branch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, selectinload, sessionmaker

from app.store.models import Comparison, Conversation, Message, User, escape_like, now
from app.store.records import (
    BegunTurn,
    ConversationRecord,
    ConversationSummary,
    ConversationTree,
    StoredMessage,
    Tree,
    conversation_record,
    conversation_tree,
)

MIGRATIONS = Path(__file__).parent / "migrations"
LOCAL_USER = "local"


class StoreError(Exception):
    """Base class for store failures."""


class NotFound(StoreError):
    """The conversation does not exist, or belongs to another user."""


# Each pooled SQLite connection keeps its own page cache, 2 MiB by default, filled as the
# database grows: with a dozen connections that was most of the app's memory growth in a long
# run (bench/results/soak-tracemalloc.md), and at 512 KiB SQLite still grew by 1.9 MiB over a
# 10-minute soak (bench/results/soak.md). Pages past it come from the OS's file cache.
SQLITE_CACHE_KIB = 128


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
        # The lease of the process using this store (app.store.leases), carried by every
        # reply it begins; None until it takes one.
        self.lease_id: str | None = None

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: a session whose changes are committed when the block ends, and
        rolled back when it raises. For the store's own modules (``app.store.*``), which hold
        every query of the app."""
        with self._sessions.begin() as session:
            yield session

    def lock(self, session: Session, kind: str, key: str) -> None:
        """Take the lock of ``kind`` and ``key`` until ``session``'s transaction ends, so that
        the transactions of every process that take it run one after the other: on
        PostgreSQL an advisory lock (``pg_advisory_xact_lock``); on SQLite nothing, as long
        as the transaction writes before it reads (its first write takes the database's one
        write lock, which does the same: SQLite has one writer at a time)."""
        if self.engine.dialect.name == "postgresql":
            digest = hashlib.blake2b(f"{kind}\0{key}".encode(), digest_size=8).digest()
            session.execute(text("SELECT pg_advisory_xact_lock(:lock)"),
                            {"lock": int.from_bytes(digest, "big", signed=True)})

    def migrate(self) -> None:
        """Bring the schema to the newest migration (creating it in an empty database)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

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
        """The conversation with the exchanges of its branch on screen."""
        with self.transaction() as session:
            conversation = self._owned(session, user_id, conversation_id)
            return conversation_record(conversation, self._messages(session, conversation),
                                       self._blind_replies(session, [conversation_id]))

    def get_tree(self, user_id: int, conversation_id: str) -> ConversationTree:
        """The conversation's every message, on every branch."""
        with self.transaction() as session:
            conversation = self._owned(session, user_id, conversation_id)
            return conversation_tree(conversation, self._messages(session, conversation),
                                     self._blind_replies(session, [conversation_id]))

    def switch_branch(self, user_id: int, conversation_id: str, message_id: int) -> None:
        """Put on screen the branch through ``message_id``: from it down, the newest child
        at each step.

        Raises ``NotFound`` for a message that is not in this conversation of the user's.
        """
        with self.transaction() as session:
            conversation = self._owned(session, user_id, conversation_id)
            tree = Tree(self._messages(session, conversation))
            message = tree.by_id.get(message_id)
            if message is None:
                raise NotFound(f"No message {message_id} in this conversation.")
            conversation.leaf_id = tree.newest_below(message).id

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
        parent: int | None = None, reply_to: int | None = None, title: str = "",
        model: str | None = None, backend: str | None = None,
        attachments: Sequence[dict[str, str]] = (),
    ) -> BegunTurn:
        """The start of a turn, in one transaction: the conversation created (for
        ``conversation_id`` None, titled ``title``) or its prompt, settings and language
        (None: as it is, "": none) stored; the user's ``message`` added after the message
        ``parent`` (None: as a first message) with the files ``attachments`` (each
        ``{"name", "language", "text"}``), or for a retry the message ``reply_to`` answered
        again (with the files it has); and an empty reply, streaming, now the end of the
        branch on screen.

        An edit is a message added after the edited one's parent: a sibling of it, which
        starts a new branch and keeps the old one.

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
                if parent is not None:
                    self._message_in(session, conversation, parent)
                reply_to = self._add_message(
                    session, conversation, message, parent, attachments
                )
            if reply_to is None:
                raise NotFound("No message to answer in this conversation.")
            asked = self._message_in(session, conversation, reply_to, role="user")
            reply = self._start_reply(session, conversation, asked.id, model, backend,
                                      self.lease_id)
            # Alternatives without asking where there can be none: the first message of a
            # new conversation, and the one reply of a message just added (the two queries
            # were half the cost of starting a turn).
            users = (asked.id,) if conversation_id is None else self._alternatives(session, asked)
            replies = (reply.id,) if message is not None else self._alternatives(session, reply)
            return BegunTurn(conversation.id, asked.id, reply.id, users, replies)

    @staticmethod
    def _add_message(
        session: Session, conversation: Conversation, content: str, parent: int | None,
        attachments: Sequence[dict[str, str]] = (),
    ) -> int:
        conversation.updated_at = now()
        message = Message(
            conversation_id=conversation.id, role="user", content=content, reply_to_id=parent,
            attachments=[dict(a) for a in attachments] or None,
        )
        session.add(message)
        session.flush()
        conversation.leaf_id = message.id
        return message.id

    @staticmethod
    def _start_reply(
        session: Session, conversation: Conversation, reply_to: int, model: str | None,
        backend: str | None, lease_id: str | None,
    ) -> Message:
        if model is not None:
            conversation.model, conversation.backend = model, backend
        message = Message(
            conversation_id=conversation.id, role="assistant", reply_to_id=reply_to,
            status="streaming", model=model, backend=backend, lease_id=lease_id,
        )
        session.add(message)
        session.flush()
        conversation.leaf_id = message.id
        return message

    @staticmethod
    def _message_in(
        session: Session, conversation: Conversation, message_id: int, role: str | None = None
    ) -> Message:
        message = session.get(Message, message_id)
        if (message is None or message.conversation_id != conversation.id
                or role not in (None, message.role)):
            raise NotFound(f"No message {message_id} in this conversation.")
        return message

    @staticmethod
    def _alternatives(session: Session, message: Message) -> tuple[int, ...]:
        """The ids of ``message`` and its siblings of the same role, oldest first."""
        parent = message.reply_to_id
        return tuple(session.scalars(
            select(Message.id).where(
                Message.conversation_id == message.conversation_id,
                Message.role == message.role,
                Message.reply_to_id.is_(None) if parent is None else Message.reply_to_id == parent,
            ).order_by(Message.id)
        ))

    def blind_replies(self, conversation_ids: Sequence[str]) -> set[int]:
        """The replies of the conversations' blind comparisons not voted on yet, whose models
        and backends no reading shows until the vote (it would tell which model wrote which
        side)."""
        with self.transaction() as session:
            return self._blind_replies(session, conversation_ids)

    @staticmethod
    def _blind_replies(session: Session, conversation_ids: Sequence[str]) -> set[int]:
        """``blind_replies`` in ``session``."""
        rows = session.execute(
            select(Comparison.left_reply_id, Comparison.right_reply_id).where(
                Comparison.conversation_id.in_(conversation_ids), Comparison.blind,
                Comparison.outcome.is_(None),
            )
        )
        return {reply_id for row in rows for reply_id in row if reply_id is not None}

    @staticmethod
    def _messages(session: Session, conversation: Conversation) -> Sequence[Message]:
        return session.scalars(
            select(Message).where(Message.conversation_id == conversation.id)
            .order_by(Message.id)
        ).all()

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

    def exchange_of(
        self, user_id: int, reply_id: int
    ) -> tuple[str, StoredMessage, StoredMessage]:
        """The conversation of the reply ``reply_id``, the user message it answers, and the
        reply. Raises ``NotFound`` for a reply that is not in one of the user's conversations."""
        with self.transaction() as session:
            reply = session.get(Message, reply_id)
            if reply is None or reply.role != "assistant" or reply.reply_to_id is None:
                raise NotFound(f"No reply {reply_id} in your conversations.")
            conversation = self._owned(session, user_id, reply.conversation_id)
            asked = self._message_in(session, conversation, reply.reply_to_id, role="user")
            return conversation.id, StoredMessage.of(asked), StoredMessage.of(reply)

    def add_version(
        self, user_id: int, conversation_id: str, reply_to: int, content: str,
        model: str | None, backend: str | None, check: dict[str, Any],
    ) -> int:
        """A new version of the reply to the user message ``reply_to``, ended, with
        ``content`` and its ``check``, in one transaction: stored as a retry is (earlier versions
        kept) and now the end of the branch on screen. Returns its id.

        Raises ``NotFound`` for a conversation or message that is not the user's."""
        with self.transaction() as session:
            conversation = self._owned(session, user_id, conversation_id)
            asked = self._message_in(session, conversation, reply_to, role="user")
            reply = self._start_reply(session, conversation, asked.id, model, backend,
                                      self.lease_id)
            reply.content, reply.status, reply.check = content, "stop", check
            return reply.id

    def save_notes(
        self, user_id: int, reply_id: int, *, runs: dict[str, dict[str, Any]] | None = None,
        check: dict[str, Any] | None = None,
    ) -> None:
        """What was found out about a reply: the runs of its code blocks (all of them) or its
        check (``Message.runs``, ``Message.check``); None leaves one as it is.

        Raises ``NotFound`` when the reply is not in one of the user's conversations."""
        owned = select(Conversation.id).where(Conversation.user_id == user_id)
        values = {name: value for name, value in (("runs", runs), ("check", check))
                  if value is not None}
        with self.transaction() as session:
            saved = session.execute(
                update(Message)
                .where(Message.id == reply_id, Message.role == "assistant",
                       Message.conversation_id.in_(owned))
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if not saved.rowcount:  # type: ignore[attr-defined]
                raise NotFound(f"No reply {reply_id} in your conversations.")

    def delete_exchange(self, user_id: int, conversation_id: str, user_message_id: int) -> None:
        """Take back a message with everything below it: every version of its reply and the
        branches that follow them. A branch on screen that went through it now ends at the
        message before it."""
        with self.transaction() as session:
            conversation = self._owned(session, user_id, conversation_id)
            tree = Tree(self._messages(session, conversation))
            message = tree.by_id.get(user_message_id)
            if message is None:
                raise NotFound(f"No message {user_message_id} in this conversation.")
            doomed = tree.subtree(message)
            if conversation.leaf_id in doomed:
                conversation.leaf_id = message.reply_to_id
            session.execute(
                delete(Message).where(Message.id.in_(doomed))
                .execution_options(synchronize_session=False)
            )

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
        rows = self.conversation_rows(user_id, conversation_id)
        hidden = self.blind_replies([conversation.id for conversation in rows])
        return [conversation_record(conversation, conversation.messages, hidden)
                for conversation in rows]

    def add_conversations(
        self,
        user_id: int,
        conversations: Iterable[
            tuple[Conversation, Sequence[tuple[Message, Message | None]], Message | None]
        ],
    ) -> list[str]:
        """Add whole conversations for the user in one transaction: all of them, or none.

        Each conversation comes with its messages in order, each paired with its parent, an
        earlier message of the same conversation (or ``None``), and with the last message of
        its branch on screen (or ``None``); ids follow that order. The rows are consumed
        inside the transaction, so a failure while building or writing any of them rolls back
        every row; each conversation is written, its rows given their ids, before the next is
        taken (an import then links its checks to them). Returns the new conversation ids.
        """
        with self.transaction() as session:
            ids = []
            for conversation, messages, leaf in conversations:
                conversation.user_id = user_id
                session.add(conversation)
                for message, parent in messages:
                    if parent is not None:
                        if parent.id is None:
                            session.flush()  # the parent needs its id
                        message.reply_to_id = parent.id
                    conversation.messages.append(message)
                session.flush()
                conversation.leaf_id = None if leaf is None else leaf.id
                ids.append(conversation.id)
            return ids

    @staticmethod
    def _owned(session: Session, user_id: int, conversation_id: str) -> Conversation:
        conversation = session.get(Conversation, conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise NotFound(f"No conversation {conversation_id}.")
        return conversation
