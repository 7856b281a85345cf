"""Turn the app's conversation and backend state into what the page shows."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from html import escape
from typing import Any

from app.backends import BackendError, BackendInfo
from app.backends.client import safe_url
from app.backends.raw import RawToken
from app.backends.router import BackendStatus
from app.chat import Exchange
from app.markdown import escape_html, escape_html_open, escape_markdown
from app.sizes import size_text

TITLE = "## Coding Playground"
# The switches between alternatives link here; app.ui.branches catches the clicks.
BRANCH_LINK = "#branch-"
# The chips of attached files link here; app.ui.attachments catches the clicks.
ATTACHMENT_LINK = "#attachment-"
EARLIER, LATER = "\u2039", "\u203a"  # single angle quotation marks
# The marker after the text of a reply being written; app/ui/live.js finds it by this class.
LIVE_TAIL = "live-tail"

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


def assistant_markdown(exchange: Exchange) -> str:
    if exchange.live is not None and not exchange.done:
        shown, in_code = escape_html_open(exchange.reply)
        # A code block left open shows the text up to the line breaks it ends with (the
        # closing fence takes their place): they are left to the live text, which live.js
        # puts before the line break Markdown ends the block's text with.
        covered = len(exchange.reply.rstrip("\r\n") if in_code else exchange.reply)
        marker = live_marker(exchange.live, covered, in_code)
        parts = [shown + ("\n\n" if in_code else "") + marker]
    else:
        kept = _kept_reply_shown if exchange.done else _reply_shown
        parts = [kept(exchange.reply)] if exchange.reply else []
    if exchange.error:
        parts.append(f"⚠️ {escape_html(exchange.error)}")
    if exchange.stats is not None and exchange.done:
        parts.append(f"_{exchange.stats.line()}_")
    switch = switcher(exchange.reply_alternatives, exchange.reply_id)
    if parts and switch:  # a reply not yet begun shows nothing
        parts.append(switch)
    return "\n\n".join(parts)


def _messages(conversation: Sequence[Exchange]) -> Iterator[tuple[Exchange, dict[str, Any]]]:
    for exchange in conversation:
        user = _user_shown(exchange.user) + user_suffix(exchange)
        yield exchange, {"role": "user", "content": user}
        body = assistant_markdown(exchange)
        if body:
            yield exchange, {"role": "assistant", "content": body}


def chat_messages(conversation: Sequence[Exchange]) -> list[dict[str, Any]]:
    return [message for _, message in _messages(conversation)]


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
        shown[1] = STATE_MARKS[row.state] + shown[1]
        lines.append("| " + " | ".join(shown) + " |")
    return "\n".join(lines)


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
