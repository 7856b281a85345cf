"""Turn the app's conversation and backend state into what the page shows.

A finished reply's code can be run and checked from the chat (``app.ui.checks`` handles the
clicks): each block in a language the sandbox runs is followed by a Run link, and after a run
by its result (``Exchange.runs``); a reply with Python code has a Check link, and once checked
its badge and the check's trace (``Exchange.check``, drawn by ``app.ui.trace``). All of it is
rendered from the stored exchange, so it shows again after a reload. A finished reply's text
with its links is rendered once and kept (``_finished``): an exchange without runs or a check
costs a render one cache lookup, as before; its runs and its trace are put together at each
render.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from html import escape
from typing import Any

from app.backends import BackendError, BackendInfo
from app.backends.client import safe_url
from app.backends.raw import RawToken
from app.backends.router import BackendStatus
from app.chat import Exchange, TurnStats
from app.markdown import (
    FenceEnd,
    behind,
    escape_html,
    escape_html_open,
    escape_markdown,
    fence_ends,
    fenced,
)
from app.preview import KIND_OF_LANGUAGE
from app.sizes import size_text
from app.snippets.bwrap import languages
from app.snippets.extract import TEXT, CodeBlock, extract_blocks
from app.snippets.sandbox import RunResult
from app.store.comparisons import BoardRow
from app.ui.trace import check_badge, check_markdown, version_shown

TITLE = "## Coding Playground"
# The switches between alternatives link here; app.ui.branches catches the clicks.
BRANCH_LINK = "#branch-"
# The chips of attached files link here; app.ui.attachments catches the clicks.
ATTACHMENT_LINK = "#attachment-"
EARLIER, LATER = "\u2039", "\u203a"  # single angle quotation marks
# The marker after the text of a reply being written; app/ui/live.js finds it by this class.
LIVE_TAIL = "live-tail"
# The Run link after a code block (#run-block-<reply id>-<block index>) and the Check link of a
# reply (#check-reply-<reply id>); app.ui.checks catches the clicks.
RUN_LINK = "#run-block-"
CHECK_LINK = "#check-reply-"

KIND_NAMES = {
    "tgi": "TGI", "llama.cpp": "llama.cpp", "openai": "OpenAI-compatible server",
    "hf": "Inference Providers", "auto": "not probed yet",
}
# Colour (app.ui.page's CSS) and text, no emoji: a machine without an emoji font showed empty
# boxes.
STATE_MARKS = {
    "up": '<span class="state-up">● up</span>',
    "down": '<span class="state-down">● down</span>',
    "unknown": '<span class="state-unknown">○ not checked yet</span>',
}


def _reply_shown(reply: str) -> str:
    return escape_html(reply, close_fence=True)


# Every update of a streaming reply shows the whole conversation again: the messages that no
# longer change (the user's, and finished replies) are rendered once; the last thousand are
# kept (a few megabytes for replies of a few hundred tokens).
_kept_reply_shown = functools.lru_cache(maxsize=1024)(_reply_shown)
_user_shown = functools.lru_cache(maxsize=1024)(escape_html)


def switcher(alternatives: Sequence[int], current: int | None) -> str:
    """The switch "n/m" between arrows for a message with alternatives (ids, oldest first),
    each arrow a link to the one before or after it; "" for a message without."""
    if len(alternatives) < 2 or current not in alternatives:
        return ""
    at = alternatives.index(current)
    before = f"[{EARLIER}]({BRANCH_LINK}{alternatives[at - 1]})" if at > 0 else EARLIER
    after = LATER
    if at + 1 < len(alternatives):
        after = f"[{LATER}]({BRANCH_LINK}{alternatives[at + 1]})"
    return f"{before} {at + 1}/{len(alternatives)} {after}"


def attachment_chips(exchange: Exchange) -> str:
    """The chips of the message's attached files, each its name and size, a link that opens
    the file; "" for a message without."""
    chips = []
    for index, attachment in enumerate(exchange.attachments):
        link = f"{ATTACHMENT_LINK}{exchange.user_message_id}-{index}"
        chips.append(f"[{escape_markdown(attachment.name)} ({size_text(attachment.size)})]({link})")
    return "\n\nAttached: " + " · ".join(chips) if chips else ""


def user_suffix(exchange: Exchange) -> str:
    """What follows the user's text in its message: the chips of its files and its
    switcher, if it has them."""
    shown = switcher(exchange.user_alternatives, exchange.user_message_id)
    return attachment_chips(exchange) + (f"\n\n{shown}" if shown else "")


def live_marker(key: str, offset: int, in_code: bool) -> str:
    """Where the page's script shows the text of the reply being written past ``offset`` (a
    count of characters), read from its live channel ``key`` (``app.live``); ``in_code``: the
    text rendered ends inside a code block, which the script then goes on. All three are
    classes: the chat's sanitizer keeps no other attribute."""
    return (f'<span class="{LIVE_TAIL} live-key-{key} live-at-{offset} '
            f'live-code-{int(in_code)}"></span>')


@dataclass(frozen=True)
class Checking:
    """A check under way on the page: the exchange on screen whose reply it checks, and the
    model's answer so far in the repair round under way ("" between rounds)."""

    exchange: Exchange
    answer: str = ""


def _live_reply(key: str, reply: str) -> str:
    """A reply being written, rendered with the marker after which the page's script shows
    the text that comes next (``live_marker``)."""
    shown, in_code = escape_html_open(reply)
    # A code block left open shows the text up to the line breaks it ends with (the closing
    # fence takes their place): they are left to the live text, which live.js puts before
    # the line break Markdown ends the block's text with.
    covered = len(reply.rstrip("\r\n") if in_code else reply)
    return shown + ("\n\n" if in_code else "") + live_marker(key, covered, in_code)


def compared_markdown(name: str, exchange: Exchange, error: str | None) -> str:
    """One side of a comparison (the Compare tab): the model's ``name`` (or what stands for
    it while blind), the reply as it comes, ``error`` (the reply's, as the user may see it),
    and its speed, live while it streams and with how it ended once it has."""
    parts = [f"**{escape_markdown(name)}**"]
    if exchange.live is not None and not exchange.done:
        parts.append(_live_reply(exchange.live, exchange.reply))
    elif exchange.reply:
        parts.append((_kept_reply_shown if exchange.done else _reply_shown)(exchange.reply))
    if error:
        parts.append(f"⚠️ Failed: {escape_html(error)}")
    stats = exchange.stats
    if stats is None:
        parts.append("_Ended before its first token_" if exchange.done
                     else "_Waiting for the first token …_")
    else:
        parts.append(f"_{stats.line() if exchange.done else stats.speed()}_")
    return "\n\n".join(parts)


def board_markdown(rows: Sequence[BoardRow]) -> str:
    """The Compare board: each model, rated best first, with its votes and median speed."""
    if not rows:
        return "No comparisons yet: send one, then vote."
    lines = ["| Model | Rating (95% interval) | Votes | Compared | First token | Tokens/s |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        rating = ("no vote yet" if row.rating is None or row.low is None or row.high is None
                  else f"{row.rating:.0f} ({row.low:.0f} to {row.high:.0f})")
        first = "n/a" if row.first_token_ms is None else f"{row.first_token_ms / 1000:.2f} s"
        speed = "n/a" if row.tokens_per_second is None else f"{row.tokens_per_second:.1f}"
        lines.append(f"| {escape_markdown(row.model)} | {rating} | {row.votes} | "
                     f"{row.comparisons} | {first} | {speed} |")
    return "\n".join(lines)


def assistant_markdown(exchange: Exchange, checking: Checking | None = None) -> str:
    actions = ""  # the line of a finished reply's code: Check and its badge
    if exchange.live is not None and not exchange.done:
        parts = [_live_reply(exchange.live, exchange.reply)]
    elif exchange.done and exchange.reply and exchange.reply_id is not None:
        body, actions = _finished(exchange.reply, exchange.reply_id)
        if exchange.runs:
            body = _with_runs(exchange.reply, exchange.reply_id, exchange.runs)
        if exchange.check is not None:
            badge = check_badge(version_shown(exchange.check, exchange.reply_id))
            actions = f"{actions} · {badge}" if actions else badge
        parts = [body]
    else:
        kept = _kept_reply_shown if exchange.done else _reply_shown
        parts = [kept(exchange.reply)] if exchange.reply else []
    if exchange.error:
        parts.append(f"⚠️ {escape_html(exchange.error)}")
    if exchange.stats is not None and exchange.done:
        parts.append(_stats_line(exchange, exchange.stats))
    if actions:
        parts.append(actions)
    switch = switcher(exchange.reply_alternatives, exchange.reply_id)
    if parts and switch:  # a reply not yet begun shows nothing
        parts.append(switch)
    if checking is not None and checking.exchange is exchange:
        parts.append(check_markdown(exchange.check, exchange.reply_id, checking.answer))
    elif exchange.check is not None:
        parts.append(check_markdown(exchange.check, exchange.reply_id, None))
    return "\n\n".join(parts)


def _stats_line(exchange: Exchange, stats: TurnStats) -> str:
    """The reply's stats; for a version a check's repair stored, which round gave it."""
    if exchange.check is not None:
        version = version_shown(exchange.check, exchange.reply_id)
        if version is not None and version["number"] and version["reply_id"] == exchange.reply_id:
            return f"_Repair {version['number']} of a check: the model's fix of what failed_"
    return f"_{stats.line()}_"


def _messages(
    conversation: Sequence[Exchange], checking: Checking | None = None
) -> Iterator[tuple[Exchange, dict[str, Any]]]:
    for exchange in conversation:
        user = _user_shown(exchange.user) + user_suffix(exchange)
        yield exchange, {"role": "user", "content": user}
        body = assistant_markdown(exchange, checking)
        if body:
            yield exchange, {"role": "assistant", "content": body}


def chat_messages(
    conversation: Sequence[Exchange], checking: Checking | None = None
) -> list[dict[str, Any]]:
    """The chat pane's messages; ``checking``: a check under way, shown as it goes."""
    return [message for _, message in _messages(conversation, checking)]


# -- code run and checked from the chat ----------------------------------------------------

# The fence languages' names in sentences.
LANGUAGE_NAMES = {
    "python": "Python", "javascript": "JavaScript", "typescript": "TypeScript", "bash": "Bash",
    "sql": "SQL", "go": "Go", "rust": "Rust", "c": "C", "cpp": "C++", "java": "Java",
}
CHECK_TITLE = "Run its Python against tests in the sandbox, and repair what fails"
RUN_TITLE = "Run this block in the sandbox"
_LINES = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class _Code:
    """What a reply's code blocks allow: those that run here, each with where it ends; whether
    Check applies (a Python block); and for code of which no block runs here, a sentence that
    says so."""

    runnable: tuple[tuple[CodeBlock, FenceEnd], ...] = ()
    python: bool = False
    no_run: str = ""


@functools.lru_cache(maxsize=1024)
def _code_of(reply: str) -> _Code:
    blocks = extract_blocks(reply)
    if not blocks:
        return _Code()
    runs_here = languages()
    runnable = tuple((block, end) for block, end in zip(blocks, fence_ends(reply), strict=True)
                     if block.language in runs_here)
    python = any(block.language == "python" for block in blocks)
    # Text is no code, and HTML, SVG and Mermaid have their Preview.
    idle = sorted({LANGUAGE_NAMES.get(block.language, block.language) for block in blocks
                   if block.language not in {*runs_here, TEXT, *KIND_OF_LANGUAGE}})
    if runnable or not idle:
        return _Code(runnable, python)
    sandbox = sorted(LANGUAGE_NAMES.get(name, name) for name in runs_here) or ["nothing"]
    return _Code(runnable, python,
                 f"_No Run for {_listed(idle)}: the sandbox runs {_listed(sandbox)}._")


def _with_runs(reply: str, reply_id: int, runs: dict[str, dict[str, Any]]) -> str:
    """The reply as shown, each block that runs here followed by its Run link and its last
    run, behind the block quote markers and list indentation the block has; a block left
    open has them at the end."""
    shown = _kept_reply_shown(reply)
    code = _code_of(reply)
    if not code.runnable:
        return shown
    lines = _LINES.split(shown)
    at_end: list[str] = []
    for block, end in reversed(code.runnable):
        run = run_markdown(reply_id, block, runs.get(str(block.index)))
        if end.line is None:
            at_end.insert(0, run)
        else:
            lines[end.line:end.line] = [*behind(run, end.containers), end.containers.rstrip()]
    return "\n".join(lines) + "".join(f"\n\n{run}" for run in at_end)


@functools.lru_cache(maxsize=1024)
def _finished(reply: str, reply_id: int) -> tuple[str, str]:
    """A finished, stored reply as shown, with a Run link after each block that runs here,
    and the line under it for its code: the Check link (Python code), or why none of its code
    runs here; "" for a reply without code."""
    code = _code_of(reply)
    check = f'[✓ Check]({CHECK_LINK}{reply_id} "{CHECK_TITLE}")' if code.python else ""
    return _with_runs(reply, reply_id, {}), check or code.no_run


def run_markdown(reply_id: int, block: CodeBlock, run: dict[str, Any] | None) -> str:
    """The Run link of a reply's block and, once run, the result of its last run."""
    link = f"{RUN_LINK}{reply_id}-{block.index}"
    if run is None:
        return f'[▶ Run]({link} "{RUN_TITLE}")'
    result = RunResult(**{field.name: run[field.name] for field in fields(RunResult)})
    name = LANGUAGE_NAMES.get(run["language"], run["language"])
    return (f'[▶ Run again]({link} "{RUN_TITLE}") · Run of block {block.index + 1} ({name}): '
            + result_markdown(result))


def result_markdown(result: RunResult) -> str:
    """What a run printed and how it ended, with the output shown as text."""
    ending = f"exit code {result.exit_code}" if result.exit_code is not None else "no exit code"
    if result.stopped:
        ending = f"stopped: {escape_html(result.stopped)}"
    parts = [f"**{ending}** · {result.seconds:.2f} s"]
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text:
            parts.append(f"{name}:\n{fenced(text)}")
    if result.truncated:
        parts.append("_(output cut at the limit)_")
    return "\n\n".join(parts)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def exchange_at(conversation: Sequence[Exchange], index: int) -> Exchange | None:
    """The exchange whose user message ``chat_messages`` puts at ``index``, if any."""
    shown = list(_messages(conversation))
    if not 0 <= index < len(shown) or shown[index][1]["role"] != "user":
        return None
    return shown[index][0]


def header_markdown(info: BackendInfo | None, error: BackendError | None) -> str:
    if info is None:
        reason = str(error) if error else "No backend has answered yet."
        if "no restart is needed" not in reason:
            reason += " Messages will fail until it answers; no restart is needed."
        return f"{TITLE}\n⚠️ {escape_html(reason)}"
    limits = f"{info.max_input_tokens} input / {info.max_total_tokens} total tokens"
    version = f" {info.version}" if info.version else ""
    return (
        f"{TITLE}\nModel **{escape_html(info.model_id)}** on backend "
        f"**{escape_html(info.name)}** ({KIND_NAMES[info.kind]}{version} at "
        f"`{escape_html(safe_url(info.url))}`) · {limits}"
    )


def model_choices(models: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The model menu: each model with the backends that serve it."""
    return [(f"{model} ({', '.join(names)})", model) for model, names in models.items()]


def status_markdown(rows: Sequence[BackendStatus]) -> str:
    """The backend status panel, a Markdown table."""
    lines = ["| Backend | State | Kind | Models | Token limits | Version | Checked |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        limits = (f"{row.max_input_tokens} / {row.max_total_tokens}"
                  if row.max_total_tokens else "")
        checked = row.checked_at.strftime("%H:%M:%S UTC") if row.checked_at else ""
        error = f": {row.error}" if row.error else ""
        cells = [f"**{row.name}** `{row.url}`", error, KIND_NAMES.get(row.kind, row.kind),
                 ", ".join(row.models[:5]) + (" …" if len(row.models) > 5 else ""),
                 limits, row.version or "", checked]
        shown = [escape_html(c).replace("|", "\\|") for c in cells]
        shown[1] = STATE_MARKS[row.state] + shown[1] + "".join(
            f"<br>{part}" for part in _load(row))
        lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _load(row: BackendStatus) -> list[str]:
    """Under the state, this process's requests on the backend: for one with slots
    (llama-server), how many of them are busy and how many requests wait (are queued) for
    one; short words, as the column is narrow."""
    if row.slots is not None:
        return [f"{row.requests - row.waiting}/{row.slots} busy", f"{row.waiting} queued"]
    return [f"{row.requests} replying"] if row.requests else []


def token_html(tokens: Sequence[RawToken]) -> str:
    """Generated tokens coloured by probability (red unlikely, green likely); hovering one
    shows its log-probability."""
    spans = []
    for token in tokens:
        if not token.text:
            continue
        if token.logprob is None:
            style, title = "", "no log-probability"
        else:
            p = math.exp(min(token.logprob, 0.0))
            style = f"background:hsl({120 * p:.0f},70%,80%);color:#111;"
            title = f"logprob {token.logprob:.3f} · p {p:.2f}"
        if token.special:
            style += "font-style:italic;opacity:0.7;"
        spans.append(
            f'<span class="tok" style="{style}" title="{title}">{escape(token.text)}</span>'
        )
    return ('<div id="raw-tokens" style="white-space:pre-wrap;font-family:monospace;">'
            + "".join(spans) + "</div>")


def dropped_notice(dropped: int, budget: int) -> str:
    if not dropped:
        return ""
    turns = "exchange was" if dropped == 1 else "exchanges were"
    return (
        f"The {dropped} oldest {turns} left out so the conversation fits the model's "
        f"input budget of {budget} tokens."
    )
