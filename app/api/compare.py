"""The Compare endpoints: one message to two models side by side, the vote between their
replies, your comparisons, and the board of your votes (or, where allowed, everyone's).

A comparison is two turns on the dialogue's own path (``Turns.compare``): the message is
stored once and answered by both models at once, as two versions of one reply, each reply
counted as a message against the user's limits. The replies run on the server as a
dialogue's does (``app.chat.replies``), and once both have ended the comparison is recorded
with each side's speed (``app.store.comparisons``) by a task of its own: a client that goes
away without stopping them still gets it recorded. A client that asked for it
(``stop_on_disconnect``, or REPLY_KEEPS_RUNNING off) stops both by going away. One side
failing ends that side with its error; the other goes on to its end.

Blind: two different models picked at random among those on offer, their names (and their
backends', which could tell them) kept out of every answer, errors included, until the vote.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from app.api.dialogue import (
    ON_REQUEST,
    SSE,
    Dialogues,
    ending,
    followed,
    pieces,
    refusals,
    stats_out,
    streamed_responses,
)
from app.api.errors import ApiError
from app.api.errors import error_responses as _errors
from app.api.models import (
    BoardRowOut,
    ComparedOut,
    CompareIn,
    CompareOut,
    ComparisonOut,
    SideOut,
    VoteIn,
)
from app.arena.rules import ArenaError, board_owner
from app.chat import ChatService
from app.chat.compare import Comparer, Pair, merged, pick_models
from app.chat.conversations import NotFound
from app.chat.turns import Turn
from app.events import event, event_stream
from app.settings import Settings
from app.store.comparisons import Side, StoredComparison, VoteFinal

ComparisonPath = Annotated[int, Path(
    ge=1, le=2**31 - 1, description="One of your comparisons: the `comparison_id` of POST "
    "/compare.",
)]


class Comparing:
    """The comparisons of the API's users: started on the dialogues' path (``Dialogues``),
    followed as server-sent events or waited for, voted on, listed, and counted on the board."""

    def __init__(self, settings: Settings, service: ChatService, dialogues: Dialogues) -> None:
        self.settings = settings
        self.service = service
        self.dialogues = dialogues
        self.comparer = Comparer(dialogues.turns)

    def models(self, body: CompareIn) -> tuple[str, str]:
        """The two models: those named, or two different ones at random among those on
        offer (blind). Raises ``ApiError`` 422 for one model twice, or fewer than two on offer."""
        try:
            return pick_models(self.service.models(), body.left, body.right, body.blind)
        except ArenaError as err:
            raise ApiError(422, str(err)) from err

    async def start(self, user_id: int, body: CompareIn) -> Pair:
        """Check the request, store the message and start both replies.

        Raises ``ApiError`` as ``Dialogues.start`` does, and 422 for the models (``models``).
        Nothing is stored when it raises.
        """
        models = self.models(body)
        mine, chat, asked = await self.dialogues.asked(user_id, body)
        with refusals(chat):
            return await self.comparer.start(mine, chat, asked, models, body.blind)

    async def events(self, pair: Pair, stop_if_gone: Request | None) -> AsyncIterator[bytes]:
        """Server-sent events: the dialogue and each side's reply id (and model, unless
        blind), then each side's pieces as they come, each naming its side, and that side's
        end with its stats; last, once both have ended, the comparison's id. The client of
        ``stop_if_gone`` going away stops both."""
        with followed(stop_if_gone, pair.left.live, pair.right.live):
            yield event({"dialogue_id": pair.conversation_id, "blind": pair.blind, **{
                side: {"message_id": turn.exchange.reply_id, "model": pair.model(turn)}
                for side, turn in pair.sides.items()
            }})
            streams = {side: _side_events(pair, turn) for side, turn in pair.sides.items()}
            async for side, piece in merged(streams):
                yield event({"side": side, **piece})
            comparison_id, error = await asyncio.shield(pair.recorded)
            yield event({"done": True, "comparison_id": comparison_id, "error": error})

    async def reply(self, pair: Pair, stop_if_gone: Request | None) -> CompareOut:
        """Wait for both replies and the comparison's record; the client of
        ``stop_if_gone`` going away first stops both."""
        with followed(stop_if_gone, pair.left.live, pair.right.live):
            comparison_id, error = await asyncio.shield(pair.recorded)
        left, right = (SideOut(
            message_id=turn.exchange.reply_id, model=pair.model(turn), reply=turn.exchange.reply,
            stats=stats_out(turn.exchange.stats), error=pair.shown(turn.exchange.error),
        ) for turn in (pair.left, pair.right))
        return CompareOut(comparison_id=comparison_id, dialogue_id=pair.conversation_id,
                          blind=pair.blind, left=left, right=right, error=error)


async def _side_events(pair: Pair, turn: Turn) -> AsyncIterator[dict[str, Any]]:
    """A side's pieces as they come, then its end."""
    exchange = turn.exchange
    async for piece in pieces(exchange.log):
        yield piece
    yield ending(exchange.reply_id, stats_out(exchange.stats), pair.shown(exchange.error))


def comparison_out(stored: StoredComparison) -> ComparisonOut:
    """A stored comparison, its names hidden while it is blind and not voted on."""
    hidden = stored.blind and stored.outcome is None

    def compared(side: Side) -> ComparedOut:
        return ComparedOut(
            model=None if hidden else side.model, message_id=side.reply_id,
            backend=None if hidden else side.backend, first_token_ms=side.first_token_ms,
            tokens_per_second=side.tokens_per_second,
        )

    return ComparisonOut(
        id=stored.id, dialogue_id=stored.conversation_id, blind=stored.blind,
        left=compared(stored.left), right=compared(stored.right), outcome=stored.outcome,
        created_at=stored.created_at, voted_at=stored.voted_at,
    )


def add_compare_routes(router: APIRouter, user: Any, comparing: Comparing) -> None:
    """Add the Compare endpoints to ``router``; ``user`` is its type of a signed-in user's
    id (an ``Annotated`` dependency)."""
    dialogues = comparing.dialogues

    @router.post(
        "/compare", response_model=CompareOut,
        responses=streamed_responses(ON_REQUEST, 400, 401, 404, 422, 429, 503),
        summary="Send a message to two models side by side",
    )
    async def compare(body: CompareIn, request: Request, user_id: user) -> Any:
        """Start a conversation, or continue one of yours with `dialogue_id`, with one
        message answered by two models at once (`left` and `right`, or two at random with
        `blind`): both replies are stored as two versions of one reply (siblings in
        view=tree) and count as two messages against your limits. Once both have ended the
        comparison is stored with each side's speed; vote on it with
        POST /comparisons/{id}/vote."""
        pair = await comparing.start(user_id, body)
        stop_if_gone = dialogues.stopped_by(body, request)
        if body.stream or SSE in request.headers.get("accept", ""):
            return event_stream(comparing.events(pair, stop_if_gone))
        return await comparing.reply(pair, stop_if_gone)

    @router.post(
        "/comparisons/{comparison_id}/vote", response_model=ComparisonOut,
        responses=_errors(401, 404, 409, 422), summary="Vote on one of your comparisons",
    )
    async def vote(user_id: user, comparison_id: ComparisonPath, body: VoteIn) -> ComparisonOut:
        """`left` or `right` better, `tie`, or `both_bad`; a later vote replaces it, but in
        a blind comparison, whose vote shows the names, the first is final (409)."""
        try:
            voted = await dialogues.of(user_id).vote(comparison_id, body.outcome)
        except NotFound as err:
            raise ApiError(404, f"No comparison {comparison_id} among yours.") from err
        except VoteFinal as err:
            raise ApiError(409, str(err)) from err
        return comparison_out(voted)

    @router.get(
        "/comparisons", response_model=list[ComparisonOut], responses=_errors(401, 422),
        summary="Your comparisons, newest first",
    )
    async def comparisons(
        user_id: user,
        limit: Annotated[int, Query(ge=1, le=200, description="At most this many.")] = 50,
    ) -> list[ComparisonOut]:
        """Voted or not; a blind one's names are null until its vote."""
        return [comparison_out(c) for c in await dialogues.of(user_id).comparisons(limit)]

    @router.get(
        "/board", response_model=list[BoardRowOut], responses=_errors(401, 403, 422),
        summary="The models rated by your votes",
    )
    async def board(
        user_id: user,
        everyone: Annotated[bool, Query(
            description="Every user's votes instead of yours (only with ALLOW_SHARED_BOARD)."
        )] = False,
    ) -> list[BoardRowOut]:
        """Each model compared, rated best first (Bradley-Terry on Elo's scale, with a 95%
        interval), then those with no vote yet: its votes and comparisons, and the median
        first-token time and tokens/s of its replies in them. A blind comparison counts
        once voted on."""
        try:
            owner = board_owner(comparing.settings, user_id, everyone)
        except ArenaError as err:
            raise ApiError(403, str(err)) from err
        rows = await dialogues.of(user_id).board(everyone=owner is None)
        return [BoardRowOut(
            model=row.model, rating=row.rating, low=row.low, high=row.high, votes=row.votes,
            comparisons=row.comparisons, first_token_ms=row.first_token_ms,
            tokens_per_second=row.tokens_per_second, backends=list(row.backends),
        ) for row in rows]
