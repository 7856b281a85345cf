"""One API turn, on the page's own path (``app.chat.turns``) so that it behaves the same.

The reply runs in a task of its own, apart from the request that asked for it: a client that
goes away sets the exchange's ``stop`` event, as the page's Stop button does, so the upstream
stream is closed and the reply is stored as ``stopped`` rather than left streaming.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.sse import format_sse_event

from app.api.errors import ApiError
from app.api.models import (
    DialogueIn,
    DialogueOut,
    ExchangeOut,
    MessageOut,
    ReplyOut,
    StatsOut,
    TreeOut,
)
from app.chat import Chat, ChatService, Exchange, TurnStats
from app.chat.guard import Guard
from app.chat.history import History
from app.chat.models import FINISH_TEXT
from app.chat.turns import Turn, TurnRefused, TurnRequest, Turns
from app.settings import Settings
from app.store import (
    ConversationRecord,
    ConversationTree,
    NotFound,
    Store,
    StoredExchange,
    StoredMessage,
    StoredReply,
)

log = logging.getLogger(__name__)

FAILED_ON_SERVER = "The reply failed on the server; the details are in its log."
# The fields of DialogueIn kept with the conversation, under the page's names for them.
STORED_CONTROLS = ("max_new_tokens", "temperature", "top_p", "seed", "model")


# Ids the store hands out are hex; anything far from that shape is simply not found (and
# never reaches a database that might refuse its characters, like PostgreSQL a NUL).
ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def not_found(dialogue_id: str) -> ApiError:
    return ApiError(404, f"No dialogue {dialogue_id!r} among yours.")


def check_id(dialogue_id: str) -> str:
    """The id, if it could be one; raises the 404 of a missing dialogue otherwise."""
    if not ID_SHAPE.fullmatch(dialogue_id):
        raise not_found(dialogue_id)
    return dialogue_id


def stats_out(stats: TurnStats | None) -> StatsOut | None:
    if stats is None:
        return None
    return StatsOut(
        tokens=stats.tokens, time_to_first_token=stats.time_to_first_token,
        tokens_per_second=stats.tokens_per_second, finish=stats.finish,
    )


def stored_stats(reply: StoredReply | StoredMessage) -> StatsOut | None:
    """A stored reply's stats, once it has ended (none for a user message)."""
    finish = reply.status if reply.status in FINISH_TEXT else None
    return None if finish is None else StatsOut(
        tokens=reply.tokens or 0, time_to_first_token=reply.time_to_first_token,
        tokens_per_second=reply.tokens_per_second, finish=finish,
    )


def exchange_out(stored: StoredExchange) -> ExchangeOut:
    reply = stored.reply
    if reply is None:
        return ExchangeOut(user_message_id=stored.user_message_id, user=stored.user, reply=None)
    return ExchangeOut(
        user_message_id=stored.user_message_id, user=stored.user,
        reply=ReplyOut(
            id=reply.id, content=reply.content, status=reply.status, error=reply.error,
            stats=stored_stats(reply), model=reply.model, backend=reply.backend,
        ),
    )


def tree_out(tree: ConversationTree) -> TreeOut:
    return TreeOut(
        dialogue_id=tree.id, title=tree.title, system_prompt=tree.system_prompt,
        leaf_id=tree.leaf_id, messages=[
            MessageOut(
                id=m.id, role=m.role, parent_id=m.parent_id, content=m.content,
                status=m.status, error=m.error, stats=stored_stats(m), model=m.model,
                backend=m.backend,
            )
            for m in tree.messages
        ],
    )


@dataclass
class Running:
    """A reply on its way: the turn, the task writing it, and an event set at each update."""

    turn: Turn
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def exchange(self) -> Exchange:
        return self.turn.exchange

    @property
    def dialogue_id(self) -> str:
        assert self.turn.chat.id is not None, "a started turn has a stored conversation"
        return self.turn.chat.id

    def output(self) -> DialogueOut:
        return DialogueOut(
            dialogue_id=self.dialogue_id, message_id=self.exchange.reply_id,
            reply=self.exchange.reply, stats=stats_out(self.exchange.stats),
            error=self.exchange.error,
        )


class Dialogues:
    def __init__(
        self, settings: Settings, service: ChatService, store: Store, guard: Guard
    ) -> None:
        self.settings = settings
        self.store = store
        self.turns = Turns(service, guard)
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, user_id: int, body: DialogueIn) -> Running:
        """Check the request, store the message and start the reply.

        Raises ``ApiError``: 404 for a dialogue that is not the user's, 422 for a message
        refused (empty, too long, too long for the context, a setting the backend refuses),
        429 over the rate limit (with Retry-After), 503 when the backend does not answer.
        Nothing is stored when it raises.
        """
        history = History(self.store, user_id)
        record: ConversationRecord | None = None
        chat = Chat()
        if body.dialogue_id is not None:
            try:
                record, chat = await history.open(check_id(body.dialogue_id))
            except NotFound as err:
                raise not_found(body.dialogue_id) from err
        given = {
            name: value for name in STORED_CONTROLS
            if (value := getattr(body, name)) is not None
        }
        if body.system_prompt is not None:
            system_prompt = body.system_prompt
        else:
            system_prompt = record.system_prompt if record else self.settings.system_prompt
        asked = TurnRequest(
            body.message, system_prompt, {**(record.settings if record else {}), **given},
            record.language if record else None,
        )
        try:
            turn = await self.turns.start(history, chat, asked)
        except TurnRefused as err:
            headers = None
            if err.retry_after is not None:
                headers = {"Retry-After": str(math.ceil(err.retry_after))}
            raise ApiError(err.status, str(err), headers=headers) from err
        except NotFound as err:  # deleted meanwhile
            raise not_found(chat.id or "") from err
        running = Running(turn)
        running.task = asyncio.create_task(
            self._run(running, history), name=f"reply {turn.exchange.reply_id}",
        )
        self._running.add(running.task)
        running.task.add_done_callback(self._running.discard)
        return running

    async def _run(self, running: Running, history: History) -> None:
        exchange = running.exchange
        try:
            async with aclosing(self.turns.stream(history, running.turn)) as updates:
                async for _ in updates:
                    running.changed.set()
        except Exception:
            # Backend errors end the reply inside stream_and_save; this is anything else
            # (or a backend error re-raised under DEBUG): log it, store what there is.
            log.exception("Reply %s failed", exchange.reply_id)
            exchange.error = FAILED_ON_SERVER
            if not exchange.done:
                await history.save_final(exchange)
                exchange.done = True
        finally:
            running.changed.set()

    async def reply(self, turn: Running, request: Request) -> DialogueOut:
        """Wait for the whole reply; a client that goes away first stops it."""
        assert turn.task is not None
        gone = asyncio.ensure_future(_stop_when_gone(request, turn.exchange.stop))
        try:
            await asyncio.shield(turn.task)
        except asyncio.CancelledError:
            turn.exchange.stop.set()
            raise
        finally:
            gone.cancel()
        return turn.output()

    async def events(self, turn: Running, request: Request) -> AsyncIterator[bytes]:
        """Server-sent events: the dialogue id, the reply's new text as it comes, then the
        end with the stats. A client that goes away stops the reply."""
        assert turn.task is not None
        gone = asyncio.ensure_future(_stop_when_gone(request, turn.exchange.stop))
        try:
            yield _event({"dialogue_id": turn.dialogue_id})
            sent = 0
            while True:
                await turn.changed.wait()
                turn.changed.clear()
                text = turn.exchange.reply
                if len(text) > sent:
                    yield _event({"delta": text[sent:]})
                    sent = len(text)
                if turn.task.done():
                    break
            exchange = turn.exchange
            stats = stats_out(exchange.stats)
            yield _event({
                "done": True, "message_id": exchange.reply_id,
                "stats": None if stats is None else stats.model_dump(), "error": exchange.error,
            })
        finally:
            # Cancelled or closed before the end: the client is gone; stop the reply.
            if not turn.task.done():
                turn.exchange.stop.set()
            gone.cancel()


def _event(payload: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(payload))


async def _stop_when_gone(request: Request, stop: asyncio.Event) -> None:
    """Set ``stop`` once the client has gone away (the request's body is already read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    stop.set()
