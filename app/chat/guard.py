"""What a message must pass before anything is stored or sent: not empty, not too long in
characters or in tokens, and not over the user's rate. The page and the REST API share it."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from app.chat.context import estimate_tokens
from app.settings import Settings

WINDOW_SECONDS = 60.0


class MessageRefused(ValueError):
    """The message is refused; ``str(err)`` says why and what to do. Nothing was sent.

    ``retry_after`` is set (seconds) when the user is over the rate limit.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Guard:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._sent: dict[int, deque[float]] = {}
        self._swept_at = clock()

    def check(self, user_id: int, text: str) -> None:
        """Raises ``MessageRefused``; a message that passes counts against the user's rate."""
        if not text.strip():
            raise MessageRefused("The message is empty; nothing was sent.")
        chars = self.settings.max_message_chars
        if len(text) > chars:
            raise MessageRefused(
                f"Your message has {len(text)} characters; the limit is {chars}. "
                "Shorten it or split it into parts. Nothing was sent."
            )
        tokens, limit = estimate_tokens(text), self.settings.max_message_tokens
        if tokens > limit:
            raise MessageRefused(
                f"Your message is about {tokens} tokens; the limit is {limit}. "
                "Shorten it or split it into parts. Nothing was sent."
            )
        self._count(user_id)

    def _count(self, user_id: int) -> None:
        per_minute = self.settings.rate_limit_per_minute
        if per_minute == 0:
            return
        now = self._clock()
        if now - self._swept_at >= WINDOW_SECONDS:
            # Once a window: forget the users who sent nothing in it, not keep every user seen.
            self._sent = {user: times for user, times in self._sent.items()
                          if times and now - times[-1] < WINDOW_SECONDS}
            self._swept_at = now
        sent = self._sent.setdefault(user_id, deque())
        while sent and now - sent[0] >= WINDOW_SECONDS:
            sent.popleft()
        if len(sent) >= per_minute:
            wait = math.ceil(WINDOW_SECONDS - (now - sent[0]))
            raise MessageRefused(
                f"You sent {per_minute} messages in the last minute, the most allowed; "
                f"try again in {wait} s. Nothing was sent.",
                retry_after=wait,
            )
        sent.append(now)
