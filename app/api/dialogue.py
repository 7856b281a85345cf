"""One API turn, on the page's own path so that storage behaves the same.

``History.open`` (a continued conversation), ``ChatService.backend_info`` and
``ChatService.fit`` before anything is stored; then ``History.begin`` stores the message and an
empty reply, and ``History.stream_and_save`` streams the reply into the exchange, saving it as
it grows and with its stats at the end.

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
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.sse import format_sse_event

from app.api.errors import ApiError
from app.api.models import DialogueIn, DialogueOut, ExchangeOut, ReplyOut, StatsOut
from app.backends import BackendError, BackendInfo, GenerationParams, InvalidSetting
from app.backends.sampling import check
from app.chat import Chat, ChatService, ContextOverflow, Exchange, TurnStats
from app.chat.guard import Guard, MessageRefused
from app.chat.history import History
from app.chat.models import FINISH_TEXT
from app.settings import Settings
from app.store import ConversationRecord, NotFound, Store, StoredExchange

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


def exchange_out(stored: StoredExchange) -> ExchangeOut:
    reply = stored.reply
    if reply is None:
        return ExchangeOut(user_message_id=stored.user_message_id, user=stored.user, reply=None)
    finish = reply.status if reply.status in FINISH_TEXT else None
    stats = None if finish is None else StatsOut(
        tokens=reply.tokens or 0, time_to_first_token=reply.time_to_first_token,
        tokens_per_second=reply.tokens_per_second, finish=finish,
    )
    return ExchangeOut(
        user_message_id=stored.user_message_id, user=stored.user,
        reply=ReplyOut(
            id=reply.id, content=reply.content, status=reply.status, error=reply.error,
            stats=stats, model=reply.model, backend=reply.backend,
        ),
    )


def _number(value: Any) -> float | None:
    """A stored setting as a number, or None when it is not a usable one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def generation_params(
    values: Mapping[str, Any], default_max_new_tokens: int, info: BackendInfo
) -> GenerationParams:
    """Sampling settings from a conversation's settings, read as the page stores them
    (a seed below 0 means random, a top-k of 0 means off, stop sequences one per line).

    Values of the wrong type (an import may carry anything) are left to the defaults; a
    value the backend would refuse raises ``InvalidSetting``.
    """
    numbers = {name: _number(values.get(name)) for name in (
        "max_new_tokens", "temperature", "top_p", "top_k", "seed", "frequency_penalty",
        "presence_penalty", "repetition_penalty",
    )}
    max_new = numbers["max_new_tokens"]
    seed, top_k = numbers["seed"], numbers["top_k"]
    stop = values.get("stop")
    if isinstance(stop, str):
        stops = tuple(line for line in stop.splitlines() if line)
    elif isinstance(stop, list):
        stops = tuple(item for item in stop if isinstance(item, str) and item)
    else:
        stops = ()
    if info.max_stop_sequences is not None:
        stops = stops[: info.max_stop_sequences]
    params = GenerationParams(
        max_new_tokens=int(max_new) if max_new is not None and max_new >= 1
        else default_max_new_tokens,
        temperature=numbers["temperature"],
        top_p=numbers["top_p"],
        top_k=int(top_k) if top_k is not None and top_k >= 1 else None,
        stop=stops,
        seed=int(seed) if seed is not None and 0 <= seed < 2**32 else None,
        frequency_penalty=numbers["frequency_penalty"],
        presence_penalty=numbers["presence_penalty"],
        repetition_penalty=numbers["repetition_penalty"],
    )
    check(info.kind, params)
    return params


@dataclass
class Turn:
    """A reply on its way: the conversation, its new exchange, and the task writing it."""

    chat: Chat
    exchange: Exchange
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def dialogue_id(self) -> str:
        assert self.chat.id is not None, "a started turn has a stored conversation"
        return self.chat.id

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
        self.service = service
        self.store = store
        self.guard = guard
        self._running: set[asyncio.Task[None]] = set()

    async def start(self, user_id: int, body: DialogueIn) -> Turn:
        """Check the request, store the message and start the reply.

        Raises ``ApiError``: 404 for a dialogue that is not the user's, 422 for a message
        refused (empty, too long, too long for the context), 429 over the rate limit (with
        Retry-After), 503 when the backend does not answer. Nothing is stored when it raises.
        """
        text = body.message
        try:
            self.guard.check(user_id, text)
        except MessageRefused as err:
            if err.retry_after is None:
                raise ApiError(422, str(err)) from err
            raise ApiError(
                429, str(err), headers={"Retry-After": str(int(err.retry_after))}
            ) from err
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
        settings = {**(record.settings if record else {}), **given}
        model = settings.get("model")
        try:
            info = await self.service.backend_info(model if isinstance(model, str) else None)
        except BackendError as err:
            if self.settings.debug:
                raise
            if isinstance(model, str) and model not in self.service.models():
                raise ApiError(
                    422, f"No backend offers the model {model!r}; GET /api/v1/models lists "
                    "those on offer."
                ) from err
            raise ApiError(503, str(err)) from err
        try:
            params = generation_params(settings, self.settings.max_new_tokens, info)
        except InvalidSetting as err:
            raise ApiError(422, str(err)) from err
        if body.system_prompt is not None:
            system_prompt = body.system_prompt
        else:
            system_prompt = record.system_prompt if record else self.settings.system_prompt
        try:
            fitted = self.service.fit(
                info, system_prompt, chat.exchanges, text, params.max_new_tokens
            )
        except ContextOverflow as err:
            raise ApiError(422, str(err)) from err
        try:
            exchange = await history.begin(chat, text, info, system_prompt, settings)
        except NotFound as err:  # deleted meanwhile
            raise not_found(chat.id or "") from err
        turn = Turn(chat, exchange)
        turn.task = asyncio.create_task(
            self._run(turn, history, info, fitted.messages, params),
            name=f"reply {exchange.reply_id}",
        )
        self._running.add(turn.task)
        turn.task.add_done_callback(self._running.discard)
        return turn

    async def _run(
        self, turn: Turn, history: History, info: BackendInfo, messages: list[dict[str, str]],
        params: GenerationParams,
    ) -> None:
        exchange = turn.exchange
        try:
            updates = history.stream_and_save(self.service, exchange, info, messages, params)
            async with aclosing(updates):
                async for _ in updates:
                    turn.changed.set()
        except Exception:
            # Backend errors end the reply inside stream_and_save; this is anything else
            # (or a backend error re-raised under DEBUG): log it, store what there is.
            log.exception("Reply %s failed", exchange.reply_id)
            exchange.error = FAILED_ON_SERVER
            if not exchange.done:
                await history.save_final(exchange)
                exchange.done = True
        finally:
            turn.changed.set()

    async def reply(self, turn: Turn, request: Request) -> DialogueOut:
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

    async def events(self, turn: Turn, request: Request) -> AsyncIterator[bytes]:
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
