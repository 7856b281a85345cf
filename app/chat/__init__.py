"""Chat logic: context fitting, one streamed turn and its stats; no Gradio, no HTTP."""

from app.chat.context import ContextOverflow, FittedContext, estimate_tokens, fit_messages
from app.chat.log import ReplyLog
from app.chat.models import Chat, Exchange, TurnStats
from app.chat.service import ChatService, Progress

__all__ = [
    "Chat",
    "ChatService",
    "ContextOverflow",
    "Exchange",
    "FittedContext",
    "Progress",
    "ReplyLog",
    "TurnStats",
    "estimate_tokens",
    "fit_messages",
]
