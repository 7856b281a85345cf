"""The raw-prompt mode (StarChat style): the prompt exactly as the model sees it, and every
generated token with its log-probability.

TGI renders the prompt with the model's own chat template (``POST /chat_tokenize``) and
streams tokens with details from ``POST /generate_stream``. OpenAI-compatible servers that
have the completions API (vLLM, llama.cpp) stream from ``POST /v1/completions`` with
``logprobs``; they do not expose their chat template, so the prompt starts from a generic
ChatML rendering for the user to edit. Both go through the backend's pooled session, its error
mapping and server-sent-event reader, as the chat does (``app.backends.client``,
``app.backends.errors``, ``app.backends.sse``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from app.backends.client import BackendClient, BackendInfo
from app.backends.errors import BackendError, ChatTemplateError, StreamError
from app.backends.sampling import GenerationParams, openai_fields, tgi_parameters
from app.backends.sse import sse_events


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    # True when the server rendered it with the model's own template; False for the
    # generic ChatML the user may need to adapt.
    from_model: bool
    # Why the model's own template was not used, when the server said (TGI's template error).
    problem: str | None = None


@dataclass(frozen=True)
class RawToken:
    text: str
    logprob: float | None = None
    special: bool = False
    finish_reason: str | None = None
    # Set on the first tokens, until one has text: the name of the backend that answers.
    backend: str | None = None


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
    try:
        async with client.post("/chat_tokenize", body, client.probe_timeout) as response:
            templated = (await response.json(content_type=None)).get("templated_text")
    except ChatTemplateError as err:
        return RenderedPrompt(chatml(messages), from_model=False, problem=str(err))
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
    if tgi:
        prompt = await _without_added_bos(client, prompt)
    path, body = (
        ("/generate_stream", _tgi_body(prompt, params)) if tgi
        else ("/v1/completions", _completions_body(info, prompt, params))
    )
    missing = None if tgi else (
        f"The backend {client.label} has no /v1/completions; the raw-prompt mode needs TGI "
        "or a server with the completions API."
    )
    finished = False
    async with client.post(path, body, missing=missing) as response:
        async for event in sse_events(client, response):
            for token in [_tgi_token(event)] if tgi else _completion_tokens(event):
                finished = finished or token.finish_reason is not None
                yield token
    if not finished:
        raise StreamError(
            f"The backend {client.label} closed the stream before the reply was finished."
        )


async def _without_added_bos(client: BackendClient, prompt: str) -> str:
    """The prompt less one leading BOS when TGI would add its own: TGI tokenizes every input
    with its special tokens (``router/src/validation.rs``), so a prompt rendered with its BOS
    (as ``/chat_tokenize`` renders most templates) would reach the model with two.

    TGI's ``/tokenize`` tells: an added token spans no text (``start == stop == 0``), and a
    BOS written in the prompt is the same token right after it."""
    async with client.post("/tokenize", {"inputs": prompt}, client.probe_timeout) as response:
        tokens = await response.json(content_type=None)
    if not isinstance(tokens, list) or len(tokens) < 2:
        return prompt
    added, written = tokens[0], tokens[1]
    text = str(written.get("text") or "")
    if (added.get("start") == added.get("stop") == 0 and written.get("id") == added.get("id")
            and text and prompt.startswith(text)):
        return prompt[len(text):]
    return prompt


def _tgi_body(prompt: str, params: GenerationParams) -> dict[str, Any]:
    return {"inputs": prompt, "parameters": {**tgi_parameters(params), "details": True},
            "stream": True}


def _completions_body(
    info: BackendInfo, prompt: str, params: GenerationParams
) -> dict[str, Any]:
    return {"model": info.model_id, "prompt": prompt, "stream": True, "logprobs": 1,
            **openai_fields(info.kind, params)}


def _tgi_token(event: dict[str, Any]) -> RawToken:
    """``{"token": {"text", "logprob", "special"}, "details": {"finish_reason"} | null}``."""
    token = event.get("token") or {}
    details = event.get("details") or {}
    return RawToken(
        text=str(token.get("text", "")), logprob=token.get("logprob"),
        special=bool(token.get("special")), finish_reason=details.get("finish_reason"),
    )


def _completion_tokens(event: dict[str, Any]) -> list[RawToken]:
    """``{"choices": [{"text", "logprobs", "finish_reason"}]}``; one chunk may carry several
    tokens (vLLM), each with its log-probability. ``logprobs`` is OpenAI's legacy
    ``{"tokens", "token_logprobs"}`` (vLLM, llama-cpp-python) or, from llama-server, the chat
    API's ``{"content": [{"token", "logprob", ...}]}`` (``tools/server/server-task.cpp``,
    ``server_task_result_cmpl_partial::to_json_oaicompat``)."""
    choices = event.get("choices") or []
    if not choices:
        return []
    choice = choices[0]
    text, finish = str(choice.get("text") or ""), choice.get("finish_reason")
    logprobs = choice.get("logprobs") or {}
    pieces, values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
    if isinstance(logprobs.get("content"), list):
        pieces = [str(entry.get("token", "")) for entry in logprobs["content"]]
        values = [entry.get("logprob") for entry in logprobs["content"]]
    if len(pieces) < 2 or len(values) != len(pieces) or "".join(pieces) != text:
        pieces, values = [text], values[:1] or [None]
    tokens = [RawToken(str(piece), value) for piece, value in zip(pieces, values, strict=True)
              if piece]
    if finish:
        last = tokens.pop() if tokens else RawToken("")
        tokens.append(replace(last, finish_reason=finish))
    return tokens
