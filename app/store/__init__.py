"""Persistence: users, conversations and messages (SQLAlchemy 2, Alembic migrations)."""

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
    "ConversationRecord",
    "ConversationSummary",
    "NotFound",
    "Store",
    "StoreError",
    "StoredExchange",
    "StoredReply",
]
