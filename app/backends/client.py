"""One inference server, spoken to over the Messages API with ``AsyncInferenceClient``.

``probe()`` finds what answers at the URL: TGI (``GET /info`` answers, with its token limits)
or any OpenAI-compatible server (``GET /v1/models``). ``stream_chat()`` streams one reply as
``Delta`` values. Each call opens its own client and closes it on exit, so closing the
iterator (the user pressed Stop) closes the upstream HTTP stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import GenerationError as HubGenerationError
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OverloadedError,
    TextGenerationError,
    ValidationError,
)

from app.backends.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnreachable,
    BackendValidationError,
    GenerationError,
    StreamError,
)

BackendKind = Literal["tgi", "llama.cpp", "openai"]

# Generation controls each kind of server honours on /v1/chat/completions. A control missing
# here is hidden in the page rather than sent and silently ignored.
STANDARD_CONTROLS = frozenset(
    {"temperature", "top_p", "max_new_tokens", "stop", "seed", "frequency_penalty",
     "presence_penalty"}
)
CONTROLS: Mapping[BackendKind, frozenset[str]] = {
    "tgi": STANDARD_CONTROLS,
    "llama.cpp": STANDARD_CONTROLS | {"top_k", "repeat_penalty"},
    "openai": STANDARD_CONTROLS,
}


@dataclass(frozen=True)
class BackendInfo:
    """What answers at the backend URL, and its limits in tokens."""

    kind: BackendKind
    url: str
    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    version: str | None = None
    max_stop_sequences: int | None = None

    @property
    def controls(self) -> frozenset[str]:
        return CONTROLS[self.kind]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one reply; ``None`` leaves the server's default."""

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repeat_penalty: float | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of the reply: text, and on the last one why generation stopped."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None


@dataclass
class BackendClient:
    url: str
    token: str | None = None
    probe_timeout: float = 5.0
    read_timeout: float = 120.0
    context_tokens: int = 2048
    _headers: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def probe(self) -> BackendInfo:
        """Ask the server what it is. Raises ``BackendError`` when nothing usable answers."""
        timeout = httpx.Timeout(self.probe_timeout)
        try:
            async with httpx.AsyncClient(timeout=timeout, headers=self._headers) as http:
                info = await http.get(f"{self.url}/info")
                if info.status_code == 200 and "max_total_tokens" in info.text:
                    return self._tgi_info(info.json())
                models = await http.get(f"{self.url}/v1/models")
        except httpx.TimeoutException as err:
            raise BackendTimeout(
                f"The backend at {self.url} did not answer within {self.probe_timeout:g} s."
            ) from err
        except httpx.TransportError as err:
            raise BackendUnreachable(f"The backend at {self.url} is unreachable.") from err
        not_a_backend = BackendError(
            f"The backend at {self.url} does not answer like TGI or an OpenAI-compatible server"
            f" (GET /v1/models gave HTTP {models.status_code}); check BACKEND_URL."
        )
        if models.status_code != 200:
            raise not_a_backend
        try:
            return self._openai_info(models.json())
        except (ValueError, AttributeError) as err:
            raise not_a_backend from err

    def _tgi_info(self, body: dict[str, Any]) -> BackendInfo:
        total = int(body["max_total_tokens"])
        max_input = body.get("max_input_tokens") or body.get("max_input_length") or total - 1
        return BackendInfo(
            kind="tgi",
            url=self.url,
            model_id=str(body.get("model_id", "unknown")),
            max_input_tokens=int(max_input),
            max_total_tokens=total,
            version=body.get("version"),
            max_stop_sequences=body.get("max_stop_sequences"),
        )

    def _openai_info(self, body: Any) -> BackendInfo:
        models = body.get("data") or []
        if not models:
            raise BackendError(f"The backend at {self.url} serves no model (GET /v1/models).")
        first = models[0]
        # llama-cpp-python's server marks its models as owned by "me" and honours llama.cpp's
        # own sampling knobs beside the OpenAI ones.
        kind: BackendKind = "llama.cpp" if first.get("owned_by") == "me" else "openai"
        return BackendInfo(
            kind=kind,
            url=self.url,
            model_id=str(first.get("id", "unknown")),
            max_input_tokens=self.context_tokens - 1,
            max_total_tokens=self.context_tokens,
        )

    async def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        info: BackendInfo,
    ) -> AsyncGenerator[Delta]:
        """Stream one reply. Raises a ``BackendError`` subclass on any failure."""
        extra: dict[str, Any] = {}
        if params.top_k is not None and "top_k" in info.controls:
            extra["top_k"] = params.top_k
        if params.repeat_penalty is not None and "repeat_penalty" in info.controls:
            extra["repeat_penalty"] = params.repeat_penalty
        finished = False
        async with self._client() as client, _mapped_errors(self.url, self.read_timeout):
            stream = await client.chat_completion(
                [dict(m) for m in messages],
                model=info.model_id,
                stream=True,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                stop=list(params.stop) or None,
                seed=params.seed,
                frequency_penalty=params.frequency_penalty,
                presence_penalty=params.presence_penalty,
                extra_body=extra or None,
            )
            async for chunk in stream:
                usage = getattr(chunk, "usage", None)
                tokens = getattr(usage, "completion_tokens", None) if usage else None
                if not chunk.choices:
                    if tokens is not None:
                        yield Delta(completion_tokens=tokens)
                    continue
                choice = chunk.choices[0]
                text = choice.delta.content or ""
                if choice.finish_reason:
                    finished = True
                if text or choice.finish_reason or tokens is not None:
                    yield Delta(text, choice.finish_reason, tokens)
            if not finished:
                raise StreamError(
                    f"The backend at {self.url} closed the stream before the reply was finished."
                )

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[AsyncInferenceClient]:
        # The client gets its own HTTP session: huggingface_hub's default one refuses every
        # request when HF_HUB_OFFLINE=1, which air-gapped deployments set, although the
        # backend is a server of the user's own and no Hub call is made.
        session = httpx2.AsyncClient(event_hooks={"response": [_read_error_body]})
        client = AsyncInferenceClient(
            base_url=f"{self.url}/v1", api_key=self.token, timeout=self.read_timeout
        )
        client._async_client = session
        async with session, client:
            yield client


async def _read_error_body(response: httpx2.Response) -> None:
    """Read an error response's body before it is raised, so its message can be shown."""
    if response.status_code >= 400:
        await response.aread()


@asynccontextmanager
async def _mapped_errors(url: str, read_timeout: float) -> AsyncIterator[None]:
    """Translate transport, HTTP and in-stream failures into the ``BackendError`` tree."""
    try:
        yield
    except BackendError:
        raise
    except (InferenceTimeoutError, httpx2.TimeoutException) as err:
        raise BackendTimeout(
            f"The backend at {url} sent nothing for {read_timeout:g} s; the reply timed out."
        ) from err
    except httpx2.ConnectError as err:
        raise BackendUnreachable(f"The backend at {url} is unreachable.") from err
    except (httpx2.TransportError, json.JSONDecodeError) as err:
        raise StreamError(
            f"The stream from {url} broke before the reply was finished ({type(err).__name__})."
        ) from err
    except HfHubHTTPError as err:
        raise _http_error(url, err) from err
    except TextGenerationError as err:
        raise _stream_event_error(url, err) from err


def _http_error(url: str, err: HfHubHTTPError) -> BackendError:
    status = err.response.status_code
    detail = _error_detail(err)
    if status == 422:
        return BackendValidationError(f"The backend rejected the request: {detail}")
    if status in (429, 503):
        return BackendOverloaded(f"The backend at {url} is overloaded; try again shortly.")
    if status == 424:
        return GenerationError(f"The model failed while generating: {detail}")
    return BackendError(f"The backend at {url} answered HTTP {status}: {detail}")


def _error_detail(err: HfHubHTTPError) -> str:
    """The server's own message: TGI's ``{"error": ".."}``, OpenAI's ``{"error": {"message"}}``."""
    try:
        body = json.loads(err.response.content or b"null")
    except (json.JSONDecodeError, httpx2.ResponseNotRead):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str) and error:
        return error
    return err.server_message or f"HTTP {err.response.status_code}"


def _stream_event_error(url: str, err: TextGenerationError) -> BackendError:
    text = str(err) or "no detail"
    if isinstance(err, ValidationError):
        return BackendValidationError(f"The backend rejected the request: {text}")
    if isinstance(err, OverloadedError):
        return BackendOverloaded(f"The backend at {url} is overloaded; try again shortly.")
    if isinstance(err, HubGenerationError):
        return GenerationError(f"The model failed while generating: {text}")
    return StreamError(f"The backend at {url} sent an error inside the stream: {text}")
