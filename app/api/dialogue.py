"""One API turn, on the page's own path (``app.chat.turns``) so that it behaves the same.

The reply runs on the server (``app.chat.replies``), apart from the request that asked for it:
a client that goes away leaves it running, to be read again with ``GET
/api/v1/dialogues/{id}/stream``, unless it asked otherwise (``stop_on_disconnect``) or
``REPLY_KEEPS_RUNNING`` is off. Then it sets the exchange's ``stop`` event, as the page's Stop
button does, so the upstream stream is closed and the reply is stored as ``stopped``.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from fastapi import Request

from app.api.errors import ApiError, error_responses
from app.api.models import (
    AttachmentOut,
    CheckOut,
    DialogueIn,
    DialogueOut,
    DialogueSummary,
    ExchangeOut,
    MessageIn,
    MessageOut,
    MessagesOut,
    ReplyOut,
    RunOut,
    StatsOut,
    TreeOut,
)
from app.chat import Chat, ChatService, TurnStats
from app.chat.conversations import Conversations, NotFound
from app.chat.guard import Guard
from app.chat.log import ReplyLog, waiting_notice
from app.chat.models import FINISH_TEXT
from app.chat.replies import LiveReply
from app.chat.turns import Turn, TurnRefused, TurnRequest, Turns
from app.events import event
from app.settings import Settings
from app.store import (
    ConversationRecord,
    ConversationTree,
    Store,
    StoredExchange,
    StoredReply,
)

SSE = "text/event-stream"
# What a 200 of an endpoint that streams on request holds (its OpenAPI description).
ON_REQUEST = ("With stream=true or Accept: text/event-stream: `data: {json}` events, see the "
              "`stream` field.")


def streamed_responses(description: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """An endpoint's ``responses`` for OpenAPI: server-sent events at 200 (``description``),
    and each of ``statuses`` an error's body."""
    events = {"schema": {"type": "string", "description": description}}
    return {200: {"content": {SSE: events}}, **error_responses(*statuses)}
# The fields of DialogueIn kept with the conversation, under the page's names for them.
STORED_CONTROLS = ("max_new_tokens", "temperature", "top_p", "seed", "model")


# Ids the store hands out are hex; anything far from that shape is simply not found (and
# never reaches a database that might refuse its characters, like PostgreSQL a NUL).
ID_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def not_found(dialogue_id: str) -> ApiError:
    return ApiError(404, f"No dialogue {dialogue_id!r} among yours.")


@contextmanager
def yours(dialogue_id: str) -> Iterator[str]:
    """The id, for a block that reads or changes that dialogue: one that is not the user's,
    not there, or whose id could not be one, answers 404 (and an id far from the store's
    shape never reaches the database)."""
    if not ID_SHAPE.fullmatch(dialogue_id):
        raise not_found(dialogue_id)
    try:
        yield dialogue_id
    except NotFound as err:
        raise not_found(dialogue_id) from err


def stats_out(stats: TurnStats | None) -> StatsOut | None:
    if stats is None:
        return None
    return StatsOut(
        tokens=stats.tokens, time_to_first_token=stats.time_to_first_token,
        tokens_per_second=stats.tokens_per_second, finish=stats.finish,
    )


def stored_stats(reply: StoredReply) -> StatsOut | None:
    """A stored reply's stats, once it has ended (none for a user message)."""
    finish = reply.status if reply.status in FINISH_TEXT else None
    return None if finish is None else StatsOut(
        tokens=reply.tokens or 0, time_to_first_token=reply.time_to_first_token,
        tokens_per_second=reply.tokens_per_second, finish=finish,
    )


def attachments_out(attachments: Sequence[dict[str, str]]) -> list[AttachmentOut]:
    return [
        AttachmentOut(name=a["name"], language=a["language"], size=len(a["text"].encode()),
                      content=a["text"])
        for a in attachments
    ]


def runs_out(runs: Mapping[str, Mapping[str, Any]] | None) -> list[RunOut]:
    """A reply's runs as kept (``app.chat.checks``: by the block's index), in block order."""
    return [RunOut(block=int(block), **run)
            for block, run in sorted((runs or {}).items(), key=lambda item: int(item[0]))]


def check_out(check: Mapping[str, Any] | None) -> CheckOut | None:
    return None if check is None else CheckOut.model_validate(check)


def exchange_out(stored: StoredExchange) -> ExchangeOut:
    reply = stored.reply
    attachments = attachments_out(stored.attachments)
    if reply is None:
        return ExchangeOut(user_message_id=stored.user_message_id, user=stored.user,
                           attachments=attachments, reply=None)
    return ExchangeOut(
        user_message_id=stored.user_message_id, user=stored.user, attachments=attachments,
        reply=ReplyOut(
            id=reply.id, content=reply.content, status=reply.status, error=reply.error,
            stats=stored_stats(reply), model=reply.model, backend=reply.backend,
            runs=runs_out(reply.runs), check=check_out(reply.check),
        ),
    )


def tree_out(tree: ConversationTree) -> TreeOut:
    return TreeOut(
        dialogue_id=tree.id, title=tree.title, system_prompt=tree.system_prompt,
        leaf_id=tree.leaf_id, messages=[
            MessageOut(
                id=m.id, role=m.role, parent_id=m.parent_id, content=m.content,
                attachments=attachments_out(m.attachments), status=m.status, error=m.error,
                stats=stored_stats(m), model=m.model, backend=m.backend,
                runs=runs_out(m.runs), check=check_out(m.check),
            )
            for m in tree.messages
        ],
    )


class Dialogues:
    """The dialogues of the API's users: one turn on the page's own path (``Turns``), the
    reply followed as server-sent events or waited for, and the user's conversations read
    and deleted through ``Conversations``, as the page does."""

    def __init__(
        self, settings: Settings, service: ChatService, store: Store, guard: Guard
    ) -> None:
        self.settings = settings
        self.store = store
        self.replies = service.replies
        self.turns = Turns(service, guard)

    def of(self, user_id: int) -> Conversations:
        return Conversations(self.store, user_id)

    async def start(self, user_id: int, body: DialogueIn) -> Turn:
        """Check the request, store the message and start the reply.

        Raises ``ApiError``: 404 for a dialogue that is not the user's, 422 for a message
        refused (empty, too long, too long for the context, a setting the backend refuses),
        429 over the rate limit (with Retry-After) or with too many replies of the user's
        running, 503 when the backend does not answer or the process writes as many replies
        as it takes (with Retry-After). Nothing is stored when it raises.
        """
        mine, chat, asked = await self.asked(user_id, body)
        with refusals(chat):
            return await self.turns.start(mine, chat, asked)

    async def asked(
        self, user_id: int, body: MessageIn
    ) -> tuple[Conversations, Chat, TurnRequest]:
        """The user's conversations, the one ``body`` continues (a new one without
        ``dialogue_id``), and what it asks; ``ApiError`` 404 for a dialogue not the user's."""
        mine = self.of(user_id)
        record: ConversationRecord | None = None
        chat = Chat()
        if body.dialogue_id is not None:
            with yours(body.dialogue_id) as dialogue_id:
                record, chat = await mine.open(dialogue_id)
        given = {
            name: value for name in STORED_CONTROLS
            if (value := getattr(body, name, None)) is not None
        }
        asked = TurnRequest.to(
            record, body.message, body.system_prompt, given, self.settings.system_prompt,
            # Text that is not UTF-8 (a lone surrogate) stays so, to be refused as binary.
            [(a.name, a.content.encode(errors="surrogatepass")) for a in body.attachments],
        )
        return mine, chat, asked

    def stopped_by(self, body: MessageIn, request: Request) -> Request | None:
        """The request whose client, going away, stops the reply it asked for; None when the
        reply goes on without it."""
        stops = body.stop_on_disconnect or not self.settings.reply_keeps_running
        return request if stops else None

    async def reply(self, turn: Turn, stop_if_gone: Request | None) -> DialogueOut:
        """Wait for the whole reply; the client of ``stop_if_gone`` going away first stops
        it."""
        live = turn.live
        assert live.task is not None
        with followed(stop_if_gone, live):
            await asyncio.shield(live.task)
        exchange = live.exchange
        return DialogueOut(
            dialogue_id=live.conversation_id, message_id=exchange.reply_id,
            reply=exchange.reply, stats=stats_out(exchange.stats), error=exchange.error,
        )

    @staticmethod
    async def events(
        live: LiveReply, offset: int = 0, stop_if_gone: Request | None = None,
    ) -> AsyncIterator[bytes]:
        """Server-sent events: the dialogue and reply ids, the reply's text from ``offset``
        (code points, ``app.chat.log``) on as it comes, then the end with the stats. The
        client of ``stop_if_gone`` going away stops the reply."""
        exchange = live.exchange
        with followed(stop_if_gone, live):
            async for sent in _events(live.conversation_id, exchange.reply_id, exchange.log,
                                      offset):
                yield sent
            yield event(ending(exchange.reply_id, stats_out(exchange.stats), exchange.error))

    @staticmethod
    async def stored_events(
        dialogue_id: str, stored: StoredExchange, offset: int
    ) -> AsyncIterator[bytes]:
        """The events of ``events`` for a reply that has ended (or whose process stopped)."""
        reply = exchange_out(stored).reply
        log = ReplyLog(reply.content if reply is not None else "")
        log.end()
        async for sent in _events(dialogue_id, reply.id if reply else None, log, offset):
            yield sent
        yield event(ending(reply.id if reply else None, reply.stats if reply else None,
                           reply.error if reply else None))

    async def follow(self, user_id: int, dialogue_id: str) -> LiveReply | StoredExchange:
        """The reply of the dialogue being written now (of a comparison's two, the one on
        screen: its right side), or else its last stored exchange.

        Raises ``ApiError`` 404 for a dialogue that is not the user's, or one without a
        message yet; 409 for a reply that another process is writing.
        """
        with yours(dialogue_id):
            running = self.replies.running(user_id, dialogue_id)
            if running:
                return running[-1]
            record = await self.of(user_id).record(dialogue_id)
        if not record.exchanges:
            raise ApiError(404, f"The dialogue {dialogue_id!r} has no message yet.")
        last = record.exchanges[-1]
        if last.reply is not None and last.reply.status == "streaming":
            raise ApiError(409, "Another app process is writing this reply (or stopped while "
                           "it did): follow it there (behind the scale-out proxy, send its "
                           "route cookie), or read it with GET /messages.")
        return last

    async def stop(self, user_id: int, dialogue_id: str) -> bool:
        """Stop the dialogue's replies being written (one, or a comparison's two), if any,
        and wait until they have ended: stored as stopped, their places among the running
        replies given back (a client that sends again at once is not refused for it).
        Returns whether one was running."""
        with yours(dialogue_id):
            running = self.replies.running(user_id, dialogue_id)
        _stop(running)
        tasks = {live.task for live in running if live.task is not None}
        if tasks:
            await asyncio.wait(tasks)  # a client leaving does not cancel the replies
        return bool(running)

    async def listed(self, user_id: int, search: str, limit: int) -> list[DialogueSummary]:
        """The user's dialogues, newest first."""
        found = await self.of(user_id).summaries(search, limit)
        return [DialogueSummary(id=c.id, title=c.title, updated_at=c.updated_at)
                for c in found]

    async def messages(self, user_id: int, dialogue_id: str, tree: bool) -> MessagesOut | TreeOut:
        """The branch on screen of the dialogue, or with ``tree`` every message of it."""
        with yours(dialogue_id):
            if tree:
                return tree_out(await self.of(user_id).tree(dialogue_id))
            record = await self.of(user_id).record(dialogue_id)
        return MessagesOut(
            dialogue_id=record.id, title=record.title, system_prompt=record.system_prompt,
            exchanges=[exchange_out(e) for e in record.exchanges],
        )

    async def delete(self, user_id: int, dialogue_id: str) -> None:
        with yours(dialogue_id):
            await self.of(user_id).delete(dialogue_id)


async def _events(
    dialogue_id: str, reply_id: int | None, log: ReplyLog, offset: int
) -> AsyncIterator[bytes]:
    """The ids, then the text of ``log`` past ``offset`` as it comes, until the log ends;
    before the first text, a ``waiting`` event each time the reply waits for a slot."""
    yield event({"dialogue_id": dialogue_id, "message_id": reply_id})
    async for piece in pieces(log, offset):
        yield event(piece)


async def pieces(log: ReplyLog, offset: int = 0) -> AsyncIterator[dict[str, Any]]:
    """The events of a reply's text past ``offset`` as it comes, until its log ends:
    ``{"delta"}``, and before the first text ``{"waiting", "notice"}`` each time the reply
    waits for a slot."""
    async for piece in log.chunks(offset):
        if piece.text:
            yield {"delta": piece.text}
        elif (before := log.waiting) is not None:
            yield {"waiting": before, "notice": waiting_notice(before)}


def ending(message_id: int | None, stats: StatsOut | None, error: str | None) -> dict[str, Any]:
    """The event that ends a reply."""
    return {"done": True, "message_id": message_id,
            "stats": None if stats is None else stats.model_dump(), "error": error}


@contextmanager
def refusals(chat: Chat) -> Iterator[None]:
    """A turn refused (``TurnRefused``) as the API answers it, with Retry-After where it
    helps; the conversation of ``chat`` deleted meanwhile as a 404."""
    try:
        yield
    except TurnRefused as err:
        headers = None
        if err.retry_after is not None:
            headers = {"Retry-After": str(math.ceil(err.retry_after))}
        raise ApiError(err.status, str(err), headers=headers) from err
    except NotFound as err:
        raise not_found(chat.id or "") from err


@contextmanager
def followed(stop_if_gone: Request | None, *lives: LiveReply) -> Iterator[None]:
    """A block that follows ``lives`` for the client of ``stop_if_gone`` (None: a client
    whose going away changes nothing): that client going away (the request's body is
    already read), or the block ending before the replies have (closed or cancelled: the
    client is gone), stops them."""
    if stop_if_gone is None:
        yield
        return
    request = stop_if_gone

    async def stop_when_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        _stop(lives)

    gone = asyncio.ensure_future(stop_when_gone())
    try:
        yield
    finally:
        gone.cancel()
        _stop(lives)


def _stop(lives: Sequence[LiveReply]) -> None:
    for live in lives:
        if not live.done:
            live.stop()
