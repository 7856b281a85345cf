"""The live text of a reply being written (``GET /live/{key}``, app/live.py), which the page's
script reads between the chat's renders: from the offset the page has, resumed where the
last stream stopped, ended with the reply, gone once it ends."""

from __future__ import annotations

import asyncio
import json

import httpx
from fastapi import FastAPI

from app.chat import Exchange
from app.chat.replies import LiveReply, Replies
from app.live import install_live
from app.settings import load_settings

PIECES = ["def add", "(a, b):\n", "    return a + b  # é😀\n"]


def events(body: str) -> list[dict[str, str]]:
    """The server-sent events of ``body``, each its fields."""
    return [dict(line.split(": ", 1) for line in block.splitlines())
            for block in body.strip().split("\n\n")]


def text_of(found: list[dict[str, str]]) -> str:
    return "".join(json.loads(e["data"]) for e in found if "id" in e)


async def start(gate: asyncio.Queue[None]) -> tuple[Replies, LiveReply]:
    """A reply that adds a piece of ``PIECES`` each time ``gate`` lets it, and ends when it
    lets it once more."""
    replies = Replies(load_settings())
    exchange = Exchange("write add", reply_id=7)

    async def write() -> None:
        for piece in PIECES:
            await gate.get()
            exchange.log.append(piece)
        await gate.get()
        exchange.done = True

    return replies, replies.run(exchange, 1, "c1", write())


def client(replies: Replies) -> httpx.AsyncClient:
    app = FastAPI()
    install_live(app, replies)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app")


async def test_the_text_past_the_offset_comes_piece_by_piece_then_the_end() -> None:
    gate: asyncio.Queue[None] = asyncio.Queue()
    replies, live = await start(gate)
    assert live.exchange.live == live.key, "the page's render carries the key"
    for _ in range(len(PIECES) + 1):
        gate.put_nowait(None)
    async with client(replies) as http:
        answer = await http.get(f"/live/{live.key}", params={"offset": 4})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-accel-buffering"] == "no", "a proxy passes each piece on"
    got = events(answer.text)
    assert got[0] == {"retry": "10"}, "the browser comes back at once"
    assert got[-1] == {"event": "end", "data": "null"}
    assert text_of(got) == "".join(PIECES)[4:]
    assert int(got[-2]["id"]) == len("".join(PIECES)), "the id is the offset reached"
    assert live.exchange.live is None, "the ended reply's render has no marker"
    async with client(replies) as http:
        gone = await http.get(f"/live/{live.key}")
    assert gone.status_code == 204, "the browser does not try again"


async def test_a_stream_ends_after_a_while_and_the_next_goes_on_from_the_last_id() -> None:
    """The stream hands its connection back (a browser has six for the host), and the
    browser's next one, sent with the last id, misses nothing and repeats nothing."""
    gate: asyncio.Queue[None] = asyncio.Queue()
    replies, live = await start(gate)
    gate.put_nowait(None)
    async with client(replies) as http:
        first = events((await http.get(f"/live/{live.key}")).text)
        assert first[-1] != {"event": "end", "data": "null"}, "the reply goes on"
        assert text_of(first) == PIECES[0]
        gate.put_nowait(None)
        gate.put_nowait(None)
        async for piece in live.exchange.log.chunks():
            if piece.end == len("".join(PIECES)):
                break
        later = events((await http.get(f"/live/{live.key}", params={"offset": 0},
                                       headers={"Last-Event-ID": first[-1]["id"]})).text)
    assert text_of(later) == "".join(PIECES[1:])
    gate.put_nowait(None)
    assert live.task is not None
    await live.task


async def test_an_unknown_key_answers_204() -> None:
    async with client(Replies(load_settings())) as http:
        unknown = await http.get("/live/not-a-key")
    assert unknown.status_code == 204, "the browser does not try again"
