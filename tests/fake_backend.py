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
  429 overloaded), as TGI's router sends them.

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
    "http_422", "http_424", "http_429", "http_503",
]

HTTP_ERRORS: dict[str, tuple[int, str, str]] = {
    "http_422": (422, "validation", "Input validation error: `inputs` tokens + "
                 "`max_new_tokens` must be <= 2048. Given: 2000 `inputs` tokens and 512 "
                 "`max_new_tokens`"),
    "http_424": (424, "generation", "Request failed during generation: CUDA out of memory"),
    "http_429": (429, "overloaded", "Model is overloaded"),
    "http_503": (503, "overloaded", "Model is overloaded"),
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
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cancelled: int = 0
    completed: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/info", self.info),
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ])

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

    async def models(self, request: Request) -> Response:
        owner = "me" if self.kind == "llama.cpp" else "system"
        return JSONResponse({
            "object": "list",
            "data": [{"id": self.model_id, "object": "model", "created": 0, "owned_by": owner}],
        })

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.mode in HTTP_ERRORS:
            status, error_type, message = HTTP_ERRORS[self.mode]
            return JSONResponse({"error": message, "error_type": error_type}, status_code=status)
        return StreamingResponse(self._events(body), media_type="text/event-stream")

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

    async def _events(self, body: dict[str, Any]) -> AsyncIterator[bytes]:
        limit = body.get("max_tokens") or len(self.tokens)
        tokens = self.tokens[:limit]
        finish = "length" if limit < len(self.tokens) else self.finish_reason
        try:
            for i, token in enumerate(tokens):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                last = i == len(tokens) - 1
                if i == 2 and self.mode in ("error_event", "unknown_error_event"):
                    error_type = "generation" if self.mode == "error_event" else "mystery"
                    yield self._data({"error": "Request failed during generation: boom",
                                      "error_type": error_type})
                    return
                if i == 2 and self.mode == "die_mid_stream":
                    raise ConnectionAbortedError("the fake backend died mid-stream")
                if i == 2 and self.mode == "malformed":
                    yield self._data("{not json")
                    return
                if i == 2 and self.mode == "stall":
                    await asyncio.sleep(3600)
                yield self._data(self._chunk(token, finish if last else None))
            yield b"data: [DONE]\n\n"
            self.completed += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
