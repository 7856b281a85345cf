"""Persistence: users, conversations and messages (SQLAlchemy 2, Alembic migrations)."""

from app.store.accounts import AccountError, Accounts, InvalidAccount, NameTaken
from app.store.store import (
    ConversationRecord,
    ConversationSummary,
    NotFound,
    Store,
    StoredExchange,
    StoredReply,
    StoreError,
)

__all__ = [
    "AccountError",
    "Accounts",
    "ConversationRecord",
    "ConversationSummary",
    "InvalidAccount",
    "NameTaken",
    "NotFound",
    "Store",
    "StoreError",
    "StoredExchange",
    "StoredReply",
]
