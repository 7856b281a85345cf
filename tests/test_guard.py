"""The checks every message passes in the page and the API; the rate on SQLite and on a real
PostgreSQL, shared by every process on the database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from app.chat.guard import Guard, MessageRefused
from app.settings import load_settings
from app.store import Store
from app.store.models import LimitEvent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_length_in_characters_and_in_tokens(store: Store) -> None:
    guard = Guard(load_settings(max_message_chars=100, max_message_tokens=20), store)
    with pytest.raises(MessageRefused, match="has 101 characters; the limit is 100"):
        await guard.check(1, "x" * 101)
    with pytest.raises(MessageRefused, match="about 42 tokens; the limit is 20"):
        await guard.check(1, "y" * 100)
    with pytest.raises(MessageRefused, match="empty"):
        await guard.check(1, " \n ")
    await guard.check(1, "short enough")


async def test_the_rate_limit_is_per_user_and_slides(store: Store) -> None:
    clock = Clock()
    guard = Guard(load_settings(rate_limit_per_minute=3), store, clock=clock)
    for _ in range(3):
        await guard.check(1, "hi")
        clock.now += 10
    with pytest.raises(MessageRefused, match="try again in 30 s") as refused:
        await guard.check(1, "hi")
    assert refused.value.retry_after == 30
    await guard.check(2, "another user is not held back")
    clock.now += 30
    await guard.check(1, "the oldest message left the window")


async def test_two_processes_on_one_database_hold_a_user_to_one_rate(
    open_store: Callable[[], Store],
) -> None:
    """Two guards, each with its own store (connections) on one database, stand for two
    replicas: the user's third message is refused by both, however they are spread. Each
    process kept its own count before, and let 2 x 2 messages through."""
    clock, settings = Clock(), load_settings(rate_limit_per_minute=2)
    first = open_store()
    first.migrate()
    guards = [Guard(settings, first, clock=clock), Guard(settings, open_store(), clock=clock)]
    await guards[0].check(1, "one")
    await guards[1].check(1, "two")
    for guard in guards:
        with pytest.raises(MessageRefused, match="try again in 60 s"):
            await guard.check(1, "three")
    clock.now += 60
    await guards[1].check(1, "a minute later")


async def test_two_processes_at_once_cannot_both_take_the_last_place(
    open_store: Callable[[], Store],
) -> None:
    """Many messages of one user at the same moment, through two stores: exactly the limit
    pass (the insert and count of each wait for the other's: an advisory lock per user on
    PostgreSQL, the write lock on SQLite)."""
    settings = load_settings(rate_limit_per_minute=5)
    first = open_store()
    first.migrate()
    guards = [Guard(settings, first), Guard(settings, open_store())]
    results = await asyncio.gather(
        *(guards[n % 2].check(7, "hi") for n in range(16)), return_exceptions=True
    )
    assert [result for result in results if result is not None
            and not isinstance(result, MessageRefused)] == []
    assert results.count(None) == 5


async def test_a_refused_message_does_not_count(store: Store) -> None:
    clock = Clock()
    guard = Guard(load_settings(rate_limit_per_minute=1, max_message_chars=5), store, clock)
    with pytest.raises(MessageRefused):
        await guard.check(1, "far too long")
    await guard.check(1, "ok")
    with pytest.raises(MessageRefused, match="try again"):
        await guard.check(1, "over")
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(LimitEvent)) == 1


async def test_zero_turns_the_rate_limit_off(store: Store) -> None:
    guard = Guard(load_settings(rate_limit_per_minute=0), store)
    for _ in range(100):
        await guard.check(1, "hi")
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(LimitEvent)) == 0


async def test_the_rate_forgets_users_who_have_been_quiet_for_a_minute(store: Store) -> None:
    """The events of users quiet for a whole window are deleted (once a minute), so the
    table follows the users active lately, not every user ever seen."""
    clock = Clock()
    guard = Guard(load_settings(rate_limit_per_minute=3), store, clock=clock)
    for user in range(50):
        await guard.check(user, "hi")
    clock.now += 61
    await guard.check(5000, "hi")
    with store.transaction() as session:
        assert session.scalars(select(LimitEvent.key)).all() == ["5000"]
    for _ in range(2):
        await guard.check(5000, "hi")
    with pytest.raises(MessageRefused, match="try again"):
        await guard.check(5000, "the limit still holds")
