"""Persistence: users, conversations and messages (SQLAlchemy 2, Alembic migrations)."""

from app.store.accounts import AccountError, Accounts, InvalidAccount, NameTaken
from app.store.store import (
    ConversationRecord,
    ConversationSummary,
    ConversationTree,
    NotFound,
    Store,
    StoredExchange,
    StoredMessage,
    StoredReply,
    StoreError,
)

__all__ = [
    "AccountError",
    "Accounts",
    "ConversationRecord",
    "ConversationSummary",
    "ConversationTree",
    "InvalidAccount",
    "NameTaken",
    "NotFound",
    "Store",
    "StoreError",
    "StoredExchange",
    "StoredMessage",
    "StoredReply",
]
