"""The text of one reply as it is written: an append-only log, read from an offset.

The reply's writer (``app.chat.replies``) appends what the backend sent since its last update
and ends the log when the reply has ended and is stored. Every follower reads it with the same
reader, ``ReplyLog.chunks(offset)``: the page's renders (``app.ui``), its live text
(``app.live``) and the REST API's stream (``app.api.dialogue``). Nothing rewrites text
already written, so a follower that has read up to an offset has all of it.

Before its first text, a reply may wait for a slot of the backend (llama-server serves a few
requests at once, the others queue): ``wait`` says so, and the readers get an empty piece
then, to tell the person (``waiting_notice``).

Offsets count characters as Python does: code points, not UTF-16 units nor bytes (an emoji
outside the Basic Multilingual Plane is one, a letter with a combining accent two). The
page's script counts the same way (``Array.from`` in ``app/ui/live.js``), and the API's
``offset`` parameter is the same unit.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import AsyncGenerator
from typing import NamedTuple


class Piece(NamedTuple):
    """Text of the log and the offset it ends at."""

    text: str
    end: int


def waiting_notice(before: int) -> str:
    """What a person waiting for a slot is told."""
    ahead = "" if before == 0 else (
        f" {before} request{'s' if before > 1 else ''} wait{'s' if before == 1 else ''} "
        "before yours;")
    return (f"Queued: the model is answering as many people as it can at once;{ahead} "
            "your reply starts as soon as one of theirs ends.")


class ReplyLog:
    def __init__(self, text: str = "") -> None:
        self._pieces: list[str] = [text] if text else []
        self._starts: list[int] = [0] if text else []
        self._length = len(text)
        self._joined = text
        self._joined_pieces = len(self._pieces)
        self._ended = False
        self._waiting: int | None = None
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return self._length

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReplyLog) and other.text == self.text

    def __repr__(self) -> str:
        return f"ReplyLog({self.text!r}{', ended' if self._ended else ''})"

    @property
    def text(self) -> str:
        """All of it; joined once for each time it is read after a change."""
        if self._joined_pieces != len(self._pieces):
            self._joined = "".join(self._pieces)
            self._pieces, self._starts = [self._joined], [0]
            self._joined_pieces = 1
        return self._joined

    @property
    def ended(self) -> bool:
        return self._ended

    def since(self, offset: int) -> str:
        """The text past ``offset``."""
        if offset >= self._length:
            return ""
        first = max(bisect_right(self._starts, offset) - 1, 0)
        head = self._pieces[first][offset - self._starts[first]:]
        return head + "".join(self._pieces[first + 1:])

    @property
    def waiting(self) -> int | None:
        """Before the first text, while the reply waits for a slot of the backend: how many
        requests wait before it."""
        return self._waiting if self._length == 0 else None

    def wait(self, before: int) -> None:
        """The reply waits for a slot, ``before`` requests before it: wake the followers."""
        self._waiting = before
        self._wake()

    def append(self, text: str) -> None:
        """Add ``text`` at the end and wake the followers."""
        if self._ended:
            raise RuntimeError("a reply's log is written no more once it has ended")
        if text:
            self._pieces.append(text)
            self._starts.append(self._length)
            self._length += len(text)
            self._wake()

    def end(self) -> None:
        """The reply has ended (and is stored): followers read what is left, then stop."""
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def chunks(self, offset: int = 0) -> AsyncGenerator[Piece]:
        """The text past ``offset``: what there is now, then each addition as it comes (what
        was added while the follower was busy comes as one piece), until the log ends. Before
        the first text, an empty piece each time ``waiting`` changes."""
        told = None
        while True:
            ended = self._ended  # before the text: all of it is then read
            if self._length > offset:
                piece = Piece(self.since(offset), self._length)
                offset = piece.end
                yield piece
            elif self.waiting not in (None, told):
                told = self.waiting
                yield Piece("", offset)
            if ended:
                return
            if self._length == offset and not self._ended and self.waiting in (None, told):
                await self._changed.wait()
