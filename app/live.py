"""The text of replies being written, sent to the page as it comes: ``GET /live/{key}``.

Gradio's channel costs the server about a millisecond for every update of every streaming
reply (running the handler, postprocessing the chatbot, diffing it, sending it), which made
one process fall behind its backends at 64 streams (``docs/scaling.md``). So the page's
chatbot is rendered by Gradio at the start of a reply, every ``STREAM_RENDER_INTERVAL`` while
it is written and at its end, each time with a marker after the text rendered (its key and
offset, ``app.ui.render.live_marker``); in between, the page's script (``app/ui/live.js``)
reads this server-sent-event stream and shows the text past the marker's offset.

Each event is the text added since the last one (``ReplyLog.chunks``), JSON-encoded, with the
offset it ends at (in code points, ``app.chat.log``) as its id; the reply's end is an ``end``
event. A browser opens at most six connections to one
host over HTTP/1.1, and a page's Gradio channel holds two: two tabs each holding a stream left
none, and their next request (Stop) waited forever. So a page reads its stream only while it
holds the browser's lock ``coding-playground-live`` (the Web Locks API; one tab at a time, the
others show the renders meanwhile) and says so (``held=1``): that stream lasts up to
``HELD_SECONDS``. Where the page has no such lock (a page served over plain HTTP from another
host is no secure context) a stream lasts ``STREAM_SECONDS``, so that another request waits
that long at most. Either way the browser's ``EventSource`` opens it again when it ends (after
``RETRY_MS``), sending the last id as ``Last-Event-ID``, and it goes on from there.

The key is random and only put in the pages of the conversation's owner; it lives as long as
the reply is being written, in the process writing it (behind the scale-out proxy the page's
route cookie brings the browser there). A key unknown here answers 204, which tells the
browser not to try again: the page's next render shows the reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import FastAPI, Header, Query, Response

from app.chat.log import ReplyLog, waiting_notice
from app.chat.replies import Replies
from app.events import HEADERS, event, event_stream

PATH = "/live"
STREAM_SECONDS = 1.0
HELD_SECONDS = 60.0
RETRY_MS = 10


async def events(log: ReplyLog, offset: int, seconds: float) -> AsyncIterator[bytes]:
    """The server-sent events of the text of ``log`` past ``offset``, for ``seconds`` or
    until the reply ends."""
    yield event(retry=RETRY_MS)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with aclosing(log.chunks(offset)) as chunks:
        while (left := deadline - loop.time()) > 0:
            try:
                piece = await asyncio.wait_for(anext(chunks), left)
            except TimeoutError:
                return
            except StopAsyncIteration:
                yield event(name="end")
                return
            if piece.text:
                yield event(piece.text, id=piece.end)
            elif (before := log.waiting) is not None:
                yield event(waiting_notice(before), name="waiting")


def install_live(app: FastAPI, replies: Replies) -> None:
    """Add the live text of replies to ``app`` (before the page is mounted at /)."""

    @app.get(f"{PATH}/{{key}}", include_in_schema=False)
    async def follow(
        key: str, offset: int = Query(0, ge=0), held: bool = Query(False),
        last_event_id: str | None = Header(None, alias="Last-Event-ID"),
    ) -> Response:
        live = replies.by_key(key)
        if live is None:
            return Response(status_code=204, headers=HEADERS)
        if last_event_id is not None and last_event_id.isdigit():
            offset = max(offset, int(last_event_id))
        return event_stream(
            events(live.exchange.log, offset, HELD_SECONDS if held else STREAM_SECONDS)
        )
