from __future__ import annotations

import pytest

from app.chat import ContextOverflow, Exchange, ReplyLog, fit_messages
from app.chat.context import estimate_tokens, input_budget


def words(text: str) -> int:
    """A counter that makes budgets easy to reason about: one token a word."""
    return len(text.split())


HISTORY = [Exchange(f"question {i}", ReplyLog(f"answer {i}")) for i in range(5)]


def test_everything_fits() -> None:
    fitted = fit_messages("be brief", HISTORY, "new one", budget=100, count=words)
    assert fitted.dropped_exchanges == 0
    assert fitted.messages[0] == {"role": "system", "content": "be brief"}
    assert fitted.messages[1] == {"role": "user", "content": "question 0"}
    assert fitted.messages[-1] == {"role": "user", "content": "new one"}
    assert len(fitted.messages) == 1 + 2 * 5 + 1


def test_oldest_exchanges_are_left_out_first() -> None:
    # system 2 + new 2 = 4; each exchange costs 4; budget 13 leaves room for two.
    fitted = fit_messages("be brief", HISTORY, "new one", budget=13, count=words)
    assert fitted.dropped_exchanges == 3
    contents = [m["content"] for m in fitted.messages]
    assert contents == ["be brief", "question 3", "answer 3", "question 4", "answer 4", "new one"]
    assert fitted.estimated_tokens == 12


def test_exchanges_without_a_reply_are_never_sent() -> None:
    history = [Exchange("lost", error="unreachable"), Exchange("kept", ReplyLog("yes"))]
    fitted = fit_messages("", history, "next", budget=100, count=words)
    assert [m["content"] for m in fitted.messages] == ["kept", "yes", "next"]
    assert fitted.dropped_exchanges == 0


def test_a_message_too_long_for_the_context_is_refused() -> None:
    with pytest.raises(ContextOverflow, match="more than the 3 this model has room for"):
        fit_messages("be brief", [], "one two", budget=3, count=words)


def test_budget_leaves_room_for_the_reply() -> None:
    assert input_budget(max_input_tokens=1024, max_total_tokens=2048, max_new_tokens=512) == 1024
    assert input_budget(max_input_tokens=4095, max_total_tokens=4096, max_new_tokens=512) == 3584


def test_the_estimate_errs_high_for_code() -> None:
    code = "def reverse(s: str) -> str:\n    return s[::-1]\n"
    assert estimate_tokens(code) >= 20  # SmolLM2's tokenizer needs 17 tokens for this
