"""Conversations stored the way the app stores them, for the tests that need some: each
exchange through ``Store.begin_turn`` (the one write path of a turn, as ``app.chat.turns``
takes it), then its reply saved as it ended (``Store.save_reply``); what a turn cannot leave
(a message with no reply at all, settings as a file has them) through an import."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.store import BegunTurn, Store, transfer


def exchange(
    store: Store, user: int, conversation: str | None = None, text: str = "hello",
    reply: str | None = "hi", *, status: str = "stop", title: str | None = None,
    system_prompt: str | None = None, settings: Mapping[str, Any] | None = None,
    language: str | None = None, model: str | None = "smol", backend: str | None = "llama.cpp",
    attachments: Sequence[dict[str, str]] = (),
) -> BegunTurn:
    """``text`` and its ``reply`` (ended with ``status``; None: still streaming) at the end of
    the branch on screen of ``conversation``, or of a new one (titled ``title``, else after
    ``text``). The conversation's system prompt and settings stay as they are unless given."""
    parent = None
    if conversation is not None:
        record = store.get_conversation(user, conversation)
        if record.exchanges:
            last = record.exchanges[-1]
            parent = last.reply.id if last.reply is not None else last.user_message_id
        system_prompt = record.system_prompt if system_prompt is None else system_prompt
        settings = record.settings if settings is None else settings
    begun = store.begin_turn(
        user, conversation, system_prompt or "", dict(settings or {}), language,
        message=text, parent=parent, title=text if title is None else title, model=model,
        backend=backend, attachments=attachments,
    )
    if reply is not None:
        store.save_reply(user, begun.reply_id, reply, status=status)
    return begun


def retry(
    store: Store, user: int, conversation: str, message: int, reply: str | None = "hi again",
    *, status: str = "stop", model: str | None = "smol", backend: str | None = "llama.cpp",
) -> BegunTurn:
    """Another reply to the user message ``message``, as the page's Retry stores it (ended
    with ``status``; None: still streaming), now on screen; the earlier ones are kept. The
    conversation's system prompt and settings stay as they are."""
    record = store.get_conversation(user, conversation)
    begun = store.begin_turn(
        user, conversation, record.system_prompt, record.settings, None, reply_to=message,
        model=model, backend=backend,
    )
    if reply is not None:
        store.save_reply(user, begun.reply_id, reply, status=status)
    return begun


def imported_conversation(
    store: Store, user: int, text: str = "hello", *, title: str = "Imported",
    settings: Mapping[str, Any] | None = None,
) -> str:
    """A conversation imported from a file (``transfer.import_json``), made now: one message
    ``text`` that was never answered (no reply at all, which a turn never leaves), and the
    file's ``settings`` (the import keeps what ``kept_settings`` keeps). Returns its id."""
    moment = datetime.now(UTC).isoformat()
    times = {"created_at": moment, "updated_at": moment}
    message = {"id": 1, "role": "user", "content": text, "status": "complete", **times}
    document = {"format": transfer.FORMAT, "version": transfer.VERSION, "exported_at": moment,
                "conversations": [{"title": title, "settings": dict(settings or {}),
                                   "messages": [message], **times}]}
    [conversation] = transfer.import_json(store, user, json.dumps(document))
    return conversation
