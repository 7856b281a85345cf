"""One chat turn: know the backend, fit the context, stream the reply, measure it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass

from app.backends import (
    BackendClient,
    BackendError,
    BackendInfo,
    BackendTimeout,
    BackendUnreachable,
    Delta,
    GenerationParams,
)
from app.chat.context import FittedContext, fit_messages, input_budget
from app.chat.models import Exchange, Finish, TurnStats, finish_from_backend
from app.settings import Settings

# How long a successful probe of the backend is trusted before asking again.
INFO_TTL_SECONDS = 30.0


@dataclass(frozen=True)
class Progress:
    """The reply so far and its running stats; ``done`` on the last update only."""

    text: str
    stats: TurnStats
    done: bool = False
    error: BackendError | None = None


class ChatService:
    def __init__(
        self,
        settings: Settings,
        client: BackendClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.client = client or BackendClient(
            url=settings.backend_root,
            token=settings.backend_token.get_secret_value() if settings.backend_token else None,
            probe_timeout=settings.backend_probe_timeout,
            read_timeout=settings.backend_read_timeout,
            context_tokens=settings.context_tokens,
        )
        self._clock = clock
        self._info: BackendInfo | None = None
        self._info_at = 0.0

    async def backend_info(self, refresh: bool = False) -> BackendInfo:
        """The backend's description, probed again when stale; raises ``BackendError``."""
        now = self._clock()
        if refresh or self._info is None or now - self._info_at > INFO_TTL_SECONDS:
            self._info = None
            self._info = await self.client.probe()
            self._info_at = now
        return self._info

    def fit(
        self, info: BackendInfo, system_prompt: str, history: Sequence[Exchange], user_text: str,
        max_new_tokens: int,
    ) -> FittedContext:
        budget = input_budget(info.max_input_tokens, info.max_total_tokens, max_new_tokens)
        return fit_messages(system_prompt, history, user_text, budget)

    async def stream_reply(
        self,
        info: BackendInfo,
        messages: list[dict[str, str]],
        params: GenerationParams,
        stop: asyncio.Event,
    ) -> AsyncGenerator[Progress]:
        """Yield the growing reply at most every ``STREAM_INTERVAL`` seconds, then its stats.

        Setting ``stop`` ends the reply at once, even while the backend is silent, and closes
        the upstream stream. A backend failure ends it with a last update that carries the
        error and keeps the partial text.
        """
        meter = _Meter(self._clock(), info)
        last_emit = meter.start
        parts: list[str] = []
        try:
            async with aclosing(self.client.stream_chat(messages, params, info)) as stream:
                while (delta := await _next_unless_stopped(stream, stop)) is not None:
                    now = self._clock()
                    meter.add(delta, now)
                    if delta.text:
                        parts.append(delta.text)
                        if now - last_emit >= self.settings.stream_interval:
                            last_emit = now
                            yield Progress("".join(parts), meter.stats())
            if stop.is_set():
                meter.finish = "stopped"
        except BackendError as err:
            if self.settings.debug:
                raise
            if isinstance(err, BackendUnreachable | BackendTimeout):
                self._info = None
            meter.finish = "interrupted"
            yield Progress("".join(parts), meter.stats(), done=True, error=err)
            return
        yield Progress("".join(parts), meter.stats(), done=True)


async def _next_unless_stopped(
    stream: AsyncGenerator[Delta], stop: asyncio.Event
) -> Delta | None:
    """The next delta; None when the stream ends or ``stop`` is set first.

    A stop cancels the pending read inside the stream, which closes its HTTP response.
    """
    if stop.is_set():
        return None
    step = asyncio.ensure_future(anext(stream, None))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not step.done():
            step.cancel()
            with suppress(asyncio.CancelledError):
                await step
    return None if step.cancelled() else step.result()


@dataclass
class _Meter:
    """Counts tokens and times one reply."""

    start: float
    info: BackendInfo
    first_at: float | None = None
    last_at: float | None = None
    deltas: int = 0
    reported_tokens: int | None = None
    finish: Finish = "interrupted"

    def add(self, delta: Delta, now: float) -> None:
        if delta.text:
            if self.first_at is None:
                self.first_at = now
            self.last_at = now
            self.deltas += 1
        if delta.completion_tokens is not None:
            self.reported_tokens = delta.completion_tokens
        if delta.finish_reason:
            self.finish = finish_from_backend(delta.finish_reason)

    def stats(self) -> TurnStats:
        tokens = self.reported_tokens if self.reported_tokens is not None else self.deltas
        rate = None
        if self.first_at is not None and self.last_at is not None and self.last_at > self.first_at:
            rate = (tokens - 1) / (self.last_at - self.first_at)
        return TurnStats(
            tokens=tokens,
            time_to_first_token=None if self.first_at is None else self.first_at - self.start,
            tokens_per_second=rate,
            finish=self.finish,
            model=self.info.model_id,
            backend=self.info.kind,
        )
