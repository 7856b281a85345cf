"""Export and import of a user's conversations.

JSON is the exchange format: a versioned document holding everything needed to restore the
conversations exactly: every branch of each (every version of a retried reply, every edit of a
message), each message naming its parent by an id local to its conversation, and the last
message of the branch on screen, the files attached to each user message, and the runs of a
reply's code blocks and the check it is a version of (``app.chat.checks``; a check names the
replies of its versions by ids local to the conversation too). Version 1 (before branches)
linked replies alone; it is still read, each user message following the latest reply before
it, as that version showed it. Version 2 is version 3 without attached files, version 3 is
version 4 without runs and checks, version 4 is version 5 without comparisons.

A conversation's comparisons (Compare: one message answered by two models, and the vote
between them; ``app.store.comparisons``) are exported with it, each naming its two replies by
their local ids, with their models, speeds and vote; a blind one not voted on yet is left out,
and its replies' models and backends are null (they would tell which model wrote which side;
``Store.blind_replies``). An import reads and checks them but
does not restore them: the board counts the votes cast, and the speeds measured, on this
server. The readable Markdown export is the chat's
(``app.chat.export``): the store knows no presentation.

Import reads untrusted files: the document is size-limited, parsed and validated against the
models below (unknown fields refused, lengths and counts bounded), its links are checked, and
only then written, in one transaction. Attached files are held to the limits of the page's
(``AttachmentLimits``), a reply's runs and check to ``MAX_NOTES_BYTES`` each. Any problem
with the file raises ``TransferError``,
whose message names the place (``conversations[2].messages[5].role: ...``); nothing is
written then. Text is stored verbatim: making it safe to show is the UI's job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, to_json
from sqlalchemy import or_, select

from app.settings import ATTACHMENT_MAX_BYTES, ATTACHMENTS_PER_MESSAGE
from app.store.models import Comparison, Conversation, Message, kept_settings, now
from app.store.records import blind_names
from app.store.store import Store, StoreError

FORMAT = "coding-playground.conversations"
VERSION = 5
VERSIONS_READ = (1, 2, 3, 4, 5)

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
MAX_CONVERSATIONS = 1_000
MAX_MESSAGES = 10_000  # per conversation
MAX_TITLE_CHARS = 200  # the column's size
MAX_TEXT_CHARS = 1_000_000  # a message's content or error, a system prompt
MAX_SETTINGS_BYTES = 64 * 1024
MAX_SETTINGS_DEPTH = 4
MAX_NOTES_BYTES = 2 * 1024 * 1024  # a reply's runs, or its check, as JSON
MAX_ERRORS_SHOWN = 3

USER_STATUSES = frozenset({"complete"})
REPLY_STATUSES = frozenset({"streaming", "stop", "length", "stopped", "interrupted"})
STREAMING_AT_EXPORT = "This reply was still streaming when the conversation was exported."


class TransferError(StoreError):
    """An import document is not a valid conversations export; nothing was written."""


@dataclass(frozen=True)
class AttachmentLimits:
    """The most bytes an attached file may have, and files a message (the settings
    ATTACHMENT_MAX_BYTES and ATTACHMENTS_PER_MESSAGE)."""

    max_bytes: int = ATTACHMENT_MAX_BYTES
    per_message: int = ATTACHMENTS_PER_MESSAGE


# -- the document ---------------------------------------------------------------------------


def _storable(text: str) -> str:
    if "\x00" in text:
        raise ValueError("NUL characters cannot be stored")
    return text


def _utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the date is out of range in UTC") from None


Title = Annotated[str, Field(max_length=MAX_TITLE_CHARS), AfterValidator(_storable)]
Name = Annotated[str, Field(max_length=200), AfterValidator(_storable)]  # a model's id
Kind = Annotated[str, Field(max_length=50), AfterValidator(_storable)]  # backend, language
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_storable)]
Moment = Annotated[AwareDatetime, AfterValidator(_utc)]
LocalId = Annotated[int, Field(ge=1, le=2**31 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class AttachmentDoc(_Strict):
    """A file attached to a user message: its name, the language of its fence, its text."""

    name: Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_storable)]
    language: Kind
    text: Text


class RunDoc(_Strict):
    """The last run of one of a reply's code blocks in the sandbox (``app.chat.checks``)."""

    language: Kind
    stdout: Text
    stderr: Text
    exit_code: int | None
    seconds: float = Field(ge=0)
    stopped: Name | None
    truncated: bool


BlockIndex = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,5})$")]  # "0", "1", ...


class CheckTestsDoc(_Strict):
    origin: Kind | None
    source: Text


class CheckResultDoc(_Strict):
    name: Text
    origin: Kind
    status: Kind
    error: Text | None
    output: Text


class CheckVersionDoc(_Strict):
    number: int = Field(ge=0, le=1000)
    reply_id: LocalId | None
    badge: Name
    ok: bool
    code_error: Text | None
    changed: Kind
    diff: Text
    results: list[CheckResultDoc]


class CheckDoc(_Strict):
    """A reply's check against tests (``app.chat.checks``): the reply checked and each
    version's reply named by ids local to the conversation, as ``reply_to`` is."""

    reply_id: LocalId | None
    tests: CheckTestsDoc
    versions: list[CheckVersionDoc]
    rounds: int = Field(ge=0, le=1000)
    outcome: Kind | None


class MessageDoc(_Strict):
    """One message; ``id`` is local to its conversation, ``reply_to`` names its parent by such
    an id: for a reply, the user message it answers; for a user message, the message it
    follows (none for a first message, and always none in version 1). A user message may
    have files attached (version 3); a reply, the runs of its code blocks (by the block's
    index) and the check it is a version of (version 4)."""

    id: LocalId
    role: Literal["user", "assistant"]
    content: Text
    reply_to: LocalId | None = None
    status: Literal["complete", "streaming", "stop", "length", "stopped", "interrupted"]
    error: Text | None = None
    tokens: int | None = Field(None, ge=0, le=2**31 - 1)
    time_to_first_token: float | None = Field(None, ge=0)
    tokens_per_second: float | None = Field(None, ge=0)
    model: Name | None = None
    backend: Kind | None = None
    attachments: list[AttachmentDoc] = Field(default_factory=list)
    runs: dict[BlockIndex, RunDoc] | None = None
    check: CheckDoc | None = None
    created_at: Moment
    updated_at: Moment

    @field_validator("runs", "check")
    @classmethod
    def _bounded_notes(cls, value: Any) -> Any:
        size = len(to_json(value))
        if size > MAX_NOTES_BYTES:
            raise ValueError(f"{size} bytes as JSON; the limit is {MAX_NOTES_BYTES}")
        return value


class ComparedDoc(_Strict):
    """One side of a comparison: its reply (a local id; none once deleted), model, backend
    and speed."""

    reply: LocalId | None
    model: Name
    backend: Kind | None
    first_token_ms: float | None = Field(ge=0)
    tokens_per_second: float | None = Field(ge=0)


class ComparisonDoc(_Strict):
    """A comparison of two replies of the conversation, and its vote (version 5)."""

    left: ComparedDoc
    right: ComparedDoc
    blind: bool
    outcome: Literal["left", "right", "tie", "both_bad"] | None
    created_at: Moment
    voted_at: Moment | None


class ConversationDoc(_Strict):
    """One conversation; ``id`` is the exporting store's and is not used by an import."""

    id: str | None = Field(None, max_length=64)
    title: Title
    model: Name | None = None
    backend: Kind | None = None
    language: Kind | None = None
    system_prompt: Text = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    created_at: Moment
    updated_at: Moment
    messages: list[MessageDoc] = Field(default_factory=list, max_length=MAX_MESSAGES)
    leaf: LocalId | None = None  # the last message of the branch on screen; version 2
    comparisons: list[ComparisonDoc] = Field(default_factory=list, max_length=MAX_MESSAGES)

    @field_validator("settings")
    @classmethod
    def _bounded_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _depth(value) > MAX_SETTINGS_DEPTH:
            raise ValueError(f"nested deeper than {MAX_SETTINGS_DEPTH} levels")
        try:
            size = len(json.dumps(value, allow_nan=False).encode())
        except ValueError:
            raise ValueError("numbers must be finite") from None
        if size > MAX_SETTINGS_BYTES:
            raise ValueError(f"{size} bytes as JSON; the limit is {MAX_SETTINGS_BYTES}")
        return value


class ExportDoc(_Strict):
    format: str
    version: int
    exported_at: Moment
    conversations: list[ConversationDoc] = Field(max_length=MAX_CONVERSATIONS)

    @field_validator("format")
    @classmethod
    def _our_format(cls, value: str) -> str:
        if value != FORMAT:
            raise ValueError(f"not a conversations export (expected {FORMAT!r})")
        return value

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in VERSIONS_READ:
            raise ValueError(
                f"version {value} is not supported; this app reads versions "
                f"{', '.join(map(str, VERSIONS_READ))}"
            )
        return value


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level + 1)
            pending.extend((child, level + 1) for child in
                           (item.values() if isinstance(item, dict) else item))
    return deepest


# -- export ---------------------------------------------------------------------------------


def export_json(store: Store, user_id: int, conversation_id: str | None = None) -> str:
    """The user's conversations (one, or all oldest first) as a JSON export document.

    Raises ``NotFound`` when ``conversation_id`` is not one of the user's conversations.
    """
    conversations = store.conversation_rows(user_id, conversation_id)
    compared = _comparisons(store, user_id, [c.id for c in conversations])
    hidden = store.blind_replies([c.id for c in conversations])
    document = {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": _iso(now()),
        "conversations": [_conversation_dict(c, compared.get(c.id, []), hidden)
                          for c in conversations],
    }
    return json.dumps(document, ensure_ascii=False, indent=2)


def _comparisons(
    store: Store, user_id: int, conversation_ids: Sequence[str]
) -> dict[str, list[Comparison]]:
    """The user's comparisons in these conversations, oldest first, by conversation; a blind
    one not voted on yet is left out (its models are what it hides)."""
    query = select(Comparison).where(
        Comparison.user_id == user_id, Comparison.conversation_id.in_(conversation_ids),
        or_(~Comparison.blind, Comparison.outcome.is_not(None)),
    ).order_by(Comparison.id)
    found: dict[str, list[Comparison]] = {}
    with store.transaction() as session:
        for comparison in session.scalars(query):
            assert comparison.conversation_id is not None, "one of the conversations"
            found.setdefault(comparison.conversation_id, []).append(comparison)
    return found


def _conversation_dict(
    conversation: Conversation, comparisons: Sequence[Comparison], hidden: Collection[int]
) -> dict[str, Any]:
    """The conversation as exported; the models and backends of the ``hidden`` replies (and
    the conversation's, when it is theirs) are null."""
    model, backend = blind_names(conversation, conversation.messages, hidden)
    local_ids = {message.id: n for n, message in enumerate(conversation.messages, start=1)}
    # A leaf that is gone reads as none: the newest child at each step.
    leaf = local_ids.get(conversation.leaf_id) if conversation.leaf_id is not None else None
    return {
        "id": conversation.id,
        "title": conversation.title,
        "model": model,
        "backend": backend,
        "language": conversation.language,
        "system_prompt": conversation.system_prompt,
        "settings": conversation.settings or {},
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
        "messages": [_message_dict(m, local_ids, m.id in hidden)
                     for m in conversation.messages],
        "leaf": leaf,
        "comparisons": [_comparison_dict(c, local_ids) for c in comparisons],
    }


def _comparison_dict(comparison: Comparison, local_ids: dict[int, int]) -> dict[str, Any]:
    def side(reply_id: int | None, model: str, backend: str | None, first_token_ms:
             float | None, tokens_per_second: float | None) -> dict[str, Any]:
        return {"reply": None if reply_id is None else local_ids.get(reply_id), "model": model,
                "backend": backend, "first_token_ms": _finite(first_token_ms),
                "tokens_per_second": _finite(tokens_per_second)}

    c = comparison
    return {
        "left": side(c.left_reply_id, c.left_model, c.left_backend, c.left_first_token_ms,
                     c.left_tokens_per_second),
        "right": side(c.right_reply_id, c.right_model, c.right_backend,
                      c.right_first_token_ms, c.right_tokens_per_second),
        "blind": c.blind,
        "outcome": c.outcome,
        "created_at": _iso(c.created_at),
        "voted_at": None if c.voted_at is None else _iso(c.voted_at),
    }


def _message_dict(message: Message, local_ids: dict[int, int], hidden: bool) -> dict[str, Any]:
    return {
        "id": local_ids[message.id],
        "role": message.role,
        "content": message.content,
        "reply_to": None if message.reply_to_id is None else local_ids[message.reply_to_id],
        "status": message.status,
        "error": message.error,
        "tokens": message.tokens,
        "time_to_first_token": _finite(message.time_to_first_token),
        "tokens_per_second": _finite(message.tokens_per_second),
        "model": None if hidden else message.model,
        "backend": None if hidden else message.backend,
        "attachments": message.attachments or [],
        "runs": message.runs,
        "check": None if message.check is None else _relinked(message.check, local_ids),
        "created_at": _iso(message.created_at),
        "updated_at": _iso(message.updated_at),
    }


def _relinked(check: Mapping[str, Any], ids: Mapping[int, int]) -> dict[str, Any]:
    """``check`` with the replies it names renamed by ``ids`` (store ids to local ones, or
    back); one not there is none."""
    return {**check, "reply_id": ids.get(check["reply_id"]), "versions": [
        {**version, "reply_id": ids.get(version["reply_id"])} for version in check["versions"]
    ]}


def _iso(moment: datetime) -> str:
    """UTC in ISO 8601; SQLite hands back naive datetimes, which the store writes in UTC."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat()


def _finite(number: float | None) -> float | None:
    return number if number is not None and math.isfinite(number) else None


# -- import ---------------------------------------------------------------------------------


def import_json(
    store: Store, user_id: int, data: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
    limits: AttachmentLimits = AttachmentLimits(),
) -> list[str]:
    """Add the conversations of a JSON export document for the user; returns their new ids.

    All of them are written in one transaction, or none. A reply still streaming when it was
    exported is stored as interrupted.

    Raises ``TransferError`` when the document is too big, not JSON, not an export of a version
    this app reads, or breaks the schema, a limit (``limits`` for attached files) or a reply
    link; ``SQLAlchemyError`` when the
    database fails. Nothing is written in either case.
    """
    document = read_document(data, max_bytes=max_bytes, limits=limits)
    return store.add_conversations(user_id, _every_rows(document))


def _every_rows(
    document: ExportDoc,
) -> Iterator[tuple[Conversation, list[tuple[Message, Message | None]], Message | None]]:
    """Each conversation's rows in turn (``_rows``); once the store has written them (it has
    when it takes the next), the checks are given the ids of the replies they name."""
    for conversation in document.conversations:
        rows = _rows(conversation, document.version)
        yield rows
        written = [message for message, _ in rows[1]]
        ids = {item.id: row.id for item, row in zip(conversation.messages, written, strict=True)}
        for item, row in zip(conversation.messages, written, strict=True):
            if item.check is not None:
                row.check = _relinked(item.check.model_dump(), ids)


def read_document(
    data: str | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
    limits: AttachmentLimits = AttachmentLimits(),
) -> ExportDoc:
    """Parse and check a JSON export document without writing anything.

    Raises ``TransferError`` as ``import_json`` does.
    """
    raw = _bounded_bytes(data, max_bytes)
    try:
        document = ExportDoc.model_validate_json(raw.removeprefix(b"\xef\xbb\xbf"))
    except ValidationError as err:
        raise TransferError(_describe(err.errors(include_input=False))) from None
    for index, conversation in enumerate(document.conversations):
        _check_links(conversation, document.version, f"conversations[{index}]")
        _check_attachments(conversation, limits, f"conversations[{index}]")
    return document


def _bounded_bytes(data: str | bytes, max_bytes: int) -> bytes:
    if isinstance(data, str):
        if len(data) > max_bytes:  # each character is at least one byte
            raise TransferError(f"The file is over the limit of {max_bytes} bytes.")
        try:
            data = data.encode()
        except UnicodeEncodeError:
            raise TransferError("The file is not valid UTF-8 text.") from None
    if len(data) > max_bytes:
        raise TransferError(f"The file has {len(data)} bytes; the limit is {max_bytes}.")
    return data


def _describe(errors: Sequence[ErrorDetails]) -> str:
    """The first few problems as ``place: what is wrong``; a wrong format or version alone."""
    header = [e for e in errors if e["loc"] in (("format",), ("version",))]
    chosen = header or list(errors)
    lines = [f"{_place(e['loc'])}: {e['msg']}" for e in chosen[:MAX_ERRORS_SHOWN]]
    if len(chosen) > MAX_ERRORS_SHOWN:
        lines.append(f"and {len(chosen) - MAX_ERRORS_SHOWN} more problems")
    return "; ".join(lines)


def _place(loc: tuple[int | str, ...]) -> str:
    place = ""
    for part in loc:
        place += f"[{part}]" if isinstance(part, int) else f".{part}" if place else str(part)
    return place or "document"


def _check_links(conversation: ConversationDoc, version: int, where: str) -> None:
    """Roles, statuses and links agree: a reply answers an earlier user message, a user
    message follows an earlier message (version 2), the leaf is a message, only replies have
    runs and a check, which names replies."""
    roles: dict[int, str] = {}
    for index, message in enumerate(conversation.messages):
        place = f"{where}.messages[{index}]"
        if message.id in roles:
            raise TransferError(f"{place}.id: {message.id} is used by an earlier message")
        roles[message.id] = message.role
        kind, statuses = (
            ("a user message", USER_STATUSES) if message.role == "user"
            else ("a reply", REPLY_STATUSES)
        )
        if message.status not in statuses:
            raise TransferError(
                f"{place}.status: {kind} has one of {', '.join(sorted(statuses))}, "
                f"not {message.status!r}"
            )
        _check_reply_to(message, roles, version, place)
        if message.role == "user" and (message.runs is not None or message.check is not None):
            raise TransferError(f"{place}: only a reply has runs and a check")
    for index, message in enumerate(conversation.messages):
        _check_named_replies(message, roles, f"{where}.messages[{index}].check")
    leaf = conversation.leaf
    if leaf is not None and version == 1:
        raise TransferError(f"{where}.leaf: version 1 has no leaf; export again for version 2")
    if leaf is not None and leaf not in roles:
        raise TransferError(f"{where}.leaf: no message has id {leaf}")


def _check_attachments(
    conversation: ConversationDoc, limits: AttachmentLimits, where: str
) -> None:
    """Files are attached to user messages only, as many and as big as the page takes."""
    for index, message in enumerate(conversation.messages):
        place = f"{where}.messages[{index}].attachments"
        files = message.attachments
        if files and message.role != "user":
            raise TransferError(f"{place}: only a user message has attached files")
        if len(files) > limits.per_message:
            raise TransferError(
                f"{place}: {len(files)} files; a message takes at most {limits.per_message}"
            )
        for number, attached in enumerate(files):
            size = len(attached.text.encode())
            if size > limits.max_bytes:
                raise TransferError(
                    f"{place}[{number}].text: {size} bytes; the limit is {limits.max_bytes}"
                )


def _check_named_replies(message: MessageDoc, roles: dict[int, str], place: str) -> None:
    """The replies a check names are replies of its conversation."""
    if message.check is None:
        return
    named = [("reply_id", message.check.reply_id)] + [
        (f"versions[{number}].reply_id", version.reply_id)
        for number, version in enumerate(message.check.versions)
    ]
    for field, target in named:
        if target is not None and roles.get(target) != "assistant":
            raise TransferError(f"{place}.{field}: no reply has id {target}")


def _check_reply_to(
    message: MessageDoc, roles: dict[int, str], version: int, place: str
) -> None:
    target = message.reply_to
    if message.role == "user" and version == 1:
        if target is not None:
            raise TransferError(f"{place}.reply_to: a user message answers no other message")
        return
    if target is None:
        if message.role == "user":
            return  # a first message
        raise TransferError(f"{place}.reply_to: a reply must name the user message it answers")
    if target not in roles or target == message.id:
        raise TransferError(f"{place}.reply_to: no earlier message has id {target}")
    if message.role == "assistant" and roles[target] != "user":
        raise TransferError(f"{place}.reply_to: message {target} is a reply, not a user message")


def _rows(
    document: ConversationDoc, version: int
) -> tuple[Conversation, list[tuple[Message, Message | None]], Message | None]:
    """The conversation's rows, each message with its parent, and the leaf. A version 1
    user message follows the latest reply to the user message before it (or that message,
    unanswered), as the migration to branches (0004) links stored ones."""
    conversation = Conversation(
        title=document.title, model=document.model, backend=document.backend,
        language=document.language, system_prompt=document.system_prompt,
        settings=kept_settings(document.settings), created_at=document.created_at,
        updated_at=document.updated_at,
    )
    by_id: dict[int, Message] = {}
    messages: list[tuple[Message, Message | None]] = []
    last_user: Message | None = None
    latest_reply: Message | None = None
    for item in document.messages:
        message = _message_row(item)
        by_id[item.id] = message
        parent = None if item.reply_to is None else by_id[item.reply_to]
        if version == 1 and item.role == "user":
            parent = latest_reply if latest_reply is not None else last_user
            last_user, latest_reply = message, None
        elif version == 1 and parent is last_user:
            latest_reply = message
        messages.append((message, parent))
    leaf = None if document.leaf is None else by_id[document.leaf]
    return conversation, messages, leaf


def _message_row(document: MessageDoc) -> Message:
    status, error = document.status, document.error
    if status == "streaming":  # no stream will ever finish it here
        status, error = "interrupted", error or STREAMING_AT_EXPORT
    return Message(
        role=document.role, content=document.content, status=status, error=error,
        tokens=document.tokens, time_to_first_token=document.time_to_first_token,
        tokens_per_second=document.tokens_per_second, model=document.model,
        backend=document.backend, created_at=document.created_at,
        updated_at=document.updated_at,
        attachments=[attached.model_dump() for attached in document.attachments] or None,
        runs=None if document.runs is None else {
            block: run.model_dump() for block, run in document.runs.items()},
    )

