"""Compare's records: one message sent to two models side by side, the user's vote between the
two replies, and the board that the votes and the speeds make.

A comparison is recorded once both replies have ended (finished, stopped or failed), with the
two replies' ids in the conversation's tree: they are two versions of one reply, siblings as a
retry makes them, so the user goes on with either (``Store.switch_branch``). Each side keeps
its model, the backend that answered, and its first-token time and tokens/s in this
comparison: the board counts them even after the conversation is deleted (the texts go with
it; see ``Comparison``).

One vote a comparison. It may be changed at any time (the latest counts), except in a blind
comparison, where the vote is what shows the models' names: a vote changed after seeing them
would no longer be blind, so the first one is final (``VoteFinal``).

The board (``board``) is one user's, or every user's: the Bradley-Terry rating of each model
with its 95% interval and its number of votes (``app.arena.rating``), and the median
first-token time and tokens/s of its replies in all the comparisons counted, voted or not
(but for a blind comparison before its vote, which would show the names it hides).

Every call names the user, and another user's comparison or reply is ``NotFound``, as one
that does not exist. Calls are synchronous and short; async callers run them in a thread.
"""

from __future__ import annotations

import builtins
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update

from app.arena.rating import OUTCOMES, Outcome, Vote, rate
from app.arena.rules import check_pair
from app.store.models import Comparison, Conversation, Message, as_utc, now
from app.store.store import NotFound, Store, StoreError


class VoteFinal(StoreError):
    """A second vote on a blind comparison: its first vote showed the names and stays."""


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its model, its reply (None once the conversation is
    deleted), the backend that answered, and its speed (None: not measured, as for a reply
    that failed before its first token)."""

    model: str
    reply_id: int | None
    backend: str | None = None
    first_token_ms: float | None = None
    tokens_per_second: float | None = None


@dataclass(frozen=True)
class StoredComparison:
    id: int
    conversation_id: str | None  # None once the conversation is deleted
    left: Side
    right: Side
    blind: bool
    created_at: datetime
    outcome: Outcome | None  # None: no vote yet
    voted_at: datetime | None


@dataclass(frozen=True)
class BoardRow:
    """One model on a board. ``rating``, ``low``, ``high`` and ``group`` are None for a model
    with no vote yet (compared, never voted on); see ``app.arena.rating.Rating``."""

    model: str
    rating: float | None
    low: float | None
    high: float | None
    votes: int
    group: int | None
    comparisons: int  # voted or not: the replies its speeds were measured on
    first_token_ms: float | None  # medians over those replies that measured one
    tokens_per_second: float | None
    backends: tuple[str, ...]  # those that answered for it, by name


class Comparisons:
    def __init__(self, store: Store) -> None:
        self.store = store

    def record(
        self, user_id: int, conversation_id: str, left: Side, right: Side, *,
        blind: bool = False,
    ) -> int:
        """Keep a comparison of the user's: ``left`` and ``right`` are two replies to the same
        message of the conversation. Returns its id.

        Raises ``SameModel`` (``app.arena.rules``) when both sides name one model, and
        ``NotFound`` when the conversation is not the user's or a reply is not one of its
        replies, or the two do not answer the same message.
        """
        check_pair(left.model, right.model)
        with self.store.transaction() as session:
            conversation = session.get(Conversation, conversation_id)
            if conversation is None or conversation.user_id != user_id:
                raise NotFound(f"No conversation {conversation_id}.")
            asked = set()
            for side in (left, right):
                reply = None if side.reply_id is None else session.get(Message, side.reply_id)
                if (reply is None or reply.conversation_id != conversation_id
                        or reply.role != "assistant"):
                    raise NotFound(f"No reply {side.reply_id} in this conversation.")
                asked.add(reply.reply_to_id)
            if len(asked) != 1 or left.reply_id == right.reply_id:
                raise NotFound(
                    f"Replies {left.reply_id} and {right.reply_id} are not two replies to "
                    "one message."
                )
            comparison = Comparison(
                user_id=user_id, conversation_id=conversation_id, blind=blind,
                left_reply_id=left.reply_id, right_reply_id=right.reply_id,
                left_model=left.model, right_model=right.model,
                left_backend=left.backend, right_backend=right.backend,
                left_first_token_ms=left.first_token_ms,
                right_first_token_ms=right.first_token_ms,
                left_tokens_per_second=left.tokens_per_second,
                right_tokens_per_second=right.tokens_per_second,
            )
            session.add(comparison)
            session.flush()
            return comparison.id

    def vote(self, user_id: int, comparison_id: int, outcome: Outcome) -> StoredComparison:
        """The user's vote on their comparison: ``left`` or ``right`` better, ``tie``, or
        ``both_bad``; it replaces an earlier one. Returns the comparison as voted (with the
        names a blind one hid).

        Raises ``ValueError`` for another outcome, ``NotFound`` when the comparison is not the
        user's, and ``VoteFinal`` for a blind comparison already voted on.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {OUTCOMES}")
        with self.store.transaction() as session:
            # One statement, so that two votes at once on a blind comparison cannot both
            # be the first.
            voted = session.execute(
                update(Comparison)
                .where(Comparison.id == comparison_id, Comparison.user_id == user_id,
                       or_(Comparison.blind.is_(False), Comparison.outcome.is_(None)))
                .values(outcome=outcome, voted_at=now())
                .execution_options(synchronize_session=False)
            )
            comparison = session.get(Comparison, comparison_id)
            if comparison is None or comparison.user_id != user_id:
                raise NotFound(f"No comparison {comparison_id}.")
            if not voted.rowcount:  # type: ignore[attr-defined]
                raise VoteFinal(
                    "This comparison was blind and its vote, which showed the names, is final."
                )
            session.refresh(comparison)
            return _stored(comparison)

    def get(self, user_id: int, comparison_id: int) -> StoredComparison:
        """Raises ``NotFound`` when the comparison is not the user's."""
        with self.store.transaction() as session:
            comparison = session.get(Comparison, comparison_id)
            if comparison is None or comparison.user_id != user_id:
                raise NotFound(f"No comparison {comparison_id}.")
            return _stored(comparison)

    def list(self, user_id: int, limit: int = 200) -> builtins.list[StoredComparison]:
        """The user's comparisons, voted or not, newest first."""
        query = (
            select(Comparison).where(Comparison.user_id == user_id)
            .order_by(Comparison.created_at.desc(), Comparison.id.desc()).limit(limit)
        )
        with self.store.transaction() as session:
            return [_stored(comparison) for comparison in session.scalars(query)]

    def board(self, user_id: int | None) -> builtins.list[BoardRow]:
        """The board of the user's comparisons, or of every user's (``user_id`` None; whether
        a user may see it is ``app.arena.rules.board_owner``'s to say): the models with a
        rating best first, then those with no vote yet by name."""
        columns = (
            Comparison.left_model, Comparison.right_model, Comparison.outcome,
            Comparison.left_backend, Comparison.right_backend,
            Comparison.left_first_token_ms, Comparison.right_first_token_ms,
            Comparison.left_tokens_per_second, Comparison.right_tokens_per_second,
        )
        # A blind comparison not voted on yet would show its models' names.
        query = select(*columns).where(
            or_(Comparison.blind.is_(False), Comparison.outcome.is_not(None))
        ).order_by(Comparison.id)
        if user_id is not None:
            query = query.where(Comparison.user_id == user_id)
        with self.store.transaction() as session:
            rows = session.execute(query).all()
        votes: builtins.list[Vote[str]] = []
        sides: dict[str, builtins.list[tuple[str | None, float | None, float | None]]] = {}
        for row in rows:
            if row.outcome is not None:
                votes.append(Vote(row.left_model, row.right_model, row.outcome))
            sides.setdefault(row.left_model, []).append(
                (row.left_backend, row.left_first_token_ms, row.left_tokens_per_second)
            )
            sides.setdefault(row.right_model, []).append(
                (row.right_backend, row.right_first_token_ms, row.right_tokens_per_second)
            )
        ratings = {rating.model: rating for rating in rate(votes)}
        board = []
        for model, measured in sides.items():
            rating = ratings.get(model)
            board.append(BoardRow(
                model=model,
                rating=None if rating is None else rating.rating,
                low=None if rating is None else rating.low,
                high=None if rating is None else rating.high,
                votes=0 if rating is None else rating.votes,
                group=None if rating is None else rating.group,
                comparisons=len(measured),
                first_token_ms=_median(ms for _, ms, _ in measured),
                tokens_per_second=_median(speed for _, _, speed in measured),
                backends=tuple(sorted({backend for backend, _, _ in measured if backend})),
            ))
        return sorted(board, key=lambda row: (row.rating is None, -(row.rating or 0), row.model))


def _median(values: Iterable[float | None]) -> float | None:
    measured = [value for value in values if value is not None]
    return statistics.median(measured) if measured else None


def _stored(comparison: Comparison) -> StoredComparison:
    return StoredComparison(
        id=comparison.id,
        conversation_id=comparison.conversation_id,
        left=Side(comparison.left_model, comparison.left_reply_id, comparison.left_backend,
                  comparison.left_first_token_ms, comparison.left_tokens_per_second),
        right=Side(comparison.right_model, comparison.right_reply_id,
                   comparison.right_backend, comparison.right_first_token_ms,
                   comparison.right_tokens_per_second),
        blind=comparison.blind,
        created_at=as_utc(comparison.created_at),
        outcome=comparison.outcome,  # type: ignore[arg-type]  # written from OUTCOMES
        voted_at=None if comparison.voted_at is None else as_utc(comparison.voted_at),
    )
