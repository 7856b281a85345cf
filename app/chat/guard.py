"""What a message must pass before anything is stored or sent: not empty, not too long in
characters or in tokens, not over the user's rate, and not over the user's running replies.
The page and the REST API share it.

The rate and the running replies are counted in the database (``app.store.limits``,
``app.store.running``), so that they hold for a user across every replica of the app on
that database."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from app.chat.attachments import Attachment, drop_advice, with_attachments
from app.chat.context import estimate_tokens
from app.chat.conversations import unavailable
from app.chat.replies import TooManyReplies
from app.settings import Settings
from app.store import Store
from app.store.limits import Limits
from app.store.running import Running

WINDOW_SECONDS = 60.0
T = TypeVar("T")


class MessageRefused(ValueError):
    """The message is refused; ``str(err)`` says why and what to do. Nothing was sent.

    ``retry_after`` is set (seconds) when the user is over the rate limit.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateWindow:
    """At most ``limit`` events per key in any ``seconds``, in this process's memory (the
    Backends panel's Check now): ``wait(key)`` says how long until
    one more is allowed (0 when it is now), ``add(key)`` counts one. Keys quiet for a whole
    window are forgotten (swept once a window), so memory follows the keys active lately, not
    every key ever seen."""

    def __init__(
        self, limit: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.seconds = seconds
        self._clock = clock
        self._events: dict[object, deque[float]] = {}
        self._swept_at = clock()

    def __len__(self) -> int:
        return len(self._events)

    def wait(self, key: object) -> float:
        now = self._clock()
        if now - self._swept_at >= self.seconds:
            self._events = {key: times for key, times in self._events.items()
                            if times and now - times[-1] < self.seconds}
            self._swept_at = now
        times = self._events.get(key)
        if times is None:
            return 0.0
        while times and now - times[0] >= self.seconds:
            times.popleft()
        return self.seconds - (now - times[0]) if len(times) >= self.limit else 0.0

    def add(self, key: object) -> None:
        self._events.setdefault(key, deque()).append(self._clock())


class Guard:
    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self._limits = Limits(store, clock)
        self._running = Running(store, timedelta(seconds=settings.lease_expiry))
        # In AUTH_MODE=none every page is the same local user: the process's limit only.
        self.max_running = (
            settings.max_running_replies_per_user if settings.auth_mode != "none" else None
        )

    async def check(
        self, user_id: int, text: str, attachments: Sequence[Attachment] = ()
    ) -> None:
        """Raises ``MessageRefused``, or ``StoreUnavailable`` when the database does not answer;
        a message that passes counts against the user's rate.
        Attached files count toward the message's length as the model is sent them; over a
        limit, the refusal says which of them to drop."""
        if not text.strip():
            raise MessageRefused("The message is empty; nothing was sent.")
        sent = with_attachments(text, attachments)
        what = "with its attachments " if attachments else ""
        chars = self.settings.max_message_chars
        if len(sent) > chars:
            raise MessageRefused(
                f"Your message {what}has {len(sent)} characters; the limit is {chars}. "
                + self._advice(attachments, len(sent) - chars, len)
            )
        tokens, limit = estimate_tokens(sent), self.settings.max_message_tokens
        if tokens > limit:
            raise MessageRefused(
                f"Your message {what}is about {tokens} tokens; the limit is {limit}. "
                + self._advice(attachments, tokens - limit, estimate_tokens)
            )
        await self._count(user_id)

    async def hold(self, user_id: int) -> int | None:
        """A place among the user's running replies (MAX_RUNNING_REPLIES_PER_USER, counted
        across every replica), for ``release``: its id, or None where there is no such cap.
        Raises ``TooManyReplies`` over the cap, ``StoreUnavailable`` when the database does
        not answer; either way nothing is held."""
        if self.max_running is None:
            return None
        place = await _stored(self._running.hold, user_id, self.max_running)
        if place is None:
            raise TooManyReplies(
                f"You have {self.max_running} replies being written, the most one user may; "
                "stop one or wait for it to end.", 429,
            )
        return place

    async def release(self, place: int | None) -> None:
        """Give up a place ``hold`` took (its reply or call ended)."""
        if place is not None:
            await asyncio.to_thread(self._running.release, place)

    @staticmethod
    def _advice(attachments: Sequence[Attachment], excess: int, cost: Callable[[str], int]) -> str:
        if not attachments:
            return "Shorten it or split it into parts. Nothing was sent."
        return f"{drop_advice(attachments, excess, cost)} Nothing was sent."

    async def _count(self, user_id: int) -> None:
        per_minute = self.settings.rate_limit_per_minute
        if per_minute == 0:
            return
        wait = await _stored(self._limits.take, "message", str(user_id), per_minute,
                             WINDOW_SECONDS)
        if wait > 0:
            seconds = math.ceil(wait)
            raise MessageRefused(
                f"You sent {per_minute} message{'s' if per_minute > 1 else ''} in the last "
                "minute, the most allowed; "
                f"try again in {seconds} s. Nothing was sent.",
                retry_after=seconds,
            )


async def _stored(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, a count in the database, in a thread; ``StoreUnavailable`` when the
    database does not answer (SQLite's "database is locked", a server gone)."""
    try:
        return await asyncio.to_thread(call, *args)
    except OperationalError as err:
        raise unavailable(err) from err
