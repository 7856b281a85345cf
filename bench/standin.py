"""A paced stand-in inference server: every stream emits its tokens at a fixed rate, however
many streams run, so the aggregate it emits is the ceiling a front end can reach.

    python -m bench.standin --port 8080 --rate 50 --tokens 200

It speaks what the app and ``gr.load_chat`` use, in TGI's wire formats (as
``tests/fake_backend.py`` does, from TGI's docs):

- ``GET /info`` (TGI's), ``GET /health``, ``GET /v1/models``;
- ``POST /v1/chat/completions`` with ``"stream": true`` (OpenAI chunks ending ``data: [DONE]``)
  or without (one JSON body);
- ``POST /generate_stream`` (TGI's native events, the last with ``generated_text`` and
  ``details``);
- ``GET /stats``: streams started, completed and cut short by the client, tokens sent.

Token ``i`` of a stream is the word `` tok<i>`` (one word a token, easy to count in what a
browser shows) and leaves at ``start + i / rate``: a stream that falls behind (its reader is
slow) catches up at once rather than drifting. A stream emits ``--tokens`` tokens, or fewer when
the request's ``max_tokens`` / ``max_new_tokens`` says so.

Faults, for one user's stream while the others run: when the last user message contains
``[stall]`` the stream goes silent after ``--fault-after`` tokens (until the client leaves);
``[cut]`` drops the connection there; ``[error]`` sends TGI's in-stream error event.

It is plain asyncio (no web framework) so that the stand-in's own cost per token stays small
next to what it measures.
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
from typing import Any

MODEL_ID = "bench/paced-stand-in"
MAX_INPUT_TOKENS = 4096
MAX_TOTAL_TOKENS = 8192


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
    tokens: int = 200  # tokens a stream emits unless the request asks for fewer
    first_token_delay: float = 0.0  # seconds before token 0 (prefill)
    fault_after: int = 20  # tokens sent before a [stall] / [cut] / [error] stream misbehaves
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
                    method, target.partition("?")[0], body, reader, writer
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
        self, method: str, path: str, body: bytes, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if method == "GET" and path == "/info":
            return await _json(writer, 200, self.info())
        if method == "GET" and path == "/health":
            return await _json(writer, 200, {})
        if method == "GET" and path == "/v1/models":
            return await _json(writer, 200, {"object": "list", "data": [
                {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "bench"}]})
        if method == "GET" and path == "/stats":
            return await _json(writer, 200, self.counters.__dict__)
        if method == "POST" and path in ("/v1/chat/completions", "/generate_stream"):
            try:
                request = json.loads(body or b"{}")
            except json.JSONDecodeError:
                return await _json(writer, 422, {"error": "Body is not JSON",
                                                 "error_type": "validation"})
            if path == "/generate_stream":
                return await self._generate_stream(request, reader, writer)
            return await self._chat(request, reader, writer)
        return await _json(writer, 404, {"error": f"No route {method} {path}",
                                         "error_type": "not_found"})

    def info(self) -> dict[str, Any]:
        return {
            "model_id": MODEL_ID, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 100_000, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": MAX_INPUT_TOKENS, "max_total_tokens": MAX_TOTAL_TOKENS,
            "validation_workers": 2, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": "3.3.6", "sha": None,
            "docker_label": None,
        }

    # -- streams -----------------------------------------------------------------------

    async def _chat(
        self, request: dict[str, Any], reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        messages = request.get("messages") or [{}]
        last = messages[-1].get("content") or ""
        if isinstance(last, list):  # content parts
            last = " ".join(str(part.get("text", "")) for part in last if isinstance(part, dict))
        count = _limit(self.tokens, request.get("max_tokens"))
        if not request.get("stream"):
            await self._pace(count)
            text = "".join(_token(i) for i in range(count))
            return await _json(writer, 200, {
                "object": "chat.completion", "id": "", "created": int(time.time()),
                "model": MODEL_ID, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": count,
                          "total_tokens": count + 1},
            })

        def event(i: int, last_one: bool) -> bytes:
            return _sse({
                "object": "chat.completion.chunk", "id": "", "created": 0, "model": MODEL_ID,
                "system_fingerprint": "3.3.6-native",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": _token(i)},
                             "logprobs": None, "finish_reason": "stop" if last_one else None}],
                "usage": None,
            })

        return await self._stream(
            reader, writer, count, _fault(str(last)), event, b"data: [DONE]\n\n"
        )

    async def _generate_stream(
        self, request: dict[str, Any], reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        parameters = request.get("parameters") or {}
        count = _limit(self.tokens, parameters.get("max_new_tokens"))

        def event(i: int, last_one: bool) -> bytes:
            payload: dict[str, Any] = {
                "index": i, "token": {"id": i, "text": _token(i), "logprob": -0.1,
                                      "special": False},
                "generated_text": None, "details": None,
            }
            if last_one:
                payload["generated_text"] = "".join(_token(j) for j in range(count))
                payload["details"] = {"finish_reason": "eos_token", "generated_tokens": count,
                                      "seed": None}
            return _sse(payload)

        fault = _fault(str(request.get("inputs") or ""))
        return await self._stream(reader, writer, count, fault, event, b"")

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: int,
        fault: str | None, event: Callable[[int, bool], bytes], trailer: bytes,
    ) -> bool:
        counters = self.counters
        counters.started += 1
        counters.active += 1
        counters.peak_active = max(counters.peak_active, counters.active)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        loop = asyncio.get_running_loop()
        start = loop.time() + self.first_token_delay
        try:
            for i in range(count):
                delay = start + i / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if fault is not None and i == self.fault_after:
                    counters.faults += 1
                    if fault == "cut":
                        writer.transport.abort()
                        return False
                    if fault == "error":
                        writer.write(_chunk(_sse({
                            "error": "Request failed during generation: the stand-in's "
                                     "[error] fault", "error_type": "generation"})))
                        break
                    await reader.read()  # stall: silent until the client leaves
                    raise ConnectionResetError("the client left a stalled stream")
                writer.write(_chunk(event(i, i == count - 1)))
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

    async def _pace(self, count: int) -> None:
        await asyncio.sleep(self.first_token_delay + max(count - 1, 0) / self.rate)
        self.counters.tokens += count


def _token(i: int) -> str:
    return f" tok{i}"


def _limit(default: int, asked: Any) -> int:
    return min(default, int(asked)) if isinstance(asked, int) and asked > 0 else default


def _fault(text: str) -> str | None:
    for name in ("stall", "cut", "error"):
        if f"[{name}]" in text:
            return name
    return None


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data:" + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _json(writer: asyncio.StreamWriter, status: int, payload: dict[str, Any]) -> bool:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 404: "Not Found", 422: "Unprocessable Entity"}.get(status, "Error")
    writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    return True


async def _main(args: argparse.Namespace) -> None:
    standin = PacedStandIn(rate=args.rate, tokens=args.tokens,
                           first_token_delay=args.first_token_delay, fault_after=args.fault_after)
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
    parser.add_argument("--tokens", type=int, default=200, help="tokens a stream emits")
    parser.add_argument("--first-token-delay", type=float, default=0.0,
                        help="seconds before the first token of a stream")
    parser.add_argument("--fault-after", type=int, default=20,
                        help="tokens a [stall], [cut] or [error] stream sends first")
    asyncio.run(_main(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
