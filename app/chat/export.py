"""A user's conversations as a readable Markdown document, for export only.

JSON is the exchange format, the one an import reads back (``app.store.transfer``), with every
branch; this is what a person reads: the branch on screen, each message with its reply.
"""

from __future__ import annotations

from datetime import UTC

from app.chat.models import FINISH_TEXT
from app.markdown import close_open_fence, escape_markdown, fenced
from app.store import ConversationRecord, Store, StoredReply

# A reply still streaming has no finish yet; the export says so.
EXPORTED_FINISH_TEXT = dict(FINISH_TEXT.items(), streaming="still streaming when exported")


def export_markdown(store: Store, user_id: int, conversation_id: str | None = None) -> str:
    """The user's conversations (one, or all oldest first) as a readable Markdown document:
    the branch on screen of each, every user message with its reply. Export only.

    What people typed (system prompt, user messages) and the files attached to a message are
    shown verbatim in a code fence longer than any backtick run inside it; replies are
    Markdown already and are kept as written, with a code fence the reply left open closed.

    Raises ``NotFound`` when ``conversation_id`` is not one of the user's conversations.
    """
    records = store.conversation_records(user_id, conversation_id)
    return "\n\n---\n\n".join(_conversation_markdown(c) for c in records) + "\n"


def _conversation_markdown(conversation: ConversationRecord) -> str:
    title = " ".join(conversation.title.split()) or "Untitled conversation"
    parts = [f"# {title}", _about(conversation)]
    if conversation.system_prompt:
        parts += ["**System prompt**", fenced(conversation.system_prompt)]
    for exchange in conversation.exchanges:
        parts += ["## You", fenced(exchange.user)]
        for attached in exchange.attachments:
            parts += [f"Attached **{escape_markdown(attached['name'])}**",
                      fenced(attached["text"], attached["language"])]
        if exchange.reply is not None:
            parts += ["## Assistant", *_reply_markdown(exchange.reply)]
    return "\n\n".join(parts)


def _about(conversation: ConversationRecord) -> str:
    facts = [f"Started {conversation.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"]
    if conversation.model:
        facts.append(f"model `{conversation.model}`")
    if conversation.backend:
        facts.append(f"backend {conversation.backend}")
    return " · ".join(facts)


def _reply_markdown(reply: StoredReply) -> list[str]:
    parts = [close_open_fence(reply.content)] if reply.content else []
    if reply.error:
        parts.append(f"⚠️ {reply.error}")
    parts.append(f"_{stats_line(reply)}_")
    return parts


def stats_line(reply: StoredReply) -> str:
    """Tokens, speed and how the reply ended, as the chat shows them."""
    parts = [] if reply.tokens is None else [f"{reply.tokens} tokens"]
    if reply.time_to_first_token is not None:
        parts.append(f"first token {reply.time_to_first_token:.2f} s")
    if reply.tokens_per_second is not None:
        parts.append(f"{reply.tokens_per_second:.1f} tokens/s")
    parts.append(EXPORTED_FINISH_TEXT.get(reply.status, reply.status))
    if reply.model:
        parts.append(reply.model)
    return " · ".join(parts)
