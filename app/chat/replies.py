"""Replies that run on the server, apart from the page or the request that asked for them.

A reply is a task of its own (``app.chat.turns.write``) that streams into its exchange's log
and saves it (``Conversations``); pages and API clients *follow* it: each reads the log from
where it is (``ReplyLog.chunks``) until it ends. Reloading a page, or opening the conversation
in another tab or on another device, just follows the reply again; Stop in any of them sets
the exchange's ``stop`` event, which ends it for all. With ``REPLY_KEEPS_RUNNING`` on (the
default), a reply nobody follows any more goes on until it ends and is stored; off, a follower
that goes away stops it, as the page did before.

Running replies are counted per process here (``MAX_RUNNING_REPLIES``: this process's
capacity) and per user in the database, across every replica (``Guard.hold``:
``MAX_RUNNING_REPLIES_PER_USER``), so that replies that outlive their pages cannot pile up.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.chat.models import Chat, Exchange
from app.settings import Settings

log = logging.getLogger(__name__)

FAILED_ON_SERVER = "The reply failed on the server; the details are in its log."
# Seconds a client over the process's limit is asked to wait before it tries again.
RETRY_AFTER_SECONDS = 5.0


class TooManyReplies(Exception):
    """Over a limit on running replies; ``str(err)`` says which and what to do."""

    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass(eq=False)
class LiveReply:
    """A reply on its way: its exchange, whose it is, and the task writing it."""

    exchange: Exchange
    user_id: int
    conversation_id: str
    # What a page gives to follow the reply's text (``app.live``): whoever has it may read it,
    # so it is only ever put in the pages of the conversation's owner.
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        """Ended and stored: its log has ended."""
        return self.exchange.log.ended

    def stop(self) -> None:
        self.exchange.stop.set()


class Replies:
    def __init__(self, settings: Settings) -> None:
        self.keeps_running = settings.reply_keeps_running
        self.max_running = settings.max_running_replies
        self._by_reply: dict[int, LiveReply] = {}
        self._by_key: dict[str, LiveReply] = {}
        self._starting = 0

    @contextmanager
    def admitting(self) -> Iterator[None]:
        """Hold a place in this process for a reply while it starts (``run`` takes it over),
        or while a call of the model that is not stored runs (``Turns.calling``: the raw
        prompt, a refinement); raises ``TooManyReplies`` over the process's limit."""
        if len(self._by_reply) + self._starting >= self.max_running:
            raise TooManyReplies(
                f"The server is writing {self.max_running} replies, the most it takes at "
                "once; try again in a moment.", 503, RETRY_AFTER_SECONDS,
            )
        self._starting += 1
        try:
            yield
        finally:
            self._starting -= 1

    def run(
        self, exchange: Exchange, user_id: int, conversation_id: str,
        writing: Coroutine[Any, Any, None],
    ) -> LiveReply:
        """Start the task that runs ``writing`` (``app.chat.turns.write``: the reply streaming
        into ``exchange``), and end the exchange's log once it has run."""
        assert exchange.reply_id is not None, "a started reply is stored"
        live = LiveReply(exchange, user_id, conversation_id)
        live.task = asyncio.create_task(
            self._drive(live, writing), name=f"reply {exchange.reply_id}"
        )
        self._by_reply[exchange.reply_id] = self._by_key[live.key] = live
        exchange.live = live.key
        return live

    async def _drive(self, live: LiveReply, writing: Awaitable[None]) -> None:
        exchange = live.exchange
        try:
            await writing
        except Exception:
            # Backend errors end the reply inside it; this is anything else (or a backend
            # error re-raised under DEBUG): log it and show it. The reply was saved as it
            # ended (``write`` saves in any case).
            log.exception("Reply %s failed", exchange.reply_id)
            exchange.error = FAILED_ON_SERVER
        finally:
            assert exchange.reply_id is not None
            del self._by_reply[exchange.reply_id], self._by_key[live.key]
            exchange.live = None
            exchange.log.end()

    def running(self, user_id: int, conversation_id: str) -> list[LiveReply]:
        """The replies of the user's conversation being written, oldest first: one, or a
        comparison's two (the newer one, its right side, is the one on screen)."""
        return [live for live in self._by_reply.values()
                if live.user_id == user_id and live.conversation_id == conversation_id]

    def by_key(self, key: str) -> LiveReply | None:
        """The reply being written whose key is ``key``, if any."""
        return self._by_key.get(key)

    def attach(self, chat: Chat) -> LiveReply | None:
        """Put the live exchange of a reply still being written in place of its stored copy
        in ``chat`` (one of the user's, just opened), so that the tab shows it grow and its
        Stop stops it; returns that reply."""
        for index, exchange in enumerate(chat.exchanges):
            live = self._by_reply.get(exchange.reply_id) if exchange.reply_id else None
            if live is not None and not live.done:
                chat.exchanges[index] = live.exchange
                return live
        return None

    async def aclose(self) -> None:
        """Stop every running reply and wait until each is stored (the app stops)."""
        running = list(self._by_reply.values())
        for live in running:
            live.stop()
        await asyncio.gather(*(live.task for live in running if live.task is not None),
                             return_exceptions=True)

