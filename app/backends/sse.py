"""The one server-sent-event reader for every backend stream: the chat's
(``/v1/chat/completions``) and the raw prompt's (TGI's ``/generate_stream``, the completions API).

``sse_events`` yields the JSON object of each ``data:`` event of a response that
``BackendClient.post`` opened, up to ``data: [DONE]``, and raises for an error event
(``app.backends.errors.event_error``). What it cannot read (a read timeout, malformed JSON, a
broken connection) it leaves to that request's ``mapped_errors``, which turns it into a
``BackendError``. The reader is the per-chunk cost of every reply (``app.backends.client``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any, Protocol

import aiohttp

from app.backends.errors import StreamError, event_error


class EventSource(Protocol):
    """What the reader needs of the backend it reads (a ``BackendClient``)."""

    @property
    def label(self) -> str: ...

    @property
    def read_timeout(self) -> float: ...


async def sse_events(
    client: EventSource, response: aiohttp.ClientResponse
) -> AsyncGenerator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream, up to ``data: [DONE]`` or its end.

    Read to the SSE spec: LF or CRLF line endings, the ``data:`` lines of one event joined,
    an event dispatched at its blank line, ``:`` comments and other fields skipped. The read
    timeout counts from the last data event: keep-alive comments (TGI and llama-cpp-python
    send one every 15 s) do not reset it, so a server that only pings times out. An error
    event raises its ``BackendError``; malformed JSON raises ``json.JSONDecodeError`` and a
    timeout ``TimeoutError``, which the request's ``mapped_errors`` turns into theirs.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + client.read_timeout
    rest, data = b"", []
    while True:
        async with asyncio.timeout_at(deadline):
            chunk = await response.content.readany()
        if not chunk:
            return
        *lines, rest = (rest + chunk).split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
                continue
            if line or not data:
                continue
            payload = b"\n".join(data)
            data.clear()
            if payload == b"[DONE]":
                return
            event = json.loads(payload)
            if not isinstance(event, dict):
                raise StreamError(
                    f"The backend {client.label} sent an event that is not an object."
                )
            if event.get("error") is not None or event.get("object") == "error":
                raise event_error(client.label, event)
            deadline = loop.time() + client.read_timeout
            yield event

