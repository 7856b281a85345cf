"""Server-sent events out of the app: one encoder (FastAPI's ``format_sse_event``) and one
kind of response, for the page's live text (``app.live``) and the REST API's streams
(``app.api``). The backends' streams coming in are read by ``app.backends.sse``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Iterable
from typing import Any

from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event

# Not kept by the browser or a proxy; passed on by nginx (the scale-out profile) as each event
# comes.
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def event(
    data: Any = None, *, name: str | None = None, id: int | None = None,
    retry: int | None = None,
) -> bytes:
    """One event: ``data`` as JSON (none for None with only a ``retry``), its ``name`` (the
    browser's ``addEventListener``), its ``id`` (sent back as ``Last-Event-ID``)."""
    return format_sse_event(
        data_str=None if data is None and retry is not None else json.dumps(data),
        event=name, id=None if id is None else str(id), retry=retry,
    )


def event_stream(events: AsyncIterable[bytes] | Iterable[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=HEADERS)
