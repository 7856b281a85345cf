"""Limits that hold across processes: events counted in the database every replica shares
(``limit_events``), so that N replicas give a user one limit, not N.

A limit is at most ``limit`` events of a ``kind`` per ``key`` in any ``seconds``: the
message rate (kind "message", the user's id), failed logins (per name and per address). Each
event is a row that counts until its ``until`` (its time plus the window); rows past it are
deleted once a minute by whichever process counts next.

``take`` checks and counts in one transaction, so that two processes cannot both take the
last place: it takes the lock of its kind and key (``Store.lock``), inserts the event, then
counts. A refused event is deleted before the commit.

Times are seconds since the epoch (``time.time``: one clock for every process; a test hands
its own). Calls are synchronous and short (a couple of small queries); async callers run
them in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.store.models import LimitEvent
from app.store.store import Store

PRUNE_SECONDS = 60.0


class Limits:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self._pruned_at = clock()

    def take(self, kind: str, key: str, limit: int, seconds: float) -> float:
        """Count one event of ``kind`` for ``key`` if fewer than ``limit`` count now, and
        return 0.0; otherwise count nothing and return the seconds until one more would be
        allowed."""
        now = self._clock()
        with self.store.transaction() as session:
            self.store.lock(session, kind, key)
            event = LimitEvent(kind=kind, key=key, until=now + seconds)
            session.add(event)
            session.flush()
            counted, first_ends = self._counted(session, kind, key, now)
            if counted > limit:
                session.delete(event)
                return first_ends - now
            self._prune(session, now)
        return 0.0

    def wait(self, kind: str, key: str, limit: int) -> float:
        """The seconds until an event of ``kind`` for ``key`` would be allowed (0.0: now)."""
        now = self._clock()
        with self.store.transaction() as session:
            counted, first_ends = self._counted(session, kind, key, now)
        return first_ends - now if counted >= limit else 0.0

    def add(self, kind: str, key: str, seconds: float) -> None:
        """Count one event of ``kind`` for ``key``, whatever the count."""
        now = self._clock()
        with self.store.transaction() as session:
            session.add(LimitEvent(kind=kind, key=key, until=now + seconds))
            self._prune(session, now)

    def clear(self, kind: str, key: str) -> None:
        """Forget the events of ``kind`` for ``key``."""
        with self.store.transaction() as session:
            session.execute(
                delete(LimitEvent).where(LimitEvent.kind == kind, LimitEvent.key == key)
            )

    @staticmethod
    def _counted(session: Session, kind: str, key: str, now: float) -> tuple[int, float]:
        """How many events of ``kind`` for ``key`` count at ``now``, and when the first of
        them stops counting."""
        counted, first_ends = session.execute(
            select(func.count(), func.min(LimitEvent.until)).where(
                LimitEvent.kind == kind, LimitEvent.key == key, LimitEvent.until > now
            )
        ).one()
        return int(counted), float(first_ends) if first_ends is not None else now

    def _prune(self, session: Session, now: float) -> None:
        """Delete the events that no longer count, once a minute."""
        if now - self._pruned_at >= PRUNE_SECONDS:
            session.execute(delete(LimitEvent).where(LimitEvent.until <= now))
            self._pruned_at = now
