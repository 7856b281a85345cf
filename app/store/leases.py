"""Which app processes are alive, so that the replies of one that died are marked
interrupted within seconds rather than left streaming.

Each process holds a lease on the database (``ProcessLease``): a row in ``leases`` whose
heartbeat it renews every LEASE_HEARTBEAT_INTERVAL, first as it starts serving. Every reply
it begins carries the lease (``Store.lease_id``). At each heartbeat it also marks as
interrupted every reply still streaming whose lease is not live: one whose heartbeat is older
than LEASE_EXPIRY (its process died: ``kill -9``, out of memory, its machine lost), one that is
gone, or none at all (a reply begun before migration 0009). Such a reply keeps what its last
save held (a save a second): its text, and the stats of that text, its tokens counted as they
streamed. Expired leases are deleted as their replies are marked. A process that stops cleanly
ends its replies (stopped, saved) and then releases its lease.

Heartbeats are read against the reading process's clock (UTC): replicas on several machines
need clocks that agree to well within LEASE_EXPIRY, as NTP keeps them.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, not_, or_, select, update

from app.store.models import Lease, Message, new_id, now
from app.store.store import Store

log = logging.getLogger(__name__)

INTERRUPTED_BY_RESTART = "The app stopped while this reply was streaming."


def live(expiry: timedelta) -> ColumnElement[bool]:
    """Whether a lease is live now: its heartbeat no older than ``expiry`` (LEASE_EXPIRY)."""
    return Lease.heartbeat_at >= now() - expiry


class ProcessLease:
    """This process's lease on ``store``'s database, live while ``beat`` is called more
    often than every ``expiry``."""

    def __init__(self, store: Store, expiry: timedelta) -> None:
        self.store = store
        self.expiry = expiry
        self.id = new_id()

    def beat(self) -> int:
        """Renew the heartbeat (taking the lease at the first call), then mark the replies of
        dead processes interrupted, in one transaction. Returns how many were marked."""
        with self.store.transaction() as session:
            renewed = session.execute(
                update(Lease).where(Lease.id == self.id).values(heartbeat_at=now())
            )
            if not renewed.rowcount:  # type: ignore[attr-defined]
                if self.store.lease_id is not None:
                    log.warning("This process's lease had expired (it stalled for longer than "
                                "LEASE_EXPIRY): another process may have marked the replies "
                                "it writes interrupted; each is stored right as it ends")
                session.add(Lease(id=self.id, host=socket.gethostname()[:255], pid=os.getpid()))
                session.flush()
            alive = live(self.expiry)
            marked = session.execute(
                update(Message)
                .where(Message.status == "streaming",
                       or_(Message.lease_id.is_(None),
                           Message.lease_id.not_in(select(Lease.id).where(alive))))
                .values(status="interrupted", error=INTERRUPTED_BY_RESTART, updated_at=now())
                .execution_options(synchronize_session=False)
            )
            # The places its replies held (app.store.running) go with it (ON DELETE CASCADE).
            session.execute(delete(Lease).where(not_(alive)))
        self.store.lease_id = self.id
        return int(marked.rowcount)  # type: ignore[attr-defined]

    def release(self) -> None:
        """Give the lease up, as the process stops (its replies already ended)."""
        self.store.lease_id = None
        with self.store.transaction() as session:
            session.execute(delete(Lease).where(Lease.id == self.id))
