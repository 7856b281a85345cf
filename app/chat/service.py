"""One chat turn: pick the backend, fit the context, stream the reply, measure it."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import TypeVar

from app.backends import (
    BackendClient,
    BackendError,
    BackendInfo,
    Delta,
    GenerationParams,
)
from app.backends.raw import RawToken
from app.backends.router import BackendStatus, Router
from app.chat.cache import CachedReply, ResponseCache, cache_key, is_deterministic
from app.chat.context import ContextOverflow, FittedContext, fit_messages, input_budget
from app.chat.models import Exchange, Finish, TurnStats, finish_from_backend
from app.chat.replies import Replies
from app.metrics import Metrics
from app.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """The text added to the reply since the last update, and its running stats; ``done`` on
    the last update only."""

    added: str
    stats: TurnStats
    done: bool = False
    error: BackendError | None = None
    # Set on an update before the first text when the reply waits for one of the backend's
    # slots: how many requests wait before it.
    waiting: int | None = None


def router_for(settings: Settings, metrics: Metrics) -> Router:
    """A router over the backends of BACKENDS (or the one at BACKEND_URL)."""
    clients = [
        BackendClient(
            url=backend.root,
            token=settings.backend_token_for(backend),
            probe_timeout=settings.backend_probe_timeout,
            read_timeout=backend.timeout or settings.backend_read_timeout,
            context_tokens=backend.context_tokens or settings.context_tokens,
            name=backend.name,
            kind=backend.kind,
            models=tuple(backend.models),
            provider=backend.provider,
        )
        for backend in settings.backend_list
    ]
    return Router(
        clients, metrics, retries=settings.backend_retries,
        backoff=settings.backend_retry_backoff,
        failure_threshold=settings.backend_failure_threshold,
        check_interval=settings.backend_check_interval,
    )


class ChatService:
    def __init__(
        self,
        settings: Settings,
        router: Router | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = router.metrics if router is not None else Metrics()
        self.router = router or router_for(settings, self.metrics)
        self.cache = (
            ResponseCache(settings.response_cache_size) if settings.response_cache_size else None
        )
        self.replies = Replies(settings)
        self._clock = clock
        self._streaming = 0  # replies streaming now, in this process

    async def aclose(self) -> None:
        """Stop the replies still running, once each is stored, then close the backends'
        connections (``Router.aclose``): the app calls it as it stops. The service stays
        usable; a later request opens new ones."""
        await self.replies.aclose()
        await self.router.aclose()

    async def backend_info(self, model: str | None = None, refresh: bool = False) -> BackendInfo:
        """Where a reply for ``model`` (None: the default model) would go; raises
        ``BackendError`` (``NoBackendAvailable``) when no backend serves it now."""
        return await self.router.info_for(model or self.settings.default_model, refresh)

    def models(self) -> dict[str, list[str]]:
        """Every model offered, with the backends serving it."""
        return self.router.models()

    def statuses(self) -> list[BackendStatus]:
        return self.router.statuses()

    def fit(
        self, info: BackendInfo, system_prompt: str, history: Sequence[Exchange], user_text: str,
        max_new_tokens: int,
    ) -> FittedContext:
        """The messages to send (as many recent turns as fit); raises ``ContextOverflow``."""
        total = info.max_total_tokens
        if max_new_tokens >= total:
            raise ContextOverflow(
                f"Max new tokens ({max_new_tokens}) leaves no room for the message in this "
                f"model's context ({total} tokens, shared by the message and the reply). Set "
                f"max new tokens below {total}, like {total // 2}."
            )
        budget = input_budget(info.max_input_tokens, total, max_new_tokens)
        return fit_messages(system_prompt, history, user_text, budget)

    async def stream_reply(
        self,
        info: BackendInfo,
        messages: list[dict[str, str]],
        params: GenerationParams,
        stop: asyncio.Event,
        owner: int,
    ) -> AsyncGenerator[Progress]:
        """Yield what the reply added at most every ``update_interval()`` seconds, then its
        stats.

        Setting ``stop`` ends the reply at once, even while the backend is silent, and closes
        the upstream stream. A backend failure ends it with a last update that carries the
        error and keeps the partial text. The response cache answers only what ``owner`` (a
        user id) asked before: a hit tells nobody what another user sent.
        """
        key = None
        if self.cache is not None and is_deterministic(params):
            key = cache_key(owner, info.model_id, messages, params)
            cached = self.cache.get(key)
            self.metrics.cache.labels(result="miss" if cached is None else "hit").inc()
            if cached is not None:
                yield self._from_cache(info, cached)
                return
        meter = _Meter(self._clock(), info)
        parts: list[str] = []
        failures: list[BackendError] = []
        changed = asyncio.Event()

        async def read() -> None:
            """Read the backend as fast as it sends, whatever the page's pace."""
            try:
                async with aclosing(self.router.stream(info, messages, params)) as stream:
                    async for delta in stream:
                        meter.add(delta, self._clock())
                        if delta.text or delta.waiting is not None:
                            parts.append(delta.text)
                            changed.set()
            except BackendError as err:
                failures.append(err)
            finally:
                changed.set()

        self.metrics.active_streams.inc()
        self._streaming += 1
        reader = asyncio.create_task(read())
        watcher = asyncio.create_task(stop.wait())
        watcher.add_done_callback(lambda _: changed.set())
        shown, last_emit = 0, -math.inf
        try:
            # The first text goes out at once; later text at most every update_interval(), all
            # that came in between together (when the page falls behind, updates get bigger,
            # not more numerous).
            while not reader.done() and not stop.is_set():
                await changed.wait()
                changed.clear()
                wait = last_emit + self.update_interval() - self._clock()
                if wait > 0 and not reader.done():
                    await asyncio.sleep(wait)
                if len(parts) > shown and not stop.is_set():
                    # A word that the reply waits for a slot goes out at once too.
                    added, shown = "".join(parts[shown:]), len(parts)
                    if added:
                        last_emit = self._clock()
                    waiting = meter.waiting if meter.first_at is None else None
                    yield Progress(added, meter.stats(), waiting=waiting)
        finally:
            watcher.cancel()
            if not reader.done():
                reader.cancel()  # closes the upstream stream
            try:
                await reader
            except asyncio.CancelledError:
                # The reader's own cancellation ends here; the caller's goes on.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            finally:
                self._streaming -= 1
                self.metrics.active_streams.dec()
        if failures:
            if self.settings.debug:
                raise failures[0]
            meter.finish = "interrupted"
            self._measured(meter, error=True)
            yield Progress("".join(parts[shown:]), meter.stats(), done=True, error=failures[0])
            return
        if stop.is_set():
            meter.finish = "stopped"
        self._measured(meter)
        if key is not None and self.cache is not None and meter.finish in ("stop", "length"):
            self.cache.put(key, CachedReply("".join(parts), meter.tokens, meter.finish))
        yield Progress("".join(parts[shown:]), meter.stats(), done=True)

    async def stream_raw(
        self, info: BackendInfo, prompt: str, params: GenerationParams, stop: asyncio.Event
    ) -> AsyncGenerator[RawToken]:
        """Yield the tokens that continue ``prompt`` (the raw-prompt mode) as they come,
        through the router as a reply goes (failover before the first token) and measured as
        one is. Setting ``stop`` ends it at once and closes the upstream stream. Raises
        ``BackendError``."""
        meter = _Meter(self._clock(), info)
        self.metrics.active_streams.inc()
        self._streaming += 1
        error = False
        try:
            async with aclosing(self.router.stream_raw(info, prompt, params)) as stream:
                while (token := await next_unless_stopped(stream, stop)) is not None:
                    meter.add(Delta(token.text, token.finish_reason, backend=token.backend),
                              self._clock())
                    yield token
        except BackendError:
            meter.finish, error = "interrupted", True
            raise
        finally:
            self._streaming -= 1
            self.metrics.active_streams.dec()
            if stop.is_set():
                meter.finish = "stopped"
            self._measured(meter, error=error)

    def update_interval(self) -> float:
        """Seconds between two updates of one streaming reply: ``STREAM_INTERVAL``, or longer
        when more replies stream than ``STREAM_UPDATES_PER_SECOND`` allows at that pace (each
        update costs the process about a millisecond whatever its size; bench/)."""
        return max(
            self.settings.stream_interval,
            self._streaming / self.settings.stream_updates_per_second,
        )

    def _measured(self, meter: _Meter, error: bool = False) -> None:
        stats = meter.stats()
        outcome = "error" if error else stats.finish
        self.metrics.requests.labels(model=stats.model, outcome=outcome).inc()
        if stats.time_to_first_token is not None:
            self.metrics.time_to_first_token.labels(backend=stats.backend).observe(
                stats.time_to_first_token
            )
        if stats.tokens_per_second is not None and not error:
            self.metrics.tokens_per_second.labels(backend=stats.backend).observe(
                stats.tokens_per_second
            )

    def _from_cache(self, info: BackendInfo, cached: CachedReply) -> Progress:
        self.metrics.requests.labels(model=info.model_id, outcome="cached").inc()
        finish: Finish = "length" if cached.finish_reason == "length" else "stop"
        stats = TurnStats(
            tokens=cached.tokens, time_to_first_token=None, tokens_per_second=None,
            finish=finish, model=info.model_id, backend="cache", cached=True,
        )
        return Progress(cached.text, stats, done=True)


async def next_unless_stopped(stream: AsyncGenerator[T], stop: asyncio.Event) -> T | None:
    """The next item; None when the stream ends or ``stop`` is set first.

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
    backend: str | None = None
    waiting: int | None = None

    @property
    def tokens(self) -> int:
        return self.reported_tokens if self.reported_tokens is not None else self.deltas

    def add(self, delta: Delta, now: float) -> None:
        if delta.backend is not None:
            self.backend = delta.backend
        if delta.waiting is not None:
            self.waiting = delta.waiting
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
        tokens = self.tokens
        rate = None
        if self.first_at is not None and self.last_at is not None and self.last_at > self.first_at:
            rate = (tokens - 1) / (self.last_at - self.first_at)
        return TurnStats(
            tokens=tokens,
            time_to_first_token=None if self.first_at is None else self.first_at - self.start,
            tokens_per_second=rate,
            finish=self.finish,
            model=self.info.model_id,
            backend=self.backend or self.info.name,
        )
