"""The load client: N concurrent conversations against a stand-in directly (the Messages API) or
against a Gradio app (its queue API, the way the browser speaks it), each measured from the
moment its request leaves to the moment its last token arrives.

The Gradio side speaks the queue protocol of Gradio 6: ``POST /gradio_api/queue/join`` with the
``chat`` endpoint's inputs and a session hash, then ``GET /gradio_api/queue/data?session_hash=``,
server-sent events: ``process_generating`` (the outputs in full, then as diffs of the previous
update) and ``process_completed`` (the outputs in full). The inputs come from the app's own
``/config`` (the dependency named ``chat``, its input components' default values) with only
the first one, the message, set: a client that keeps working when the app adds an input.

Between two renders of the chat, the app sends a reply's text over a lighter channel
(``app/live.py``): a render of a reply being written ends with a marker holding a key and an
offset, and the page's script reads ``GET /live/{key}?offset=`` (server-sent events, opened
again from where they stopped when the server ends them) and shows the text past the offset.
The client does the same: what it counts as shown is the render's text plus the live text past
the render's offset. Against an app without that channel (an older commit, ``gr.load_chat``)
no marker comes and only the updates count.

Tokens are counted the way a reader would count them: the stand-in emits one word a token
(`` tok0 tok1 ...``), and the words in the reply text shown are counted. The time to the first
token is the time of the first update (or piece of live text) whose reply holds a token.

HTTP is spoken over plain asyncio streams rather than through an HTTP library, so that the
client's own cost per event stays small beside what it measures.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

TOKEN = re.compile(r"\btok\d+\b")
# The app's marker after the text of a reply being written (app/ui/render.py, live_marker).
LIVE = re.compile(r'<span class="live-tail live-key-([\w-]+) live-at-(\d+) live-code-\d"></span>')
CONNECT_TIMEOUT = 30.0  # seconds to open a connection
HEAD_TIMEOUT = 60.0  # seconds to wait for a response's status line and headers
READ_TIMEOUT = 60.0  # seconds a body may stay silent (Gradio's queue beats every 15 s)
TEXT_COMPONENTS = frozenset({"textbox", "code", "markdown"})
PROMPT = "Write a Python function that reverses a string, with a docstring."


class ClientError(Exception):
    """The server answered with something the client did not expect."""


@dataclass
class StreamResult:
    started: float  # time.perf_counter() when the request left
    ended: float = 0.0
    first_update: float | None = None  # the first update of any kind (the page's echo)
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    updates: int = 0
    error: str | None = None
    text: str = ""  # the reply as last shown
    progress: list[tuple[float, int]] = field(default_factory=list, repr=False)  # (time, tokens)

    def note(self, now: float, tokens: int) -> None:
        """``tokens`` tokens are shown at ``now``."""
        if tokens > self.tokens:
            self.first_token = self.first_token or now
            self.last_token = now
            self.tokens = tokens
            self.progress.append((now, tokens))

    def tokens_at(self, moment: float) -> int:
        """Tokens shown at ``moment``."""
        shown = 0
        for when, tokens in self.progress:
            if when > moment:
                break
            shown = tokens
        return shown

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def tokens_per_second(self) -> float | None:
        if self.first_token is None or self.last_token is None or self.tokens < 2:
            return None
        span = self.last_token - self.first_token
        return (self.tokens - 1) / span if span > 0 else None


# -- HTTP over asyncio streams ------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked, sized or until the server closes)."""
        reader = self.reader
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                if not size_line:
                    raise ClientError("the connection closed inside a chunked body")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                    return
                data = await asyncio.wait_for(reader.readexactly(size + 2), READ_TIMEOUT)
                yield data[:-2]
        elif "content-length" in self.headers:
            yield await asyncio.wait_for(
                reader.readexactly(int(self.headers["content-length"])), READ_TIMEOUT)
        else:
            while data := await asyncio.wait_for(reader.read(65536), READ_TIMEOUT):
                yield data

    async def body(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def events(self) -> AsyncIterator[str]:
        """The ``data:`` payloads of a server-sent event stream, one per event line."""
        pending = b""
        async for chunk in self.chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.startswith(b"data:"):
                    yield line[5:].strip().decode()

    def close(self) -> None:
        self.writer.close()


async def request(
    url: str, method: str, path: str, payload: Any = None, cookie: str | None = None
) -> Response:
    """Send one request on a new connection; the response's head is read, its body is not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    body = b"" if payload is None else json.dumps(payload).encode()
    async with asyncio.timeout(CONNECT_TIMEOUT):
        reader, writer = await asyncio.open_connection(host, port, limit=2**22)
    try:
        head = (f"{method} {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n"
                "accept: */*\r\n")
        if payload is not None:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        if cookie:
            head += f"cookie: {cookie}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        async with asyncio.timeout(HEAD_TIMEOUT):
            raw = await reader.readuntil(b"\r\n\r\n")
    except BaseException:
        writer.close()
        raise
    status_line, *lines = raw.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status_line.split(" ", 2)[1]), headers, reader, writer)


async def get_json(
    url: str, path: str, payload: Any = None, method: str = "GET", cookie: str | None = None
) -> Any:
    response = await request(url, method, path, payload, cookie)
    try:
        body = await response.body()
    finally:
        response.close()
    if response.status != 200:
        raise ClientError(f"{method} {path}: HTTP {response.status}: {body[:300]!r}")
    return json.loads(body)


# -- the stand-in, directly ---------------------------------------------------------------


async def direct_stream(url: str, message: str = PROMPT, max_tokens: int = 512) -> StreamResult:
    """One streamed chat completion from the Messages API, as a client of the engine sees it."""
    result = StreamResult(started=time.perf_counter())
    payload = {"model": "bench", "messages": [{"role": "user", "content": message}],
               "stream": True, "max_tokens": max_tokens}
    parts: list[str] = []
    try:
        response = await request(url, "POST", "/v1/chat/completions", payload)
        try:
            if response.status != 200:
                raise ClientError(f"HTTP {response.status}: {(await response.body())[:200]!r}")
            async for data in response.events():
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise ClientError(f"error event: {event['error']}")
                content = event["choices"][0]["delta"].get("content") or ""
                if content:
                    result.updates += 1
                    parts.append(content)
                    result.note(time.perf_counter(), result.tokens + len(TOKEN.findall(content)))
            else:
                raise ClientError("the stream ended without [DONE]")
        finally:
            response.close()
    except (ClientError, OSError, asyncio.IncompleteReadError, ValueError) as err:
        result.error = f"{type(err).__name__}: {err}"
    result.ended = time.perf_counter()
    result.text = "".join(parts)
    return result


# -- a Gradio app, through its queue ------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A Gradio event as the page calls it: its index, trigger, inputs' defaults and whether it
    goes through the queue."""

    fn_index: int
    trigger_id: int | None
    defaults: list[Any]
    queued: bool = True

    def data(self, message: str | None = None) -> list[Any]:
        if message is None:
            return list(self.defaults)
        return [message, *self.defaults[1:]]


@dataclass(frozen=True)
class Endpoint:
    """The event that sends a message, and the events the page runs when it opens."""

    chat: Event
    page_load: list[Event]
    api_prefix: str = "/gradio_api"
    new_chat: Event | None = None  # starts a new conversation in the page, where there is one

    @property
    def fn_index(self) -> int:
        return self.chat.fn_index


async def find_endpoint(url: str, api_name: str = "chat") -> Endpoint:
    """The event named ``api_name`` in the app's ``/config``, with its inputs' defaults, and
    the page's load events."""
    config = await get_json(url, "/config")
    components = {component["id"]: component for component in config["components"]}

    def default(component: dict[str, Any]) -> Any:
        value = component.get("props", {}).get("value")
        if value is None and component.get("type") in TEXT_COMPONENTS:
            return ""  # what the browser sends for an empty box
        return value

    def event(index: int, dependency: dict[str, Any]) -> Event:
        defaults = [default(components[i]) for i in dependency["inputs"]]
        targets = dependency.get("targets") or []
        trigger = targets[0][0] if targets and targets[0] else None
        return Event(dependency.get("id", index), trigger, defaults,
                     bool(dependency.get("queue", True)))

    chat = new_chat = None
    loads = []
    for index, dependency in enumerate(config["dependencies"]):
        if dependency.get("api_name") == api_name:
            chat = event(index, dependency)
        if dependency.get("api_name") == "new_chat":
            new_chat = event(index, dependency)
        if dependency.get("backend_fn", True) and any(
            target[1] == "load" for target in dependency.get("targets") or []
        ):
            loads.append(event(index, dependency))
    if chat is None:
        raise ClientError(f"{url}/config has no event with api_name {api_name!r}")
    return Endpoint(chat, loads, config.get("api_prefix", "/gradio_api"), new_chat)


def apply_diff(value: Any, edits: list[list[Any]]) -> Any:
    """Gradio's output diff (``gradio.utils.diff``) applied in place."""
    for action, path, new in edits:
        if not path:
            if action == "replace":
                value = new
            elif action == "append":
                value = value + new
            else:
                raise ClientError(f"diff action {action!r} at the root")
            continue
        target = value
        for key in path[:-1]:
            target = target[key]
        last = path[-1]
        if action == "replace":
            target[last] = new
        elif action == "append":
            target[last] += new
        elif action == "add":
            if isinstance(target, list):
                target.insert(int(last), new)
            else:
                target[last] = new
        elif action == "delete":
            del target[int(last) if isinstance(target, list) else last]
        else:
            raise ClientError(f"unknown diff action {action!r}")
    return value


@dataclass
class LiveText:
    """The text of a reply being written, read from the app's live channel (``app/live.py``)
    from offset ``start`` on, as the page's script reads it."""

    key: str
    start: int
    text: str = ""
    task: asyncio.Task[None] | None = None

    def past(self, offset: int) -> str:
        return self.text[max(0, offset - self.start):]


def live_reply(outputs: list[Any]) -> tuple[str, str, int] | None:
    """The reply being written as rendered, without its marker, with the marker's key and
    offset; None for outputs without one."""
    for item in strings(outputs):
        found = LIVE.search(item)
        if found:
            return LIVE.sub("", item), found[1], int(found[2])
    return None


async def read_live(target: GradioTarget, live: LiveText, cookie: str | None,
                    shown: Callable[[], None]) -> None:
    """Follow ``live`` to the reply's end, as the page's script does: its server-sent events,
    each the text added, opened again from where the last stream stopped until the ``end``
    event; ``shown`` at each piece."""
    while True:
        offset = live.start + len(live.text)
        # held=1: one page a user, which holds the browser's lock for its stream.
        response = await request(
            target.url, "GET", f"/live/{live.key}?offset={offset}&held=1", cookie=cookie)
        try:
            if response.status == 204:
                return
            if response.status != 200:
                raise ClientError(f"live/: HTTP {response.status}")
            async for data in response.events():
                text = json.loads(data)
                if text is None:
                    return
                live.text += text
                shown()
        finally:
            response.close()


def strings(value: Any) -> Iterator[str]:
    """The strings in ``value`` (lists and dicts at any depth), depth first from the end."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def reply_text(outputs: list[Any], message: str) -> str:
    """The reply to ``message`` being streamed: in the first output that holds a token or the
    message (the chatbot), the last string (at any depth) that holds a token, unless the
    message comes after it (no reply yet)."""
    for output in outputs:
        for item in strings(output):
            if TOKEN.search(item):
                return item
            if message in item:
                return ""
    return ""


@dataclass
class GradioTarget:
    url: str
    endpoint: Endpoint
    on_update: Callable[[StreamResult, str], None] | None = field(default=None, repr=False)
    # Load the page's HTML first and send back the cookies it sets (behind a load balancer
    # with sticky sessions), as a browser does.
    cookies: bool = False
    jar: dict[str, str] = field(default_factory=dict, repr=False)  # session -> Cookie header


async def open_page(target: GradioTarget) -> str:
    """A new session, opened as the browser opens the page: its load events run (their
    outputs are not looked at). Returns the session hash."""
    session = uuid.uuid4().hex[:11]
    if target.cookies:
        page = await request(target.url, "GET", "/")
        try:
            await page.body()
        finally:
            page.close()
        if page.status != 200:
            raise ClientError(f"GET /: HTTP {page.status}")
        cookie = page.headers.get("set-cookie", "").split(";")[0]
        if cookie:
            target.jar[session] = cookie
    for event in target.endpoint.page_load:
        await call(target, event, session)
    return session


async def new_conversation(target: GradioTarget, session: str) -> None:
    """Press the page's "New conversation" button (where it has one)."""
    if target.endpoint.new_chat is not None:
        await call(target, target.endpoint.new_chat, session)


async def call(target: GradioTarget, event: Event, session: str) -> list[Any]:
    """Run ``event`` with its default inputs in ``session``; its outputs."""
    if event.queued:
        return await run_event(target, event, event.data(), session, None)
    answer = await get_json(target.url, f"{target.endpoint.api_prefix}/run/predict", {
        "data": event.data(), "event_data": None, "fn_index": event.fn_index,
        "trigger_id": event.trigger_id, "session_hash": session,
    }, method="POST", cookie=target.jar.get(session))
    return list(answer.get("data") or [])


async def gradio_stream(
    target: GradioTarget, message: str = PROMPT, session: str | None = None
) -> StreamResult:
    """Send ``message`` (in ``session``, or a new one) and follow the reply to its last
    update."""
    result = StreamResult(started=time.perf_counter())
    event = target.endpoint.chat
    try:
        await run_event(target, event, event.data(message),
                        session or uuid.uuid4().hex[:11], result)
    except (ClientError, OSError, asyncio.IncompleteReadError, ValueError, KeyError) as err:
        result.error = f"{type(err).__name__}: {err}"
    result.ended = time.perf_counter()
    return result


async def run_event(
    target: GradioTarget, event: Event, data: list[Any], session: str,
    result: StreamResult | None,
) -> list[Any]:
    """One queued event: join, then follow the session's stream until the event completes.
    Every update's reply text goes to ``result``. Returns the final outputs."""
    prefix = target.endpoint.api_prefix
    message_text = str(data[0]) if data else "\0"
    cookie = target.jar.get(session)
    joined = await get_json(target.url, f"{prefix}/queue/join", {
        "data": data, "event_data": None, "fn_index": event.fn_index,
        "trigger_id": event.trigger_id, "session_hash": session,
    }, method="POST", cookie=cookie)
    event_id = joined.get("event_id")
    response = await request(target.url, "GET", f"{prefix}/queue/data?session_hash={session}",
                             cookie=cookie)
    outputs: list[Any] | None = None
    rendered: tuple[str, str, int] | None = None  # the reply being written, key, offset
    live: LiveText | None = None

    def shown() -> None:
        if result is None or outputs is None:
            return
        if rendered is None:
            _seen(result, reply_text(outputs, message_text), target)
        else:
            text, _, offset = rendered
            _seen(result, text + (live.past(offset) if live else ""), target)

    try:
        if response.status != 200:
            raise ClientError(f"queue/data: HTTP {response.status}")
        async for line in response.events():
            message = json.loads(line)
            kind = message.get("msg")
            mine = message.get("event_id") == event_id
            if kind == "process_generating" and mine:
                data_out = message["output"]["data"]
                if outputs is None:
                    outputs = list(data_out)
                else:
                    outputs = [apply_diff(old, edits)
                               for old, edits in zip(outputs, data_out, strict=False)]
                rendered = live_reply(outputs)
                if rendered is not None and live is None and result is not None:
                    live = LiveText(rendered[1], rendered[2])
                    live.task = asyncio.create_task(read_live(target, live, cookie, shown))
                shown()
            elif kind == "process_completed" and mine:
                if not message.get("success", True):
                    error = message.get("output", {}).get("error") or "failed"
                    raise ClientError(f"the event failed: {error}")
                outputs, rendered = list(message["output"]["data"]), None
                shown()
                return outputs
            elif kind in ("unexpected_error", "close_stream"):
                raise ClientError(f"queue message {kind}: {message.get('message')}")
        raise ClientError("the queue stream ended before the event completed")
    finally:
        response.close()
        if live is not None and live.task is not None:
            live.task.cancel()


def _seen(result: StreamResult, text: str, target: GradioTarget) -> None:
    """Note an update showing ``text`` as the reply."""
    now = time.perf_counter()
    result.updates += 1
    result.first_update = result.first_update or now
    result.note(now, len(TOKEN.findall(text)))
    result.text = text
    if target.on_update is not None:
        target.on_update(result, text)
