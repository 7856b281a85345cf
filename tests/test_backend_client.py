"""The backend client against a real local server speaking TGI's and OpenAI's wire formats."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from app.backends import (
    BackendClient,
    BackendError,
    BackendInfo,
    BackendOverloaded,
    BackendTimeout,
    BackendUnreachable,
    BackendValidationError,
    Delta,
    GenerationError,
    GenerationParams,
    StreamError,
)
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port

PARAMS = GenerationParams(max_new_tokens=64)


async def collect(client: BackendClient, params: GenerationParams = PARAMS) -> list[Delta]:
    info = await client.probe()
    return [d async for d in client.stream_chat([{"role": "user", "content": "hi"}], params, info)]


async def test_probe_finds_tgi_and_its_limits(backend: ServerThread) -> None:
    info = await BackendClient(backend.url).probe()
    assert info == BackendInfo(
        kind="tgi", url=backend.url, model_id="bigcode/starcoder2-3b", max_input_tokens=1024,
        max_total_tokens=2048, version="3.3.5", max_stop_sequences=4,
    )
    assert "top_k" not in info.controls


@pytest.mark.parametrize("kind", ["openai", "llama.cpp"])
async def test_probe_falls_back_to_openai_models(fake: FakeBackend, kind: str) -> None:
    fake.kind = kind  # type: ignore[assignment]
    with ServerThread(fake.app()) as server:
        info = await BackendClient(server.url, context_tokens=4096).probe()
    assert (info.kind, info.model_id, info.max_total_tokens) == (kind, fake.model_id, 4096)
    assert ("top_k" in info.controls) is (kind == "llama.cpp")


async def test_probe_of_a_closed_port_says_unreachable_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnreachable, match=f"The backend 'default' at {url} is unreachable"):
        await BackendClient(url).probe()


async def test_stream_yields_tokens_then_finish_reason(backend: ServerThread) -> None:
    deltas = await collect(BackendClient(backend.url))
    assert "".join(d.text for d in deltas) == "Hello, world!"
    assert [d.finish_reason for d in deltas] == [None, None, None, "eos_token"]


async def test_stream_sends_parameters_and_token(
    backend: ServerThread, fake: FakeBackend
) -> None:
    params = GenerationParams(
        max_new_tokens=2, temperature=0.3, top_p=0.9, top_k=5, stop=("\n\n",), seed=7
    )
    deltas = await collect(BackendClient(backend.url, token="s3cret"), params)
    sent = fake.requests[-1]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (2, 0.3, 0.9)
    assert (sent["stop"], sent["seed"], sent["stream"]) == (["\n\n"], 7, True)
    assert "top_k" not in sent, "TGI's Messages API does not take top_k"
    assert fake.headers[-1]["authorization"] == "Bearer s3cret"
    assert deltas[-1].finish_reason == "length"


async def test_llama_cpp_gets_its_own_sampling_knobs(fake: FakeBackend) -> None:
    fake.kind = "llama.cpp"
    with ServerThread(fake.app()) as server:
        await collect(BackendClient(server.url), GenerationParams(max_new_tokens=8, top_k=5))
    assert fake.requests[-1]["top_k"] == 5


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("error_event", GenerationError, "failed while generating: Request failed during"),
        ("unknown_error_event", StreamError, "error inside the stream"),
        ("die_mid_stream", StreamError, "broke before the reply was finished"),
        ("malformed", StreamError, "malformed data in the stream"),
        ("http_422", BackendValidationError, "must be <= 2048"),
        ("http_424", GenerationError, "CUDA out of memory"),
        ("http_429", BackendOverloaded, "overloaded; try again"),
        ("http_503", BackendOverloaded, "overloaded; try again"),
    ],
)
async def test_failures_map_to_the_documented_errors(
    fake: FakeBackend, backend: ServerThread, mode: str, error: type[BackendError], message: str
) -> None:
    fake.mode = mode  # type: ignore[assignment]
    with pytest.raises(error, match=message):
        await collect(BackendClient(backend.url))


async def test_in_stream_error_keeps_the_tokens_before_it(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.mode = "error_event"
    client = BackendClient(backend.url)
    info = await client.probe()
    received: list[str] = []

    async def consume() -> None:
        async for delta in client.stream_chat([{"role": "user", "content": "hi"}], PARAMS, info):
            received.append(delta.text)

    with pytest.raises(GenerationError):
        await consume()
    assert received == ["Hello", ","]


async def test_a_stalled_stream_times_out(fake: FakeBackend, backend: ServerThread) -> None:
    fake.mode = "stall"
    with pytest.raises(BackendTimeout, match=r"sent nothing for 0\.5 s"):
        await collect(BackendClient(backend.url, read_timeout=0.5))


async def test_unreachable_while_streaming(backend: ServerThread) -> None:
    client = BackendClient(backend.url)
    info = await client.probe()
    backend.stop()
    with pytest.raises(BackendUnreachable):
        async for _ in client.stream_chat([{"role": "user", "content": "hi"}], PARAMS, info):
            pass


async def test_probe_of_something_else_says_so() -> None:
    async def page(request: object) -> HTMLResponse:
        return HTMLResponse("<html>a web page</html>")

    site = Starlette(routes=[Route("/{path:path}", page)])
    not_one = "does not answer like TGI or an OpenAI-compatible server"
    with ServerThread(site) as server, pytest.raises(BackendError, match=not_one):
        await BackendClient(server.url).probe()
