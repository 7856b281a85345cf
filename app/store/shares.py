"""Shared snapshots of conversations: read-only copies anyone with the link may read.

A share is made from one of the user's conversations as it stands: its title and, for each
exchange, the user's message, the latest version of the reply, how the reply ended and the
model that wrote it. Nothing else of the user goes into it: not their name, not the
conversation's system prompt or settings, not the ids of their conversations. The snapshot
stays as it was when the conversation changes or is deleted, until its owner revokes it.

The token in the link is the only key: 256 random bits (``secrets.token_urlsafe``), looked up
by its SHA-256 (see ``Share``). An unknown, revoked or malformed token reads as ``None``.
Managing shares names the user, and another user's share or conversation is ``NotFound``,
the same as a missing one. Calls are synchronous and short; async callers run them in a
thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import builtins
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.store.accounts import token_hash
from app.store.models import Conversation, Message, Share, as_utc
from app.store.snippets import MAX_ID
from app.store.store import NotFound, Store

TOKEN_BYTES = 32
# What token_urlsafe makes; anything else names no share and is never looked up.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")
REPLY_STATUSES = frozenset({"stop", "length", "stopped", "interrupted"})


@dataclass(frozen=True)
class SharedExchange:
    user: str
    reply: str | None  # None: the message had no reply
    status: str | None  # how the reply ended: stop, length, stopped or interrupted
    model: str | None


@dataclass(frozen=True)
class ShareSummary:
    id: int
    token: str
    title: str
    conversation_id: str | None  # None once the conversation is deleted
    created_at: datetime


@dataclass(frozen=True)
class SharedConversation:
    """What the link shows: the snapshot, and nothing of its owner."""

    title: str
    created_at: datetime
    exchanges: list[SharedExchange]


class Shares:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, user_id: int, conversation_id: str) -> ShareSummary:
        """A new share of the user's conversation as it stands.

        Raises ``NotFound`` when the conversation is not one of the user's (or is deleted
        meanwhile).
        """
        record = self.store.get_conversation(user_id, conversation_id)
        exchanges = [
            SharedExchange(exchange.user, None, None, None) if exchange.reply is None
            else SharedExchange(
                exchange.user, exchange.reply.content, _finished(exchange.reply.status),
                exchange.reply.model,
            )
            for exchange in record.exchanges
        ]
        token = secrets.token_urlsafe(TOKEN_BYTES)
        share = Share(
            user_id=user_id, conversation_id=conversation_id, token=token,
            token_hash=token_hash(token), title=record.title,
            snapshot=[asdict(exchange) for exchange in exchanges],
        )
        try:
            with self.store.transaction() as session:
                session.add(share)
                session.flush()
                return _summary(share)
        except IntegrityError as err:  # the conversation went away meanwhile
            raise NotFound(f"No conversation {conversation_id}.") from err

    def list(self, user_id: int) -> builtins.list[ShareSummary]:
        """The user's shares, newest first."""
        query = (
            select(Share).where(Share.user_id == user_id)
            .order_by(Share.created_at.desc(), Share.id.desc())
        )
        with self.store.transaction() as session:
            return [_summary(share) for share in session.scalars(query)]

    def revoke(self, user_id: int, share_id: int) -> None:
        """Delete the user's share: its link stops working at once.

        Raises ``NotFound`` when it is not one of the user's shares.
        """
        if not 0 < share_id <= MAX_ID:
            raise NotFound(f"No share {share_id}.")
        with self.store.transaction() as session:
            result = session.execute(
                delete(Share).where(Share.id == share_id, Share.user_id == user_id)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound(f"No share {share_id}.")

    def read(self, token: str) -> SharedConversation | None:
        """The snapshot behind ``token``; ``None`` when no share has it (unknown, revoked, or
        not shaped like a token)."""
        if not TOKEN_SHAPE.fullmatch(token):
            return None
        with self.store.transaction() as session:
            share = session.scalar(select(Share).where(Share.token_hash == token_hash(token)))
            if share is None:
                return None
            return SharedConversation(
                title=share.title, created_at=as_utc(share.created_at),
                exchanges=[SharedExchange(**item) for item in share.snapshot],
            )

    def import_into(self, user_id: int, token: str) -> str:
        """A new conversation of the user's holding the snapshot behind ``token``, an ordinary
        one that can be continued; returns its id.

        Raises ``NotFound`` when no share has the token.
        """
        shared = self.read(token)
        if shared is None:
            raise NotFound("No shared conversation at that link; it may have been revoked.")
        models = [exchange.model for exchange in shared.exchanges if exchange.model]
        conversation = Conversation(title=shared.title, model=models[-1] if models else None)
        # One branch: each message follows the one before it (app.store.models).
        messages: builtins.list[tuple[Message, Message | None]] = []
        last: Message | None = None
        for exchange in shared.exchanges:
            asked = Message(role="user", content=exchange.user)
            messages.append((asked, last))
            last = asked
            if exchange.reply is not None:
                last = Message(
                    role="assistant", content=exchange.reply, status=exchange.status,
                    model=exchange.model,
                )
                messages.append((last, asked))
        [added] = self.store.add_conversations(user_id, [(conversation, messages, last)])
        return added


def _finished(status: str) -> str:
    """A reply still streaming when shared is shown, and imported, as interrupted."""
    return status if status in REPLY_STATUSES else "interrupted"


def _summary(share: Share) -> ShareSummary:
    return ShareSummary(
        id=share.id, token=share.token, title=share.title,
        conversation_id=share.conversation_id, created_at=as_utc(share.created_at),
    )
