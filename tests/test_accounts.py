"""Accounts for AUTH_MODE=password: sign-up, password checks and API tokens, on a SQLite file."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from argon2 import PasswordHasher
from sqlalchemy import inspect, text

from app.store import Accounts, InvalidAccount, NameTaken, Store
from app.store.accounts import token_hash
from app.store.store import MIGRATIONS

PASSWORD = "correct horse battery"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class CountingHasher(PasswordHasher):
    """Cheap argon2 parameters, so tests run fast; counts the checks it makes."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'accounts.db'}")
    store.migrate()
    yield store
    store.engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def accounts(store: Store, hasher: CountingHasher, clock: Clock) -> Accounts:
    return Accounts(store, hasher=hasher, clock=clock)


def column(store: Store, sql: str, **params: Any) -> list[Any]:
    with store.engine.connect() as connection:
        return list(connection.execute(text(sql), params).scalars())


# -- passwords ------------------------------------------------------------------------------


def test_sign_up_then_log_in(accounts: Accounts) -> None:
    alice = accounts.signup("alice", PASSWORD)
    bob = accounts.signup("bob.smith_2-x", "another long one")
    assert alice != bob
    assert accounts.check_password("alice", PASSWORD) == alice
    assert accounts.check_password("bob.smith_2-x", "another long one") == bob
    assert accounts.name(alice) == "alice"


def test_a_wrong_password_or_an_unknown_name_does_not_log_in(
    accounts: Accounts, hasher: CountingHasher
) -> None:
    accounts.signup("alice", PASSWORD)
    assert accounts.check_password("alice", PASSWORD + "!") is None
    assert accounts.check_password("alice", "") is None
    assert accounts.check_password("Alice", PASSWORD) is None, "names are exact at login"
    hasher.verified = 0
    assert accounts.check_password("nobody", PASSWORD) is None
    assert accounts.check_password("alice", "wrong password") is None
    # An unknown name costs an argon2 check too, so names cannot be probed by timing.
    assert hasher.verified == 2


def test_users_without_a_password_never_log_in(
    store: Store, accounts: Accounts, hasher: CountingHasher
) -> None:
    store.user_id()  # "local", the user of AUTH_MODE=none
    store.user_id("imported")
    hasher.verified = 0
    for name in ("local", "imported"):
        for password in ("", PASSWORD, "local"):
            assert accounts.check_password(name, password) is None
    assert hasher.verified == 6, "each attempt spends the time of a real check"


def test_a_taken_name_is_refused_ignoring_case(accounts: Accounts) -> None:
    accounts.signup("alice", PASSWORD)
    for name in ("alice", "ALICE", "Alice"):
        with pytest.raises(NameTaken, match="taken; pick another") as caught:
            accounts.signup(name, "a different password")
        assert "a different password" not in str(caught.value)
    assert accounts.check_password("alice", PASSWORD) is not None, "the first one is intact"


def test_the_local_users_name_is_reserved(store: Store, accounts: Accounts) -> None:
    with pytest.raises(InvalidAccount, match="reserved"):
        accounts.signup("local", PASSWORD)
    store.user_id()
    with pytest.raises(InvalidAccount, match="reserved"):
        accounts.signup("LOCAL", PASSWORD)


@pytest.mark.parametrize("password", ["", "short", "7 chars", "x" * 1025, "bad \ud800 text"])
def test_a_weak_or_unusable_password_is_refused_without_showing_it(
    accounts: Accounts, password: str
) -> None:
    with pytest.raises(InvalidAccount) as caught:
        accounts.signup("alice", password)
    message = str(caught.value)
    assert "characters" in message
    if password:
        assert password not in message
    assert accounts.check_password("alice", password) is None, "nothing was created"


@pytest.mark.parametrize(
    "name", ["", "al", "x" * 51, "has space", "tab\there", "émile", "semi;colon", "new\nline",
             "alice\n"],
)
def test_a_bad_name_is_refused_with_the_rule(accounts: Accounts, name: str) -> None:
    with pytest.raises(InvalidAccount, match="3 to 50 characters: letters"):
        accounts.signup(name, PASSWORD)


def test_the_database_holds_an_argon2_hash_not_the_password(store: Store) -> None:
    accounts = Accounts(store)  # the default, production parameters
    user = accounts.signup("alice", PASSWORD)
    stored = column(store, "SELECT password_hash FROM users WHERE id = :id", id=user)[0]
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert PasswordHasher().verify(stored, PASSWORD)
    assert accounts.check_password("alice", PASSWORD) == user


def test_a_hash_with_old_parameters_is_upgraded_at_the_next_login(
    store: Store, accounts: Accounts
) -> None:
    user = accounts.signup("alice", PASSWORD)
    old = column(store, "SELECT password_hash FROM users")[0]
    stronger = Accounts(store, hasher=PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    assert stronger.check_password("alice", PASSWORD) == user
    new = column(store, "SELECT password_hash FROM users")[0]
    assert new != old
    assert "m=2048,t=2,p=1" in new


# -- tokens ---------------------------------------------------------------------------------


def test_a_token_names_its_user_until_it_expires(accounts: Accounts, clock: Clock) -> None:
    alice = accounts.signup("alice", PASSWORD)
    token = accounts.issue_token(alice, timedelta(hours=2))
    assert len(token) >= 40
    assert accounts.user_for_token(token) == alice
    info = accounts.token_info(token)
    assert info is not None
    assert info.expires_at == clock.now + timedelta(hours=2)

    clock.now += timedelta(hours=1, minutes=59)
    assert accounts.user_for_token(token) == alice
    clock.now += timedelta(minutes=1)
    assert accounts.user_for_token(token) is None, "expired at its expiry time"


def test_expired_tokens_are_dropped_when_a_new_one_is_issued(
    store: Store, accounts: Accounts, clock: Clock
) -> None:
    alice = accounts.signup("alice", PASSWORD)
    accounts.issue_token(alice, timedelta(minutes=1))
    clock.now += timedelta(minutes=5)
    fresh = accounts.issue_token(alice, timedelta(minutes=1))
    assert column(store, "SELECT token_hash FROM api_tokens") == [token_hash(fresh)]


def test_tokens_from_elsewhere_are_refused(accounts: Accounts) -> None:
    alice = accounts.signup("alice", PASSWORD)
    real = accounts.issue_token(alice, timedelta(hours=1))
    forged = [
        secrets.token_urlsafe(32),  # well-formed, never issued
        real[:-1] + ("A" if real[-1] != "A" else "B"),  # one character changed
        token_hash(real),  # the stored hash is not a token
        "", "Bearer " + real, real + " ", "x" * 5000, "é" * 43, "../../etc/passwd",
    ]
    for token in forged:
        assert accounts.user_for_token(token) is None, token
        assert accounts.token_info(token) is None


def test_a_revoked_token_stops_working_and_others_do_not(accounts: Accounts) -> None:
    alice = accounts.signup("alice", PASSWORD)
    first = accounts.issue_token(alice, timedelta(hours=1))
    second = accounts.issue_token(alice, timedelta(hours=1))
    accounts.revoke(first)
    assert accounts.user_for_token(first) is None
    assert accounts.user_for_token(second) == alice
    accounts.revoke(first)  # again: nothing to do
    accounts.revoke("not a token at all")


def test_only_a_hash_of_each_token_is_stored(store: Store, accounts: Accounts) -> None:
    alice = accounts.signup("alice", PASSWORD)
    token = accounts.issue_token(alice, timedelta(hours=1))
    with store.engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(text("SELECT * FROM api_tokens"))]
    assert len(rows) == 1
    assert token_hash(token) in rows[0]
    assert all(token not in str(value) for value in rows[0])


def test_deleting_a_user_deletes_their_tokens(store: Store, accounts: Accounts) -> None:
    alice = accounts.signup("alice", PASSWORD)
    token = accounts.issue_token(alice, timedelta(hours=1))
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM users WHERE id = :id"), {"id": alice})
    assert accounts.user_for_token(token) is None
    assert column(store, "SELECT count(*) FROM api_tokens") == [0]


def test_no_password_or_token_reaches_the_logs(
    accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = accounts.signup("alice", PASSWORD)
    with pytest.raises(NameTaken):
        accounts.signup("alice", "second password")
    with pytest.raises(InvalidAccount):
        accounts.signup("bob", "weakpw")
    accounts.check_password("alice", "wrong password")
    accounts.check_password("nobody", PASSWORD)
    token = accounts.issue_token(alice, timedelta(hours=1))
    accounts.user_for_token(token)
    accounts.revoke(token)
    assert "alice" in caplog.text, "the sign-up is logged, by name"
    for secret in (PASSWORD, "second password", "weakpw", "wrong password", token):
        assert secret not in caplog.text


# -- the migration --------------------------------------------------------------------------


def test_the_migration_adds_tokens_to_an_existing_database(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    assert "api_tokens" not in inspect(store.engine).get_table_names()
    local = store.user_id()
    with store.engine.begin() as connection:  # the schema of 0001, not the models' own
        connection.execute(text(
            "INSERT INTO conversations (id, user_id, title, system_prompt, settings, created_at, "
            "updated_at) VALUES ('c', :user, 'From before the upgrade', '', '{}', :t, :t)"
        ), {"user": local, "t": datetime.now(UTC)})
    conversation = "c"

    store.migrate()

    assert "api_tokens" in inspect(store.engine).get_table_names()
    head = ScriptDirectory.from_config(config).get_current_head()
    assert column(store, "SELECT version_num FROM alembic_version") == [head]
    assert [c.title for c in store.list_conversations(local)] == ["From before the upgrade"]
    assert store.get_conversation(local, conversation).title == "From before the upgrade"
    accounts = Accounts(store, hasher=CountingHasher())
    alice = accounts.signup("alice", PASSWORD)
    assert accounts.user_for_token(accounts.issue_token(alice, timedelta(hours=1))) == alice
    store.engine.dispose()
