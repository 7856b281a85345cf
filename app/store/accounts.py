"""Accounts for ``AUTH_MODE=password``: argon2-hashed passwords and API bearer tokens.

    StoreError
    └── AccountError        a sign-up was refused; ``str(err)`` says what to change
        ├── InvalidAccount  the name or the password does not follow the rules below
        └── NameTaken       another account has this name (compared ignoring case)

Names are 3-50 characters of ASCII letters, digits, ``.``, ``_`` and ``-``; passwords are at
least 8 characters. Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher``);
an API token is ``secrets.token_urlsafe(32)`` and only its SHA-256 hash is stored, with its
owner, creation and expiry times. Neither a password nor a token is ever logged or put in an
error message.

Users without a password (like the ``local`` user of ``AUTH_MODE=none``) never log in. An
unknown name spends the time of a real password check, so that names cannot be probed by
timing. Calls are synchronous and CPU-heavy (a check takes a large fraction of a second by
design); async callers run them in a thread.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from app.store.models import ApiToken, User, as_utc, now
from app.store.store import LOCAL_USER, NotFound, Store, StoreError

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{3,50}")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
# What ``secrets.token_urlsafe`` may produce; anything else is not one of our tokens.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{20,200}")
RESERVED_NAMES = frozenset({LOCAL_USER})


class AccountError(StoreError):
    """A sign-up was refused; the message says what to change and never holds the password."""


class InvalidAccount(AccountError):
    """Raised when the name or the password breaks the rules (length, characters)."""


class NameTaken(AccountError):
    """Raised when an account with this name (ignoring case) exists already."""


@dataclass(frozen=True)
class TokenInfo:
    user_id: int
    expires_at: datetime


@dataclass(frozen=True)
class TokenRecord:
    """One of a user's tokens as the store keeps it: its id and hash, never the token."""

    id: int
    token_hash: str
    created_at: datetime
    expires_at: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()



def _encodable(password: str) -> bool:
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Accounts:
    def __init__(
        self,
        store: Store,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        self.clock = clock
        self._dummy_hash: str | None = None

    # -- passwords -----------------------------------------------------------------------

    def signup(self, name: str, password: str) -> int:
        """Create an account; returns its user id. Raises ``InvalidAccount`` or ``NameTaken``."""
        if not NAME_PATTERN.fullmatch(name):
            raise InvalidAccount(
                "A name is 3 to 50 characters: letters a-z or A-Z, digits, '.', '_' or '-'."
            )
        if name.lower() in RESERVED_NAMES:
            raise InvalidAccount(f"The name {name!r} is reserved; pick another.")
        if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
            raise InvalidAccount(
                f"A password needs {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters; "
                "a passphrase of a few words is easy to remember and hard to guess."
            )
        if not _encodable(password):
            raise InvalidAccount("The password holds characters that cannot be encoded as UTF-8.")
        taken = NameTaken(f"The name {name!r} is taken; pick another.")
        password_hash = self.hasher.hash(password)
        try:
            with self.store.transaction() as session:
                if session.scalar(select(User.id).where(func.lower(User.name) == name.lower())):
                    raise taken
                user = User(name=name, password_hash=password_hash)
                session.add(user)
                session.flush()
                user_id = user.id
        except IntegrityError as err:  # a sign-up with the same name won the race
            raise taken from err
        log.info("Account %r created (user %d)", name, user_id)
        return user_id

    def check_password(self, name: str, password: str) -> int | None:
        """The user id when ``password`` is this account's; None otherwise, in about the same
        time whether or not the name exists."""
        with self.store.transaction() as session:
            row = session.execute(
                select(User.id, User.password_hash).where(User.name == name)
            ).one_or_none()
        usable = _encodable(password)
        if row is None or row.password_hash is None or not usable:
            self._spend_time(password if usable else "")
            return None
        try:
            self.hasher.verify(row.password_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if self.hasher.check_needs_rehash(row.password_hash):
            with self.store.transaction() as session:
                session.execute(
                    update(User).where(User.id == row.id)
                    .values(password_hash=self.hasher.hash(password))
                )
        user_id: int = row.id
        return user_id

    def _spend_time(self, password: str) -> None:
        """Verify against a throwaway hash, as long as a real check takes."""
        if self._dummy_hash is None:
            self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
        with suppress(VerificationError):
            self.hasher.verify(self._dummy_hash, password)

    def name(self, user_id: int) -> str:
        """The user's name; raises ``NotFound`` for an unknown id."""
        with self.store.transaction() as session:
            found = session.scalar(select(User.name).where(User.id == user_id))
        if found is None:
            raise NotFound(f"No user {user_id}.")
        return found

    # -- API tokens ----------------------------------------------------------------------

    def issue_token(self, user_id: int, ttl: timedelta) -> str:
        """A new bearer token for the user, valid for ``ttl``; tokens already expired are
        dropped on the way."""
        token = secrets.token_urlsafe(32)
        issued = self.clock()
        with self.store.transaction() as session:
            session.execute(delete(ApiToken).where(ApiToken.expires_at <= issued))
            session.add(ApiToken(
                token_hash=token_hash(token), user_id=user_id, created_at=issued,
                expires_at=issued + ttl,
            ))
        return token

    def token_info(self, token: str) -> TokenInfo | None:
        """Whose token this is and until when; None when unknown, expired or malformed."""
        if not TOKEN_PATTERN.fullmatch(token):
            return None
        with self.store.transaction() as session:
            row = session.execute(
                select(ApiToken.user_id, ApiToken.expires_at)
                .where(ApiToken.token_hash == token_hash(token))
            ).one_or_none()
        if row is None:
            return None
        expires_at = as_utc(row.expires_at)
        if expires_at <= self.clock():
            return None
        return TokenInfo(row.user_id, expires_at)

    def user_for_token(self, token: str) -> int | None:
        info = self.token_info(token)
        return None if info is None else info.user_id

    def tokens(self, user_id: int) -> list[TokenRecord]:
        """The user's tokens still valid, newest first (their hashes only: a token is shown
        once, when issued)."""
        with self.store.transaction() as session:
            rows = session.execute(
                select(ApiToken.id, ApiToken.token_hash, ApiToken.created_at,
                       ApiToken.expires_at)
                .where(ApiToken.user_id == user_id, ApiToken.expires_at > self.clock())
                .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
            ).all()
        return [TokenRecord(row.id, row.token_hash, as_utc(row.created_at),
                            as_utc(row.expires_at)) for row in rows]

    def revoke_id(self, user_id: int, token_id: int) -> bool:
        """Make the user's token ``token_id`` unusable; False when they have no such token."""
        with self.store.transaction() as session:
            result = session.execute(
                delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def revoke(self, token: str) -> None:
        """Make the token unusable; an unknown token is ignored."""
        if not TOKEN_PATTERN.fullmatch(token):
            return
        with self.store.transaction() as session:
            session.execute(delete(ApiToken).where(ApiToken.token_hash == token_hash(token)))
