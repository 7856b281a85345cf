"""A reply's log (``app.chat.log``): its text read from an offset in code points, as it
comes, by any number of followers, each getting every character once and in order."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.chat.log import Piece, ReplyLog

# A code point outside the BMP, a ZWJ sequence, a letter and its combining accent, CJK.
PIECES = ["def ", "f(): 🦀", "👩\u200d", "💻 cafe", "\u0301 漢字"]


def test_offsets_count_code_points() -> None:
    log = ReplyLog()
    for piece in PIECES:
        log.append(piece)
    text = "".join(PIECES)
    assert len(log) == len(text) == 22
    assert log.text == text
    for offset in range(len(text) + 2):
        assert log.since(offset) == text[offset:]


@given(st.lists(st.text(max_size=8), max_size=12), st.data())
def test_the_text_past_any_offset_is_what_was_appended_past_it(
    pieces: list[str], data: st.DataObject
) -> None:
    log = ReplyLog()
    for i, piece in enumerate(pieces):
        log.append(piece)
        if data.draw(st.booleans(), label=f"read the whole text after piece {i}"):
            assert log.text == "".join(pieces[: i + 1])
    text = "".join(pieces)
    offset = data.draw(st.integers(0, len(text) + 1))
    assert log.since(offset) == text[offset:]


async def test_followers_get_every_piece_once_in_order_then_the_end() -> None:
    log = ReplyLog("def ")

    async def follow(offset: int) -> list[Piece]:
        return [piece async for piece in log.chunks(offset)]

    early, late = asyncio.create_task(follow(0)), asyncio.create_task(follow(2))
    await asyncio.sleep(0)
    for piece in PIECES[1:]:
        log.append(piece)
        await asyncio.sleep(0)
    log.end()
    text = "".join(PIECES)
    for pieces, offset in ((await early, 0), (await late, 2)):
        assert "".join(p.text for p in pieces) == text[offset:]
        assert [p.end for p in pieces] == sorted({p.end for p in pieces}), "in order, once"
        assert pieces[-1].end == len(text)


async def test_what_came_while_a_follower_was_busy_comes_as_one_piece() -> None:
    log = ReplyLog()
    chunks = log.chunks(0)
    log.append("a")
    assert await anext(chunks) == Piece("a", 1)
    log.append("b")
    log.append("c")
    log.end()
    assert [piece async for piece in chunks] == [Piece("bc", 3)]


async def test_a_follower_past_the_end_stops_at_once_and_nothing_is_written_after() -> None:
    log = ReplyLog("done")
    log.end()
    assert [piece async for piece in log.chunks(4)] == []
    with pytest.raises(RuntimeError, match="no more"):
        log.append("more")


async def test_a_follower_hears_each_time_the_reply_waits_for_a_slot() -> None:
    """Before the first text, each change of ``waiting`` wakes the followers with an empty
    piece; once text has come, the reply waits no more."""
    log = ReplyLog()
    follower = log.chunks()
    log.wait(2)
    assert (await anext(follower), log.waiting) == (Piece("", 0), 2)
    log.wait(1)
    assert (await anext(follower), log.waiting) == (Piece("", 0), 1)
    log.append("Hi")
    assert (await anext(follower), log.waiting) == (Piece("Hi", 2), None)
    log.end()
    assert [piece async for piece in follower] == []
    assert [piece async for piece in log.chunks()] == [Piece("Hi", 2)], "a late follower"
