"""Compare's records through the store's public API, on SQLite (a file) and on a real
PostgreSQL: comparisons, votes, boards; the refusals of app.arena.rules; the migration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.arena.rating import Outcome, Vote, rate
from app.arena.rules import BoardClosed, SameModel, board_owner, check_pair
from app.settings import load_settings
from app.store import NotFound, Store
from app.store.comparisons import BoardRow, Comparisons, Side, VoteFinal
from app.store.models import Base
from tests.stored import exchange, retry
from tests.test_snippets import downgrade, upgrade


@pytest.fixture
def comparisons(store: Store) -> Comparisons:
    return Comparisons(store)


def compared(
    store: Store, comparisons: Comparisons, user: int, left: str = "smol", right: str = "qwen",
    *, blind: bool = False, speeds: tuple[float | None, ...] = (120.0, 30.0, 400.0, 12.5),
) -> int:
    """One message of the user's with a reply of ``left`` and a second one of ``right`` (as
    the page stores the two sides), recorded as a comparison with ``speeds`` (each side's
    first-token time, then each side's tokens/s)."""
    first = exchange(store, user, None, "Write add.", "left's add", model=left,
                     backend="cpu")
    second = retry(store, user, first.conversation_id, first.user_message_id, "right's add",
                   model=right, backend="gpu")
    return comparisons.record(
        user, first.conversation_id,
        Side(left, first.reply_id, "cpu", speeds[0], speeds[2]),
        Side(right, second.reply_id, "gpu", speeds[1], speeds[3]),
        blind=blind,
    )


def test_a_comparison_reads_back_with_its_replies_in_the_tree_and_its_speeds(
    store: Store, comparisons: Comparisons
) -> None:
    user = store.user_id("alice")
    comparison = compared(store, comparisons, user)

    stored = comparisons.get(user, comparison)
    assert stored.left == Side("smol", stored.left.reply_id, "cpu", 120.0, 400.0)
    assert stored.right == Side("qwen", stored.right.reply_id, "gpu", 30.0, 12.5)
    assert (stored.blind, stored.outcome, stored.voted_at) == (False, None, None)
    assert stored.created_at.utcoffset() == timedelta(0)
    assert stored.conversation_id is not None
    tree = store.get_tree(user, stored.conversation_id)
    replies = {m.id: m.content for m in tree.messages if m.role == "assistant"}
    assert replies == {stored.left.reply_id: "left's add", stored.right.reply_id: "right's add"}
    assert [c.id for c in comparisons.list(user)] == [comparison]
    assert comparisons.list(store.user_id("bob")) == []


def test_a_vote_may_change_and_a_blind_vote_is_final(
    store: Store, comparisons: Comparisons
) -> None:
    user = store.user_id("alice")
    open_one = compared(store, comparisons, user)
    blind = compared(store, comparisons, user, blind=True)

    assert comparisons.vote(user, open_one, "left").outcome == "left"
    changed = comparisons.vote(user, open_one, "both_bad")
    assert (changed.outcome, changed.voted_at is not None) == ("both_bad", True)
    assert comparisons.get(user, open_one).outcome == "both_bad"

    voted = comparisons.vote(user, blind, "right")
    assert (voted.blind, voted.outcome, voted.right.model) == (True, "right", "qwen")
    with pytest.raises(VoteFinal, match="final"):
        comparisons.vote(user, blind, "left")
    assert comparisons.get(user, blind).outcome == "right"


def test_another_users_comparison_or_reply_is_not_found(
    store: Store, comparisons: Comparisons
) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    comparison = compared(store, comparisons, alice)
    stored = comparisons.get(alice, comparison)
    assert stored.conversation_id is not None

    with pytest.raises(NotFound):
        comparisons.vote(bob, comparison, "left")
    with pytest.raises(NotFound):
        comparisons.get(bob, comparison)
    with pytest.raises(NotFound):
        comparisons.vote(alice, comparison + 1000, "left")
    assert comparisons.get(alice, comparison).outcome is None
    with pytest.raises(NotFound):
        comparisons.record(bob, stored.conversation_id, stored.left, stored.right)
    with pytest.raises(ValueError, match="unknown outcome"):
        comparisons.vote(alice, comparison, "a")  # type: ignore[arg-type]


def test_a_comparison_is_two_replies_to_one_message_of_two_models(
    store: Store, comparisons: Comparisons
) -> None:
    user = store.user_id("alice")
    first = exchange(store, user, None, "Write add.", "one")
    later = exchange(store, user, first.conversation_id, "Shorter?", "two")
    other = exchange(store, user, None, "Elsewhere", "three")
    conversation = first.conversation_id

    def record(left: int | None, right: int | None, model: str = "qwen") -> int:
        return comparisons.record(user, conversation, Side("smol", left), Side(model, right))

    with pytest.raises(NotFound, match="not two replies to one message"):
        record(first.reply_id, later.reply_id)
    with pytest.raises(NotFound, match="not two replies to one message"):
        record(first.reply_id, first.reply_id)
    with pytest.raises(NotFound, match=f"No reply {other.reply_id}"):
        record(first.reply_id, other.reply_id)
    with pytest.raises(NotFound, match=f"No reply {first.user_message_id}"):
        record(first.reply_id, first.user_message_id)
    with pytest.raises(NotFound, match="No reply None"):
        record(first.reply_id, None)
    with pytest.raises(SameModel, match="Both sides are smol"):
        record(first.reply_id, retry(store, user, conversation, first.user_message_id).reply_id,
               model="smol")
    assert comparisons.list(user) == []


def test_the_board_rates_each_users_own_votes_or_everyones(
    store: Store, comparisons: Comparisons
) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    voted: list[tuple[Outcome, tuple[float | None, ...]]] = [
        ("left", (100.0, 40.0, 50.0, 10.0)), ("left", (300.0, 20.0, 70.0, 20.0)),
        ("right", (200.0, None, 60.0, None)),
    ]
    for outcome, speeds in voted:
        comparisons.vote(alice, compared(store, comparisons, alice, speeds=speeds), outcome)
    compared(store, comparisons, alice, "qwen", "llama", speeds=(10.0, 900.0, 40.0, 5.0))
    comparisons.vote(bob, compared(store, comparisons, bob, "llama", "smol"), "tie")

    expected = {r.model: r for r in rate([Vote("smol", "qwen", "left")] * 2
                                         + [Vote("smol", "qwen", "right")])}
    board = comparisons.board(alice)
    assert [row.model for row in board] == ["smol", "qwen", "llama"]
    smol, qwen, llama = board
    assert smol == BoardRow(
        model="smol", rating=expected["smol"].rating, low=expected["smol"].low,
        high=expected["smol"].high, votes=3, group=0, comparisons=3,
        first_token_ms=200.0, tokens_per_second=60.0, backends=("cpu",),
    )
    assert (qwen.rating, qwen.votes, qwen.comparisons) == (expected["qwen"].rating, 3, 4)
    # Medians of 40, 20 and 10 ms (one side unmeasured), and of 10, 20 and 40 tokens/s.
    assert (qwen.first_token_ms, qwen.tokens_per_second) == (20.0, 20.0)
    assert qwen.backends == ("cpu", "gpu")
    assert llama == BoardRow(
        model="llama", rating=None, low=None, high=None, votes=0, group=None, comparisons=1,
        first_token_ms=900.0, tokens_per_second=5.0, backends=("gpu",),
    ), "compared, never voted on: its speed, no rating"

    everyone = {row.model: row for row in comparisons.board(None)}
    assert (everyone["smol"].votes, everyone["llama"].votes) == (4, 1)
    assert everyone["llama"].rating is not None
    assert [row.model for row in comparisons.board(bob)] == ["llama", "smol"]
    assert comparisons.board(store.user_id("carol")) == []


def test_the_board_keeps_a_comparison_whose_conversation_is_deleted(
    store: Store, comparisons: Comparisons
) -> None:
    user = store.user_id("alice")
    comparison = compared(store, comparisons, user)
    comparisons.vote(user, comparison, "right")
    board = comparisons.board(user)
    conversation = comparisons.get(user, comparison).conversation_id
    assert conversation is not None

    store.delete(user, conversation)

    gone = comparisons.get(user, comparison)
    assert (gone.conversation_id, gone.left.reply_id, gone.right.reply_id) == (None, None, None)
    assert (gone.outcome, gone.left.model) == ("right", "smol")
    assert comparisons.board(user) == board
    comparisons.vote(user, comparison, "tie")


def test_a_users_comparisons_go_with_the_user(store: Store, comparisons: Comparisons) -> None:
    user = store.user_id("alice")
    compared(store, comparisons, user)
    with store.engine.begin() as connection:
        connection.exec_driver_sql(f"DELETE FROM users WHERE id = {user}")
    assert comparisons.board(None) == []


# -- the refusals of app.arena.rules ---------------------------------------------------------


def test_a_model_is_not_compared_with_itself() -> None:
    check_pair("smol", "qwen")
    with pytest.raises(SameModel, match=r"^Both sides are smol: pick two different models"):
        check_pair("smol", "smol")


def test_the_board_of_all_users_is_off_unless_the_operator_allows_it() -> None:
    closed, allowed = load_settings(), load_settings(allow_shared_board=True)

    assert closed.allow_shared_board is False
    assert board_owner(closed, 7, everyone=False) == 7
    with pytest.raises(BoardClosed, match=r"ALLOW_SHARED_BOARD=false"):
        board_owner(closed, 7, everyone=True)
    assert board_owner(allowed, 7, everyone=True) is None
    assert board_owner(allowed, 7, everyone=False) == 7


# -- the migration ---------------------------------------------------------------------------


def test_the_migration_adds_the_comparisons_table_and_takes_it_away(
    open_store: Callable[[], Store],
) -> None:
    store = open_store()
    upgrade(store, "0011")
    user = store.user_id()
    with store.engine.begin() as db:  # the schema of 0011, not the models' own
        db.execute(text(
            "INSERT INTO conversations (id, user_id, title, system_prompt, settings, created_at, "
            "updated_at) VALUES ('c', :user, 'From before the upgrade', '', '{}', :t, :t)"
        ), {"user": user, "t": datetime.now(UTC)})

    store.migrate()
    assert "comparisons" in inspect(store.engine).get_table_names()
    comparisons = Comparisons(store)
    comparisons.vote(user, compared(store, comparisons, user), "tie")

    downgrade(store, "0011")
    assert "comparisons" not in inspect(store.engine).get_table_names()
    assert "From before the upgrade" in [c.title for c in store.list_conversations(user)]


def test_the_migrations_match_the_comparison_model(store: Store) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in differences if "comparisons" in repr(d)] == []
