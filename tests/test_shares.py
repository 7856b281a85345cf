"""Shared snapshots through the store's public API, on SQLite (a file) and on a real
PostgreSQL; the migration that adds them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.store import NotFound, Store
from app.store.models import Base
from app.store.shares import Shares
from tests.stored import exchange, imported_conversation
from tests.test_snippets import downgrade, upgrade

CODE_REPLY = "Here:\n\n```python\ndef add(a, b):\n    return a + b\n```\n"


@pytest.fixture
def shares(store: Store) -> Shares:
    return Shares(store)


def conversation_of(store: Store, name: str) -> tuple[int, str]:
    """A user named ``name`` with one conversation of two exchanges, with a system prompt and
    settings of their own."""
    user = store.user_id(name)
    conversation = exchange(
        store, user, None, "Write add.", CODE_REPLY, title=f"{name}'s adder",
        system_prompt="Secret instructions of " + name, settings={"temperature": 0.3},
    ).conversation_id
    exchange(store, user, conversation, "Shorter?", "No.", status="length")
    return user, conversation


def test_a_share_reads_back_by_its_token_with_the_exchanges_and_nothing_of_the_user(
    store: Store, shares: Shares
) -> None:
    user, conversation = conversation_of(store, "alice")
    share = shares.create(user, conversation)

    assert len(share.token) >= 22, "at least 128 random bits"
    shared = shares.read(share.token)
    assert shared is not None
    assert shared.title == "alice's adder"
    assert [(e.user, e.reply, e.status, e.model) for e in shared.exchanges] == [
        ("Write add.", CODE_REPLY, "stop", "smol"), ("Shorter?", "No.", "length", "smol"),
    ]
    assert "Secret instructions" not in repr(shared)
    assert conversation not in repr(shared)
    assert shares.read(shares.create(user, conversation).token) is not None
    assert share.token != shares.list(user)[0].token, "each share its own token"


def test_unknown_malformed_and_revoked_tokens_read_nothing(
    store: Store, shares: Shares
) -> None:
    user, conversation = conversation_of(store, "alice")
    share = shares.create(user, conversation)
    for token in ("", "x" * 43, share.token[:-1], share.token + "A", "é" * 43, "../" * 15):
        assert shares.read(token) is None, token

    shares.revoke(user, share.id)

    assert shares.read(share.token) is None
    assert shares.list(user) == []


def test_the_snapshot_stays_when_the_conversation_changes_or_is_deleted(
    store: Store, shares: Shares
) -> None:
    user, conversation = conversation_of(store, "alice")
    share = shares.create(user, conversation)
    before = shares.read(share.token)

    exchange(store, user, conversation, "One more", "Sure.")
    store.rename(user, conversation, "Renamed")
    assert shares.read(share.token) == before

    store.delete(user, conversation)
    assert shares.read(share.token) == before
    [listed] = shares.list(user)
    assert (listed.id, listed.conversation_id) == (share.id, None)


def test_shares_are_listed_newest_first_and_only_to_their_owner(
    store: Store, shares: Shares
) -> None:
    alice, conversation = conversation_of(store, "alice")
    bob, _ = conversation_of(store, "bob")
    first = shares.create(alice, conversation)
    second = shares.create(alice, conversation)

    assert [s.id for s in shares.list(alice)] == [second.id, first.id]
    assert shares.list(bob) == []


def test_another_user_can_neither_share_nor_revoke(store: Store, shares: Shares) -> None:
    alice, conversation = conversation_of(store, "alice")
    bob, _ = conversation_of(store, "bob")
    with pytest.raises(NotFound):
        shares.create(bob, conversation)
    share = shares.create(alice, conversation)
    for share_id in (share.id, share.id + 1000, 0, -1, 2**40):
        with pytest.raises(NotFound):
            shares.revoke(bob, share_id)
    assert shares.read(share.token) is not None
    with pytest.raises(NotFound):
        shares.create(alice, "no-such-conversation")


def test_an_import_is_an_ordinary_conversation_of_the_importer(
    store: Store, shares: Shares
) -> None:
    alice, conversation = conversation_of(store, "alice")
    token = shares.create(alice, conversation).token
    bob = store.user_id("bob")

    imported = shares.import_into(bob, token)

    assert [c.id for c in store.list_conversations(bob)] == [imported]
    record = store.get_conversation(bob, imported)
    assert (record.title, record.system_prompt, record.settings) == ("alice's adder", "", {})
    assert [(e.user, e.reply and (e.reply.content, e.reply.status)) for e in record.exchanges] == [
        ("Write add.", (CODE_REPLY, "stop")), ("Shorter?", ("No.", "length")),
    ]
    exchange(store, bob, imported, "And subtract?", "def sub(a, b): ...")
    assert len(store.get_conversation(bob, imported).exchanges) == 3, "it can be continued"
    assert len(store.get_conversation(alice, conversation).exchanges) == 2
    with pytest.raises(NotFound):
        store.get_conversation(alice, imported)


def test_a_message_without_a_reply_is_shared_and_imported_without_one(
    store: Store, shares: Shares
) -> None:
    user = store.user_id()
    conversation = imported_conversation(store, user, "Anyone?", title="Unanswered")
    token = shares.create(user, conversation).token

    shared = shares.read(token)
    assert shared is not None
    assert [(e.user, e.reply) for e in shared.exchanges] == [("Anyone?", None)]
    imported = shares.import_into(user, token)
    [exchange] = store.get_conversation(user, imported).exchanges
    assert (exchange.user, exchange.reply) == ("Anyone?", None)


def test_a_revoked_share_cannot_be_imported(store: Store, shares: Shares) -> None:
    user, conversation = conversation_of(store, "alice")
    share = shares.create(user, conversation)
    shares.revoke(user, share.id)
    with pytest.raises(NotFound):
        shares.import_into(user, share.token)
    assert [c.id for c in store.list_conversations(user)] == [conversation]


def test_deleting_the_owner_deletes_the_shares(store: Store, shares: Shares) -> None:
    user, conversation = conversation_of(store, "alice")
    token = shares.create(user, conversation).token
    with store.engine.begin() as connection:
        connection.exec_driver_sql(f"DELETE FROM users WHERE id = {user}")
    assert shares.read(token) is None


# -- the migration ---------------------------------------------------------------------------


def test_the_migration_adds_the_shares_table_and_takes_it_away(
    open_store: Callable[[], Store],
) -> None:
    store = open_store()
    upgrade(store, "0004")
    user = store.user_id()
    with store.engine.begin() as db:  # the schema of 0004, not the models' own
        db.execute(text(
            "INSERT INTO conversations (id, user_id, title, system_prompt, settings, created_at, "
            "updated_at) VALUES ('c', :user, 'From before the upgrade', '', '{}', :t, :t)"
        ), {"user": user, "t": datetime.now(UTC)})

    store.migrate()
    assert "shares" in inspect(store.engine).get_table_names()
    assert Shares(store).read(Shares(store).create(user, "c").token) is not None

    downgrade(store, "0004")
    assert "shares" not in inspect(store.engine).get_table_names()
    assert [c.title for c in store.list_conversations(user)] == ["From before the upgrade"]


def test_the_migrations_match_the_share_model(store: Store) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert [d for d in differences if "shares" in repr(d)] == []
