"""One chat turn, for the page and the REST API alike: check the message, pick the backend,
read the settings, fit the context, store the message with an empty reply, then start the
reply as a task on the server (``app.chat.replies``) that streams it through the router into
its log (``write``), saving it as it grows and with its stats at the end.

``Turns.start`` does everything that can refuse a message before anything is stored, so a
refusal (``TurnRefused``) loses nothing and stores nothing. The page shows a backend that does
not answer inside the conversation instead (``Turns.unanswered``), as a reply that failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from app.backends import BackendError, BackendInfo, GenerationParams, InvalidSetting
from app.backends.raw import RawToken
from app.backends.sampling import check
from app.chat.attachments import (
    Attachment,
    AttachmentRefused,
    drop_advice,
    read_attachments,
    with_attachments,
)
from app.chat.context import ContextOverflow, FittedContext, estimate_tokens
from app.chat.conversations import Conversations, StoreUnavailable
from app.chat.guard import Guard, MessageRefused
from app.chat.languages import LANGUAGE_NAMES, system_prompt_for
from app.chat.models import Chat, Exchange
from app.chat.replies import RETRY_AFTER_SECONDS, LiveReply, TooManyReplies
from app.chat.service import ChatService, Progress
from app.store import ConversationRecord
from app.store.models import kept_settings

# Replies are written to the store at least this often while they stream.
SAVE_INTERVAL_SECONDS = 1.0


class TurnRefused(ValueError):
    """The message cannot be answered now; ``str(err)`` says why and what to do. Nothing was
    stored. ``status`` is the HTTP status the REST API answers with; ``retry_after`` is set
    (seconds) over a rate limit or the process's limit on running replies, or when the
    database does not answer; ``backend_error`` when no backend answers."""

    def __init__(
        self, message: str, status: int = 422, retry_after: float | None = None,
        backend_error: BackendError | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.backend_error = backend_error


@dataclass(frozen=True)
class TurnRequest:
    """What a user asks: the message, the conversation's system prompt and language (None:
    as the conversation has it), its settings by name, kept as the conversation keeps them
    (``app.store.models.kept_settings``: cleaned here, once), and the files attached to the
    message, each a name and its bytes (none: a retry or an edit sends the files of the
    message it answers again or edits)."""

    text: str
    system_prompt: str
    settings: Mapping[str, Any]
    language: str | None = None
    files: Sequence[tuple[str, bytes]] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", kept_settings(self.settings))

    @classmethod
    def to(
        cls, record: ConversationRecord | None, text: str, system_prompt: str | None,
        given: Mapping[str, Any], default_system_prompt: str,
        files: Sequence[tuple[str, bytes]] = (),
    ) -> TurnRequest:
        """A message to ``record`` as it stands (None: a new conversation), as a client sends
        one: its settings kept under those ``given``, its system prompt unless one is given
        (a new one's: ``default_system_prompt``), its language."""
        if system_prompt is None:
            system_prompt = record.system_prompt if record else default_system_prompt
        kept = record.settings if record else {}
        return cls(text, system_prompt, {**kept, **given}, record.language if record else None,
                   files)


@dataclass(frozen=True)
class Call:
    """A call of a model, admitted (``Turns``): where it goes, with which parameters, and the
    messages that fit the context (``fitted``), ending with ``sent``, the user's message as the
    model is sent it. Every stream of a model starts here."""

    service: ChatService
    user_id: int
    info: BackendInfo
    params: GenerationParams
    fitted: FittedContext
    sent: str

    def reply(self, stop: asyncio.Event) -> AsyncGenerator[Progress]:
        """The reply to the messages (``ChatService.stream_reply``)."""
        return self.service.stream_reply(
            self.info, self.fitted.messages, self.params, stop, self.user_id
        )

    def continuation(self, stop: asyncio.Event) -> AsyncGenerator[RawToken]:
        """The tokens that continue ``sent`` as a raw prompt (``ChatService.stream_raw``)."""
        return self.service.stream_raw(self.info, self.sent, self.params, stop)


@dataclass(eq=False)
class Place:
    """A place among the user's running replies (``Guard.hold``; ``id`` None: no such cap),
    given up as the block that admitted it ends, unless a reply takes it over."""

    guard: Guard
    id: int | None
    taken: bool = False

    def take(self, writing: Awaitable[None]) -> Coroutine[Any, Any, None]:
        """``writing`` (a reply), which gives the place up once it has run."""
        self.taken = True
        return self._given_up_after(writing)

    async def _given_up_after(self, writing: Awaitable[None]) -> None:
        try:
            await writing
        finally:
            await self.guard.release(self.id)


@dataclass
class Turn:
    """A reply on its way: the reply running on the server (its exchange at the end of
    ``chat``), where it goes, and how many earlier exchanges were left out to fit the
    context."""

    chat: Chat
    live: LiveReply
    info: BackendInfo
    dropped_exchanges: int = 0
    budget: int = 0

    @property
    def exchange(self) -> Exchange:
        return self.live.exchange


def generation_params(
    settings: Mapping[str, Any], default_max_new_tokens: int, info: BackendInfo
) -> GenerationParams:
    """The generation parameters of a conversation's settings (``kept_settings``), read as
    the page keeps them: a seed below 0 means random, a top-k of 0 means off, stop sequences
    one per line.

    Settings left out are left to the defaults; a value the backend would refuse raises
    ``InvalidSetting`` with what to change.
    """
    numbers = {name: settings.get(name) for name in (
        "temperature", "top_p", "frequency_penalty", "presence_penalty", "repetition_penalty",
    )}
    max_new, seed, top_k = (settings.get(name) for name in ("max_new_tokens", "seed", "top_k"))
    stops = tuple(line for line in settings.get("stop", "").splitlines() if line)
    if info.max_stop_sequences is not None and len(stops) > info.max_stop_sequences:
        raise InvalidSetting(
            f"This backend takes at most {info.max_stop_sequences} stop sequences; "
            f"you gave {len(stops)}. Remove some (one per line)."
        )
    params = GenerationParams(
        max_new_tokens=max_new if max_new is not None and max_new >= 1
        else default_max_new_tokens,
        top_k=top_k if top_k is not None and top_k >= 1 else None,
        stop=stops,
        seed=seed if seed is not None and 0 <= seed < 2**32 else None,
        **numbers,
    )
    check(info.kind, params)
    return params


class Turns:
    def __init__(self, service: ChatService, guard: Guard) -> None:
        self.service = service
        self.guard = guard
        self.settings = service.settings

    async def start(
        self, conversations: Conversations, chat: Chat, request: TurnRequest,
        retried: Exchange | None = None, edited: Exchange | None = None,
    ) -> Turn:
        """Check the message, then store it (a retry answers ``retried``'s message again; the
        store keeps its earlier reply; an edit stores a new version of ``edited``'s message,
        forking the conversation there, and sends only the exchanges before it) with an empty
        reply, and start the reply on the server.

        Raises ``TurnRefused`` with nothing stored: a file refused (422: binary, too big, too
        many), the message refused by the guard (422, or 429 with ``retry_after``), too many
        replies running (429 for the user's, 503 with ``retry_after`` for the process's), no
        backend for the model (503, or 422 for a model nobody offers), a setting the backend
        would refuse or a message too long for its context (422), the database not answering
        (503).
        """
        async with self._admitted(conversations.user_id) as place:
            replaced = edited if edited is not None else retried
            attachments = self.attachments(request, replaced)
            kept = len(chat.exchanges) if replaced is None else chat.exchanges.index(replaced)
            call = await self._prepared(
                conversations.user_id, request, with_attachments(request.text, attachments),
                chat.exchanges[:kept], attachments,
            )
            exchange = await conversations.begin(
                chat, request.text, call.info, request.system_prompt, dict(request.settings),
                retried=retried, language=request.language, edited=edited,
                attachments=attachments,
            )
            return self._run(place, call, conversations, chat, exchange)

    async def compare(
        self, conversations: Conversations, chat: Chat, request: TurnRequest,
        models: tuple[str, str],
    ) -> tuple[Turn, Turn]:
        """One message answered by two models side by side (Compare): each side admitted and
        checked as a message of its own (two places among the user's running replies, two
        messages against the rate), then the message stored with the first model's reply and
        the second's as a retry of it (its sibling, now on screen), and both replies started.
        The conversation keeps the settings of ``request``, not the models compared.

        Raises ``TurnRefused`` as ``start`` does, with nothing stored.
        """
        user_id = conversations.user_id
        async with self._admitted(user_id) as left_place, self._admitted(user_id) as right_place:
            attachments = self.attachments(request, None)
            sent = with_attachments(request.text, attachments)
            left_call, right_call = [
                await self._prepared(
                    user_id, replace(request, settings={**request.settings, "model": model}),
                    sent, chat.exchanges, attachments,
                )
                for model in models
            ]
            begun: list[Exchange] = []
            for call in (left_call, right_call):
                begun.append(await conversations.begin(
                    chat, request.text, call.info, request.system_prompt,
                    dict(request.settings), retried=begun[0] if begun else None,
                    language=request.language, attachments=attachments,
                ))
            return (self._run(left_place, left_call, conversations, chat, begun[0]),
                    self._run(right_place, right_call, conversations, chat, begun[1]))

    def _run(
        self, place: Place, call: Call, conversations: Conversations, chat: Chat,
        exchange: Exchange,
    ) -> Turn:
        """Start the reply of ``exchange`` (just begun in ``chat``) on the server, holding
        ``place`` until it ends."""
        assert chat.id is not None, "a begun turn has a stored conversation"
        writing = place.take(write(call, conversations, exchange))
        live = self.service.replies.run(exchange, conversations.user_id, chat.id, writing)
        return Turn(chat, live, call.info, call.fitted.dropped_exchanges, call.fitted.budget)

    @asynccontextmanager
    async def calling(
        self, user_id: int, request: TurnRequest, sent: str | None = None
    ) -> AsyncIterator[Call]:
        """The door of every other call of a model (the raw prompt, a snippet's refinement):
        what ``start`` checks before it stores anything, for ``request`` (its text is what
        the user wrote; ``sent``, the message the model is sent, by default that text), with
        the user's place among the running replies held until the block ends. Raises
        ``TurnRefused`` as ``start`` does. Stream from the ``Call``: it fails over and is
        measured as a reply is."""
        async with self._admitted(user_id):
            yield await self._prepared(
                user_id, request, request.text if sent is None else sent, (), ()
            )

    @asynccontextmanager
    async def _admitted(self, user_id: int) -> AsyncIterator[Place]:
        """A place among the running replies held for ``user_id``, in this process and among
        the user's across every replica, until the block ends or a reply takes it over
        (``Place.take``); ``TurnRefused`` over a limit (429 for the user's, 503 with
        ``retry_after`` for the process's) or when the database does not answer (503 with
        ``retry_after``)."""
        try:
            with self.service.replies.admitting():
                with _refused_when_store_fails():
                    place = Place(self.guard, await self.guard.hold(user_id))
                try:
                    yield place
                finally:
                    if not place.taken:
                        await self.guard.release(place.id)
        except TooManyReplies as err:
            raise TurnRefused(str(err), err.status, err.retry_after) from err

    async def _prepared(
        self, user_id: int, request: TurnRequest, sent: str, earlier: Sequence[Exchange],
        attachments: tuple[Attachment, ...],
    ) -> Call:
        """The call ``request`` makes, checked: the guard (the text and files the user sent),
        the backend, the parameters, and the context (``sent`` after as many ``earlier``
        exchanges as fit). Raises ``TurnRefused``."""
        try:
            with _refused_when_store_fails():
                await self.guard.check(user_id, request.text, attachments)
        except MessageRefused as err:
            status = 422 if err.retry_after is None else 429
            raise TurnRefused(str(err), status, err.retry_after) from err
        info = await self.backend(request.settings.get("model"))
        try:
            params = generation_params(request.settings, self.settings.max_new_tokens, info)
        except InvalidSetting as err:
            raise TurnRefused(str(err)) from err
        language = request.language if request.language in LANGUAGE_NAMES else None
        try:
            fitted = self.service.fit(
                info, system_prompt_for(request.system_prompt, language), earlier, sent,
                params.max_new_tokens,
            )
        except ContextOverflow as err:
            if attachments and err.excess:
                advice = drop_advice(attachments, err.excess, estimate_tokens)
                raise TurnRefused(f"{err} {advice}") from err
            raise TurnRefused(str(err)) from err
        return Call(self.service, user_id, info, params, fitted, sent)

    def attachments(
        self, request: TurnRequest, replaced: Exchange | None
    ) -> tuple[Attachment, ...]:
        """The files of the message: those of the request, else those of the message a retry
        or an edit replaces. Raises ``TurnRefused`` (422) for a file refused."""
        if not request.files:
            return replaced.attachments if replaced is not None else ()
        try:
            return read_attachments(
                request.files, self.settings.attachment_max_bytes,
                self.settings.attachments_per_message,
            )
        except AttachmentRefused as err:
            raise TurnRefused(str(err)) from err

    async def backend(self, model: Any) -> BackendInfo:
        """Where a reply for ``model`` (not text: the default model) goes; raises
        ``TurnRefused`` (503, or 422 for a model no backend offers) when none answers."""
        wanted = model if isinstance(model, str) and model else None
        try:
            return await self.service.backend_info(wanted)
        except BackendError as err:
            if self.settings.debug:
                raise
            if wanted is not None and wanted not in self.service.models():
                raise TurnRefused(
                    f"No backend offers the model {wanted!r}; GET /api/v1/models lists those "
                    "on offer.", backend_error=err,
                ) from err
            raise TurnRefused(str(err), 503, backend_error=err) from err

    async def unanswered(
        self, conversations: Conversations, chat: Chat, request: TurnRequest, error: TurnRefused,
        retried: Exchange | None = None, edited: Exchange | None = None,
    ) -> Exchange:
        """Keep the message, with a reply that failed for ``error`` (no backend answers): the
        page shows it in the conversation, where Retry can ask again."""
        replaced = edited if edited is not None else retried
        exchange = await conversations.begin(
            chat, request.text, None, request.system_prompt, dict(request.settings),
            retried=retried, language=request.language, edited=edited,
            attachments=self.attachments(request, replaced),
        )
        exchange.error, exchange.done = str(error), True
        await conversations.save_final(exchange)
        return exchange


@contextmanager
def _refused_when_store_fails() -> Iterator[None]:
    """A database that does not answer while a message is admitted (its rate, its place
    among the running replies), as a refusal to try again in a moment (503)."""
    try:
        yield
    except StoreUnavailable as err:
        raise TurnRefused(str(err), 503, RETRY_AFTER_SECONDS) from err


async def write(call: Call, conversations: Conversations, exchange: Exchange) -> None:
    """Stream the reply of ``call`` into ``exchange``'s log; it is saved at least every
    ``SAVE_INTERVAL_SECONDS`` and, with its stats, when it ends. Cancelled before the end (the
    app stops), it is stored as stopped, with its text, and the cancellation goes on to the
    caller."""
    saved_at = time.monotonic()
    # Saves made while the reply streams run beside it: a slow or locked database delays
    # the save, not the stream. One at a time; the final save waits for it.
    saving: asyncio.Task[None] | None = None
    stream = call.reply(exchange.stop)
    try:
        async with aclosing(stream):
            async for progress in stream:
                if progress.waiting is not None:
                    exchange.log.wait(progress.waiting)
                exchange.log.append(progress.added)
                exchange.stats = progress.stats
                if progress.error is not None:
                    exchange.error = str(progress.error)
                if progress.done:
                    await _after(saving, conversations.save_final(exchange))
                    exchange.done = True
                elif time.monotonic() - saved_at >= SAVE_INTERVAL_SECONDS and (
                    saving is None or saving.done()
                ):
                    saved_at = time.monotonic()
                    saving = asyncio.create_task(conversations.save_progress(exchange))
    finally:
        if not exchange.done:
            exchange.done = True
            if exchange.stats is not None:
                exchange.stats = replace(exchange.stats, finish="stopped")
            await asyncio.shield(_after(saving, conversations.save_final(exchange)))


async def _after(earlier: asyncio.Task[None] | None, save: Awaitable[None]) -> None:
    """``save``, once the save still running (if any) is done."""
    if earlier is not None:
        await asyncio.wait({earlier})
    await save
