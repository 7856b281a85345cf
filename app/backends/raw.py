"""The raw-prompt mode (StarChat style): the prompt exactly as the model sees it, and every
generated token with its log-probability.

TGI renders the prompt with the model's own chat template (``POST /chat_tokenize``) and
streams tokens with details from ``POST /generate_stream``. OpenAI-compatible servers that
have the completions API (vLLM, llama.cpp) stream from ``POST /v1/completions`` with
``logprobs``; they do not expose their chat template, so the prompt starts from a generic
ChatML rendering for the user to edit. Both are read with the same ``aiohttp`` request and
server-sent-event reader as the chat (``app.backends.client``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.backends.client import (
    BackendClient,
    BackendInfo,
    GenerationParams,
    sse_events,
)
from app.backends.errors import BackendError, StreamError


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    # True when the server rendered it with the model's own template; False for the
    # generic ChatML the user may need to adapt.
    from_model: bool


@dataclass(frozen=True)
class RawToken:
    text: str
    logprob: float | None = None
    special: bool = False
    finish_reason: str | None = None


def supports_raw(info: BackendInfo) -> bool:
    """Inference Providers offer the chat API only."""
    return info.kind != "hf"


def chatml(messages: Sequence[Mapping[str, str]]) -> str:
    turns = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(turns) + "<|im_start|>assistant\n"


async def render_prompt(
    client: BackendClient, info: BackendInfo, messages: Sequence[Mapping[str, str]]
) -> RenderedPrompt:
    if info.kind != "tgi":
        return RenderedPrompt(chatml(messages), from_model=False)
    body = {"model": info.model_id, "messages": [dict(m) for m in messages]}
    async with (
        client.mapped_errors(client.probe_timeout),
        client.post("/chat_tokenize", body, client.probe_timeout) as response,
    ):
        templated = (await response.json(content_type=None)).get("templated_text")
    if not isinstance(templated, str):
        raise BackendError(f"The backend {client.label} did not return a templated prompt.")
    return RenderedPrompt(templated, from_model=True)


async def stream_raw(
    client: BackendClient, info: BackendInfo, prompt: str, params: GenerationParams
) -> AsyncGenerator[RawToken]:
    """Stream the continuation of ``prompt`` token by token. Raises ``BackendError``."""
    if not supports_raw(info):
        raise BackendError(
            f"The backend {client.label} offers only the chat API; the raw-prompt mode needs "
            "TGI or an OpenAI-compatible server with /v1/completions."
        )
    tgi = info.kind == "tgi"
    path, body = (
        ("/generate_stream", _tgi_body(prompt, params)) if tgi
        else ("/v1/completions", _completions_body(info, prompt, params))
    )
    missing = None if tgi else (
        f"The backend {client.label} has no /v1/completions; the raw-prompt mode needs TGI "
        "or a server with the completions API."
    )
    finished = False
    async with (
        client.mapped_errors(),
        client.post(path, body, missing=missing) as response,
    ):
        async for event in sse_events(client, response):
            token = _tgi_token(event) if tgi else _completion_token(event)
            if token is not None:
                finished = finished or token.finish_reason is not None
                yield token
    if not finished:
        raise StreamError(
            f"The backend {client.label} closed the stream before the reply was finished."
        )


def _tgi_body(prompt: str, params: GenerationParams) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens, "details": True,
        "temperature": params.temperature or None, "top_p": _top_p(params.top_p),
        "top_k": params.top_k, "seed": params.seed, "stop": list(params.stop),
        "do_sample": bool(params.temperature),
    }
    return {"inputs": prompt, "parameters": parameters, "stream": True}


def _top_p(value: float | None) -> float | None:
    """TGI wants top_p strictly below 1; 1 means no top-p."""
    return value if value is not None and 0 < value < 1 else None


def _completions_body(
    info: BackendInfo, prompt: str, params: GenerationParams
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": info.model_id, "prompt": prompt, "stream": True, "logprobs": 1,
        "max_tokens": params.max_new_tokens, "temperature": params.temperature,
        "top_p": params.top_p, "seed": params.seed, "stop": list(params.stop) or None,
    }
    return {key: value for key, value in body.items() if value is not None}


def _tgi_token(event: dict[str, Any]) -> RawToken:
    """``{"token": {"text", "logprob", "special"}, "details": {"finish_reason"} | null}``."""
    token = event.get("token") or {}
    details = event.get("details") or {}
    return RawToken(
        text=str(token.get("text", "")), logprob=token.get("logprob"),
        special=bool(token.get("special")), finish_reason=details.get("finish_reason"),
    )


def _completion_token(event: dict[str, Any]) -> RawToken | None:
    """``{"choices": [{"text", "logprobs": {"token_logprobs": [..]}, "finish_reason"}]}``."""
    choices = event.get("choices") or []
    if not choices:
        return None
    choice = choices[0]
    logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or [None]
    text = str(choice.get("text") or "")
    if not text and not choice.get("finish_reason"):
        return None
    return RawToken(text=text, logprob=logprobs[0], finish_reason=choice.get("finish_reason"))
