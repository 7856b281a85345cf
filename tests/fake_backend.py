"""A stand-in for an inference server, for tests: TGI (which cannot run here) or an
OpenAI-compatible server, speaking their wire formats as TGI's docs give them.

- ``GET /info`` (TGI only): ``model_id``, ``max_input_tokens``, ``max_total_tokens``,
  ``max_concurrent_requests``, ``max_stop_sequences``, ``version``.
- ``GET /v1/models``: ``{"object": "list", "data": [{"id", "object": "model", "owned_by"}]}``.
- ``POST /v1/chat/completions`` with ``"stream": true``: ``text/event-stream`` of
  ``chat.completion.chunk`` objects, the last with ``finish_reason``, then ``data: [DONE]``.
  TGI writes events as ``data:{...}`` with no space after the colon, as in its docs' curl
  output; others write ``data: {...}``. Both end with ``data: [DONE]``. An error inside the
  stream is ``data:{"error": "..", "error_type": ".."}``.
- HTTP errors carry ``{"error": "..", "error_type": ".."}`` (422 validation, 424 generation,
  429 overloaded, with ``Retry-After`` when ``retry_after`` is set), as TGI's router sends
  them.
- ``POST /generate_stream`` (TGI): ``data:{"index", "token": {"id", "text", "logprob",
  "special"}, "generated_text", "details"}`` per token, the last with ``generated_text`` and
  ``details`` (``finish_reason``, ``generated_tokens``, ``seed``).
- ``POST /chat_tokenize`` (TGI): ``{"tokenize_response": [..], "templated_text": ".."}``,
  here with a ChatML-like template marked ``<fake>`` so tests can tell it from ours.
- ``POST /v1/completions`` with ``"stream": true`` and ``logprobs`` (vLLM, llama.cpp):
  ``data: {"object": "text_completion", "choices": [{"text", "index", "logprobs":
  {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, "finish_reason"}]}``, then
  ``data: [DONE]``. TGI's fake answers 404 here, like a server without the route.
- Hugging Face Inference Providers' router (``kind="openai"`` with ``served``) lists many
  models at ``/v1/models`` and takes ``model`` as ``id:provider``.

``mode`` picks the behaviour of the next chat requests; ``cancelled`` counts streams whose client
went away before the end, observed server-side.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Mode = Literal[
    "ok", "error_event", "unknown_error_event", "die_mid_stream", "malformed", "stall",
    "stall_before_first", "http_422", "http_424", "http_429", "http_503", "http_401",
    "echo_auth",
]

HTTP_ERRORS: dict[str, tuple[int, str, str]] = {
    "http_422": (422, "validation", "Input validation error: `inputs` tokens + "
                 "`max_new_tokens` must be <= 2048. Given: 2000 `inputs` tokens and 512 "
                 "`max_new_tokens`"),
    "http_424": (424, "generation", "Request failed during generation: CUDA out of memory"),
    "http_429": (429, "overloaded", "Model is overloaded"),
    "http_503": (503, "overloaded", "Model is overloaded"),
    "http_401": (401, "authentication", "Invalid credentials in Authorization header"),
}


@dataclass
class FakeBackend:
    kind: Literal["tgi", "openai", "llama.cpp"] = "tgi"
    model_id: str = "bigcode/starcoder2-3b"
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    token_delay: float = 0.0
    finish_reason: str = "eos_token"
    max_input_tokens: int = 1024
    max_total_tokens: int = 2048
    mode: Mode = "ok"
    # Requests to answer with ``mode`` before answering normally; None: all of them.
    fail_times: int | None = None
    retry_after: int | None = None
    served: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled: int = 0
    completed: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/info", self.info),
            Route("/health", self.health),
            Route("/v1/models", self.list_models),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/chat_tokenize", self.chat_tokenize, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ])

    def _mode_now(self) -> Mode:
        if self.fail_times is None:
            return self.mode
        if self.fail_times > 0:
            self.fail_times -= 1
            return self.mode
        return "ok"

    def _http_error(self, mode: Mode, request: Request) -> Response | None:
        if mode == "echo_auth":
            # A careless server that quotes the request's credentials in its error.
            auth = request.headers.get("authorization", "")
            return JSONResponse({"error": f"bad request with Authorization: {auth}",
                                 "error_type": "validation"}, status_code=400)
        if mode not in HTTP_ERRORS:
            return None
        status, error_type, message = HTTP_ERRORS[mode]
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(
            {"error": message, "error_type": error_type}, status_code=status, headers=headers
        )

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def info(self, request: Request) -> Response:
        if self.kind != "tgi":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse({
            "model_id": self.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128,
            "max_best_of": 2,
            "max_stop_sequences": 4,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2,
            "max_client_batch_size": 4,
            "router": "text-generation-router",
            "version": "3.3.5",
            "sha": None,
            "docker_label": None,
        })

    async def list_models(self, request: Request) -> Response:
        owner = "me" if self.kind == "llama.cpp" else "system"
        ids = self.served or [self.model_id]
        return JSONResponse({
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": owner} for i in ids],
        })

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        mode = self._mode_now()
        error = self._http_error(mode, request)
        if error is not None:
            return error
        return StreamingResponse(self._events(body, mode), media_type="text/event-stream")

    async def chat_tokenize(self, request: Request) -> Response:
        if self.kind != "tgi":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        text = "".join(
            f"<fake>{m['role']}: {m['content']}</fake>\n" for m in body["messages"]
        ) + "<fake>assistant:"
        return JSONResponse({"tokenize_response": [], "templated_text": text})

    def _logprob(self, i: int) -> float:
        """Log-probabilities that fall token after token, so colours differ."""
        return round(-0.1 - 1.5 * i, 4)

    async def generate_stream(self, request: Request) -> Response:
        if self.kind != "tgi":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        self.requests.append(body)
        mode = self._mode_now()
        error = self._http_error(mode, request)
        if error is not None:
            return error
        limit = body["parameters"].get("max_new_tokens") or len(self.tokens)

        async def events() -> AsyncIterator[bytes]:
            tokens = self.tokens[:limit]
            for i, text in enumerate(tokens):
                await asyncio.sleep(self.token_delay)
                if i == 2 and mode == "error_event":
                    yield self._data({"error": "Request failed during generation: boom",
                                      "error_type": "generation"})
                    return
                last = i == len(tokens) - 1
                finish = "length" if limit < len(self.tokens) else "eos_token"
                yield self._data({
                    "index": i + 1,
                    "token": {"id": 100 + i, "text": text, "logprob": self._logprob(i),
                              "special": False},
                    "generated_text": "".join(tokens) if last else None,
                    "details": {"finish_reason": finish, "generated_tokens": len(tokens),
                                "seed": None} if last else None,
                })

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(self, request: Request) -> Response:
        if self.kind == "tgi":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        self.requests.append(body)
        limit = body.get("max_tokens") or len(self.tokens)

        async def events() -> AsyncIterator[bytes]:
            tokens = self.tokens[:limit]
            for i, text in enumerate(tokens):
                await asyncio.sleep(self.token_delay)
                last = i == len(tokens) - 1
                finish = ("length" if limit < len(self.tokens) else "stop") if last else None
                yield self._data({
                    "id": "cmpl-1", "object": "text_completion", "created": 0,
                    "model": body.get("model"),
                    "choices": [{
                        "text": text, "index": 0, "finish_reason": finish,
                        "logprobs": {"tokens": [text], "token_logprobs": [self._logprob(i)],
                                     "top_logprobs": [{text: self._logprob(i)}],
                                     "text_offset": [0]},
                    }],
                })
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def _data(self, payload: dict[str, Any] | str) -> bytes:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        prefix = "data:" if self.kind == "tgi" else "data: "
        return f"{prefix}{text}\n\n".encode()

    def _chunk(self, content: str, finish: str | None) -> dict[str, Any]:
        return {
            "object": "chat.completion.chunk",
            "id": "",
            "created": int(time.time()),
            "model": self.model_id,
            "system_fingerprint": "3.3.5-native",
            "choices": [{
                "index": 0,
                "delta": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish,
            }],
            "usage": None,
        }

    async def _events(self, body: dict[str, Any], mode: Mode) -> AsyncIterator[bytes]:
        limit = body.get("max_tokens") or len(self.tokens)
        tokens = self.tokens[:limit]
        finish = "length" if limit < len(self.tokens) else self.finish_reason
        try:
            if mode == "stall_before_first":
                await asyncio.sleep(3600)
            for i, token in enumerate(tokens):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                last = i == len(tokens) - 1
                if i == 2 and mode in ("error_event", "unknown_error_event"):
                    error_type = "generation" if mode == "error_event" else "mystery"
                    yield self._data({"error": "Request failed during generation: boom",
                                      "error_type": error_type})
                    return
                if i == 2 and mode == "die_mid_stream":
                    raise ConnectionAbortedError("the fake backend died mid-stream")
                if i == 2 and mode == "malformed":
                    yield self._data("{not json")
                    return
                if i == 2 and mode == "stall":
                    await asyncio.sleep(3600)
                yield self._data(self._chunk(token, finish if last else None))
            yield b"data: [DONE]\n\n"
            self.completed += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
