"""One chat turn, for the page and the REST API alike: check the message, pick the backend,
read the settings, fit the context, store the message with an empty reply, then start the
reply as a task on the server (``app.chat.replies``) that streams it through the router,
saving it as it grows and with its stats at the end.

``Turns.start`` does everything that can refuse a message before anything is stored, so a
refusal (``TurnRefused``) loses nothing and stores nothing. The page shows a backend that does
not answer inside the conversation instead (``Turns.unanswered``), as a reply that failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.backends import BackendError, BackendInfo, GenerationParams, InvalidSetting
from app.backends.sampling import check
from app.chat.attachments import (
    Attachment,
    AttachmentRefused,
    drop_advice,
    read_attachments,
    with_attachments,
)
from app.chat.context import ContextOverflow, estimate_tokens
from app.chat.guard import Guard, MessageRefused
from app.chat.history import History
from app.chat.languages import LANGUAGE_NAMES, system_prompt_for
from app.chat.models import Chat, Exchange
from app.chat.replies import LiveReply, TooManyReplies
from app.chat.service import ChatService
from app.store.models import kept_settings


class TurnRefused(ValueError):
    """The message cannot be answered now; ``str(err)`` says why and what to do. Nothing was
    stored. ``status`` is the HTTP status the REST API answers with; ``retry_after`` is set
    (seconds) over a rate limit or the process's limit on running replies; ``backend_error``
    when no backend answers."""

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
        self, history: History, chat: Chat, request: TurnRequest, retried: Exchange | None = None,
        edited: Exchange | None = None,
    ) -> Turn:
        """Check the message, then store it (a retry answers ``retried``'s message again; the
        store keeps its earlier reply; an edit stores a new version of ``edited``'s message,
        forking the conversation there, and sends only the exchanges before it) with an empty
        reply, and start the reply on the server.

        Raises ``TurnRefused`` with nothing stored: a file refused (422: binary, too big, too
        many), the message refused by the guard (422, or 429 with ``retry_after``), too many
        replies running (429 for the user's, 503 with ``retry_after`` for the process's), no
        backend for the model (503, or 422 for a model nobody offers), a setting the backend
        would refuse or a message too long for its context (422).
        """
        try:
            with self.service.replies.admitting(history.user_id):
                return await self._start(history, chat, request, retried, edited)
        except TooManyReplies as err:
            raise TurnRefused(str(err), err.status, err.retry_after) from err

    async def _start(
        self, history: History, chat: Chat, request: TurnRequest, retried: Exchange | None,
        edited: Exchange | None,
    ) -> Turn:
        replaced = edited if edited is not None else retried
        attachments = self.attachments(request, replaced)
        try:
            self.guard.check(history.user_id, request.text, attachments)
        except MessageRefused as err:
            status = 422 if err.retry_after is None else 429
            raise TurnRefused(str(err), status, err.retry_after) from err
        info = await self.backend(request.settings.get("model"))
        try:
            params = generation_params(request.settings, self.settings.max_new_tokens, info)
        except InvalidSetting as err:
            raise TurnRefused(str(err)) from err
        kept = len(chat.exchanges) if replaced is None else chat.exchanges.index(replaced)
        earlier = chat.exchanges[:kept]
        language = request.language if request.language in LANGUAGE_NAMES else None
        try:
            fitted = self.service.fit(
                info, system_prompt_for(request.system_prompt, language), earlier,
                with_attachments(request.text, attachments), params.max_new_tokens,
            )
        except ContextOverflow as err:
            if attachments and err.excess:
                advice = drop_advice(attachments, err.excess, estimate_tokens)
                raise TurnRefused(f"{err} {advice}") from err
            raise TurnRefused(str(err)) from err
        exchange = await history.begin(
            chat, request.text, info, request.system_prompt, dict(request.settings),
            retried=retried, language=request.language, edited=edited,
            attachments=attachments,
        )
        assert chat.id is not None, "a begun turn has a stored conversation"
        updates = history.stream_and_save(self.service, exchange, info, fitted.messages, params)
        live = self.service.replies.run(exchange, history.user_id, chat.id, updates)
        return Turn(chat, live, info, fitted.dropped_exchanges, fitted.budget)

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
        self, history: History, chat: Chat, request: TurnRequest, error: TurnRefused,
        retried: Exchange | None = None, edited: Exchange | None = None,
    ) -> Exchange:
        """Keep the message, with a reply that failed for ``error`` (no backend answers): the
        page shows it in the conversation, where Retry can ask again."""
        replaced = edited if edited is not None else retried
        exchange = await history.begin(
            chat, request.text, None, request.system_prompt, dict(request.settings),
            retried=retried, language=request.language, edited=edited,
            attachments=self.attachments(request, replaced),
        )
        exchange.error, exchange.done = str(error), True
        await history.save_final(exchange)
        return exchange
