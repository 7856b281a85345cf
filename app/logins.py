"""Failed logins, limited: the page's login form (Gradio's ``POST /login``) and the REST
API's ``POST /api/v1/login`` count them in one ``LoginThrottle``, per account name and per
client address.

The counts live in the database (``app.store.limits``): every replica of the app on it counts
the same failures, and a restart forgets none.

The client address is the one uvicorn hands the app: the connection's peer, or the address a
proxy named in TRUSTED_PROXIES puts in ``X-Forwarded-For``. Gradio gives its login check the
name and password only, so ``app.logs.RequestIdMiddleware`` sets ``client_address`` for it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from app.store import Store
from app.store.limits import Limits

# Failed logins (each costs an argon2 hash) allowed per account and per client address in
# any FAILED_LOGIN_WINDOW seconds; past that, every login is refused until the oldest of them
# is that old, even with the right password.
FAILED_LOGINS_PER_ACCOUNT = 5
FAILED_LOGINS_PER_ADDRESS = 20
FAILED_LOGIN_WINDOW = 900.0
_MINUTES = f"{FAILED_LOGIN_WINDOW / 60:.0f} minutes"
RULE = (
    f"After {FAILED_LOGINS_PER_ACCOUNT} failed logins for a name, or {FAILED_LOGINS_PER_ADDRESS} "
    f"from one address, within {_MINUTES}, logins are refused, even with the right password, "
    f"until {_MINUTES} have passed since the first of them."
)

class LoginLocked(Exception):
    """Raised instead of checking a password while the name or the client address has had
    too many failed logins; ``seconds``: how long until the next try may be checked."""

    def __init__(self, seconds: int) -> None:
        super().__init__(f"Too many failed logins; try again in {seconds} s.")
        self.seconds = seconds


class LoginThrottle:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._limits = Limits(store, clock)

    async def attempt(
        self, name: str, address: str, check: Callable[[], int | None]
    ) -> int | None:
        """The user id ``check`` finds (it runs in a thread: an argon2 hash), or None for a
        wrong name or password. Raises ``LoginLocked`` without calling ``check`` while the
        name (any case) or the address is locked out. A failure counts against both; a
        success clears the name's count, not the address's."""
        key = name.strip().casefold()
        wait = await asyncio.to_thread(self._wait, key, address)
        if wait > 0:
            raise LoginLocked(math.ceil(wait))
        user_id = await asyncio.to_thread(check)
        await asyncio.to_thread(self._count, key, address, user_id is not None)
        return user_id

    def _wait(self, key: str, address: str) -> float:
        return max(self._limits.wait("login-name", key, FAILED_LOGINS_PER_ACCOUNT),
                   self._limits.wait("login-address", address, FAILED_LOGINS_PER_ADDRESS))

    def _count(self, key: str, address: str, succeeded: bool) -> None:
        if succeeded:
            self._limits.clear("login-name", key)
        else:
            self._limits.add("login-name", key, FAILED_LOGIN_WINDOW)
            self._limits.add("login-address", address, FAILED_LOGIN_WINDOW)
