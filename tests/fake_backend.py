"""A stand-in for the inference servers that cannot run here: TGI 3.3.x above all (its image
needs a registry), and OpenAI-compatible servers (vLLM, a hosted router).

The TGI side is written from TGI's source at v3.3.7 (``huggingface/text-generation-inference``),
not from its docs, which still show formats the router stopped sending:

=====================================================  ========================================
behaviour                                              TGI source (or axum's)
=====================================================  ========================================
``data: {json}`` framing; a ``:`` keep-alive comment   axum 0.7.9 ``response/sse.rs``
after ``keepalive`` s without an event (15 s in TGI)   (``KeepAlive::default``); ``server.rs``
chat: validation, overload and generation errors       ``router/src/server.rs``
after HTTP 200, in the stream, as ``{"error":          ``chat_completions``; ``infer/mod.rs``
{"message", "http_status_code": 422}}``, then          ``into_openai_event``
``data: [DONE]``
chat and ``/chat_tokenize`` without a chat template:   ``infer/mod.rs`` ``apply_chat_template``;
HTTP 422 ``template_error``                            ``server.rs`` ``From<InferError>``
``presence_penalty`` becomes ``repetition_penalty =    ``router/src/lib.rs``
presence_penalty + 2``; ``temperature: 0`` becomes     ``ChatRequest::try_into_generate``
``do_sample: false``; chat has no ``top_k``
validation rules and their messages, each prefixed     ``router/src/validation.rs``
``Input validation error:``; total tokens checked      ``Validation::validate``,
before input tokens                                    ``ValidationError``; ``infer/mod.rs``
sampling turns back on with ``top_p`` < 1, ``top_k``   ``server/text_generation_server/utils/``
or a temperature other than 1 (1 when none is sent)    ``tokens.py`` ``NextTokenChooser``
chat chunks: ``id: ""``, the role in every delta,      ``router/src/lib.rs``
``usage: null``; ``finish_reason`` ``stop`` on an      ``ChatCompletionChunk``,
empty EOS chunk, ``length``, ``stop_sequence``         ``FinishReason::format``; ``chat.rs``
a usage chunk (``choices: []``) only with              ``router/src/chat.rs``
``stream_options.include_usage``                       ``ChatState::push``
``/generate_stream``: always HTTP 200, errors          ``server.rs`` ``generate_stream_internal``;
``{"error", "error_type"}`` in the stream, no          ``lib.rs`` ``StreamResponse``;
``[DONE]``, ``index`` from 1, the EOS token            ``server/.../models/flash_causal_lm.py``
``special: true`` and not in ``generated_text``,
``details.input_length``, ``seed`` null unless
sampling
a BOS added to every ``/generate_stream`` and          ``lib.rs`` ``GenerateRequest``
``/tokenize`` input, never to chat's; an added token   (``add_special_tokens``); ``server.rs``
spans nothing in ``/tokenize``                         ``encoding_to_tokens``
``/chat_tokenize``'s ``tokenize_response`` and         ``server.rs`` ``get_chat_tokenize``
``templated_text``
``/info``'s fields; ``/v1/models`` owned by the model  ``lib.rs`` ``Info``, ``ModelInfo``;
id; ``/health`` an empty 200; no ``Retry-After``       ``server.rs``
=====================================================  ========================================

The other kinds, from their own sources: ``llama.cpp`` is llama-cpp-python's server
(``llama_cpp/server/app.py``, 0.3.36: models ``owned_by: "me"``; ``top_k`` and
``repeat_penalty`` taken; ``data: `` framing; a ``: ping - <time>`` comment every 15 s, from
sse-starlette's ``EventSourceResponse``; no ``stream_options``, so no usage chunk); ``openai``
is vLLM (``vllm/entrypoints/openai``, 0.10.2: ``owned_by: "vllm"`` and, read in 0.11.0,
``max_model_len`` on each model of ``/v1/models``; no keep-alive; a refused
request is HTTP 400 ``{"error": {"message", "type", "param", "code"}}``; an error inside a
stream is ``data: {"error": {..., "type": "BadRequestError", "code": 400}}`` then ``[DONE]``;
completions chunks may carry several tokens, with logprob arrays of that length; a usage
chunk with ``include_usage``). ``llama.cpp`` with ``slots`` set is llama.cpp's own server,
llama-server, at the engine's pinned commit (0c1e570, under the llama-cpp-python 0.3.36 sdist's
``vendor/llama.cpp``): models ``owned_by: "llamacpp"`` (``tools/server/server-context.cpp``,
``get_res_models``); ``GET /props`` with ``total_slots``, one slot's context as
``default_generation_settings.n_ctx`` and ``build_info`` (the ``props`` handler there); at most
``slots`` chat streams at once, a request beyond them waiting, silent, until one ends (its task
deferred: ``tools/server/server-queue.cpp``, ``defer``). ``served`` makes it a router listing
many models (Inference Providers). HTTP 429/503 with ``Retry-After`` (``http_429``,
``http_503``) stand for a proxy in front of an OpenAI-compatible server; TGI itself never sends
them.

What a test reads back: ``requests`` (the bodies received), ``headers``, ``generated`` (for
TGI: the parameters TGI would have generated with, after its mapping and the shard's
sampling rule, so a test can assert greedy decoding or no repetition penalty), ``inputs``
(the token ids TGI would feed the model), ``cancelled`` and ``completed`` (streams whose client
left before the end, and streams sent to the end), ``probes`` (``/info`` and ``/v1/models``
answered), ``chunks`` (stream chunks sent: a test waits on it for a reply to be under way).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Mode = Literal[
    "ok", "overloaded", "generation_error", "unknown_error", "die_mid_stream", "malformed",
    "stall", "stall_before_first", "http_429", "http_503", "http_401", "echo_auth",
]
Kind = Literal["tgi", "openai", "llama.cpp"]

TGI_VERSION = "3.3.6-dev0"  # what v3.3.7 reports: its Cargo.toml was not bumped
BOS, EOS = "<s>", "</s>"
SPECIAL_IDS = {BOS: 1, EOS: 2}
# The fake's tokenizer: special tokens whole, else runs of non-space with their leading space.
PIECES = re.compile(r"<s>|</s>|\s*(?:[^\s<]+|<)|\s+")
GENERATION_ERROR = "Request failed during generation: Server error: CUDA out of memory"
PROXY_ERRORS = {"http_429": 429, "http_503": 503}


def tokenize(text: str, add_special_tokens: bool) -> list[dict[str, Any]]:
    """``[{"id", "text", "start", "stop"}]`` as TGI's ``/tokenize`` writes them (byte
    offsets); an added BOS spans nothing."""
    tokens = [{"id": SPECIAL_IDS[BOS], "text": "", "start": 0, "stop": 0}] \
        if add_special_tokens else []
    offset = 0
    for piece in PIECES.findall(text):
        size = len(piece.encode())
        token_id = SPECIAL_IDS.get(piece, 3 + zlib.crc32(piece.encode()) % 32000)
        tokens.append({"id": token_id, "text": piece, "start": offset, "stop": offset + size})
        offset += size
    return tokens


class Refused(Exception):
    """A request TGI refuses: ``kind`` is its ``error_type``, the message its text."""

    def __init__(self, message: str, kind: str = "validation") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def text(self) -> str:
        """As ``InferError`` displays it (``router/src/infer/mod.rs``)."""
        return f"Input validation error: {self}" if self.kind == "validation" else str(self)


@dataclass
class FakeBackend:
    kind: Kind = "tgi"
    model_id: str = "bigcode/starcoder2-3b"
    # The reply's tokens; TGI then generates the EOS token unless the token limit comes first.
    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    # The reply to a request whose last message holds one of these texts (the first found);
    # other requests get ``tokens``. A test's way to answer a repair prompt, say.
    answers: dict[str, list[str]] = field(default_factory=dict)
    token_delay: float = 0.0
    max_input_tokens: int = 1024
    max_total_tokens: int = 2048
    max_stop_sequences: int = 4
    chat_template: bool = True
    keepalive: float = 15.0
    mode: Mode = "ok"
    # Requests to answer with ``mode`` before answering normally; None: all of them.
    fail_times: int | None = None
    retry_after: int | None = None
    served: list[str] = field(default_factory=list)
    # llama-server's slots (``llama.cpp`` only): how many chat streams it serves at once.
    slots: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    generated: list[dict[str, Any]] = field(default_factory=list)
    inputs: list[list[int]] = field(default_factory=list)
    cancelled: int = 0
    completed: int = 0
    probes: int = 0  # GET /info and /v1/models answered
    chunks: int = 0  # stream chunks sent, every stream together (keep-alives not counted)
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/info", self.info),
            Route("/health", self.health),
            Route("/v1/models", self.list_models),
            Route("/props", self.props),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/chat_tokenize", self.chat_tokenize, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ])

    @property
    def tgi(self) -> bool:
        return self.kind == "tgi"

    def _mode_now(self) -> Mode:
        if self.fail_times is None:
            return self.mode
        if self.fail_times > 0:
            self.fail_times -= 1
            return self.mode
        return "ok"

    async def _received(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        return body

    def _refused_before_stream(self, mode: Mode, request: Request) -> Response | None:
        """HTTP errors sent instead of a stream: a proxy's 429/503, a bad token, a server
        that quotes the credentials it was sent."""
        if mode in PROXY_ERRORS:
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
            return self._openai_error("Too many requests; try again later.", PROXY_ERRORS[mode],
                                      headers)
        if mode == "http_401":
            # TGI with --api-key answers an empty 401 (router/src/server.rs); vLLM the same.
            return Response(status_code=401)
        if mode == "echo_auth":
            auth = request.headers.get("authorization", "")
            return self._openai_error(f"bad request with Authorization: {auth}", 400)
        return None

    @staticmethod
    def _openai_error(
        message: str, status: int, headers: dict[str, str] | None = None
    ) -> JSONResponse:
        """vLLM's ``ErrorResponse`` (vllm/entrypoints/openai/protocol.py)."""
        return JSONResponse(
            {"error": {"message": message, "type": "BadRequestError", "param": None,
                       "code": status}}, status_code=status, headers=headers,
        )

    # -- TGI's info routes -----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    async def info(self, request: Request) -> Response:
        self.probes += 1
        if not self.tgi:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse({
            "model_id": self.model_id, "model_sha": None,
            "model_pipeline_tag": "text-generation", "max_concurrent_requests": 128,
            "max_best_of": 2, "max_stop_sequences": self.max_stop_sequences,
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens, "validation_workers": 2,
            "max_client_batch_size": 4, "router": "text-generation-router",
            "version": TGI_VERSION, "sha": None, "docker_label": None,
        })

    async def list_models(self, request: Request) -> Response:
        self.probes += 1
        owner = {"tgi": self.model_id, "llama.cpp": "me", "openai": "vllm"}[self.kind]
        if self.slots is not None:
            owner = "llamacpp"
        ids = self.served or [self.model_id]
        # vLLM's model cards carry the served context (0.11.0: protocol.py ``ModelCard``,
        # serving_models.py ``show_available_models``); a router's do not.
        context = {"max_model_len": self.max_total_tokens} if self.kind == "openai" and not (
            self.served) else {}
        return JSONResponse({
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": owner, **context}
                     for i in ids],
        })

    async def props(self, request: Request) -> Response:
        if self.slots is None:
            return Response(status_code=404)
        return JSONResponse({
            "default_generation_settings": {"n_ctx": self.max_total_tokens},
            "total_slots": self.slots, "model_alias": self.model_id,
            "build_info": "b1-0c1e570",
        })

    def _template(self, messages: list[dict[str, Any]]) -> str:
        """The model's chat template, Llama-style: it writes the BOS itself."""
        if not self.chat_template:
            raise Refused("Template error: template not found", "template_error")
        turns = "".join(f"<fake>{m['role']}: {m['content']}</fake>\n" for m in messages)
        return f"{BOS}{turns}<fake>assistant:"

    async def tokenize(self, request: Request) -> Response:
        if not self.tgi:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        return JSONResponse(tokenize(body["inputs"], add_special_tokens=True))

    async def chat_tokenize(self, request: Request) -> Response:
        if not self.tgi:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        try:
            text = self._template(body["messages"])
        except Refused as refused:
            return JSONResponse({"error": str(refused), "error_type": refused.kind},
                                status_code=422)
        return JSONResponse({"tokenize_response": tokenize(text, add_special_tokens=False),
                             "templated_text": text})

    # -- what TGI generates with -----------------------------------------------------------

    def _validated(self, parameters: dict[str, Any], input_ids: list[int]) -> dict[str, Any]:
        """TGI's ``Validation::validate`` of ``GenerateParameters``: the parameters the model
        generates with, or ``Refused`` with TGI's message."""
        temperature = parameters.get("temperature")
        if temperature is not None and temperature <= 0:
            raise Refused("`temperature` must be strictly positive")
        penalty = parameters.get("repetition_penalty")
        if penalty is not None and penalty <= 0:
            raise Refused("`repetition_penalty` must be strictly positive")
        frequency = parameters.get("frequency_penalty")
        if frequency is not None and not -2 <= frequency <= 2:
            raise Refused("`frequency_penalty` must be >= -2.0 and <= 2.0")
        top_p = parameters.get("top_p")
        if top_p is not None and not 0 < top_p < 1:
            raise Refused("`top_p` must be > 0.0 and < 1.0")
        top_k = parameters.get("top_k")
        if top_k is not None and top_k <= 0:
            raise Refused("`top_k` must be strictly positive")
        if parameters.get("max_new_tokens") == 0:
            raise Refused("`max_new_tokens` must be strictly positive")
        stop = parameters.get("stop") or []
        if len(stop) > self.max_stop_sequences:
            raise Refused(f"`stop` supports up to {self.max_stop_sequences} stop sequences. "
                          f"Given: {len(stop)}")
        if not input_ids:
            raise Refused("`inputs` cannot be empty")
        given = len(input_ids)
        max_new = parameters.get("max_new_tokens") or self.max_total_tokens - given
        if given + min(max_new, 1024) > self.max_total_tokens:
            raise Refused(f"`inputs` tokens + `max_new_tokens` must be <= "
                          f"{self.max_total_tokens}. Given: {given} `inputs` tokens and "
                          f"{min(max_new, 1024)} `max_new_tokens`")
        if given > self.max_input_tokens:
            raise Refused(f"`inputs` must have less than {self.max_input_tokens} tokens. "
                          f"Given: {given}")
        # utils/tokens.py: any warper turns sampling on, at temperature 1.0 unless sent.
        temperature = temperature if temperature is not None else 1.0
        sampling = bool(parameters.get("do_sample")) or temperature != 1.0 or bool(top_k) \
            or (top_p is not None and top_p < 1)
        return {
            "do_sample": sampling, "temperature": temperature, "top_p": top_p,
            "top_k": top_k, "repetition_penalty": penalty, "frequency_penalty": frequency,
            "seed": parameters.get("seed") if sampling else None, "max_new_tokens": max_new,
            "stop": stop, "input_length": given,
        }

    def _chat_parameters(self, body: dict[str, Any]) -> dict[str, Any]:
        """``ChatRequest::try_into_generate``: OpenAI's names to TGI's, as TGI maps them."""
        presence = body.get("presence_penalty")
        temperature = body.get("temperature")
        return {
            "do_sample": temperature != 0,
            "temperature": None if temperature == 0 else temperature,
            "repetition_penalty": None if presence is None else presence + 2.0,
            "frequency_penalty": body.get("frequency_penalty"), "top_p": body.get("top_p"),
            "max_new_tokens": body.get("max_tokens"), "seed": body.get("seed"),
            "stop": body.get("stop") or [],
        }

    def _tokens(self, body: dict[str, Any]) -> list[str]:
        """What this request is answered: ``answers``' tokens for a text its last message (or
        prompt) holds, else ``tokens``."""
        messages = body.get("messages") or [{"content": body.get("prompt") or body.get("inputs")}]
        last = str(messages[-1].get("content") or "")
        return next((tokens for text, tokens in self.answers.items() if text in last),
                    self.tokens)

    def _generation(
        self, generated: dict[str, Any], body: dict[str, Any]
    ) -> list[tuple[str, bool, str | None]]:
        """The tokens to send: ``(text, special, finish_reason)``, the finish on the last."""
        sequence = [*self._tokens(body), EOS][: generated["max_new_tokens"]]
        out: list[tuple[str, bool, str | None]] = []
        text = ""
        for i, token in enumerate(sequence):
            special = token == EOS
            text += "" if special else token
            stopped = any(text.endswith(stop) for stop in generated["stop"])
            last = i == len(sequence) - 1 or stopped
            finish = None
            if last:
                finish = "eos_token" if special else "stop_sequence" if stopped else "length"
            out.append((token, special, finish))
            if last:
                break
        return out

    # -- streams ---------------------------------------------------------------------------

    async def _stream(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``events`` with a keep-alive comment after every ``keepalive`` seconds of silence
        (axum's ``KeepAlive``; llama-cpp-python's ``: ping``); counts a client that left."""
        ping = b":\n\n" if self.kind != "llama.cpp" else b": ping - 2026-12-01 00:00:00+00:00\n\n"
        step: asyncio.Future[bytes] | None = None
        try:
            while True:
                step = step or asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait({step}, timeout=self.keepalive)
                if not done:
                    yield ping
                    continue
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    break
                step = None
                self.chunks += 1
                yield chunk
            self.completed += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            if step is not None:
                step.cancel()
                await asyncio.wait({step})
            if isinstance(events, AsyncGenerator):
                # Closed now, not when collected: a slot it holds is freed (a step that had
                # just ended left it at a yield).
                await events.aclose()

    async def _in_a_slot(self, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """``events`` once one of the ``slots`` is free; the slot is taken until they end."""
        if self._slots is None:
            assert self.slots is not None
            self._slots = asyncio.Semaphore(self.slots)
        async with self._slots:
            async for sent in events:
                yield sent

    def _streaming(self, events: AsyncIterator[bytes]) -> StreamingResponse:
        return StreamingResponse(self._stream(events), media_type="text/event-stream")

    @staticmethod
    def _data(payload: dict[str, Any] | str) -> bytes:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        return f"data: {text}\n\n".encode()

    async def _step(self, mode: Mode, i: int, errors: dict[Mode, bytes]) -> bytes | None:
        """Wait for token ``i``, then what a faulty stream does there: bytes that end the
        stream (its error events, ``errors``, by mode), a stall, or a dropped connection;
        None to send the token."""
        await asyncio.sleep(self.token_delay)
        if mode == "stall_before_first" and i == 0:
            await asyncio.sleep(3600)
        if i != 2:
            return None
        if mode == "die_mid_stream":
            raise ConnectionAbortedError("the fake backend died mid-stream")
        if mode == "malformed":
            return self._data("{not json")
        if mode == "stall":
            await asyncio.sleep(3600)
        return errors.get(mode)

    async def chat(self, request: Request) -> Response:
        body = await self._received(request)
        mode = self._mode_now()
        refused = self._refused_before_stream(mode, request)
        if refused is not None:
            return refused
        if self.slots is not None:
            return self._streaming(self._in_a_slot(self._openai_chat(body, mode)))
        if not self.tgi:
            return self._streaming(self._openai_chat(body, mode))
        try:
            prompt = self._template(body["messages"])
        except Refused as err:
            return JSONResponse({"error": str(err), "error_type": err.kind}, status_code=422)
        return self._streaming(self._tgi_chat(body, prompt, mode))

    async def _tgi_chat(self, body: dict[str, Any], prompt: str, mode: Mode
                        ) -> AsyncIterator[bytes]:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        try:
            generated = self._admitted(mode, self._chat_parameters(body),
                                       [t["id"] for t in tokenize(prompt, False)])
        except Refused as err:
            yield self._data({"error": {"message": err.text, "http_status_code": 422}})
            yield b"data: [DONE]\n\n"
            return
        tokens = self._generation(generated, body)
        def event(message: str) -> bytes:
            return self._data({"error": {"message": message, "http_status_code": 422}}) \
                + b"data: [DONE]\n\n"

        errors: dict[Mode, bytes] = {"generation_error": event(GENERATION_ERROR),
                                     "unknown_error": event("Incomplete generation stream")}
        for i, (text, special, finish) in enumerate(tokens):
            if (fault := await self._step(mode, i, errors)) is not None:
                yield fault
                return
            reason = None if finish is None else "stop" if finish == "eos_token" else finish
            yield self._data(self._chunk("" if special else text, reason))
        if include_usage:
            prompt_tokens = generated["input_length"]
            yield self._data({**self._chunk("", None), "choices": [], "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens)}})
        yield b"data: [DONE]\n\n"

    def _admitted(self, mode: Mode, parameters: dict[str, Any], input_ids: list[int]
                  ) -> dict[str, Any]:
        """The request past TGI's semaphore and validation, recorded; raises ``Refused``."""
        if mode == "overloaded":
            raise Refused("Model is overloaded", "overloaded")
        generated = self._validated(parameters, input_ids)
        self.generated.append(generated)
        self.inputs.append(input_ids)
        return generated

    def _chunk(self, content: str, finish: str | None) -> dict[str, Any]:
        return {
            "object": "chat.completion.chunk", "id": "", "created": int(time.time()),
            "model": self.model_id, "system_fingerprint": f"{TGI_VERSION}-native",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    async def generate_stream(self, request: Request) -> Response:
        if not self.tgi:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await self._received(request)
        mode = self._mode_now()
        return self._streaming(self._tgi_generate(body, mode))

    async def _tgi_generate(self, body: dict[str, Any], mode: Mode) -> AsyncIterator[bytes]:
        parameters = body.get("parameters") or {"do_sample": True}
        try:
            generated = self._admitted(mode, parameters,
                                       [t["id"] for t in tokenize(body["inputs"], True)])
        except Refused as err:
            yield self._data({"error": err.text, "error_type": err.kind})
            return
        tokens = self._generation(generated, body)
        text = ""
        errors: dict[Mode, bytes] = {"generation_error": self._data(
            {"error": GENERATION_ERROR, "error_type": "generation"})}
        for i, (piece, special, finish) in enumerate(tokens):
            if (fault := await self._step(mode, i, errors)) is not None:
                yield fault
                return
            text += "" if special else piece
            details = None
            if finish is not None and parameters.get("details"):
                details = {"finish_reason": finish, "generated_tokens": len(tokens),
                           "seed": generated["seed"], "input_length": generated["input_length"]}
            yield self._data({
                "index": i + 1,
                "token": {"id": SPECIAL_IDS.get(piece, 100 + i), "text": piece,
                          "logprob": self._logprob(i), "special": special},
                "generated_text": text if finish is not None else None, "details": details,
            })

    @staticmethod
    def _logprob(i: int) -> float:
        """Log-probabilities that fall token after token, so colours differ."""
        return round(-0.1 - 1.5 * i, 4)

    # -- OpenAI-compatible servers ---------------------------------------------------------

    async def _openai_chat(self, body: dict[str, Any], mode: Mode) -> AsyncIterator[bytes]:
        answer = self._tokens(body)
        limit = body.get("max_tokens") or len(answer)
        tokens = answer[:limit]
        # vLLM's create_streaming_error_response (serving_engine.py), with its default type
        # and code whatever went wrong, then [DONE].
        errors: dict[Mode, bytes] = {"generation_error": self._data(
            {"error": {"message": "boom", "type": "BadRequestError", "param": None, "code": 400}}
        ) + b"data: [DONE]\n\n"}
        for i, token in enumerate(tokens):
            if (fault := await self._step(mode, i, errors)) is not None:
                yield fault
                return
            last = i == len(tokens) - 1
            finish = ("length" if limit < len(answer) else "stop") if last else None
            yield self._data(self._chunk(token, finish))
        if self.kind == "openai" and (body.get("stream_options") or {}).get("include_usage"):
            yield self._data({**self._chunk("", None), "choices": [], "usage": {
                "prompt_tokens": 5, "completion_tokens": len(tokens),
                "total_tokens": 5 + len(tokens)}})
        yield b"data: [DONE]\n\n"

    async def completions(self, request: Request) -> Response:
        if self.tgi:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await self._received(request)
        answer = self._tokens(body)
        limit = body.get("max_tokens") or len(answer)
        # vLLM sends what was generated since the last chunk: here, two tokens a chunk.
        per_chunk = 2 if self.kind == "openai" else 1

        async def events() -> AsyncIterator[bytes]:
            tokens = answer[:limit]
            for start in range(0, len(tokens), per_chunk):
                await asyncio.sleep(self.token_delay)
                pieces = tokens[start:start + per_chunk]
                last = start + per_chunk >= len(tokens)
                finish = ("length" if limit < len(answer) else "stop") if last else None
                values = [self._logprob(start + j) for j in range(len(pieces))]
                yield self._data({
                    "id": "cmpl-1", "object": "text_completion", "created": 0,
                    "model": body.get("model"),
                    "choices": [{
                        "text": "".join(pieces), "index": 0, "finish_reason": finish,
                        "logprobs": {"tokens": pieces, "token_logprobs": values,
                                     "top_logprobs": [{p: v} for p, v in zip(pieces, values,
                                                                             strict=True)],
                                     "text_offset": [0] * len(pieces)},
                    }],
                })
            yield b"data: [DONE]\n\n"

        return self._streaming(events())
