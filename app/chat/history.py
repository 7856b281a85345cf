"""One user's conversations between the store and ``Chat`` objects, for the page and the API.

Store calls are short and synchronous; they run in a worker thread so that streams keep
flowing. A failed save while a reply streams is logged and retried at the next save; only
the final save of a reply reports its failure to the user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.backends import BackendInfo, GenerationParams
from app.chat.attachments import Attachment
from app.chat.export import export_markdown
from app.chat.models import FINISH_TEXT, Chat, Exchange, TurnStats
from app.chat.service import ChatService
from app.store import ConversationRecord, NotFound, Store, StoredExchange, transfer

log = logging.getLogger(__name__)

TITLE_CHARS = 60
# Replies are written to the store at least this often while they stream.
SAVE_INTERVAL_SECONDS = 1.0


def title_from(text: str) -> str:
    """A conversation's automatic title: the first line of its first message, shortened."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "New conversation")
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def exchange_from(stored: StoredExchange) -> Exchange:
    exchange = Exchange(
        user=stored.user, user_message_id=stored.user_message_id, done=True,
        user_alternatives=stored.user_alternatives,
        reply_alternatives=stored.reply_alternatives,
        attachments=tuple(Attachment(a["name"], a["language"], a["text"])
                          for a in stored.attachments),
    )
    reply = stored.reply
    if reply is None:
        return exchange
    finish = reply.status if reply.status in FINISH_TEXT else None
    if finish is not None:
        exchange.stats = TurnStats(
            tokens=reply.tokens or 0, time_to_first_token=reply.time_to_first_token,
            tokens_per_second=reply.tokens_per_second, finish=finish,
            model=reply.model or "", backend=reply.backend or "",
        )
    exchange.reply, exchange.error, exchange.reply_id = reply.content, reply.error, reply.id
    exchange.done = reply.status != "streaming"
    return exchange


class History:
    def __init__(self, store: Store, user_id: int) -> None:
        self.store = store
        self.user_id = user_id

    async def choices(self, search: str = "") -> list[tuple[str, str]]:
        """(title, id) of the user's conversations, newest first."""
        found = await asyncio.to_thread(self.store.list_conversations, self.user_id, search)
        return [(summary.title, summary.id) for summary in found]

    async def open(self, conversation_id: str) -> tuple[ConversationRecord, Chat]:
        """The conversation with its branch on screen.

        Raises ``NotFound`` for a conversation that is gone or not the user's."""
        record = await asyncio.to_thread(
            self.store.get_conversation, self.user_id, conversation_id
        )
        return record, Chat(record.id, [exchange_from(e) for e in record.exchanges])

    async def switch(self, chat: Chat, message_id: int) -> Chat:
        """The conversation of ``chat`` with the branch through ``message_id`` on screen, now
        and when it is opened again.

        Raises ``NotFound`` for a message not in it (or a conversation gone)."""
        if chat.id is None:
            raise NotFound(f"No message {message_id} in this conversation.")
        await asyncio.to_thread(self.store.switch_branch, self.user_id, chat.id, message_id)
        return (await self.open(chat.id))[1]

    async def begin(
        self, chat: Chat, text: str, info: BackendInfo | None, system_prompt: str,
        settings: dict[str, Any], retried: Exchange | None = None, language: str | None = None,
        edited: Exchange | None = None, attachments: tuple[Attachment, ...] = (),
    ) -> Exchange:
        """The new exchange at the end of ``chat``, stored with an empty reply that streams,
        in one transaction with the conversation's prompt, settings and language (None: the
        language as it is); the message's ``attachments`` are stored with it.

        For a retry, the retried exchange's message is answered again and its earlier reply
        kept in the store. For an edit, ``text`` is a new version of the edited exchange's
        message, stored beside it: a new branch replaces the edited exchange and those after
        it on screen, and the old branch stays in the store. Raises ``NotFound`` when the
        conversation was deleted meanwhile.
        """
        if retried is not None and (chat.id is None or retried.user_message_id is None):
            raise ValueError("a retry answers a stored message of a stored conversation")
        replaced = edited if edited is not None else retried
        kept = len(chat.exchanges) if replaced is None else chat.exchanges.index(replaced)
        # The message the new one follows: the last one on screen above it.
        before = chat.exchanges[kept - 1] if kept and chat.id is not None else None
        begun = await asyncio.to_thread(
            self.store.begin_turn, self.user_id, chat.id, system_prompt, settings, language,
            message=None if retried else text, title=title_from(text),
            parent=None if before is None else before.reply_id or before.user_message_id,
            reply_to=retried.user_message_id if retried else None,
            model=info.model_id if info else None, backend=info.name if info else None,
            attachments=[asdict(a) for a in attachments],
        )
        chat.id = begun.conversation_id
        del chat.exchanges[kept:]
        exchange = Exchange(
            user=text, user_message_id=begun.user_message_id, reply_id=begun.reply_id,
            user_alternatives=begun.user_alternatives,
            reply_alternatives=begun.reply_alternatives, attachments=attachments,
        )
        chat.exchanges.append(exchange)
        return exchange

    async def stream_and_save(
        self, service: ChatService, exchange: Exchange, info: BackendInfo,
        messages: list[dict[str, str]], params: GenerationParams,
    ) -> AsyncGenerator[None]:
        """Stream the reply into ``exchange``, yielding after each update; it is saved at
        least every ``SAVE_INTERVAL_SECONDS`` and, with its stats, when it ends. Cancelled or
        closed before the end (the page went away), it is stored as stopped, with its text,
        and the cancellation goes on to the caller."""
        saved_at = time.monotonic()
        # Saves made while the reply streams run beside it: a slow or locked database delays
        # the save, not the stream. One at a time; the final save waits for it.
        saving: asyncio.Task[None] | None = None
        stream = service.stream_reply(info, messages, params, exchange.stop, self.user_id)
        try:
            async with aclosing(stream):
                async for progress in stream:
                    exchange.reply = progress.text
                    exchange.stats = progress.stats
                    if progress.error is not None:
                        exchange.error = str(progress.error)
                    if progress.done:
                        await self._after(saving, self.save_final(exchange))
                        exchange.done = True
                    elif time.monotonic() - saved_at >= SAVE_INTERVAL_SECONDS and (
                        saving is None or saving.done()
                    ):
                        saved_at = time.monotonic()
                        saving = asyncio.create_task(self.save_progress(exchange))
                    yield
        finally:
            if not exchange.done:
                exchange.done = True
                if exchange.stats is not None:
                    exchange.stats = replace(exchange.stats, finish="stopped")
                await asyncio.shield(self._after(saving, self.save_final(exchange)))

    @staticmethod
    async def _after(earlier: asyncio.Task[None] | None, save: Awaitable[None]) -> None:
        """``save``, once the save still running (if any) is done."""
        if earlier is not None:
            await asyncio.wait({earlier})
        await save

    async def save_progress(self, exchange: Exchange) -> None:
        if exchange.reply_id is None:
            return
        try:
            await asyncio.to_thread(
                self.store.save_reply, self.user_id, exchange.reply_id, exchange.reply
            )
        except NotFound:
            return  # its conversation was deleted while it streamed
        except SQLAlchemyError:
            log.warning("Could not save reply %s while it streams; retrying at the next save",
                        exchange.reply_id, exc_info=True)

    async def save_final(self, exchange: Exchange) -> None:
        """The reply as it ended, with its stats; a failure is added to the reply's error."""
        if exchange.reply_id is None:
            return
        stats = exchange.stats
        final: dict[str, Any] = {"status": stats.finish if stats else "interrupted",
                                 "error": exchange.error}
        if stats is not None:
            final |= {"tokens": stats.tokens, "time_to_first_token": stats.time_to_first_token,
                      "tokens_per_second": stats.tokens_per_second}
            if not stats.cached:  # the backend that answered, after any failover
                final["backend"] = stats.backend
        try:
            await asyncio.to_thread(
                self.store.save_reply, self.user_id, exchange.reply_id, exchange.reply, **final
            )
        except NotFound:
            return
        except SQLAlchemyError:
            log.exception("Could not save reply %s", exchange.reply_id)
            exchange.error = " ".join(
                filter(None, [exchange.error, "This reply could not be saved."])
            )

    async def forget(self, chat: Chat, exchange: Exchange) -> None:
        if chat.id is not None and exchange.user_message_id is not None:
            await asyncio.to_thread(
                self.store.delete_exchange, self.user_id, chat.id, exchange.user_message_id
            )

    async def rename(self, conversation_id: str, title: str) -> None:
        await asyncio.to_thread(self.store.rename, self.user_id, conversation_id, title)

    async def delete(self, conversation_id: str) -> None:
        await asyncio.to_thread(self.store.delete, self.user_id, conversation_id)

    async def export(self, conversation_id: str | None, markdown: bool) -> tuple[str, str]:
        """One conversation (or all, for None) as a file's name and text, JSON or Markdown."""
        return await asyncio.to_thread(self._export, conversation_id, markdown)

    async def import_file(self, path: Path, limits: transfer.AttachmentLimits) -> list[str]:
        """Raises ``TransferError`` (nothing imported) for a file that is not a good export,
        attached files over ``limits`` among them."""
        return await asyncio.to_thread(self._import, path, limits)

    def _export(self, conversation_id: str | None, markdown: bool) -> tuple[str, str]:
        exporter = export_markdown if markdown else transfer.export_json
        document = exporter(self.store, self.user_id, conversation_id)
        name = "conversation" if conversation_id else "conversations"
        return f"{name}.{'md' if markdown else 'json'}", document

    def _import(self, path: Path, limits: transfer.AttachmentLimits) -> list[str]:
        if path.stat().st_size > transfer.DEFAULT_MAX_BYTES:
            raise transfer.TransferError(
                f"The file is larger than {transfer.DEFAULT_MAX_BYTES // 2**20} MiB."
            )
        return transfer.import_json(self.store, self.user_id, path.read_bytes(), limits=limits)
