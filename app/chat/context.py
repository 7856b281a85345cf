"""Fit a conversation into the model's context: the system prompt, the new message, and as many
recent exchanges as the input budget allows, newest first."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.chat.models import Exchange

# Tokens a chat template adds around each message (role markers, separators).
MESSAGE_OVERHEAD_TOKENS = 8


def estimate_tokens(text: str) -> int:
    """A deliberately high estimate: about three characters a token, as code tends to be."""
    return math.ceil(len(text) / 3) + MESSAGE_OVERHEAD_TOKENS


class ContextOverflow(ValueError):
    """The system prompt and the new message alone do not fit the model's input budget;
    ``excess`` is by how many tokens (0 when the message is not what is too long)."""

    def __init__(self, message: str, excess: int = 0) -> None:
        super().__init__(message)
        self.excess = excess


@dataclass(frozen=True)
class FittedContext:
    messages: list[dict[str, str]]
    dropped_exchanges: int
    estimated_tokens: int
    budget: int


def input_budget(max_input_tokens: int, max_total_tokens: int, max_new_tokens: int) -> int:
    """Tokens the prompt may use so that the reply still has room for ``max_new_tokens``."""
    return min(max_input_tokens, max_total_tokens - max_new_tokens)


def fit_messages(
    system_prompt: str,
    history: Sequence[Exchange],
    user_text: str,
    budget: int,
    count: Callable[[str], int] = estimate_tokens,
) -> FittedContext:
    """Build the Messages API list; exchanges that produced no reply are never sent."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    used = sum(count(m["content"]) for m in system) + count(user_text)
    if used > budget:
        raise ContextOverflow(
            f"The system prompt and your message need about {used} tokens, more than the "
            f"{budget} this model has room for. Shorten the message or the system prompt, "
            "or lower max new tokens.", used - budget,
        )
    usable = [ex for ex in history if ex.reply]
    kept: list[Exchange] = []
    for exchange in reversed(usable):
        cost = count(exchange.sent) + count(exchange.reply)
        if used + cost > budget:
            break
        kept.append(exchange)
        used += cost
    kept.reverse()
    turns: list[dict[str, str]] = []
    for exchange in kept:
        turns.append({"role": "user", "content": exchange.sent})
        turns.append({"role": "assistant", "content": exchange.reply})
    messages = [*system, *turns, {"role": "user", "content": user_text}]
    return FittedContext(messages, len(usable) - len(kept), used, budget)
