r"""A paced stand-in inference server: every stream emits its tokens at a fixed rate, however
many streams run, so the aggregate it emits is the ceiling a front end can reach.

    python -m bench.standin --port 8080 --rate 50 --tokens 200

It speaks TGI's wire formats as the source of TGI v3.3.7's router writes them (and of axum
0.7.9, which the router runs on); TGI's docs lag the source, so they are not the reference:

=============================================  ==================================================
Behaviour                                      Source (``router/src/`` of TGI v3.3.7, or axum)
=============================================  ==================================================
``data: {compact json}\n\n`` events            axum ``response/sse.rs`` ``Event``
``data: [DONE]\n\n`` ends chat streams, also   ``server.rs`` ``chat_completions``
after an in-stream error; never on
``/generate_stream``
``:\n\n`` after ``--keepalive`` seconds        axum ``response/sse.rs`` ``KeepAlive`` (15 s;
(15) without an event, also on a stalled       ``server.rs`` ``.keep_alive(KeepAlive::default())``)
stream
chat chunks; the EOS chunk (``""``, ``stop``)  ``chat.rs`` ``create_event_from_stream_token``,
or ``length`` on the last token; the usage     ``ChatState::push``; ``lib.rs``
chunk (``include_usage``)                      ``ChatCompletionChunk``, ``FinishReason::format``
chat in-stream error ``{"error": {"message",   ``infer/mod.rs`` ``into_openai_event``
"http_status_code": 422}}``
``/generate_stream`` events: index from 1,     ``lib.rs`` ``StreamResponse``, ``StreamDetails``;
the EOS token ``special``, ``details`` when    ``server.rs`` ``generate_stream``,
asked; errors ``{"error", "error_type"}``      ``impl From<InferError> for Event``
headers of a stream: ``x-compute-type``,       ``server.rs`` ``generate_stream_internal``
``x-compute-characters``,
``x-accel-buffering: no``
``GET /info``, ``/v1/models``, ``/health``     ``server.rs``; ``lib.rs`` ``Info``, ``ModelInfo``
(and ``/ping``, ``GET /``)
415 / 400 / 422 plain-text rejections of a     axum ``extract/rejection.rs`` (``Json``)
body TGI's types refuse
=============================================  ==================================================

Routes: ``GET /info``, ``/health``, ``/v1/models``; ``POST /v1/chat/completions`` streamed or
not; ``POST /generate_stream``; and its own ``GET /stats``: streams started, completed and cut
short by the client, tokens sent.

Token ``i`` of a stream is the word `` tok<i>`` (one word a token, easy to count in what a
browser shows) and leaves at ``start + i / rate``: a stream that falls behind (its reader is
slow) catches up at once rather than drifting. A reply is ``--tokens`` tokens then the EOS token
(finish ``stop`` / ``eos_token``), or is cut at the request's ``max_tokens`` /
``max_new_tokens`` when that is not more than ``--tokens`` (``length``). A prompt's token count
is its number of words, roughly.

Faults, for one user's stream while the others run, after ``--fault-after`` tokens, when the
last user message (or ``inputs``) contains ``[stall]``: no more events, only keep-alives (as a
stalled TGI sends), until the client leaves; ``[cut]``: the connection drops; ``[error]``: TGI's
in-stream generation error.

It is plain asyncio (no web framework) and makes a chat chunk from two halves made once a
stream, so that the stand-in's own cost per token stays small next to what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

MODEL_ID = "bench/paced-stand-in"
MAX_INPUT_TOKENS = 4096
MAX_TOTAL_TOKENS = 8192
VERSION = "3.3.6-dev0"  # what TGI 3.3.6 and 3.3.7 report (their Cargo.toml's version)
FINGERPRINT = f"{VERSION}-native"  # version, then the docker label or "native"
GENERATION_ERROR = "Request failed during generation: Server error: CUDA out of memory"
EOS_TEXT = "</s>"
KEEPALIVE = b":\n\n"
DONE = b"data: [DONE]\n\n"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 415: "Unsupported Media Type",
           422: "Unprocessable Entity"}

# The fields of a request that the stand-in checks as TGI's request types do: (type, serde's
# name for it, whether null is taken). The first of each route is required.
FIELDS: dict[str, dict[str, tuple[type, str, bool]]] = {
    "/generate_stream": {"inputs": (str, "a string", False),
                         "parameters": (dict, "struct GenerateParameters", False)},
    "/v1/chat/completions": {"messages": (list, "a sequence", False),
                             "stream_options": (dict, "struct StreamOptions", False),
                             "stop": (list, "a sequence", True),
                             "logit_bias": (list, "a sequence", True)},
}


@dataclass
class Counters:
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    faults: int = 0
    tokens: int = 0
    active: int = 0
    peak_active: int = 0


@dataclass
class PacedStandIn:
    rate: float = 50.0  # tokens a second, per stream
    tokens: int = 200  # text tokens of a reply (then EOS) unless the request asks for fewer
    first_token_delay: float = 0.0  # seconds before token 0 (prefill)
    fault_after: int = 20  # tokens sent before a [stall] / [cut] / [error] stream misbehaves
    keepalive: float = 15.0  # seconds without an event before a ":" comment (axum's default)
    counters: Counters = field(default_factory=Counters)

    # -- the HTTP/1.1 server ------------------------------------------------------------

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._connection, host, port, backlog=4096)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = {}
                for line in lines:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                keep_alive = await self._route(
                    method, target.partition("?")[0], headers, body, reader, writer
                )
                if not keep_alive or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes,
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    ) -> bool:
        if method == "GET" and path in ("/health", "/ping", "/"):
            return await _respond(writer, 200, b"")
        if method == "GET" and path == "/info":
            return await _json(writer, 200, self.info())
        if method == "GET" and path == "/v1/models":
            return await _json(writer, 200, {"object": "list", "data": [
                {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": MODEL_ID}]})
        if method == "GET" and path == "/stats":
            return await _json(writer, 200, self.counters.__dict__)
        if method == "POST" and path in ("/v1/chat/completions", "/generate_stream"):
            request, rejection = _json_body(headers, body, path)
            if rejection is not None:
                status, text = rejection
                return await _respond(writer, status, text.encode(), "text/plain; charset=utf-8")
            if path == "/generate_stream":
                return await self._generate_stream(request, reader, writer)
            return await self._chat(request, reader, writer)
        return await _respond(writer, 404, b"")

    def info(self) -> dict[str, Any]:
        return {
            "model_id": MODEL_ID, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 100_000, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": MAX_INPUT_TOKENS, "max_total_tokens": MAX_TOTAL_TOKENS,
            "validation_workers": 2, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": VERSION, "sha": None,
            "docker_label": None,
        }

    # -- streams -----------------------------------------------------------------------

    async def _chat(
        self, request: dict[str, Any], reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        texts = [_text(message.get("content")) for message in request["messages"]
                 if isinstance(message, dict)]
        prompt_tokens = sum(len(text.split()) for text in texts)
        count, eos = self._length(request.get("max_tokens", request.get("max_completion_tokens")))
        generated = count + 1 if eos else count  # the EOS token counts
        model = request.get("model")
        model = model if isinstance(model, str) and model != "tgi" else MODEL_ID
        finish = "stop" if eos else "length"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": generated,
                 "total_tokens": prompt_tokens + generated}
        created = int(time.time())
        if not request.get("stream"):
            await self._pace(generated)
            return await _json(writer, 200, {
                "object": "chat.completion", "id": "", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": _reply(count)},
                    "logprobs": None, "finish_reason": finish}],
                "usage": usage,
            })

        def chunk(content: str, finish_reason: str | None) -> dict[str, Any]:
            return {
                "object": "chat.completion.chunk", "id": "", "created": created, "model": model,
                "system_fingerprint": FINGERPRINT,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                             "logprobs": None, "finish_reason": finish_reason}],
                "usage": None,
            }

        before, after = _sse(chunk("\0", None)).rsplit(json.dumps("\0").encode(), 1)
        last = _sse(chunk("" if eos else _token(count - 1), finish))
        if (request.get("stream_options") or {}).get("include_usage") is True:
            last += _sse({**chunk("", None), "choices": [], "usage": usage})

        def event(i: int) -> bytes:
            if i == generated - 1:
                return last
            return before + json.dumps(_token(i)).encode() + after

        error = _sse({"error": {"message": GENERATION_ERROR, "http_status_code": 422}})
        fault = _fault(texts[-1] if texts else "")
        head = _stream_head(sum(map(len, texts)))
        return await self._stream(reader, writer, head, generated, fault, event, error, DONE)

    async def _generate_stream(
        self, request: dict[str, Any], reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        inputs = request["inputs"]
        parameters = request.get("parameters") or {}
        count, eos = self._length(parameters.get("max_new_tokens"))
        generated = count + 1 if eos else count  # the EOS token counts
        details = {"finish_reason": "eos_token" if eos else "length",
                   "generated_tokens": generated, "seed": None,
                   "input_length": len(inputs.split())}

        def event(i: int) -> bytes:
            special = i == count
            payload: dict[str, Any] = {
                "index": i + 1,
                "token": {"id": 2 if special else 1000 + i,
                          "text": EOS_TEXT if special else _token(i), "logprob": -0.1,
                          "special": special},
                "generated_text": None, "details": None,
            }
            if i == generated - 1:
                payload["generated_text"] = _reply(count)
                if parameters.get("details") is True:
                    payload["details"] = details
            return _sse(payload)

        error = _sse({"error": GENERATION_ERROR, "error_type": "generation"})
        head = _stream_head(len(inputs))
        return await self._stream(
            reader, writer, head, generated, _fault(inputs), event, error, b""
        )

    def _length(self, asked: Any) -> tuple[int, bool]:
        """The text tokens of a reply, and whether the EOS token follows them (else the
        request's limit cut the reply)."""
        if isinstance(asked, int) and not isinstance(asked, bool) and 0 < asked <= self.tokens:
            return asked, False
        return self.tokens, True

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes,
        count: int, fault: str | None, event: Callable[[int], bytes], error: bytes,
        trailer: bytes,
    ) -> bool:
        counters = self.counters
        counters.started += 1
        counters.active += 1
        counters.peak_active = max(counters.peak_active, counters.active)
        writer.write(head)
        loop = asyncio.get_running_loop()
        start = loop.time() + self.first_token_delay
        sent = loop.time()  # when the stream last wrote an event (or a keep-alive)
        try:
            for i in range(count):
                if fault == "stall" and i == self.fault_after:
                    counters.faults += 1
                    await self._stall(reader, writer, sent)
                sent = await self._until(writer, start + i / self.rate, sent)
                if fault is not None and i == self.fault_after:
                    counters.faults += 1
                    if fault == "cut":
                        writer.transport.abort()
                        return False
                    writer.write(_chunk(error))
                    break
                writer.write(_chunk(event(i)))
                counters.tokens += 1
                await writer.drain()
            else:
                counters.completed += 1
            if trailer:
                writer.write(_chunk(trailer))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        except (ConnectionError, asyncio.CancelledError):
            counters.cancelled += 1
            raise
        finally:
            counters.active -= 1

    async def _until(self, writer: asyncio.StreamWriter, when: float, sent: float) -> float:
        """Wait for loop time ``when``, writing a keep-alive each ``keepalive`` seconds without
        a write since ``sent``; return when the next event goes out."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while when > now and when - sent > self.keepalive:
            if sent + self.keepalive > now:
                await asyncio.sleep(sent + self.keepalive - now)
            writer.write(_chunk(KEEPALIVE))
            await writer.drain()
            sent = now = loop.time()
        if when > now:
            await asyncio.sleep(when - now)
            return when
        return now

    async def _stall(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sent: float
    ) -> NoReturn:
        """No more events, only keep-alives, until the client closes the connection."""
        loop = asyncio.get_running_loop()
        left = asyncio.ensure_future(_closed(reader))
        try:
            while True:
                done, _ = await asyncio.wait({left}, timeout=sent + self.keepalive - loop.time())
                if done:
                    break
                writer.write(_chunk(KEEPALIVE))
                await writer.drain()
                sent = loop.time()
        finally:
            left.cancel()
        raise ConnectionResetError("the client left a stalled stream")

    async def _pace(self, count: int) -> None:
        await asyncio.sleep(self.first_token_delay + max(count - 1, 0) / self.rate)
        self.counters.tokens += count


def _token(i: int) -> str:
    return f" tok{i}"


def _reply(count: int) -> str:
    return "".join(_token(i) for i in range(count))


def _text(content: Any) -> str:
    """A message's text: a string, or the text of its content parts."""
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _fault(text: str) -> str | None:
    for name in ("stall", "cut", "error"):
        if f"[{name}]" in text:
            return name
    return None


def _json_body(
    headers: dict[str, str], body: bytes, path: str
) -> tuple[dict[str, Any], tuple[int, str] | None]:
    """The request's JSON, or axum's ``Json`` rejection (roughly worded) of what TGI's types
    refuse: a missing or mistyped field the stand-in reads, and OpenAI-style values TGI's
    ``ChatRequest`` does not take (``"stop": "x"``, a ``logit_bias`` map,
    ``"stream_options": null``)."""
    mime = headers.get("content-type", "").partition(";")[0].strip().lower()
    if mime != "application/json" and not (mime.startswith("application/")
                                           and mime.endswith("+json")):
        return {}, (415, "Expected request with `Content-Type: application/json`")
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return {}, (400, f"Failed to parse the request body as JSON: {err}")
    problem = _refused(request, path)
    if problem is not None:
        return {}, (422, f"Failed to deserialize the JSON body into the target type: {problem}")
    return request, None


def _refused(request: Any, path: str) -> str | None:
    """Why TGI's request type for ``path`` would refuse ``request``, if it would."""
    if not isinstance(request, dict):
        return f"invalid type: {_json_type(request)}, expected a map"
    fields = FIELDS[path]
    required = next(iter(fields))
    if required not in request:
        return f"missing field `{required}`"
    for name, (kind, expected, nullable) in fields.items():
        value = request.get(name)
        if name in request and not isinstance(value, kind) and not (nullable and value is None):
            return f"{name}: invalid type: {_json_type(value)}, expected {expected}"
    return None


def _json_type(value: Any) -> str:
    """What serde calls a JSON value's type in its errors."""
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "floating point", str: "string",
             list: "sequence", dict: "map"}
    return names[type(value)]


def _stream_head(characters: int) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"x-compute-type: gpu+optimized\r\nx-compute-characters: %d\r\n"
            b"x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n\r\n" % characters)


async def _closed(reader: asyncio.StreamReader) -> None:
    """Return when the client has closed (or reset) the connection."""
    with contextlib.suppress(ConnectionError):
        await reader.read()


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes,
    content_type: str = "application/json",
) -> bool:
    content = f"content-type: {content_type}\r\n" if body else ""
    writer.write(f"HTTP/1.1 {status} {REASONS[status]}\r\n{content}"
                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    return True


async def _json(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> bool:
    return await _respond(writer, status, json.dumps(payload, separators=(",", ":")).encode())


async def _main(args: argparse.Namespace) -> None:
    standin = PacedStandIn(rate=args.rate, tokens=args.tokens,
                           first_token_delay=args.first_token_delay, fault_after=args.fault_after,
                           keepalive=args.keepalive)
    server = await standin.serve(args.host, args.port)
    print(f"paced stand-in on http://{args.host}:{args.port} ({args.rate:g} tokens/s a stream, "
          f"{args.tokens} tokens)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.standin", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens a second, per stream")
    parser.add_argument("--tokens", type=int, default=200,
                        help="text tokens of a reply, before the EOS token")
    parser.add_argument("--first-token-delay", type=float, default=0.0,
                        help="seconds before the first token of a stream")
    parser.add_argument("--fault-after", type=int, default=20,
                        help="tokens a [stall], [cut] or [error] stream sends first")
    parser.add_argument("--keepalive", type=float, default=15.0, metavar="SECONDS",
                        help="seconds without an event before a ':' keep-alive comment "
                             "(axum's and so TGI's default: 15)")
    args = parser.parse_args(argv)
    if args.keepalive <= 0:
        parser.error("--keepalive must be more than 0 seconds")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
