"""The places held among each user's running replies, counted in the database every replica
shares (``running``), so that MAX_RUNNING_REPLIES_PER_USER holds for a user across every
replica on it, not once per replica.

A place is a row: taken as a reply or an unstored call of the model is admitted, deleted as
it ends. It carries the lease of the process holding it (``app.store.leases``) and counts
only while that lease is live, so the places of a process that died stop counting at once
and go with its lease (ON DELETE CASCADE) at the next heartbeat of any process. A place taken
with no lease (a process that serves nothing: a test's) counts until it is released.

``hold`` checks and takes in one transaction, so that two processes cannot both take the
last place: it takes the lock of the user's key (``Store.lock``), inserts the place, then
counts; over the cap the place is deleted before the commit. Calls are synchronous and short
(a couple of small queries); async callers run them in a thread.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import OperationalError

from app.store.leases import live
from app.store.models import Lease, RunningPlace
from app.store.store import Store

log = logging.getLogger(__name__)


class Running:
    def __init__(self, store: Store, expiry: timedelta) -> None:
        self.store = store
        self.expiry = expiry  # LEASE_EXPIRY: when a process's places stop counting
        # Places whose release failed (the database did not answer): deleted by the next
        # ``hold``, so that a moment's outage does not keep them counting for good.
        self._unreleased: set[int] = set()

    def hold(self, user_id: int, cap: int) -> int | None:
        """Take a place for ``user_id`` if fewer than ``cap`` count now, and return its id;
        otherwise take nothing and return None."""
        released = set(self._unreleased)
        with self.store.transaction() as session:
            self.store.lock(session, "running", str(user_id))
            place = RunningPlace(user_id=user_id, lease_id=self.store.lease_id)
            session.add(place)
            session.flush()
            if released:
                session.execute(delete(RunningPlace).where(RunningPlace.id.in_(released)))
            taken = session.execute(
                select(func.count()).where(
                    RunningPlace.user_id == user_id,
                    or_(RunningPlace.lease_id.is_(None),
                        RunningPlace.lease_id.in_(select(Lease.id).where(live(self.expiry)))),
                )
            ).scalar_one() <= cap
            if not taken:
                session.delete(place)
        self._unreleased -= released
        return place.id if taken else None

    def release(self, place: int) -> None:
        """Give the place up (its reply or call ended)."""
        try:
            with self.store.transaction() as session:
                session.execute(delete(RunningPlace).where(RunningPlace.id == place))
        except OperationalError:
            log.warning("Could not release a running reply's place; the next one taken "
                        "releases it", exc_info=True)
            self._unreleased.add(place)
