"""One pooled HTTP session per backend (app/backends/client.py): every probe, stream and
raw-prompt call to a backend shares its connections, a stopped stream's connection is closed
rather than pooled, and the app closes them all as it stops. A TCP relay in front of the fake
backend counts the connections."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from contextlib import aclosing
from types import TracebackType

import pytest

from app.backends import BackendClient, BackendInfo, GenerationParams
from app.backends.client import KEEPALIVE_SECONDS
from app.backends.raw import stream_raw
from app.server import create_app
from bench.client import GradioTarget, find_endpoint, gradio_stream, open_page
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread
from tests.waiting import eventually

PARAMS = GenerationParams(max_new_tokens=16)
MESSAGES = [{"role": "user", "content": "hi"}]


class Relay:
    """Relays TCP connections from a port of its own to ``port``, on the test's loop, and
    counts them: ``opened`` in all, ``open`` now (until both sides have closed)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.opened = 0
        self.open = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        self.open += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self.open -= 1
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def chat(client: BackendClient, info: BackendInfo) -> str:
    async with aclosing(client.stream_chat(MESSAGES, PARAMS, info)) as stream:
        return "".join([delta.text async for delta in stream])


async def raw(client: BackendClient, info: BackendInfo) -> str:
    async with aclosing(stream_raw(client, info, "<fake>user: hi</fake>", PARAMS)) as stream:
        return "".join([token.text async for token in stream])


async def test_probes_and_streams_to_one_backend_share_its_connections(
    fake: FakeBackend, backend: ServerThread
) -> None:
    """One after another, probes, chat streams (to ``data: [DONE]``) and raw streams (TGI's
    /tokenize, then /generate_stream to its end) all go over one connection; at once, each
    takes one of its own, and the next ones reuse them."""
    fake.token_delay = 0.01
    async with Relay(backend.port) as relay:
        client = BackendClient(relay.url)
        try:
            info = await client.probe()
            for _ in range(5):
                assert await chat(client, info) == "Hello, world!"
                assert await raw(client, info) == "Hello, world!</s>"
                await client.probe()
            assert (len(fake.requests), fake.probes) == (10, 6)
            assert relay.opened == 1
            for _ in range(3):
                replies = await asyncio.gather(*(chat(client, info) for _ in range(4)))
                assert replies == ["Hello, world!"] * 4
            assert relay.opened <= 4, "no more connections than requests at once"
            assert relay.open == relay.opened, "idle in the pool"
        finally:
            await client.aclose()
        await eventually(lambda: relay.open == 0)


async def test_a_stopped_stream_closes_its_connection_and_the_next_one_streams(
    fake: FakeBackend, backend: ServerThread
) -> None:
    """A stream left before its end (the user pressed Stop) is never handed to the next
    request half read: its connection is closed, and the backend sees the client leave."""
    fake.token_delay = 0.2
    async with Relay(backend.port) as relay:
        client = BackendClient(relay.url)
        try:
            info = await client.probe()
            async with aclosing(client.stream_chat(MESSAGES, PARAMS, info)) as stream:
                assert (await anext(stream)).text == "Hello"
            await eventually(lambda: fake.cancelled == 1)
            await eventually(lambda: relay.open == 0)
            fake.token_delay = 0
            assert await chat(client, info) == "Hello, world!"
            assert relay.opened == 2
        finally:
            await client.aclose()


async def run_app(url: str, fake: FakeBackend) -> None:
    """Start the app on the backend at ``url`` (``fake`` behind it), send one message from a
    page, and stop the app while it keeps probing the backend. It stops from a thread, so that
    the relay (on this loop) carries the app's requests until the app has stopped."""
    settings = settings_for(url, backend_check_interval=0.2, rate_limit_per_minute=0)
    server = ServerThread(create_app(settings)).start()
    try:
        target = GradioTarget(server.url, await find_endpoint(server.url))
        result = await gradio_stream(target, "hi", session=await open_page(target))
        assert not result.error
        probed = fake.probes
        await eventually(lambda: fake.probes >= probed + 2, what="a few more probes")
    finally:
        await asyncio.to_thread(server.stop)


async def test_the_app_closes_its_backend_connections_as_it_stops(
    fake: FakeBackend, backend: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """The lifespan closes the backends' sessions: their connections close as the app stops
    (not when they would have idled out, KEEPALIVE_SECONDS after the last probe or later),
    and no session is left for the garbage collector to warn about."""
    async with Relay(backend.port) as relay:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await run_app(relay.url, fake)
            stopped = time.monotonic()
            await eventually(lambda: relay.open == 0)
            closed_after = time.monotonic() - stopped
            gc.collect()
    assert fake.completed == 1
    assert fake.probes >= 3
    assert relay.opened <= 2, "the probes and the reply shared the pooled connections"
    assert closed_after < KEEPALIVE_SECONDS / 2, "closed as the app stopped, not idled out"
    unclosed = [str(w.message) for w in caught if "Unclosed" in str(w.message)]
    assert not unclosed
    assert "Unclosed" not in caplog.text
