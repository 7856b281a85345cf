"""The login throttle on SQLite and on a real PostgreSQL: one count for every process on the
database."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.logins import FAILED_LOGINS_PER_ACCOUNT, LoginLocked, LoginThrottle
from app.store import Store
from tests.test_guard import Clock


def wrong() -> int | None:
    return None


def right() -> int | None:
    return 1


async def test_two_processes_on_one_database_share_the_failed_logins(
    open_store: Callable[[], Store],
) -> None:
    """Two throttles, each with its own store on one database, stand for two replicas: five
    failures for a name, spread over both, lock it out of both, even with the right password,
    until 15 minutes have passed since the first. Each process kept its own count before, and
    took 5 failures more on the second."""
    clock = Clock()
    first = open_store()
    first.migrate()
    throttles = [LoginThrottle(first, clock), LoginThrottle(open_store(), clock)]
    for attempt in range(FAILED_LOGINS_PER_ACCOUNT):
        assert await throttles[attempt % 2].attempt("Alice", f"10.0.0.{attempt}", wrong) is None
        clock.now += 60
    for throttle in throttles:
        with pytest.raises(LoginLocked) as locked:
            await throttle.attempt("alice", "10.0.1.1", right)
        assert locked.value.seconds == 900 - 5 * 60
    clock.now += 900 - 5 * 60
    assert await throttles[1].attempt("alice", "10.0.1.1", right) == 1


async def test_an_address_is_locked_out_of_every_process_and_a_success_clears_a_name(
    open_store: Callable[[], Store],
) -> None:
    clock = Clock()
    first = open_store()
    first.migrate()
    throttles = [LoginThrottle(first, clock), LoginThrottle(open_store(), clock)]
    for attempt in range(20):
        await throttles[attempt % 2].attempt(f"user{attempt}", "10.0.0.9", wrong)
    for throttle in throttles:
        with pytest.raises(LoginLocked, match="Too many failed logins; try again in 900 s"):
            await throttle.attempt("bob", "10.0.0.9", right)
    for _ in range(FAILED_LOGINS_PER_ACCOUNT - 1):
        await throttles[0].attempt("carol", "10.0.0.1", wrong)
    assert await throttles[1].attempt("carol", "10.0.0.1", right) == 1
    assert await throttles[0].attempt("carol", "10.0.0.1", wrong) is None, "count cleared"
