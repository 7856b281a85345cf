"""Compare, for the page and the REST API alike: one message answered by two models side by
side (``Turns.compare``, the dialogue's own door), the comparison recorded once both replies
have ended, and the two replies followed as they come.

``Comparer.start`` picks nothing and refuses as ``Turns.compare`` does (``TurnRefused``,
nothing stored); the models come from ``pick_models``, which refuses one model twice and a
blind comparison with fewer than two models on offer (``app.arena.rules``). Once both replies
have ended (finished, stopped or failed), a task of the ``Pair``'s own records the comparison
with each side's speed (``app.store.comparisons``): a page or a client that goes away without
stopping them still gets it recorded.

Blind: two different models picked at random among those on offer; ``Pair.model`` and
``Pair.shown`` keep their names (and their backends', which could tell them) out of what a
user sees until the vote.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from app.arena.rules import check_offered, check_pair
from app.chat.conversations import Conversations, NotFound, StoreError
from app.chat.models import Chat
from app.chat.turns import Turn, TurnRequest, Turns
from app.store.comparisons import Side

SideName = Literal["left", "right"]
HIDDEN = "(hidden)"
DELETED = "The conversation was deleted before both replies ended; the comparison was not kept."
T = TypeVar("T")


def pick_models(
    offered: Iterable[str], left: str | None, right: str | None, blind: bool
) -> tuple[str, str]:
    """The two models: ``left`` and ``right``, or, ``blind``, two different ones at random
    among those ``offered``. Raises ``ArenaError``: one model twice (``SameModel``), fewer than
    two on offer for a blind comparison (``TooFewModels``)."""
    if blind:
        models = sorted(offered)
        check_offered(len(models))
        left, right = random.sample(models, 2)
    assert left is not None, "two models, unless blind"
    assert right is not None, "two models, unless blind"
    check_pair(left, right)
    return left, right


def hidden(text: str, names: Iterable[str]) -> str:
    """``text`` without ``names`` (a blind comparison's models and backends)."""
    for name in sorted(filter(None, set(names)), key=len, reverse=True):
        text = text.replace(name, HIDDEN)
    return text


@dataclass(frozen=True)
class Pair:
    """A comparison under way: its two turns, whether it is blind, and the task that records
    it once both replies have ended (its id, or why it was not kept)."""

    left: Turn
    right: Turn
    blind: bool
    recorded: asyncio.Task[tuple[int | None, str | None]]

    @property
    def sides(self) -> dict[SideName, Turn]:
        return {"left": self.left, "right": self.right}

    @property
    def conversation_id(self) -> str:
        return self.left.live.conversation_id

    @property
    def done(self) -> bool:
        """Both replies have ended."""
        return self.left.exchange.done and self.right.exchange.done

    def model(self, turn: Turn) -> str | None:
        """The side's model, None while blind."""
        return None if self.blind else turn.info.model_id

    def shown(self, text: str | None) -> str | None:
        """``text`` (an error) as the user may see it: while blind, without the models' or
        backends' names."""
        if not self.blind or text is None:
            return text
        return hidden(text, [name for turn in (self.left, self.right)
                             for name in (turn.info.model_id, turn.info.name,
                                          turn.exchange.stats.backend if turn.exchange.stats
                                          else "")])

    def stop(self) -> None:
        """Ask both replies to end."""
        for turn in (self.left, self.right):
            turn.live.stop()


class Comparer:
    """Starts comparisons on the dialogue's path and records each once both replies end."""

    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self._recording: set[asyncio.Task[Any]] = set()

    async def start(
        self, mine: Conversations, chat: Chat, asked: TurnRequest, models: tuple[str, str],
        blind: bool,
    ) -> Pair:
        """Store the message to ``chat`` and start both replies (``Turns.compare``: raises
        ``TurnRefused`` with nothing stored)."""
        left, right = await self.turns.compare(mine, chat, asked, models)

        async def record() -> tuple[int | None, str | None]:
            tasks = {turn.live.task for turn in (left, right) if turn.live.task is not None}
            await asyncio.wait(tasks)
            try:
                return await mine.record_comparison(
                    left.live.conversation_id, _side(left), _side(right), blind
                ), None
            except NotFound:
                return None, DELETED
            except StoreError as err:
                return None, f"The comparison could not be stored: {err}"

        recorded = asyncio.create_task(record())
        self._recording.add(recorded)  # kept until it has run, whoever waits for it
        recorded.add_done_callback(self._recording.discard)
        return Pair(left, right, blind, recorded)


def _side(turn: Turn) -> Side:
    """A side of the comparison as recorded: its model, reply, backend and speed."""
    stats = turn.exchange.stats
    first = None if stats is None else stats.time_to_first_token
    return Side(
        model=turn.info.model_id, reply_id=turn.exchange.reply_id,
        backend=turn.info.name if stats is None else stats.backend,
        first_token_ms=None if first is None else first * 1000,
        tokens_per_second=None if stats is None else stats.tokens_per_second,
    )


async def merged(streams: Mapping[SideName, AsyncIterator[T]]) -> AsyncIterator[tuple[SideName, T]]:
    """The items of ``streams`` (never None) as each comes, with its stream's name, until
    all have ended."""
    def step(side: SideName) -> asyncio.Future[T | None]:
        return asyncio.ensure_future(anext(streams[side], None))

    pending = {step(side): side for side in streams}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for next_item in done:
                side = pending.pop(next_item)
                if (item := next_item.result()) is not None:
                    pending[step(side)] = side
                    yield side, item
    finally:
        for next_item in pending:
            next_item.cancel()
