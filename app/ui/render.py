"""Turn the app's conversation and backend state into what the page shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.backends import BackendError, BackendInfo
from app.chat import Exchange
from app.markdown import close_open_fence, escape_html

TITLE = "## Coding Playground"

KIND_NAMES = {"tgi": "TGI", "llama.cpp": "llama.cpp", "openai": "OpenAI-compatible server"}


def assistant_markdown(exchange: Exchange) -> str:
    parts = [escape_html(close_open_fence(exchange.reply))] if exchange.reply else []
    if exchange.error:
        parts.append(f"⚠️ {escape_html(exchange.error)}")
    if exchange.stats is not None and exchange.done:
        parts.append(f"_{exchange.stats.line()}_")
    return "\n\n".join(parts)


def chat_messages(conversation: Sequence[Exchange]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for exchange in conversation:
        messages.append({"role": "user", "content": escape_html(exchange.user)})
        body = assistant_markdown(exchange)
        if body:
            messages.append({"role": "assistant", "content": body})
    return messages


def header_markdown(info: BackendInfo | None, error: BackendError | None, url: str) -> str:
    if info is None:
        reason = str(error) if error else f"The backend at {url} has not answered yet."
        return f"{TITLE}\n⚠️ {reason} Messages will fail until it answers; no restart is needed."
    limits = f"{info.max_input_tokens} input / {info.max_total_tokens} total tokens"
    version = f" {info.version}" if info.version else ""
    return (
        f"{TITLE}\nModel **{info.model_id}** on {KIND_NAMES[info.kind]}{version} at "
        f"`{info.url}` · {limits}"
    )


def dropped_notice(dropped: int, budget: int) -> str:
    if not dropped:
        return ""
    turns = "exchange was" if dropped == 1 else "exchanges were"
    return (
        f"The {dropped} oldest {turns} left out so the conversation fits the model's "
        f"input budget of {budget} tokens."
    )
