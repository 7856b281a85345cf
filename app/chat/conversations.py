"""One user's conversations, for the page and the REST API alike: the one way either reads,
writes, shares, exports or imports them (neither calls the store itself).

Store calls are short and synchronous; each runs in a worker thread so that streams keep
flowing. Their failures reach callers as the store's own errors, mapped here once:

    StoreError
    ├── NotFound          the conversation, message or share does not exist or is not the
    │                     user's (the same answer for both)
    ├── TransferError     an import that is not a good export; ``str(err)`` says what is wrong
    └── StoreUnavailable  the database did not answer (locked, down); worth trying again

The page turns them into messages, the API into its error answers (``app.api.errors``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError

from app.arena.rating import Outcome
from app.backends import BackendInfo
from app.chat.attachments import Attachment
from app.chat.export import export_markdown
from app.chat.log import ReplyLog
from app.chat.models import FINISH_TEXT, Chat, Exchange, TurnStats
from app.sizes import size_text
from app.store import (
    ConversationRecord,
    ConversationSummary,
    ConversationTree,
    NotFound,
    Store,
    StoredExchange,
    StoredMessage,
    StoreError,
    transfer,
)
from app.store.comparisons import BoardRow, Comparisons, Side, StoredComparison
from app.store.shares import Shares, ShareSummary
from app.store.transfer import AttachmentLimits, TransferError

__all__ = [
    "AttachmentLimits",
    "Conversations",
    "NotFound",
    "StoreError",
    "StoreUnavailable",
    "TransferError",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

TITLE_CHARS = 60


class StoreUnavailable(StoreError):
    """The database did not answer (locked for too long, or down); ``str(err)`` says so."""


def unavailable(err: OperationalError) -> StoreUnavailable:
    """What a caller is told of the database failing with ``err`` (logged here)."""
    log.warning("The database failed", exc_info=err)
    return StoreUnavailable(
        "The database did not answer; nothing was changed. Try again in a moment."
    )


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
    exchange.log, exchange.error, exchange.reply_id = ReplyLog(reply.content), reply.error, reply.id
    exchange.runs, exchange.check = dict(reply.runs or {}), reply.check
    exchange.done = reply.status != "streaming"
    return exchange


def stats_columns(stats: TurnStats | None) -> dict[str, Any]:
    """A reply's stats as the store keeps them (none before its first token)."""
    if stats is None:
        return {}
    columns: dict[str, Any] = {
        "tokens": stats.tokens, "time_to_first_token": stats.time_to_first_token,
        "tokens_per_second": stats.tokens_per_second,
    }
    if not stats.cached:  # the backend that answered, after any failover
        columns["backend"] = stats.backend
    return columns


class Conversations:
    def __init__(self, store: Store, user_id: int) -> None:
        self.store = store
        self.user_id = user_id

    async def _call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(self.user_id, *args, **kwargs)`` in a worker thread, its failures as the
        store errors above."""
        try:
            return await asyncio.to_thread(call, self.user_id, *args, **kwargs)
        except OperationalError as err:  # SQLite's "database is locked", a server gone
            raise unavailable(err) from err

    # -- reading -------------------------------------------------------------------------

    async def summaries(self, search: str = "", limit: int = 200) -> list[ConversationSummary]:
        """The user's conversations, newest first; ``search`` matches titles and messages."""
        if "\x00" in search:  # no stored text holds one (PostgreSQL refuses them)
            return []
        return await self._call(self.store.list_conversations, search, limit)

    async def choices(self, search: str = "") -> list[tuple[str, str]]:
        """(title, id) of the user's conversations, newest first."""
        return [(summary.title, summary.id) for summary in await self.summaries(search)]

    async def record(self, conversation_id: str) -> ConversationRecord:
        """The conversation with the exchanges of its branch on screen."""
        return await self._call(self.store.get_conversation, conversation_id)

    async def tree(self, conversation_id: str) -> ConversationTree:
        """The conversation's every message, on every branch."""
        return await self._call(self.store.get_tree, conversation_id)

    async def open(self, conversation_id: str) -> tuple[ConversationRecord, Chat]:
        """The conversation with its branch on screen, as a ``Chat`` too."""
        record = await self.record(conversation_id)
        return record, Chat(record.id, [exchange_from(e) for e in record.exchanges])

    # -- writing -------------------------------------------------------------------------

    async def switch(self, chat: Chat, message_id: int) -> Chat:
        """The conversation of ``chat`` with the branch through ``message_id`` on screen, now
        and when it is opened again."""
        if chat.id is None:
            raise NotFound(f"No message {message_id} in this conversation.")
        await self._call(self.store.switch_branch, chat.id, message_id)
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
        it on screen, and the old branch stays in the store.
        """
        if retried is not None and (chat.id is None or retried.user_message_id is None):
            raise ValueError("a retry answers a stored message of a stored conversation")
        replaced = edited if edited is not None else retried
        kept = len(chat.exchanges) if replaced is None else chat.exchanges.index(replaced)
        # The message the new one follows: the last one on screen above it.
        before = chat.exchanges[kept - 1] if kept and chat.id is not None else None
        begun = await self._call(
            self.store.begin_turn, chat.id, system_prompt, settings, language,
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

    async def save_progress(self, exchange: Exchange) -> None:
        """The reply so far, with the stats of that text (what a reply whose process dies
        keeps: ``app.store.leases``); a failure is logged, and the next save tries again."""
        if exchange.reply_id is None:
            return
        try:
            await self._call(self.store.save_reply, exchange.reply_id, exchange.reply,
                             **stats_columns(exchange.stats))
        except NotFound:
            return  # its conversation was deleted while it streamed
        except StoreUnavailable:
            log.warning("Could not save reply %s while it streams; retrying at the next save",
                        exchange.reply_id)

    async def save_final(self, exchange: Exchange) -> None:
        """The reply as it ended, with its stats; a failure is added to the reply's error."""
        if exchange.reply_id is None:
            return
        stats = exchange.stats
        final: dict[str, Any] = {"status": stats.finish if stats else "interrupted",
                                 "error": exchange.error, **stats_columns(stats)}
        try:
            await self._call(self.store.save_reply, exchange.reply_id, exchange.reply, **final)
        except NotFound:
            return
        except StoreUnavailable:
            log.error("Could not save reply %s", exchange.reply_id)
            exchange.error = " ".join(
                filter(None, [exchange.error, "This reply could not be saved."])
            )

    async def exchange_of(self, reply_id: int) -> tuple[str, StoredMessage, StoredMessage]:
        """The conversation of the reply ``reply_id``, the message it answers, and the reply."""
        return await self._call(self.store.exchange_of, reply_id)

    async def save_notes(
        self, reply_id: int, *, runs: dict[str, dict[str, Any]] | None = None,
        check: dict[str, Any] | None = None,
    ) -> None:
        """The runs of the reply's code blocks, or its check (``Store.save_notes``)."""
        await self._call(self.store.save_notes, reply_id, runs=runs, check=check)

    async def add_version(
        self, conversation_id: str, user_message_id: int, content: str, model: str | None,
        backend: str | None, check: dict[str, Any],
    ) -> int:
        """A new version of the reply to ``user_message_id``, ended, with ``content`` and its
        ``check`` (a round of a repair): stored as a retry is, the earlier versions kept, and
        now on screen. Returns its id."""
        return await self._call(self.store.add_version, conversation_id, user_message_id,
                                content, model, backend, check)

    async def forget(self, chat: Chat, exchange: Exchange) -> None:
        """Take back ``exchange`` (its message, every version of its reply and what follows)."""
        if chat.id is not None and exchange.user_message_id is not None:
            await self._call(self.store.delete_exchange, chat.id, exchange.user_message_id)

    async def rename(self, conversation_id: str, title: str) -> None:
        await self._call(self.store.rename, conversation_id, title)

    async def delete(self, conversation_id: str) -> None:
        await self._call(self.store.delete, conversation_id)

    # -- sharing -------------------------------------------------------------------------

    async def share(self, conversation_id: str) -> ShareSummary:
        """A read-only snapshot of the conversation as it stands, at a new secret link."""
        return await self._call(Shares(self.store).create, conversation_id)

    async def shares(self) -> list[ShareSummary]:
        """The user's shared links, newest first."""
        return await self._call(Shares(self.store).list)

    async def revoke_share(self, share_id: int) -> None:
        await self._call(Shares(self.store).revoke, share_id)

    async def import_share(self, token: str) -> str:
        """A copy of the shared conversation as one of the user's; returns its id."""
        return await self._call(Shares(self.store).import_into, token)

    # -- comparisons -------------------------------------------------------------------

    async def record_comparison(
        self, conversation_id: str, left: Side, right: Side, blind: bool
    ) -> int:
        """Keep a comparison of two replies in the conversation (``Comparisons.record``);
        returns its id."""
        return await self._call(Comparisons(self.store).record, conversation_id, left, right,
                                blind=blind)

    async def vote(self, comparison_id: int, outcome: Outcome) -> StoredComparison:
        """The user's vote on their comparison (``Comparisons.vote``: ``VoteFinal`` for a
        second vote on a blind one)."""
        return await self._call(Comparisons(self.store).vote, comparison_id, outcome)

    async def comparisons(self, limit: int = 200) -> list[StoredComparison]:
        """The user's comparisons, newest first."""
        return await self._call(Comparisons(self.store).list, limit)

    async def board(self, everyone: bool) -> list[BoardRow]:
        """The board of the user's comparisons, or of every user's (whether the user may see
        that one is ``app.arena.rules.board_owner``'s to say)."""
        return await self._call(
            lambda user_id: Comparisons(self.store).board(None if everyone else user_id)
        )

    # -- export and import ---------------------------------------------------------------

    async def export(self, conversation_id: str | None, markdown: bool) -> tuple[str, str]:
        """One conversation (or all, for None) as a file's name and text, JSON or Markdown."""
        exporter = export_markdown if markdown else transfer.export_json
        document = await self._call(
            lambda user_id: exporter(self.store, user_id, conversation_id)
        )
        name = "conversation" if conversation_id else "conversations"
        return f"{name}.{'md' if markdown else 'json'}", document

    async def import_file(self, path: Path, limits: AttachmentLimits) -> list[str]:
        """The conversations of an export file, added to the user's: all of them, or none
        (``TransferError`` says why, attached files over ``limits`` among the reasons)."""
        def read_and_add(user_id: int) -> list[str]:
            if path.stat().st_size > transfer.DEFAULT_MAX_BYTES:
                raise TransferError(
                    f"The file is larger than {size_text(transfer.DEFAULT_MAX_BYTES)}."
                )
            return transfer.import_json(self.store, user_id, path.read_bytes(), limits=limits)

        return await self._call(read_and_add)
