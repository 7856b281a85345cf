"""Many backends as one: which backend serves which model, which are up, and one reply (or
one raw-prompt continuation) streamed with retries and failover.

A reply goes to the first backend that is up and serves the model (the one named in the
``BackendInfo`` first). Before its first token, a failure that may pass (unreachable,
timeout, overloaded, a broken stream) moves on to the next backend serving the model; when
all have failed, the round is tried again after a backoff (``retries`` more rounds). Once
tokens have flowed, nothing is retried: a retry would repeat text the user has seen.
A backend that fails ``failure_threshold`` times in a row is marked down: replies skip it
and it is probed again every ``check_interval`` seconds (or, when every backend for a model
is down, at most every ``RECHECK_SECONDS`` by a waiting reply), never hammered.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeVar

from app.backends.client import BackendClient, BackendInfo, Delta, safe_url
from app.backends.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnreachable,
    NoBackendAvailable,
    StreamError,
)
from app.backends.raw import RawToken, stream_raw
from app.backends.sampling import GenerationParams
from app.metrics import Metrics

T = TypeVar("T", Delta, RawToken)

log = logging.getLogger(__name__)

# Failures that may pass, so another try (here or on another backend) can succeed.
RETRYABLE = (BackendUnreachable, BackendTimeout, BackendOverloaded, StreamError)
# Failures that say the backend itself is not working (not just busy).
COUNTS_AS_DOWN = (BackendUnreachable, BackendTimeout, StreamError)
# A reply waiting on backends that are all down probes them at most this often.
RECHECK_SECONDS = 2.0
# A Retry-After longer than this is not waited for: the user gets the message instead.
MAX_RETRY_WAIT = 10.0


@dataclass
class BackendState:
    client: BackendClient
    info: BackendInfo | None = None
    error: BackendError | None = None
    failures: int = 0
    down: bool = False
    checked_at: float | None = None
    checked_wall: datetime | None = None
    # This process's requests to it that are open now: served, or waiting for a slot.
    requests: int = 0

    def __post_init__(self) -> None:
        self.lock = asyncio.Lock()

    @property
    def slots(self) -> int | None:
        return self.info.slots if self.info is not None else None

    @property
    def waiting(self) -> int:
        """Of ``requests``, those beyond its slots: they wait in the server's queue."""
        return max(0, self.requests - self.slots) if self.slots is not None else 0

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def models(self) -> tuple[str, ...]:
        """What it serves: as last probed, or as configured before any probe."""
        return self.info.models if self.info is not None else self.client.models


@dataclass(frozen=True)
class BackendStatus:
    """One row of the status panel."""

    name: str
    kind: str
    url: str
    state: str  # "up", "down" or "unknown" (not probed yet)
    models: tuple[str, ...]
    max_input_tokens: int | None
    max_total_tokens: int | None
    version: str | None
    error: str | None
    checked_at: datetime | None
    # This process's requests open on it now, of them those waiting for one of its slots,
    # and its slots when it says.
    requests: int = 0
    waiting: int = 0
    slots: int | None = None


class Router:
    def __init__(
        self,
        clients: Sequence[BackendClient],
        metrics: Metrics,
        *,
        retries: int = 2,
        backoff: float = 0.5,
        failure_threshold: int = 3,
        check_interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.states = [BackendState(client) for client in clients]
        self.metrics = metrics
        self.retries = retries
        self.backoff = backoff
        self.failure_threshold = failure_threshold
        self.check_interval = check_interval
        self._clock = clock
        self._sleep = sleep
        self._notes: dict[str, Callable[[], str | None]] = {}

    async def aclose(self) -> None:
        """Close every backend's connections (``BackendClient.aclose``); the app calls it as it
        stops. The router stays usable: a later request opens new ones."""
        await asyncio.gather(*(state.client.aclose() for state in self.states))

    # -- what is there -----------------------------------------------------------------

    async def refresh(self, force: bool = False) -> None:
        """Probe every backend whose last check is older than ``check_interval``."""
        checks = (self._check(state, self.check_interval, force) for state in self.states)
        await asyncio.gather(*checks)

    async def run_checks(self) -> None:
        """Probe the backends every ``check_interval`` seconds, until cancelled."""
        while True:
            await self.refresh()
            await self._sleep(self.check_interval)

    def models(self) -> dict[str, list[str]]:
        """Each model, in the order backends are listed, with the backends serving it (those
        up first)."""
        found: dict[str, list[str]] = {}
        for state in sorted(self.states, key=lambda s: s.down):
            for model in state.models:
                found.setdefault(model, []).append(state.name)
        return found

    def explain(self, name: str, note: Callable[[], str | None]) -> None:
        """Have the failures of backend ``name`` that say it is not working (unreachable, timed
        out, a broken stream) say more: ``note()``, when not None, is added to their message
        (the embedded engine: that it is being started again)."""
        self._notes[name] = note

    def client(self, name: str) -> BackendClient:
        return next(state.client for state in self.states if state.name == name)

    def statuses(self) -> list[BackendStatus]:
        rows = []
        for state in self.states:
            info = state.info
            status = "unknown" if state.checked_at is None else "down" if state.down else "up"
            rows.append(BackendStatus(
                name=state.name, kind=info.kind if info else state.client.kind,
                url=safe_url(state.client.url), state=status, models=state.models,
                max_input_tokens=info.max_input_tokens if info else None,
                max_total_tokens=info.max_total_tokens if info else None,
                version=info.version if info else None,
                error=str(state.error) if state.down and state.error else None,
                checked_at=state.checked_wall, requests=state.requests, waiting=state.waiting,
                slots=state.slots,
            ))
        return rows

    async def info_for(self, model: str | None = None, refresh: bool = False) -> BackendInfo:
        """The backend a reply for ``model`` (None: the first model offered) would go to,
        with ``model_id`` set to it. Raises ``NoBackendAvailable``."""
        await self.refresh(force=refresh)

        def serving() -> list[BackendState]:
            return [s for s in self.states if s.info is not None and not s.down
                    and (model is None or model in s.info.models)]

        if not serving():
            await self._recheck_down(model)
        up = serving()
        if not up:
            raise self._none_available(model, {})
        info = up[0].info
        assert info is not None
        return replace(info, model_id=model or info.model_id)

    # -- one reply -----------------------------------------------------------------------

    async def stream(
        self, info: BackendInfo, messages: Sequence[Mapping[str, str]], params: GenerationParams
    ) -> AsyncGenerator[Delta]:
        """Stream one reply for ``info.model_id``; the first delta names the backend that
        answers, and, when all of that backend's slots are taken, says how many requests wait
        before this one (``Delta.waiting``). Raises the backend's own error when one backend
        was tried, otherwise ``NoBackendAvailable`` with each backend's reason."""
        started = False
        async for name, delta in self._failover(
            info, lambda client, target: client.stream_chat(messages, params, target),
            lambda before: Delta(waiting=before),
        ):
            yield delta if started else replace(delta, backend=name)
            started = started or bool(delta.text)

    async def stream_raw(
        self, info: BackendInfo, prompt: str, params: GenerationParams
    ) -> AsyncGenerator[RawToken]:
        """Stream the continuation of ``prompt`` (``app.backends.raw``) as ``stream`` streams
        a reply: the same backends, failover and errors."""
        started = False
        async for name, token in self._failover(
            info, lambda client, target: stream_raw(client, target, prompt, params)
        ):
            yield token if started else replace(token, backend=name)
            started = started or bool(token.text)

    async def _failover(
        self, info: BackendInfo,
        open_stream: Callable[[BackendClient, BackendInfo], AsyncGenerator[T]],
        waiting: Callable[[int], T] | None = None,
    ) -> AsyncGenerator[tuple[str, T]]:
        """The items of ``open_stream`` on the backends serving ``info.model_id``, each with
        the name of the backend that sent it: one backend's, or, when one fails before its
        first text, the next one's (rounds as the module says). A request that finds all the
        backend's slots taken is preceded by ``waiting(requests waiting before it)``."""
        model = info.model_id
        failures: dict[str, BackendError] = {}
        for round_number in range(self.retries + 1):
            wait = 0.0
            for state in self._candidates(model, info.name):
                assert state.info is not None
                target = replace(state.info, model_id=model)
                started = False
                self._count(state, 1)
                try:
                    if waiting is not None and state.waiting:
                        yield state.name, waiting(state.waiting - 1)
                    async with aclosing(open_stream(state.client, target)) as stream:
                        async for item in stream:
                            started = started or bool(item.text)
                            yield state.name, item
                except BackendError as err:
                    self.metrics.error(state.name, err.kind)
                    self._failed(state, err)
                    if isinstance(err, COUNTS_AS_DOWN) and (
                            note := self._notes.get(state.name, lambda: None)()) is not None:
                        err.args = (f"{err} {note}",)
                    if started or not isinstance(err, RETRYABLE):
                        raise
                    log.warning("Backend %s failed before the first token (%s); trying the "
                                "next", state.name, type(err).__name__)
                    failures[state.name] = err
                    if isinstance(err, BackendOverloaded) and err.retry_after is not None:
                        wait = max(wait, err.retry_after)
                    continue
                finally:
                    self._count(state, -1)
                self._succeeded(state)
                return
            if round_number == self.retries or not failures or wait > MAX_RETRY_WAIT:
                break
            await self._sleep(max(wait, self.backoff * 2**round_number * random.uniform(1, 1.5)))
            if not self._candidates(model, info.name):
                await self._recheck_down(model)
        if len(failures) == 1 and len(self._serving(model)) <= 1:
            raise next(iter(failures.values()))
        raise self._none_available(model, failures)

    def _serving(self, model: str) -> list[BackendState]:
        return [s for s in self.states if model in s.models]

    def _candidates(self, model: str, preferred: str) -> list[BackendState]:
        up = [s for s in self._serving(model) if s.info is not None and not s.down]
        return sorted(up, key=lambda s: s.name != preferred)

    # -- health --------------------------------------------------------------------------

    async def _check(self, state: BackendState, max_age: float, force: bool = False) -> None:
        async with state.lock:
            now = self._clock()
            if not force and state.checked_at is not None and now - state.checked_at < max_age:
                return
            try:
                state.info = await state.client.probe()
            except BackendError as err:
                self._mark(state, down=True, error=err)
            except Exception as err:  # a bug in one probe must not stop every check
                log.exception("Checking backend %s failed", state.name)
                self._mark(state, down=True, error=BackendError(
                    f"The backend {state.client.label} could not be checked "
                    f"({type(err).__name__}: {err}); the app's log has the details."
                ))
            else:
                self._mark(state, down=False, error=None)
                if state.slots is not None:
                    self.metrics.backend_slots.labels(backend=state.name).set(state.slots)
            state.checked_at = self._clock()
            state.checked_wall = datetime.now(UTC)

    async def _recheck_down(self, model: str | None) -> None:
        down = [s for s in self.states if s.down or s.info is None]
        down = [s for s in down if model is None or model in s.models or s.info is None]
        await asyncio.gather(*(self._check(state, RECHECK_SECONDS) for state in down))

    def _count(self, state: BackendState, change: int) -> None:
        """One request more (or less) open on ``state``, in its counts and the metrics."""
        state.requests += change
        self.metrics.backend_requests.labels(backend=state.name, state="waiting").set(
            state.waiting)
        self.metrics.backend_requests.labels(backend=state.name, state="served").set(
            state.requests - state.waiting)

    def _failed(self, state: BackendState, err: BackendError) -> None:
        if not isinstance(err, COUNTS_AS_DOWN):
            return
        state.failures += 1
        state.error = err
        if state.failures >= self.failure_threshold and not state.down:
            self._mark(state, down=True, error=err)
            state.checked_at = self._clock()

    def _succeeded(self, state: BackendState) -> None:
        state.failures = 0

    def _mark(self, state: BackendState, down: bool, error: BackendError | None) -> None:
        if down and not state.down:
            log.warning("Backend %s is down: %s", state.name, error)
        elif not down and state.down:
            log.info("Backend %s is up again", state.name)
        state.down, state.error = down, error
        if not down:
            state.failures = 0
        self.metrics.backend_up.labels(backend=state.name).set(0 if down else 1)

    def _none_available(
        self, model: str | None, failures: Mapping[str, BackendError]
    ) -> NoBackendAvailable:
        lines = []
        for state in self.states:
            reason = failures.get(state.name) or (state.error if state.down else None)
            if reason is not None:
                lines.append(f"{state.name}: {reason}")
            elif model is not None and state.info is not None and model not in state.models:
                lines.append(f"{state.name}: does not serve {model}")
            else:
                lines.append(f"{state.name}: not answering yet")
        what = f"model {model}" if model else "any model"
        return NoBackendAvailable(
            f"No backend can answer for {what} now. " + " · ".join(lines)
            + " Replies resume as soon as one answers; no restart is needed."
        )
