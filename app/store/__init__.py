"""Persistence: users, conversations and messages (SQLAlchemy 2, Alembic migrations)."""

from app.store.accounts import AccountError, Accounts, InvalidAccount, NameTaken
from app.store.records import (
    BegunTurn,
    ConversationRecord,
    ConversationSummary,
    ConversationTree,
    StoredExchange,
    StoredMessage,
    StoredReply,
)
from app.store.store import NotFound, Store, StoreError

__all__ = [
    "AccountError",
    "Accounts",
    "BegunTurn",
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
