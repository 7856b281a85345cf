"""Waiting for something to have happened (a reply to have grown, a save to have landed, a
stream to have been closed): poll for it with a deadline, never sleep for a guessed while,
which is too short on a busy machine and too long everywhere else.

A test that checks that nothing happens during an interval still sleeps for that interval;
it says so where it does."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], object], seconds: float = 10, step: float = 0.05, what: str = ""
) -> None:
    """Return once ``condition()`` is true; fail the test if it is still false after
    ``seconds``. ``what`` names what is awaited, for the failure's message."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, gave_up(seconds, what)
        time.sleep(step)


async def eventually(
    condition: Callable[[], object], seconds: float = 10, step: float = 0.02, what: str = ""
) -> None:
    """``wait_for`` inside the event loop: the loop runs on between checks. ``condition``
    may be a coroutine function, awaited at each check."""
    deadline = time.monotonic() + seconds
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        assert time.monotonic() < deadline, gave_up(seconds, what)
        await asyncio.sleep(step)


def gave_up(seconds: float, what: str) -> str:
    return f"gave up after {seconds} s waiting for {what or 'the condition'}"
