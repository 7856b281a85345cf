"""The backend client against a real local server speaking TGI's wire formats as its router's
source has them (tests/fake_backend.py), and OpenAI-compatible ones."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.backends import (
    BackendClient,
    BackendError,
    BackendInfo,
    BackendOverloaded,
    BackendTimeout,
    BackendUnreachable,
    BackendValidationError,
    ChatTemplateError,
    Delta,
    GenerationError,
    GenerationParams,
    StreamError,
)
from app.backends.errors import event_error
from tests.conftest import ClientFor
from tests.fake_backend import TGI_VERSION, FakeBackend
from tests.servers import ServerThread, free_port
from tests.waiting import eventually

PARAMS = GenerationParams(max_new_tokens=64)




async def collect(client: BackendClient, params: GenerationParams = PARAMS) -> list[Delta]:
    info = await client.probe()
    return [d async for d in client.stream_chat([{"role": "user", "content": "hi"}], params, info)]


async def test_probe_finds_tgi_and_its_limits(backend: ServerThread, client_for: ClientFor) -> None:
    info = await client_for(backend.url).probe()
    assert info == BackendInfo(
        kind="tgi", url=backend.url, model_id="bigcode/starcoder2-3b", max_input_tokens=1024,
        max_total_tokens=2048, version=TGI_VERSION, max_stop_sequences=4,
    )
    assert "top_k" not in info.controls


@pytest.mark.parametrize("kind", ["openai", "llama.cpp"])
async def test_probe_falls_back_to_openai_models(
    fake: FakeBackend, kind: str, client_for: ClientFor
) -> None:
    fake.kind = kind  # type: ignore[assignment]
    fake.served = ["org/model"]  # a router: it says nothing of the models' context
    with ServerThread(fake.app()) as server:
        info = await client_for(server.url, context_tokens=4096).probe()
    assert (info.kind, info.model_id, info.max_total_tokens) == (kind, "org/model", 4096)
    assert ("top_k" in info.controls) is (kind == "llama.cpp")


async def test_vllms_context_comes_from_its_models_list(
    fake: FakeBackend, client_for: ClientFor
) -> None:
    """vLLM lists each model with its max_model_len: the server's own limit wins over the
    configured context, as TGI's /info and llama-server's /props do."""
    fake.kind, fake.max_total_tokens = "openai", 8192
    with ServerThread(fake.app()) as server:
        info = await client_for(server.url, context_tokens=2048).probe()
    assert (info.kind, info.max_input_tokens, info.max_total_tokens) == ("openai", 8191, 8192)


async def test_llama_cpps_own_server_is_recognised_as_llama_cpp(client_for: ClientFor) -> None:
    """llama-server (tools/server/server.cpp) says its models are owned by "llamacpp"."""

    async def models(request: object) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [
            {"id": "qwen2.5-coder-1.5b-q8_0.gguf", "object": "model", "created": 0,
             "owned_by": "llamacpp", "meta": {"n_ctx_train": 32768}}]})

    with ServerThread(Starlette(routes=[Route("/v1/models", models)])) as server:
        info = await client_for(server.url).probe()
    assert info.kind == "llama.cpp"
    assert {"top_k", "repetition_penalty"} <= info.controls


async def test_probe_of_a_closed_port_says_unreachable_with_the_url(client_for: ClientFor) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnreachable, match=f"The backend 'default' at {url} is unreachable"):
        await client_for(url).probe()


async def test_stream_yields_tokens_then_finish_reason_and_the_servers_token_count(
    backend: ServerThread, fake: FakeBackend, client_for: ClientFor
) -> None:
    deltas = await collect(client_for(backend.url))
    assert "".join(d.text for d in deltas) == "Hello, world!"
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert fake.requests[-1]["stream_options"] == {"include_usage": True}
    assert deltas[-1].completion_tokens == 5, "TGI's usage: four tokens and the EOS token"


async def test_stream_sends_parameters_and_token(
    backend: ServerThread, fake: FakeBackend, client_for: ClientFor
) -> None:
    params = GenerationParams(
        max_new_tokens=2, temperature=0.3, top_p=0.9, top_k=5, stop=("\n\n",), seed=7
    )
    deltas = await collect(client_for(backend.url, token="s3cret"), params)
    sent = fake.requests[-1]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (2, 0.3, 0.9)
    assert (sent["stop"], sent["seed"], sent["stream"]) == (["\n\n"], 7, True)
    assert "top_k" not in sent, "TGI's Messages API does not take top_k"
    assert fake.headers[-1]["authorization"] == "Bearer s3cret"
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]


GREEDY = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=0.95, top_k=40)


@pytest.mark.parametrize(
    ("params", "generated"),
    [
        # OpenAI's "no presence penalty" is TGI's repetition penalty of 2.0 (lib.rs).
        (GenerationParams(max_new_tokens=8, presence_penalty=0.0, repetition_penalty=1.0),
         {"repetition_penalty": None}),
        (GenerationParams(max_new_tokens=8, repetition_penalty=1.3),
         {"repetition_penalty": 1.3}),
        # A top_p or top_k turns sampling back on at temperature 1 (utils/tokens.py).
        (GREEDY, {"do_sample": False, "top_p": None, "top_k": None, "seed": None}),
        # top_p 1 is refused by TGI (validation.rs): it means no nucleus filter.
        (GenerationParams(max_new_tokens=8, temperature=0.7, top_p=1.0),
         {"do_sample": True, "temperature": 0.7, "top_p": None}),
    ],
    ids=["no-penalty", "penalty", "greedy", "top-p-off"],
)
async def test_tgi_generates_with_what_the_page_asked_for(
    backend: ServerThread, fake: FakeBackend, params: GenerationParams,
    generated: dict[str, object], client_for: ClientFor,
) -> None:
    deltas = await collect(client_for(backend.url), params)
    assert "".join(d.text for d in deltas) == "Hello, world!"
    used = fake.generated[-1]
    assert {key: used[key] for key in generated} == pytest.approx(generated)


async def test_llama_cpp_gets_its_own_sampling_knobs(
    fake: FakeBackend, client_for: ClientFor
) -> None:
    fake.kind = "llama.cpp"
    with ServerThread(fake.app()) as server:
        await collect(client_for(server.url), GenerationParams(max_new_tokens=8, top_k=5))
    assert fake.requests[-1]["top_k"] == 5


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("generation_error", GenerationError, "failed while generating: Request failed during"),
        ("overloaded", BackendOverloaded, "overloaded; try again shortly"),
        ("unknown_error", StreamError, "error inside the stream: Incomplete generation"),
        ("die_mid_stream", StreamError, "broke before the reply was finished"),
        ("malformed", StreamError, "malformed data in the stream"),
    ],
)
async def test_tgi_failures_map_to_their_errors(
    fake: FakeBackend, backend: ServerThread, mode: str, error: type[BackendError], message: str,
    client_for: ClientFor,
) -> None:
    """TGI's chat stream answers HTTP 200 and sends every kind of error as
    {"error": {"message", "http_status_code": 422}}: the message says which kind it is."""
    fake.mode = mode  # type: ignore[assignment]
    with pytest.raises(error, match=message):
        await collect(client_for(backend.url))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (GenerationParams(max_new_tokens=1000),
         r"`inputs` tokens \+ `max_new_tokens` must be <= 1000. Given: 8 `inputs` tokens and "
         r"1000 `max_new_tokens`.*Shorten the message"),
        (GenerationParams(max_new_tokens=8, frequency_penalty=3.0),
         r"`frequency_penalty` must be >= -2.0 and <= 2.0"),
        (GenerationParams(max_new_tokens=8, stop=("a", "b", "c", "d", "e")),
         r"`stop` supports up to 4 stop sequences"),
    ],
    ids=["too-long", "penalty", "stops"],
)
async def test_tgi_validation_errors_in_the_stream_are_validation_errors(
    fake: FakeBackend, backend: ServerThread, params: GenerationParams, message: str,
    client_for: ClientFor,
) -> None:
    fake.max_input_tokens, fake.max_total_tokens = 999, 1000
    with pytest.raises(BackendValidationError, match=message):
        await collect(client_for(backend.url), params)


async def test_a_model_without_a_chat_template_says_so(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    fake.chat_template = False
    with pytest.raises(ChatTemplateError, match="Template error: template not found"):
        await collect(client_for(backend.url))


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("http_429", BackendOverloaded, "overloaded; try again"),
        ("http_503", BackendOverloaded, "overloaded; try again"),
        ("generation_error", BackendValidationError, "rejected the request: boom"),
        ("echo_auth", BackendValidationError, "rejected the request: bad request"),
    ],
)
async def test_openai_compatible_failures_map_to_their_errors(
    fake: FakeBackend, mode: str, error: type[BackendError], message: str, client_for: ClientFor
) -> None:
    fake.kind, fake.mode = "openai", mode  # type: ignore[assignment]
    with ServerThread(fake.app()) as server, pytest.raises(error, match=message):
        await collect(client_for(server.url))


@pytest.mark.parametrize(
    ("event", "error", "message"),
    [
        ({"error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
          "error_type": "validation"}, BackendValidationError, "`top_p` must be > 0.0"),
        ({"error": {"message": "Model is overloaded", "http_status_code": 422}},
         BackendOverloaded, "is overloaded; try again shortly"),
        ({"error": {"message": "This model's maximum context length is 4096 tokens.",
                    "type": "BadRequestError", "param": None, "code": 400}},
         BackendValidationError, "maximum context length is 4096 tokens. Shorten"),
        ({"object": "error", "message": "The engine died", "type": "InternalServerError",
          "param": None, "code": 500}, StreamError, "inside the stream: The engine died"),
    ],
    ids=["tgi-generate", "tgi-chat", "vllm", "old-vllm"],
)
def test_every_error_shape_is_read(
    event: dict[str, object], error: type[BackendError], message: str
) -> None:
    found = event_error("'x' at http://h", event)
    assert type(found) is error
    assert message in str(found)


async def test_in_stream_error_keeps_the_tokens_before_it(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    fake.mode = "generation_error"
    client = client_for(backend.url)
    info = await client.probe()
    received: list[str] = []

    async def consume() -> None:
        async for delta in client.stream_chat([{"role": "user", "content": "hi"}], PARAMS, info):
            received.append(delta.text)

    with pytest.raises(GenerationError):
        await consume()
    assert received == ["Hello", ","]


async def test_a_stalled_stream_times_out_though_keep_alives_come(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    """TGI keeps writing its ':' keep-alive comment into a stalled stream (axum's KeepAlive):
    the read timeout counts the time since the last data, not the last byte."""
    fake.mode, fake.keepalive = "stall", 0.1
    async with asyncio.timeout(10):
        with pytest.raises(BackendTimeout, match=r"sent nothing for 0\.5 s"):
            await collect(client_for(backend.url, read_timeout=0.5))
    await eventually(lambda: fake.cancelled, what="the stalled stream's connection to close")
    assert fake.cancelled == 1, "the stalled stream's connection was closed"


async def test_keep_alives_and_crlf_framing_are_read_as_the_spec_says(
    client_for: ClientFor
) -> None:
    """Comments (llama-cpp-python's ': ping - <time>'), CRLF line endings and an event's
    data spread over several lines, as the SSE spec allows."""

    async def chat(request: object) -> Response:
        async def events() -> AsyncIterator[bytes]:
            yield b": ping - 2026-12-01 00:00:00.000000+00:00\r\n\r\n"
            yield b'data: {"choices": [{"delta": {"content": "a"},\r\ndata:  '
            yield b'"finish_reason": null}]}\r\n\r\n'
            yield b'event: x\ndata: {"choices": [{"delta": {"content": "b"}, '
            yield b'"finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    info = BackendInfo(kind="openai", url="", model_id="m", max_input_tokens=10,
                       max_total_tokens=20)
    with ServerThread(app) as server:
        client = client_for(server.url)
        deltas = [d async for d in client.stream_chat([], PARAMS, info)]
    assert [(d.text, d.finish_reason) for d in deltas] == [("a", None), ("b", "stop")]


async def test_unreachable_while_streaming(backend: ServerThread, client_for: ClientFor) -> None:
    client = client_for(backend.url)
    info = await client.probe()
    backend.stop()
    with pytest.raises(BackendUnreachable):
        async for _ in client.stream_chat([{"role": "user", "content": "hi"}], PARAMS, info):
            pass


async def test_probe_of_something_else_says_so(client_for: ClientFor) -> None:
    async def page(request: object) -> HTMLResponse:
        return HTMLResponse("<html>a web page</html>")

    site = Starlette(routes=[Route("/{path:path}", page)])
    not_one = "does not answer like TGI or an OpenAI-compatible server"
    with ServerThread(site) as server, pytest.raises(BackendError, match=not_one):
        await client_for(server.url).probe()


async def test_probe_of_a_server_loading_its_model_says_it_is_starting(
    client_for: ClientFor,
) -> None:
    """llama-server answers every path with 503 and its "Loading model" error until the model
    is loaded (tools/server/server-http.cpp, at the engine's pinned commit)."""
    async def loading(request: object) -> JSONResponse:
        return JSONResponse({"error": {"message": "Loading model", "type": "unavailable_error",
                                       "code": 503}}, status_code=503)

    site = Starlette(routes=[Route("/{path:path}", loading)])
    with ServerThread(site) as server, pytest.raises(BackendError, match="is starting: it "
                                                     "answered HTTP 503"):
        await client_for(server.url).probe()


async def test_requests_do_not_wait_for_the_loops_threads(
    backend: ServerThread, client_for: ClientFor
) -> None:
    # The store's calls run in the loop's default executor: 64 messages at once kept its
    # threads busy, and each backend request, which went through it twice (aiohttp's
    # trust_env reading the proxy settings and ~/.netrc), waited there for half a second.
    # Here every thread of the executor is held until the reply has come: a request that
    # needs one never gets it.
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=2)
    loop.set_default_executor(executor)
    release = threading.Event()
    held = [loop.run_in_executor(None, release.wait) for _ in range(2)]
    try:
        client = client_for(backend.url)
        deltas = await asyncio.wait_for(collect(client), timeout=10)
        assert "".join(d.text for d in deltas) == "Hello, world!"
    finally:
        release.set()
        await asyncio.gather(*held)


class ForwardingProxy:
    """An HTTP proxy for ``http://`` URLs: it notes each request's absolute URL, sends the
    request on in origin form with ``Connection: close``, and relays the answer."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, _, fields = head.partition(b"\r\n")
        method, target, version = line.split(b" ")
        self.seen.append(target.decode())
        url = urlsplit(target.decode())
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port)
        kept = [f for f in fields.split(b"\r\n") if not f.lower().startswith(b"connection:")]
        path = url.path + (f"?{url.query}" if url.query else "")
        up_writer.write(b"\r\n".join([b" ".join([method, path.encode(), version]),
                                      b"Connection: close", *kept]))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)


async def test_http_proxy_carries_the_requests_unless_no_proxy_says_otherwise(
    backend: ServerThread, client_for: ClientFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = ForwardingProxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    try:
        deltas = await collect(client_for(backend.url))
        assert "".join(d.text for d in deltas) == "Hello, world!"
        assert proxy.seen == [f"{backend.url}/info", f"{backend.url}/v1/chat/completions"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        deltas = await collect(client_for(backend.url))
        assert "".join(d.text for d in deltas) == "Hello, world!"
        assert len(proxy.seen) == 2, "NO_PROXY: straight to the backend"
    finally:
        server.close()
        await server.wait_closed()
