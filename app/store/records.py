"""What the store hands out: frozen records of conversations and their messages, read from
the rows as a tree (``Tree``). Nothing here opens a session; ``app.store.store`` does."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.store.models import Conversation, Message, as_utc


@dataclass(frozen=True)
class BegunTurn:
    """What ``Store.begin_turn`` stored: the conversation, the message answered, the reply,
    and the alternatives of each (as in ``StoredExchange``)."""

    conversation_id: str
    user_message_id: int
    reply_id: int
    user_alternatives: tuple[int, ...]
    reply_alternatives: tuple[int, ...]


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    title: str
    updated_at: datetime


@dataclass(frozen=True)
class StoredReply:
    """A message as stored: its text, its status (``complete`` for a user message; a reply's
    is ``streaming`` until it ends as ``stop``, ``length``, ``stopped`` or ``interrupted``),
    and a reply's error, stats, the runs of its code blocks and its check (``app.chat.checks``
    says what they hold)."""

    id: int
    content: str
    status: str
    error: str | None
    tokens: int | None
    time_to_first_token: float | None
    tokens_per_second: float | None
    model: str | None
    backend: str | None
    runs: dict[str, dict[str, Any]] | None = None
    check: dict[str, Any] | None = None

    @classmethod
    def of(cls, message: Message, hidden: Collection[int] = ()) -> StoredReply:
        return cls(**_reply_fields(message, hidden))


@dataclass(frozen=True, kw_only=True)
class StoredMessage(StoredReply):
    """One message of a conversation's tree, of either role; ``parent_id`` is None for a
    first message, ``attachments`` are a user message's files (as in ``StoredExchange``)."""

    role: str
    parent_id: int | None
    attachments: tuple[dict[str, str], ...] = ()

    @classmethod
    def of(cls, message: Message, hidden: Collection[int] = ()) -> StoredMessage:
        return cls(
            **_reply_fields(message, hidden), role=message.role, parent_id=message.reply_to_id,
            attachments=tuple(message.attachments or ()),
        )


def _reply_fields(message: Message, hidden: Collection[int]) -> dict[str, Any]:
    """The message's fields, its model and backend None where it is among ``hidden``."""
    shown = message.id not in hidden
    return {
        "id": message.id, "content": message.content, "status": message.status,
        "error": message.error, "tokens": message.tokens,
        "time_to_first_token": message.time_to_first_token,
        "tokens_per_second": message.tokens_per_second,
        "model": message.model if shown else None, "backend": message.backend if shown else None,
        "runs": message.runs, "check": message.check,
    }


@dataclass(frozen=True)
class StoredExchange:
    """A user message and its reply on the branch on screen, each with its alternatives: the
    ids, oldest first and itself among them, of the user messages that follow the same message
    (edits), and of the replies to the same message (retries)."""

    user_message_id: int
    user: str
    reply: StoredReply | None
    user_alternatives: tuple[int, ...] = ()
    reply_alternatives: tuple[int, ...] = ()
    attachments: tuple[dict[str, str], ...] = ()  # each {"name", "language", "text"}


@dataclass(frozen=True)
class ConversationTree:
    """Every message of a conversation, in id order, and the last one of the branch on
    screen (None for a conversation without messages)."""

    id: str
    title: str
    system_prompt: str
    leaf_id: int | None
    messages: list[StoredMessage]


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


class Tree:
    """The messages of one conversation (in id order) as a tree."""

    def __init__(self, messages: Sequence[Message]) -> None:
        self.by_id = {message.id: message for message in messages}
        self.children: defaultdict[int | None, list[Message]] = defaultdict(list)
        for message in messages:
            self.children[message.reply_to_id].append(message)

    def alternatives(self, message: Message) -> tuple[int, ...]:
        return tuple(
            m.id for m in self.children[message.reply_to_id] if m.role == message.role
        )

    def newest_below(self, message: Message) -> Message:
        """The end of the branch that goes on from ``message`` by the newest child."""
        while self.children[message.id]:
            message = self.children[message.id][-1]
        return message

    def branch(self, leaf_id: int | None) -> list[Message]:
        """The messages from the first one to ``leaf_id``; for a leaf that is None or not
        here, the newest child at each step."""
        leaf = self.by_id.get(leaf_id) if leaf_id is not None else None
        if leaf is None and self.children[None]:
            leaf = self.newest_below(self.children[None][-1])
        path = []
        while leaf is not None:
            path.append(leaf)
            leaf = self.by_id.get(leaf.reply_to_id) if leaf.reply_to_id is not None else None
        return path[::-1]

    def subtree(self, message: Message) -> set[int]:
        """The ids of ``message`` and everything below it."""
        found, pending = set(), [message]
        while pending:
            current = pending.pop()
            found.add(current.id)
            pending.extend(self.children[current.id])
        return found


def blind_names(
    conversation: Conversation, messages: Sequence[Message], hidden: Collection[int]
) -> tuple[str | None, str | None]:
    """The conversation's model and backend, None while they are those of one of the
    ``hidden`` replies (a blind comparison's before its vote, ``Store.blind_replies``)."""
    if any(m.id in hidden and m.model == conversation.model for m in messages):
        return None, None
    return conversation.model, conversation.backend


def conversation_record(
    conversation: Conversation, messages: Sequence[Message], hidden: Collection[int] = ()
) -> ConversationRecord:
    """The conversation with the exchanges of its branch on screen; ``messages`` are all of
    its messages, in id order; the models and backends of the ``hidden`` replies (and the
    conversation's, when it is theirs) are None."""
    tree = Tree(messages)
    exchanges: list[tuple[Message, Message | None]] = []
    for message in tree.branch(conversation.leaf_id):
        if message.role == "user":
            exchanges.append((message, None))
        elif exchanges:
            exchanges[-1] = (exchanges[-1][0], message)
    model, backend = blind_names(conversation, messages, hidden)
    return ConversationRecord(
        id=conversation.id, title=conversation.title,
        system_prompt=conversation.system_prompt, model=model,
        backend=backend, language=conversation.language,
        settings=dict(conversation.settings or {}), created_at=as_utc(conversation.created_at),
        exchanges=[
            StoredExchange(
                user.id, user.content, None if reply is None else StoredReply.of(reply, hidden),
                tree.alternatives(user),
                tree.alternatives(reply) if reply is not None else (),
                tuple(user.attachments or ()),
            )
            for user, reply in exchanges
        ],
    )


def conversation_tree(
    conversation: Conversation, messages: Sequence[Message], hidden: Collection[int] = ()
) -> ConversationTree:
    """The conversation's every message, on every branch; ``messages`` in id order; the
    models and backends of the ``hidden`` replies are None."""
    branch = Tree(messages).branch(conversation.leaf_id)
    return ConversationTree(
        id=conversation.id, title=conversation.title, system_prompt=conversation.system_prompt,
        leaf_id=branch[-1].id if branch else None,
        messages=[StoredMessage.of(m, hidden) for m in messages],
    )
