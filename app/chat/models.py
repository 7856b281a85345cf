"""The conversation as the app keeps it: exchanges of a user message and a reply with its stats."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from app.chat.attachments import Attachment, with_attachments
from app.chat.log import ReplyLog

Finish = Literal["stop", "length", "stopped", "interrupted"]

FINISH_TEXT: dict[Finish, str] = {
    "stop": "finished",
    "length": "cut at the token limit",
    "stopped": "stopped by you",
    "interrupted": "interrupted",
}


def finish_from_backend(reason: str | None) -> Finish:
    """Map a server's ``finish_reason`` (OpenAI's or TGI's words) onto ours."""
    if reason == "length":
        return "length"
    if reason in ("stop", "eos_token", "stop_sequence", "tool_calls"):
        return "stop"
    return "interrupted"


@dataclass(frozen=True)
class TurnStats:
    tokens: int
    time_to_first_token: float | None
    tokens_per_second: float | None
    finish: Finish
    model: str
    backend: str
    cached: bool = False

    def line(self) -> str:
        if self.cached:
            return f"{self.tokens} tokens · from the response cache"
        return f"{self.speed()} · {FINISH_TEXT[self.finish]}"

    def speed(self) -> str:
        """The tokens so far, the first-token time and tokens/s, as they are while the reply
        streams."""
        parts = [f"{self.tokens} tokens"]
        if self.time_to_first_token is not None:
            parts.append(f"first token {self.time_to_first_token:.2f} s")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:.1f} tokens/s")
        return " · ".join(parts)


@dataclass
class Exchange:
    """One user message and the reply to it (``log``, its text as written), with the reply's
    stats as they grow.

    ``done`` turns true when the reply ends for any reason: finished, cut, stopped or failed;
    setting ``stop`` asks the reply in progress to end. The alternatives are the stored ids of
    the message's edits and the reply's retries, oldest first, its own among them.
    ``attachments`` are the files attached to the message. ``live`` is, while the reply is
    being written, the key of the channel that sends its text to pages as it comes
    (``app.live``).
    """

    user: str
    log: ReplyLog = field(default_factory=ReplyLog)
    stats: TurnStats | None = None
    error: str | None = None
    done: bool = False
    user_message_id: int | None = None
    reply_id: int | None = None
    user_alternatives: tuple[int, ...] = ()
    reply_alternatives: tuple[int, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    # The last run of each of the reply's code blocks, by the block's index, and the check the
    # reply is a version of (``app.chat.checks`` says what each holds).
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    live: str | None = field(default=None, repr=False, compare=False)
    stop: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def reply(self) -> str:
        """The reply's text so far."""
        return self.log.text

    @property
    def sent(self) -> str:
        """The user's message as the model is sent it, with its attached files."""
        return with_attachments(self.user, self.attachments)


@dataclass
class Chat:
    """The conversation open in one browser tab: the branch on screen, which is what the
    model is sent; ``id`` is None until its first message is stored."""

    id: str | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    # False once the tab has moved to another conversation (New, Clear, Open, Delete): a reply
    # still ending in this one is stored, but no longer painted over the one on screen.
    on_screen: bool = True
