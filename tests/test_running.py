"""A user's running replies are held to MAX_RUNNING_REPLIES_PER_USER across every process on
the database (app.store.running), on SQLite and on a real PostgreSQL: two sets of turns, each
with its own service and store on one database, stand for two replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.chat import ChatService
from app.chat.guard import Guard
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.store import Store
from app.store.leases import ProcessLease
from app.store.models import Lease, RunningPlace, now
from tests.conftest import settings_for
from tests.servers import ServerThread

HI = TurnRequest("hi", "", {})


def replicas(
    open_store: Callable[[], Store], url: str, cap: int
) -> list[tuple[Turns, ProcessLease]]:
    """Two processes' turns, each with its own service, store and lease on one database."""
    settings = settings_for(url, auth_mode="password", max_running_replies_per_user=cap)
    first = open_store()
    first.migrate()
    made = []
    for store in (first, open_store()):
        lease = ProcessLease(store, timedelta(seconds=settings.lease_expiry))
        lease.beat()
        made.append((Turns(ChatService(settings), Guard(settings, store)), lease))
    return made


def places(store: Store) -> int:
    with store.transaction() as session:
        return session.execute(select(func.count()).select_from(RunningPlace)).scalar_one()


async def test_two_processes_hold_a_user_to_one_cap_of_running_replies(
    open_store: Callable[[], Store], backend: ServerThread,
) -> None:
    """With a cap of 2, one call of the user's under way in each process fills it: a third is
    refused by both, another user still passes, and once the calls end the user passes again.
    Each process counted its own before, and let 2 x 2 calls run at once. A process that
    dies frees its places as its lease expires, and they go with the lease."""
    (one, first), (two, second) = replicas(open_store, backend.url, cap=2)
    async with AsyncExitStack() as held:
        await held.enter_async_context(one.calling(1, HI))
        await held.enter_async_context(two.calling(1, HI))
        for turns in (one, two):
            with pytest.raises(TurnRefused, match="You have 2 replies being written") as refused:
                async with turns.calling(1, HI):
                    pass
            assert refused.value.status == 429
        async with one.calling(2, HI):
            pass
        with first.store.transaction() as session:  # the second process dies
            session.execute(update(Lease).where(Lease.id == second.id)
                            .values(heartbeat_at=now() - timedelta(minutes=1)))
        async with one.calling(1, HI):
            pass
        assert places(first.store) == 2
        first.beat()
        assert places(first.store) == 1, "the dead lease's place went with it"
    assert places(first.store) == 0
    async with AsyncExitStack() as held:
        await held.enter_async_context(one.calling(1, HI))
        await held.enter_async_context(one.calling(1, HI))


async def test_two_processes_at_once_cannot_both_take_the_last_place(
    open_store: Callable[[], Store], backend: ServerThread,
) -> None:
    """Many calls of one user at the same moment, through two processes: exactly the cap
    run (each place is inserted and counted under the user's lock: an advisory lock on
    PostgreSQL, the write lock on SQLite). Before, each process let the cap through."""
    (one, _), (two, _) = replicas(open_store, backend.url, cap=5)
    async with AsyncExitStack() as held:
        results = await asyncio.gather(
            *(held.enter_async_context((one, two)[n % 2].calling(7, HI)) for n in range(16)),
            return_exceptions=True,
        )
        refused = [result for result in results if isinstance(result, TurnRefused)]
        assert len(results) - len(refused) == 5
        assert {err.status for err in refused} == {429}
