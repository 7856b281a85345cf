"""Many backends as one (app/backends/router.py) against fake servers: TGI and
OpenAI-compatible servers (tests/fake_backend.py speaks their formats), failing in each way
the issue lists. Sleeps are recorded instead of slept where a test checks the backoff."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from app.backends import (
    BackendClient,
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendValidationError,
    GenerationError,
    GenerationParams,
    StreamError,
)
from app.backends.errors import NoBackendAvailable
from app.backends.router import RECHECK_SECONDS, Router
from app.chat import Chat, ChatService
from app.chat.conversations import Conversations
from app.chat.guard import Guard
from app.chat.turns import TurnRequest, Turns
from app.metrics import Metrics
from app.server import open_store
from tests.conftest import settings_for
from tests.fake_backend import TGI_VERSION, FakeBackend
from tests.servers import ServerThread, free_port
from tests.waiting import eventually

PARAMS = GenerationParams(max_new_tokens=16)
MESSAGES = [{"role": "user", "content": "hi"}]
MODEL = "bigcode/starcoder2-3b"


class Sleeps:
    """Stands in for asyncio.sleep: records each wait, waits nothing."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeRouter = Callable[..., Router]


@pytest.fixture
async def router() -> AsyncIterator[MakeRouter]:
    """Makes routers over ``(name, url)`` backends, and closes them after the test as the app
    closes its own."""
    made: list[Router] = []

    def make(*backends: tuple[str, str], **options: Any) -> Router:
        timeout = options.pop("read_timeout", 5.0)
        clients = [BackendClient(url, name=name, read_timeout=timeout) for name, url in backends]
        options.setdefault("sleep", Sleeps())
        made.append(Router(clients, Metrics(), **options))
        return made[-1]

    yield make
    for r in made:
        await r.aclose()


async def reply(r: Router, model: str | None = MODEL) -> tuple[str, str | None]:
    """The whole reply's text and the backend that answered."""
    info = await r.info_for(model)
    text, backend = "", None
    async with aclosing(r.stream(info, MESSAGES, PARAMS)) as stream:
        async for delta in stream:
            backend = backend or delta.backend
            text += delta.text
    return text, backend


@pytest.fixture
def second() -> FakeBackend:
    return FakeBackend(kind="openai", tokens=["from", " b"])


@pytest.fixture
def backend_b(second: FakeBackend) -> Iterator[ServerThread]:
    with ServerThread(second.app()) as server:
        yield server


async def test_the_model_menu_lists_every_backends_models(
    backend: ServerThread, second: FakeBackend, backend_b: ServerThread, router: MakeRouter
) -> None:
    second.served = [MODEL, "Qwen/Qwen2.5-Coder-7B-Instruct"]
    r = router(("gpu", backend.url), ("vllm", backend_b.url))
    await r.refresh()
    assert r.models() == {MODEL: ["gpu", "vllm"], "Qwen/Qwen2.5-Coder-7B-Instruct": ["vllm"]}
    status = {row.name: row for row in r.statuses()}
    assert status["gpu"].state == "up"
    assert status["gpu"].max_total_tokens == 2048
    assert status["gpu"].version == TGI_VERSION
    assert status["vllm"].kind == "openai"
    assert await reply(r, "Qwen/Qwen2.5-Coder-7B-Instruct") == ("from b", "vllm")


async def test_a_failing_backend_fails_over_to_another_serving_the_model(
    fake: FakeBackend, backend: ServerThread, second: FakeBackend, backend_b: ServerThread,
    router: MakeRouter,
) -> None:
    fake.mode = "overloaded"
    r = router(("gpu", backend.url), ("vllm", backend_b.url))
    assert await reply(r) == ("from b", "vllm")
    assert len(fake.requests) == 1, "one try on the overloaded backend, then the next"


async def test_retries_with_backoff_before_the_first_token(
    fake: FakeBackend, backend: ServerThread, router: MakeRouter
) -> None:
    fake.mode, fake.fail_times = "overloaded", 2
    sleeps = Sleeps()
    r = router(("gpu", backend.url), retries=2, backoff=0.5, sleep=sleeps)
    assert await reply(r) == ("Hello, world!", "gpu")
    assert len(fake.requests) == 3
    assert len(sleeps.waits) == 2
    assert 0.5 <= sleeps.waits[0] <= 0.75, "the backoff, with jitter"
    assert 1.0 <= sleeps.waits[1] <= 1.5, "doubled"


async def test_no_retry_once_tokens_have_flowed(
    fake: FakeBackend, backend: ServerThread, second: FakeBackend, backend_b: ServerThread,
    router: MakeRouter,
) -> None:
    fake.mode = "die_mid_stream"
    r = router(("gpu", backend.url), ("vllm", backend_b.url))
    seen: list[str] = []

    async def consume() -> None:
        info = await r.info_for(MODEL)
        async with aclosing(r.stream(info, MESSAGES, PARAMS)) as stream:
            async for delta in stream:
                seen.append(delta.text)

    with pytest.raises(StreamError):
        await consume()
    assert "".join(seen) == "Hello,", "the text before the break, once"
    assert len(fake.requests) == 1, "no retry"
    assert second.requests == [], "no failover"


async def test_a_backend_that_keeps_failing_is_marked_down_and_not_hammered(
    fake: FakeBackend, backend: ServerThread, second: FakeBackend, backend_b: ServerThread,
    router: MakeRouter,
) -> None:
    fake.mode, fake.keepalive = "stall_before_first", 0.05  # pings, but sends no data
    clock = Clock()
    r = router(("gpu", backend.url), ("vllm", backend_b.url), read_timeout=0.3,
               failure_threshold=2, clock=clock)
    for _ in range(4):
        assert await reply(r) == ("from b", "vllm")
    assert len(fake.requests) == 2, "after two timeouts the stalled backend is skipped"
    assert fake.cancelled == 2, "each stalled stream was closed, freeing its slot"
    gpu = {row.name: row for row in r.statuses()}["gpu"]
    assert gpu.state == "down"
    assert "sent nothing for 0.3 s" in (gpu.error or "")
    assert 'playground_backend_up{backend="gpu"} 0.0' in r.metrics.render().decode()
    assert 'kind="timeout"' in r.metrics.render().decode()
    fake.mode = "ok"
    clock.now += r.check_interval
    await r.refresh()
    assert {row.name: row.state for row in r.statuses()} == {"gpu": "up", "vllm": "up"}
    assert await reply(r) == ("Hello, world!", "gpu")


async def test_every_backend_down_then_one_back_without_a_restart(
    fake: FakeBackend, router: MakeRouter
) -> None:
    ports = free_port(), free_port()
    clock = Clock()
    r = router(("gpu", f"http://127.0.0.1:{ports[0]}"),
               ("laptop", f"http://127.0.0.1:{ports[1]}"), clock=clock)
    with pytest.raises(NoBackendAvailable) as caught:
        await reply(r)
    message = str(caught.value)
    assert f"gpu: The backend 'gpu' at http://127.0.0.1:{ports[0]} is unreachable" in message
    assert f"laptop: The backend 'laptop' at http://127.0.0.1:{ports[1]} is unreachable" in message
    assert "no restart is needed" in message
    with ServerThread(fake.app(), port=ports[1]):
        clock.now += RECHECK_SECONDS
        assert await reply(r) == ("Hello, world!", "laptop")


async def test_a_stalled_stream_times_out_with_a_clear_message(
    fake: FakeBackend, backend: ServerThread, router: MakeRouter
) -> None:
    fake.mode, fake.keepalive = "stall_before_first", 0.05  # pings, but sends no data
    r = router(("gpu", backend.url), read_timeout=0.3, retries=0)
    with pytest.raises(BackendTimeout, match=r"The backend 'gpu' at .* sent nothing for 0\.3 s"):
        async with asyncio.timeout(10):
            await reply(r)
    await eventually(lambda: fake.cancelled, what="the stalled request to close")
    assert fake.cancelled == 1, "the stalled request was closed"


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("malformed", StreamError, "sent malformed data in the stream"),
        ("generation_error", GenerationError,
         "The model failed while generating: Request failed"),
        ("overloaded", BackendOverloaded, "overloaded; try again shortly"),
    ],
)
async def test_each_fault_has_its_own_message(
    fake: FakeBackend, backend: ServerThread, mode: str, error: type[Exception], message: str,
    router: MakeRouter,
) -> None:
    fake.mode = mode  # type: ignore[assignment]
    r = router(("gpu", backend.url))
    with pytest.raises(error, match=message):
        await reply(r)


async def test_a_validation_error_is_neither_retried_nor_held_against_the_backend(
    fake: FakeBackend, backend: ServerThread, router: MakeRouter
) -> None:
    """TGI sends it inside an HTTP 200 stream (router/src/server.rs): read as a broken stream,
    it was retried and, three times over, marked a healthy backend down."""
    sleeps = Sleeps()
    fake.max_input_tokens, fake.max_total_tokens = 999, 1000
    r = router(("gpu", backend.url), sleep=sleeps, failure_threshold=3)
    too_long = GenerationParams(max_new_tokens=1000)

    async def ask() -> None:
        info = await r.info_for(MODEL)
        async with aclosing(r.stream(info, MESSAGES, too_long)) as stream:
            async for _ in stream:
                pass

    for _ in range(4):
        with pytest.raises(BackendValidationError, match=r"must be <= 1000.*Shorten the message"):
            await ask()
    assert len(fake.requests) == 4, "one request a reply: no retry"
    assert sleeps.waits == []
    assert {row.name: row.state for row in r.statuses()} == {"gpu": "up"}
    assert await reply(r) == ("Hello, world!", "gpu")


async def test_a_retry_after_too_long_is_not_waited_for(
    second: FakeBackend, backend_b: ServerThread, router: MakeRouter
) -> None:
    """A proxy in front of an OpenAI-compatible server may send Retry-After (TGI never does)."""
    second.mode, second.retry_after = "http_429", 30
    sleeps = Sleeps()
    with pytest.raises(BackendOverloaded, match="overloaded; try again in 30 s"):
        await reply(router(("vllm", backend_b.url), sleep=sleeps))
    assert sleeps.waits == [], "a Retry-After longer than the app waits is not waited for"


async def test_a_short_retry_after_is_honoured(
    second: FakeBackend, backend_b: ServerThread, router: MakeRouter
) -> None:
    second.mode, second.fail_times, second.retry_after = "http_429", 1, 3
    sleeps = Sleeps()
    assert await reply(router(("vllm", backend_b.url), sleep=sleeps)) == ("from b", "vllm")
    assert sleeps.waits == [3]


async def test_inference_providers_get_the_model_with_its_provider_and_hf_token(
    second: FakeBackend, backend_b: ServerThread
) -> None:
    """The fake stands in for router.huggingface.co: OpenAI-compatible, many models."""
    second.served = ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-Coder-32B-Instruct"]
    settings = settings_for(
        "http://127.0.0.1:1", hf_token="hf_providerstoken",
        backends=[{"name": "providers", "kind": "hf", "url": backend_b.url,
                   "models": ["Qwen/Qwen2.5-Coder-32B-Instruct"], "provider": "together"}],
    )
    service = ChatService(settings)
    info = await service.backend_info()
    assert (info.kind, info.model_id) == ("hf", "Qwen/Qwen2.5-Coder-32B-Instruct")
    assert service.models() == {"Qwen/Qwen2.5-Coder-32B-Instruct": ["providers"]}
    async with aclosing(service.stream_reply(info, MESSAGES, PARAMS, asyncio.Event(), 1)) as s:
        updates = [p async for p in s]
    final = updates[-1]
    assert "".join(p.added for p in updates) == "from b"
    assert final.stats.backend == "providers"
    assert second.requests[-1]["model"] == "Qwen/Qwen2.5-Coder-32B-Instruct:together"
    assert second.headers[-1]["authorization"] == "Bearer hf_providerstoken"
    await service.aclose()


async def test_the_stored_reply_names_the_backend_that_answered(
    fake: FakeBackend, backend: ServerThread, second: FakeBackend, backend_b: ServerThread,
    tmp_path: Path,
) -> None:
    """The first backend is overloaded, the second answers: the reply is stored (and shown on
    reopening) as the second's, not as the one first picked."""
    fake.mode = "overloaded"
    second.served = [MODEL]
    settings = settings_for(
        "http://127.0.0.1:1", database_url=f"sqlite:///{tmp_path / 'store.db'}",
        backends=[{"name": "gpu", "url": backend.url}, {"name": "spare", "url": backend_b.url}],
    )
    store = open_store(settings)
    mine = Conversations(store, store.user_id())
    service = ChatService(settings)
    turns = Turns(service, Guard(settings, store))
    turn = await turns.start(mine, Chat(), TurnRequest("hi", "", {"model": MODEL}))
    assert turn.info.name == "gpu", "picked first"
    assert turn.live.task is not None
    await turn.live.task
    assert turn.exchange.reply == "from b"
    assert turn.chat.id is not None
    _, reopened = await mine.open(turn.chat.id)
    assert reopened.exchanges[0].stats is not None
    assert reopened.exchanges[0].stats.backend == "spare"
    await service.aclose()


@pytest.mark.parametrize(
    "body", [b'{"max_total_tokens": 2048, "cut', b'{"max_total_tokens": null}',
             b'{"max_total_tokens": "many"}'],
    ids=["not-json", "null", "text"],
)
async def test_a_malformed_info_marks_that_backend_down_and_no_other(
    body: bytes, backend_b: ServerThread, router: MakeRouter
) -> None:
    """One bad /info used to escape the probe as ValueError/TypeError and stop every check."""

    asked: list[object] = []

    async def info(request: object) -> Response:
        asked.append(request)
        return Response(body, media_type="application/json")

    broken = Starlette(routes=[Route("/info", info)])
    with ServerThread(broken) as bad:
        r = router(("bad", bad.url), ("vllm", backend_b.url), check_interval=0.05)
        await r.refresh()
        rows = {row.name: row for row in r.statuses()}
        assert (rows["bad"].state, rows["vllm"].state) == ("down", "up")
        assert "/info" in (rows["bad"].error or "")
        probed = len(asked)
        checks = asyncio.create_task(r.run_checks())
        await eventually(lambda: checks.done() or len(asked) >= probed + 3,
                         what="three background checks")
        assert not checks.done(), "the background checks go on"
        checks.cancel()


async def test_the_background_checks_survive_anything(
    fake: FakeBackend, backend: ServerThread, caplog: pytest.LogCaptureFixture, router: MakeRouter
) -> None:
    r = router(("gpu", backend.url), check_interval=0.05)
    calls = 0
    probe = r.states[0].client.probe

    async def flaky() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in a probe")
        return await probe()

    r.states[0].client.probe = flaky  # type: ignore[method-assign]
    checks = asyncio.create_task(r.run_checks())
    await eventually(lambda: checks.done() or calls >= 3, what="three background checks")
    assert not checks.done()
    checks.cancel()
    assert {row.name: row.state for row in r.statuses()} == {"gpu": "up"}
    assert "a bug in a probe" in caplog.text


# -- llama-server's slots (the fake stands for it, as tests/fake_backend.py says) ------------


async def test_llama_servers_slots_and_context_come_from_its_props(router: MakeRouter) -> None:
    fake = FakeBackend(kind="llama.cpp", model_id="smol", slots=3, max_total_tokens=4608)
    with ServerThread(fake.app()) as server:
        r = router(("engine", server.url))
        await r.refresh()
    [status] = r.statuses()
    assert (status.kind, status.slots, status.max_input_tokens, status.max_total_tokens,
            status.version) == ("llama.cpp", 3, 4607, 4608, "b1-0c1e570")
    assert 'playground_backend_slots{backend="engine"} 3.0' in r.metrics.render().decode()


async def test_a_request_beyond_the_slots_is_told_how_many_wait_before_it(
    router: MakeRouter,
) -> None:
    """With one slot: the second stream's first delta says it waits (none before it), the
    third's that one does; the panel's counts and the metrics follow, and go back to zero."""
    fake = FakeBackend(kind="llama.cpp", model_id="smol", slots=1, token_delay=0.02,
                       tokens=[f"t{i} " for i in range(10)])
    with ServerThread(fake.app()) as server:
        r = router(("engine", server.url))
        info = await r.info_for("smol")
        streams = [r.stream(info, MESSAGES, PARAMS) for _ in range(3)]
        first = await anext(streams[0])
        assert first.text
        assert first.waiting is None
        assert (await anext(streams[1])).waiting == 0
        assert (await anext(streams[2])).waiting == 1
        [status] = r.statuses()
        assert (status.requests, status.waiting) == (3, 2)
        shown = r.metrics.render().decode()
        assert 'playground_backend_requests{backend="engine",state="waiting"} 2.0' in shown
        assert 'playground_backend_requests{backend="engine",state="served"} 1.0' in shown
        texts = []
        for stream in streams:
            async with aclosing(stream):
                texts.append("".join([delta.text async for delta in stream]))
    assert texts[0] == "".join(fake.tokens[1:])
    assert texts[1:] == ["".join(fake.tokens)] * 2
    [status] = r.statuses()
    assert (status.requests, status.waiting) == (0, 0)


async def test_a_backends_failures_carry_its_note_when_it_has_one(router: MakeRouter) -> None:
    """The embedded engine's router says, on a failure, what the engine's supervisor knows
    (app/engine.py's ``explain``): here a note that comes and goes."""
    fake = FakeBackend(mode="die_mid_stream")
    notes = ["The engine is being started again.", None]
    with ServerThread(fake.app()) as server:
        r = router(("engine", server.url))
        r.explain("engine", lambda: notes[0])
        for note in notes:
            notes[0] = note
            with pytest.raises(StreamError) as failed:
                await reply(r)
            said = str(failed.value)
            assert said.endswith("The engine is being started again.") == (note is not None)
            assert "broke before the reply was finished" in said


async def test_a_refused_request_carries_no_note(router: MakeRouter) -> None:
    """A backend that refuses the request is working: the engine's note is not added."""
    fake = FakeBackend(kind="openai", mode="http_429", fail_times=None)
    with ServerThread(fake.app()) as server:
        r = router(("engine", server.url), retries=0)
        r.explain("engine", lambda: "The engine is being started again.")
        with pytest.raises(BackendError) as failed:
            await reply(r)
    assert "being started again" not in str(failed.value)
