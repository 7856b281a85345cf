"""The checks every message passes in the page and the API."""

from __future__ import annotations

import pytest

from app.chat.guard import Guard, MessageRefused
from app.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_length_in_characters_and_in_tokens() -> None:
    guard = Guard(load_settings(max_message_chars=100, max_message_tokens=20))
    with pytest.raises(MessageRefused, match="has 101 characters; the limit is 100"):
        guard.check(1, "x" * 101)
    with pytest.raises(MessageRefused, match="about 42 tokens; the limit is 20"):
        guard.check(1, "y" * 100)
    with pytest.raises(MessageRefused, match="empty"):
        guard.check(1, " \n ")
    guard.check(1, "short enough")


def test_the_rate_limit_is_per_user_and_slides() -> None:
    clock = Clock()
    guard = Guard(load_settings(rate_limit_per_minute=3), clock=clock)
    for _ in range(3):
        guard.check(1, "hi")
        clock.now += 10
    with pytest.raises(MessageRefused, match="try again in 30 s") as refused:
        guard.check(1, "hi")
    assert refused.value.retry_after == 30
    guard.check(2, "another user is not held back")
    clock.now += 30
    guard.check(1, "the oldest message left the window")


def test_a_refused_message_does_not_count() -> None:
    clock = Clock()
    guard = Guard(load_settings(rate_limit_per_minute=1, max_message_chars=5), clock=clock)
    with pytest.raises(MessageRefused):
        guard.check(1, "far too long")
    guard.check(1, "ok")


def test_zero_turns_the_rate_limit_off() -> None:
    guard = Guard(load_settings(rate_limit_per_minute=0))
    for _ in range(100):
        guard.check(1, "hi")


def test_the_rate_guard_forgets_users_who_have_been_quiet_for_a_minute() -> None:
    """It kept a queue for every user ever seen: memory that grew with every new user."""
    clock = Clock()
    guard = Guard(load_settings(rate_limit_per_minute=3), clock=clock)
    for user in range(1000):
        guard.check(user, "hi")
    clock.now += 61
    guard.check(5000, "hi")
    assert len(guard._sent) == 1
    for _ in range(2):
        guard.check(5000, "hi")
    with pytest.raises(MessageRefused, match="try again"):
        guard.check(5000, "the limit still holds")
