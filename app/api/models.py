"""What the REST API reads and writes: request and response bodies, described for OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from app.arena.rating import Outcome
from app.backends import BackendKind
from app.chat.models import Finish
from app.store.models import as_utc

# Bounds that keep a request's cost predictable; the store's own rules (a name's characters,
# a password's length) and the settings (MAX_MESSAGE_CHARS) give their own messages.
MAX_NAME_CHARS = 200
MAX_PASSWORD_CHARS = 1024
MAX_PROMPT_CHARS = 200_000
MAX_ID_CHARS = 64
# A conversation of the caller's, named in an endpoint's path.
DialoguePath = Annotated[
    str, Path(max_length=MAX_ID_CHARS, description="One of your conversations.")
]
# A reply of the caller's, named in an endpoint's path (the store's ids are 32-bit integers).
MessagePath = Annotated[int, Path(
    ge=1, le=2**31 - 1, description="One of your replies: its `id` in GET /messages (the "
    "`message_id` of POST /dialogue).",
)]
MAX_ATTACHMENTS = 100  # ATTACHMENTS_PER_MESSAGE then gives its own message


def _storable(text: str) -> str:
    """Text every database keeps: no NUL character, nothing UTF-8 cannot encode."""
    if "\x00" in text:
        raise ValueError("the text holds a NUL character, which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text holds characters UTF-8 cannot encode") from None
    return text


StorableText = Annotated[str, AfterValidator(_storable)]



UtcTime = Annotated[datetime, AfterValidator(as_utc)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error the API answers, whatever its status."""

    error: str = Field(description="One line saying what went wrong and what to do about it.")
    detail: Any = Field(
        None, description="Machine-readable detail, when there is some (e.g. the fields of an "
        "invalid request, without the values sent).",
    )


# -- accounts -------------------------------------------------------------------------------


class Credentials(Body):
    name: str = Field(
        max_length=MAX_NAME_CHARS,
        description="Account name: 3-50 characters, letters a-z or A-Z, digits, '.', '_' or '-'."
        " Names are unique ignoring case.",
        examples=["ada"],
    )
    password: str = Field(
        max_length=MAX_PASSWORD_CHARS,
        description="At least 8 characters. Never stored or logged; only its argon2 hash is kept.",
        examples=["correct horse battery staple"],
    )


class UserOut(BaseModel):
    id: int = Field(description="The user's id.")
    name: str = Field(description="The account name (`local` when AUTH_MODE=none).")


class TokenOut(BaseModel):
    token: str = Field(
        description="Bearer token: send it as `Authorization: Bearer <token>`. It is shown "
        "once; only its hash is stored."
    )
    expires_at: UtcTime = Field(description="When the token stops working (UTC).")


class TokenListed(BaseModel):
    id: int = Field(description="Revoke it with DELETE /api/v1/tokens/{id}.")
    created_at: UtcTime = Field(description="When it was issued (UTC).")
    expires_at: UtcTime = Field(description="When it stops working (UTC).")
    current: bool = Field(description="Whether it is the token of this request.")


# -- the backend ----------------------------------------------------------------------------


class ModelOut(BaseModel):
    model: str = Field(description="The default model (DEFAULT_MODEL, else the first offered).")
    backend: BackendKind = Field(description="What kind of server answers for it.")
    backend_name: str = Field(description="The name of that backend (BACKENDS).")
    models: dict[str, list[str]] = Field(
        description="Every model offered, with the backends serving it (those up first); "
        "send one as `model` in a dialogue."
    )
    max_input_tokens: int = Field(description="Most tokens a prompt may have.")
    max_total_tokens: int = Field(description="Most tokens of prompt and reply together.")
    version: str | None = Field(None, description="The server's version, when it says (TGI, "
                                "llama-server).")
    controls: list[str] = Field(
        description="Generation settings this backend honours (the API sends only these)."
    )


# -- dialogues ------------------------------------------------------------------------------


class AttachmentIn(Body):
    name: StorableText = Field(
        min_length=1, max_length=255, description="The file's name; its extension gives the "
        "language of the fenced block the model is sent (`.py`: python).",
        examples=["fizzbuzz.py"],
    )
    content: str = Field(
        description="The file's text. At most ATTACHMENT_MAX_BYTES bytes as UTF-8 (256 KiB "
        "by default); text only: a NUL character is refused as a binary file.",
        examples=["for i in range(1, 16):\n    print(i)\n"],
    )


class AttachmentOut(BaseModel):
    name: str = Field(description="The file's name.")
    language: str = Field(description="The language of its fenced block (`text` if unknown).")
    size: int = Field(description="Its size in bytes, as UTF-8.")
    content: str = Field(description="Its text.")


class MessageIn(Body):
    """A message to a conversation, with its settings (``POST /dialogue``, ``POST /compare``)."""

    message: StorableText = Field(
        min_length=1, max_length=MAX_PROMPT_CHARS,
        description="Your message. At most MAX_MESSAGE_CHARS characters (8000 by default).",
        examples=["Write a Python function that reverses a string."],
    )
    attachments: list[AttachmentIn] = Field(
        default_factory=list, max_length=MAX_ATTACHMENTS,
        description="Text files attached to the message, sent to the model after it as fenced "
        "blocks and stored with it. At most ATTACHMENTS_PER_MESSAGE files (5 by default); they "
        "count toward the message's limits and the model's context. A file refused (binary, "
        "too big, too many) is a 422 naming it; nothing is stored.",
    )
    dialogue_id: str | None = Field(
        None, max_length=MAX_ID_CHARS,
        description="Continue this conversation of yours; leave out to start a new one.",
    )
    system_prompt: StorableText | None = Field(
        None, max_length=MAX_PROMPT_CHARS,
        description="System prompt. Default: the conversation's own when continuing one, "
        "else the app's SYSTEM_PROMPT. It is kept with the conversation.",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, le=2**31 - 1,
        description="Most tokens in the reply. Default: the conversation's setting, else "
        "MAX_NEW_TOKENS. A value that leaves no room for the prompt is refused (422).",
    )
    temperature: float | None = Field(
        None, ge=0, le=2, allow_inf_nan=False,
        description="Sampling temperature; 0 picks the likeliest token every time.",
    )
    top_p: float | None = Field(
        None, gt=0, le=1, allow_inf_nan=False, description="Nucleus sampling: keep the "
        "smallest set of tokens whose probabilities add up to this.",
    )
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1, description="Seed for reproducible sampling.",
    )
    stop_on_disconnect: bool = Field(
        False, description="Stop the reply (stored as stopped) when this request goes away "
        "before it ends. By default it goes on, stored as it ends, and `GET "
        "/dialogues/{id}/stream` reads it again (unless the server runs with "
        "REPLY_KEEPS_RUNNING=false, where going away always stops it).",
    )


ModelId = Annotated[str, Field(max_length=MAX_ID_CHARS * 4)]
ComparedModel = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS * 4)]


class DialogueIn(MessageIn):
    model: ModelId | None = Field(
        None, description="The model to answer (see GET "
        "/models). Default: the conversation's own when continuing one, else the default.",
    )
    stream: bool = Field(
        False, description="Answer with server-sent events (as does `Accept: "
        "text/event-stream`): `{\"dialogue_id\", \"message_id\"}` first, then "
        "`{\"delta\"}` pieces of the reply, then `{\"done\": true, \"message_id\", "
        "\"stats\", \"error\"}`. Before the first piece, while the reply waits for one of "
        "the model's slots (the embedded engine answers a few people at once), "
        "`{\"waiting\", \"notice\"}`: how many requests wait before it, and a sentence "
        "saying so.",
    )


class StatsOut(BaseModel):
    tokens: int = Field(description="Tokens in the reply.")
    time_to_first_token: float | None = Field(
        description="Seconds from the request to the first token."
    )
    tokens_per_second: float | None = Field(description="Generation speed after the first token.")
    finish: Finish = Field(
        description="Why the reply ended: `stop` (finished), `length` (cut at max_new_tokens), "
        "`stopped` (the client went away) or `interrupted` (an error)."
    )


class DialogueOut(BaseModel):
    dialogue_id: str = Field(description="The conversation; send it back to continue it.")
    message_id: int | None = Field(description="The stored reply's id.")
    reply: str = Field(description="The reply (partial when it was interrupted).")
    stats: StatsOut | None = Field(description="The reply's stats.")
    error: str | None = Field(
        description="Why the reply was interrupted (e.g. the backend failed mid-way); null "
        "when it was not."
    )


# -- comparisons ----------------------------------------------------------------------------


class CompareIn(MessageIn):
    left: ComparedModel | None = Field(
        None, description="The model on the left (see GET /models); with `right`, unless "
        "`blind`.", examples=["bigcode/starcoder2-3b"],
    )
    right: ComparedModel | None = Field(
        None, description="The model on the right, another than `left`.",
    )
    blind: bool = Field(
        False, description="Two different models picked at random among those on offer "
        "(give neither `left` nor `right`), their names hidden until your vote.",
    )
    stream: bool = Field(
        False, description="Answer with server-sent events (as does `Accept: "
        "text/event-stream`): `{\"dialogue_id\", \"blind\", \"left\": {\"message_id\", "
        "\"model\"}, \"right\": {...}}` first (`model` null when blind), then events of "
        "either side as they come, each naming its `side` (`left` or `right`): "
        "`{\"side\", \"delta\"}`, `{\"side\", \"waiting\", \"notice\"}`, and once that "
        "side has ended `{\"side\", \"done\": true, \"message_id\", \"stats\", "
        "\"error\"}`; last `{\"done\": true, \"comparison_id\", \"error\"}` once both "
        "have ended and the comparison is stored.",
    )

    @model_validator(mode="after")
    def _two_models_or_blind(self) -> CompareIn:
        named = (self.left is not None) + (self.right is not None)
        if self.blind and named:
            raise ValueError("a blind comparison picks its models: give neither left nor right")
        if not self.blind and named < 2:
            raise ValueError("give both left and right (see GET /models), or blind: true")
        return self


class SideOut(BaseModel):
    message_id: int | None = Field(description="This side's reply (a message id).")
    model: str | None = Field(description="The model that wrote it; null while blind.")
    reply: str = Field(description="Its text (partial when it was interrupted).")
    stats: StatsOut | None = Field(description="Its stats: first-token time and tokens/s.")
    error: str | None = Field(description="Why this side was interrupted; null when it "
                              "was not.")


class CompareOut(BaseModel):
    comparison_id: int | None = Field(
        description="Vote on it with POST /comparisons/{id}/vote; null when it could not be "
        "stored (see `error`)."
    )
    dialogue_id: str = Field(description="The conversation: both replies answer the same "
                             "message in it, as two versions of one reply.")
    blind: bool = Field(description="Whether the models' names are hidden until the vote.")
    left: SideOut
    right: SideOut
    error: str | None = Field(description="Why the comparison was not stored (its "
                              "conversation was deleted meanwhile); null when it was.")


class ComparedOut(BaseModel):
    model: str | None = Field(description="The model; null in a blind comparison not yet "
                              "voted on.")
    message_id: int | None = Field(description="Its reply; null once the conversation is "
                                   "deleted.")
    backend: str | None = Field(description="The backend that answered (null while blind).")
    first_token_ms: float | None = Field(description="Milliseconds to its first token.")
    tokens_per_second: float | None = Field(description="Its speed after the first token.")


class ComparisonOut(BaseModel):
    id: int = Field(description="The comparison's id.")
    dialogue_id: str | None = Field(description="Its conversation; null once deleted (the "
                                    "vote still counts).")
    blind: bool = Field(description="Whether the names were hidden until the vote.")
    left: ComparedOut
    right: ComparedOut
    outcome: Outcome | None = Field(description="The vote: `left` or `right` better, `tie`, "
                                    "`both_bad`; null before it.")
    created_at: UtcTime = Field(description="When it was compared (UTC).")
    voted_at: UtcTime | None = Field(description="When it was last voted on (UTC).")


class VoteIn(Body):
    outcome: Outcome = Field(description="`left` or `right` better, `tie`, or `both_bad`.",
                             examples=["left"])


class BoardRowOut(BaseModel):
    model: str = Field(description="The model.")
    rating: float | None = Field(
        description="Bradley-Terry rating on Elo's scale (1000: average); null without a vote."
    )
    low: float | None = Field(description="Low end of its 95% interval.")
    high: float | None = Field(description="High end of its 95% interval.")
    votes: int = Field(description="Votes it took part in.")
    comparisons: int = Field(description="Comparisons it took part in, voted or not.")
    first_token_ms: float | None = Field(description="Median milliseconds to the first token "
                                         "in those comparisons.")
    tokens_per_second: float | None = Field(description="Median tokens/s in them.")
    backends: list[str] = Field(description="The backends that answered for it.")


class DialogueSummary(BaseModel):
    id: str = Field(description="The conversation's id.")
    title: str = Field(description="Its title (from its first message unless renamed).")
    updated_at: UtcTime = Field(description="When a message was last added.")


class ShareOut(BaseModel):
    id: int = Field(description="Revoke it with DELETE /api/v1/shares/{id}.")
    token: str = Field(description="The random key in its link; whoever has it can read it.")
    url: str = Field(description="The link to the read-only page (no sign-in needed).")
    title: str = Field(description="The conversation's title when it was shared.")
    dialogue_id: str | None = Field(
        description="The conversation it was made from; null once that is deleted (the "
        "snapshot stays until revoked)."
    )
    created_at: UtcTime = Field(description="When it was shared (UTC).")


# -- runs and checks ------------------------------------------------------------------------


class RunIn(Body):
    block: int = Field(
        ge=0, description="The code block to run: 0 for the reply's first, in the order of "
        "its text. Python, JavaScript and Bash blocks run (those the server has).",
        examples=[0],
    )


class RunOut(BaseModel):
    block: int = Field(description="The code block run: 0 for the reply's first.")
    language: str = Field(description="Its language: `python`, `javascript` or `bash`.")
    stdout: str = Field(description="What it printed.")
    stderr: str = Field(description="What it printed to stderr.")
    exit_code: int | None = Field(
        description="Its exit code; null when it did not exit by itself (see `stopped`)."
    )
    seconds: float = Field(description="How long it ran.")
    stopped: str | None = Field(
        description="Why the sandbox stopped it, if it did: `time limit (10 s)`, `output "
        "limit (64 KiB)`, `memory limit (256 MiB)`, `too many processes`…"
    )
    truncated: bool = Field(
        description="Whether its output was cut at the sandbox's limit (64 KiB, stdout and "
        "stderr together)."
    )


class CheckIn(Body):
    tests: StorableText = Field(
        "", max_length=MAX_PROMPT_CHARS,
        description="Your own tests, as Python: `assert` statements, `test_…` functions or "
        "`Test…` classes; imports and helpers beside them go before each test. Left out: a "
        "test file attached to the message (`test_*.py`, `*_test.py`, `tests.py`), else the "
        "tests the reply holds, else tests the model is asked to write. Your tests never "
        "change in a repair.",
        examples=["assert double(3) == 6\n\ndef test_zero():\n    assert double(0) == 0\n"],
    )
    repair: bool = Field(
        True, description="While some tests fail, send the failures back to the model for a "
        "repaired version, each kept as a new version of the reply (now on screen). Each "
        "round is a call of the model, counted against your message rate.",
    )
    rounds: int | None = Field(
        None, ge=0, description="Repair at most this many times: CHECK_ROUNDS by default "
        "(3), and at most.",
    )
    stream: bool = Field(
        False, description="Answer with server-sent events (as does `Accept: "
        "text/event-stream`): `{\"check\"}` as it grows (after each version is tried), "
        "`{\"answer\", \"round\"}` pieces of the model's answer in the repair round under "
        "way, then `{\"done\": true, \"check\", \"error\"}`.",
    )


class CheckTestsOut(BaseModel):
    origin: str | None = Field(
        description="Who wrote the tests: `user` (yours, given with the check or attached "
        "to the message), `reply` (the reply's own) or `model` (asked for, as there were "
        "none); null when there are none."
    )
    source: str = Field(description="The tests, as Python.")


class CheckResultOut(BaseModel):
    name: str = Field(description="The test: its function's name, or its `assert` line.")
    origin: str = Field(description="Who wrote it (as `tests.origin`).")
    status: str = Field(
        description="`passed`, `failed` (an assert), `error` (another exception), `timeout` "
        "(it ran over its time) or `not run` (the run stopped before it)."
    )
    error: str | None = Field(
        description="Why it did not pass: the line that failed, with the values an assert "
        "compared."
    )
    output: str = Field(description="What it printed, cut at 2000 characters.")


class CheckVersionOut(BaseModel):
    number: int = Field(description="0: the reply as it was checked; then one a repair.")
    reply_id: int | None = Field(
        description="The reply holding this version: each repair is a new version of the "
        "reply (a retry's sibling in view=tree)."
    )
    badge: str = Field(description="Its result in a few words: `1/1 test passes`, `1 of 3 "
                       "fails`, `the code does not run`…")
    ok: bool = Field(description="Whether every test passed.")
    code_error: str | None = Field(
        description="Why the code itself failed before any test ran (it does not parse, or "
        "raised), if it did."
    )
    changed: str = Field(
        description="What the repair changed: `code`, `tests` (tests the reply or the model "
        "wrote may be wrong; yours never change), `code and tests` or `nothing`; empty for "
        "version 0."
    )
    diff: str = Field(description="A unified diff against the version before; empty for 0.")
    results: list[CheckResultOut] = Field(description="Each test's result.")


class CheckOut(BaseModel):
    reply_id: int | None = Field(description="The reply checked.")
    tests: CheckTestsOut = Field(description="The tests the reply is checked against.")
    versions: list[CheckVersionOut] = Field(
        description="Each version tried, the reply as it was first, then each repair."
    )
    rounds: int = Field(description="The most repairs this check makes.")
    outcome: str | None = Field(
        description="How it ended: `passed` (the last version passes every test), `round "
        "limit` (none did within the rounds), `no change` (the model answered the same code "
        "again), `no tests` (there were none to run); null while it runs, or when it was cut "
        "short."
    )


RUNS_DESCRIPTION = (
    "The last run of each of its code blocks that was run (POST /messages/{id}/run), in "
    "block order."
)
CHECK_DESCRIPTION = (
    "The check it is a version of (POST /messages/{id}/check), as it stands; null when it "
    "was not checked."
)


class ReplyOut(BaseModel):
    id: int = Field(description="The reply's message id.")
    content: str = Field(description="The reply's text.")
    status: str = Field(
        description="`streaming` while it is being written, then how it ended (see stats)."
    )
    error: str | None = Field(description="Why it was interrupted, if it was.")
    stats: StatsOut | None = Field(description="Its stats, once it has ended.")
    model: str | None = Field(description="The model that wrote it.")
    backend: str | None = Field(description="The kind of backend that served it.")
    runs: list[RunOut] = Field(description=RUNS_DESCRIPTION)
    check: CheckOut | None = Field(description=CHECK_DESCRIPTION)


class ExchangeOut(BaseModel):
    user_message_id: int = Field(description="The user message's id.")
    user: str = Field(description="The user's message.")
    attachments: list[AttachmentOut] = Field(description="The files attached to it.")
    reply: ReplyOut | None = Field(description="The reply on the branch on screen (the "
                                   "others, retries, are in view=tree).")


class MessagesOut(BaseModel):
    dialogue_id: str = Field(description="The conversation's id.")
    title: str = Field(description="Its title.")
    system_prompt: str = Field(description="Its system prompt.")
    exchanges: list[ExchangeOut] = Field(
        description="The exchanges of its branch on screen, oldest first."
    )


class MessageOut(BaseModel):
    id: int = Field(description="The message's id.")
    role: str = Field(description="`user` or `assistant`.")
    parent_id: int | None = Field(
        description="The message it follows: for a reply, the user message it answers; for a "
        "user message, the reply it follows; null for a first message. Messages with the "
        "same parent and role are alternatives: retries of a reply, edits of a message."
    )
    content: str = Field(description="Its text.")
    attachments: list[AttachmentOut] = Field(description="The files attached to a user message.")
    status: str = Field(
        description="`complete` for a user message; for a reply `streaming` while it is being "
        "written, then how it ended (see stats)."
    )
    error: str | None = Field(description="Why a reply was interrupted, if it was.")
    stats: StatsOut | None = Field(description="A reply's stats, once it has ended.")
    model: str | None = Field(description="The model that wrote a reply.")
    backend: str | None = Field(description="The kind of backend that served a reply.")
    runs: list[RunOut] = Field(description=f"For a reply: {RUNS_DESCRIPTION} Empty for a "
                               "user message.")
    check: CheckOut | None = Field(description=f"For a reply: {CHECK_DESCRIPTION} Null for "
                                   "a user message.")


class TreeOut(BaseModel):
    dialogue_id: str = Field(description="The conversation's id.")
    title: str = Field(description="Its title.")
    system_prompt: str = Field(description="Its system prompt.")
    leaf_id: int | None = Field(
        description="The last message of the branch on screen (the one `view=branch` gives "
        "and a new message continues): follow `parent_id` up from it. Null without messages."
    )
    messages: list[MessageOut] = Field(
        description="Every message of every branch, oldest first."
    )
