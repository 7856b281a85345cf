"""One inference server, spoken to over the Messages API (``/v1/chat/completions``).

``probe()`` finds what answers at the URL: TGI (``GET /info`` answers, with its token limits)
or any OpenAI-compatible server (``GET /v1/models``), Hugging Face Inference Providers'
router included. ``stream_chat()`` streams one reply as ``Delta`` values. The raw-prompt mode
(``render_prompt``, ``stream_raw``) is in ``app.backends.raw``.

Every request to one backend (probes, streams, raw-prompt calls) goes through one pooled
``aiohttp`` session of its ``BackendClient``, opened on first use on the running event loop and
closed by ``aclose()``, which the app calls as it stops (``Router.aclose``). A connection goes
back to the pool only when its response was read to the end: leaving a stream early (the user
pressed Stop, the iterator was closed) closes that connection, and so the upstream stream. Each
request has its own timeouts, and every failure (connection, timeout, HTTP status, an error
inside the stream) is mapped to the ``BackendError`` tree in one place (``mapped_errors``, in
``app.backends.errors``).

Streams are read with ``aiohttp`` and ``json``: every token of every reply is one chunk to
read, and that cost bounds how many streams one process carries (``bench/``). Measured per
chunk, JSON included: ``httpx`` 205 µs, ``aiohttp`` 56 µs; ``AsyncInferenceClient`` adds about
125 µs to its transport's to build typed objects for each. The wire format: ``data: {chunk}``
server-sent events ending with ``data: [DONE]``, with ``:`` keep-alive comments between them,
read by ``app.backends.sse``; errors come as an HTTP status or inside a stream that began with
HTTP 200, in each server's shape (``error_parts``), and are classified by ``classified``, both
in ``app.backends.errors``. What each kind of server is sent for the page's controls is in
``app.backends.sampling``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import httpx
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from app.backends.errors import (
    BackendError,
    StreamError,
    error_parts,
    http_error,
    mapped_errors,
)
from app.backends.sampling import CONTROLS, BackendKind, GenerationParams, openai_fields
from app.backends.sse import sse_events

# How long an idle connection waits in the pool for the next request: less than the 5 s after
# which uvicorn (llama-cpp-python's and vLLM's server) closes it, so that a request never goes
# out on a connection the server is closing (aiohttp retries only idempotent requests).
KEEPALIVE_SECONDS = 4.0
# How long a finished stream waits for the end of its body (a chunked body's last chunk comes
# just after ``data: [DONE]``) so that its connection goes back to the pool.
BODY_END_SECONDS = 0.1
# What BACKENDS may say of a server: ``auto`` probes for TGI, then OpenAI-compatible.
ConfiguredKind = Literal["auto", "tgi", "openai", "hf"]
# What ``owned_by`` in ``/v1/models`` says of llama.cpp: llama-cpp-python's server writes
# "me" (llama_cpp/server/app.py), llama.cpp's own llama-server "llamacpp".
LLAMA_CPP_OWNERS = frozenset({"me", "llamacpp"})


def safe_url(url: str) -> str:
    """The URL as shown to people: any ``user:password@`` in it is left out."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class BackendInfo:
    """What answers at the backend URL: its models (``model_id`` the one in use), and its
    limits in tokens."""

    kind: BackendKind
    url: str
    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    version: str | None = None
    max_stop_sequences: int | None = None
    name: str = "default"
    models: tuple[str, ...] = ()
    # How many requests it serves at once, when it says (llama-server's slots); more wait.
    slots: int | None = None

    def __post_init__(self) -> None:
        if not self.models:
            object.__setattr__(self, "models", (self.model_id,))

    @property
    def label(self) -> str:
        return f"{self.name!r} at {safe_url(self.url)}"

    @property
    def controls(self) -> frozenset[str]:
        return CONTROLS[self.kind]


@dataclass(frozen=True)
class Delta:
    """A piece of the reply: text, and on the last one why generation stopped."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int | None = None
    # Set on the first delta of a reply: the name of the backend that answers.
    backend: str | None = None
    # Set, before any text, on a reply that waits for one of the backend's slots: how many
    # requests wait before it (``Router.stream``).
    waiting: int | None = None


@dataclass
class BackendClient:
    """One configured backend. ``models`` narrows what it offers (required for Inference
    Providers, whose router lists thousands); ``provider`` picks an Inference Provider."""

    url: str
    token: str | None = field(default=None, repr=False)
    probe_timeout: float = 5.0
    read_timeout: float = 120.0
    context_tokens: int = 2048
    name: str = "default"
    kind: ConfiguredKind = "auto"
    models: tuple[str, ...] = ()
    provider: str | None = None
    _headers: dict[str, str] = field(init=False, repr=False)
    # The proxy HTTP(S)_PROXY and NO_PROXY give for the backend, and its credentials.
    _proxy: tuple[URL | None, aiohttp.BasicAuth | None] = field(init=False, repr=False)
    # One session for each event loop that uses the client: the app has one loop; tests also
    # run servers in threads, each with its own (a session works only on its loop).
    _sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._proxy = env_proxy(self.url)

    @property
    def label(self) -> str:
        return f"{self.name!r} at {safe_url(self.url)}"

    async def aclose(self) -> None:
        """Close the connections opened on the running loop (and those of any loop that has
        closed since). Call it on each loop that used the client: the app's lifespan does, for
        its one loop. The client stays usable: the next request opens a new session."""
        loop = asyncio.get_running_loop()
        await self._close_sessions(lambda owner: owner is loop or owner.is_closed())

    async def _session(self) -> aiohttp.ClientSession:
        """This backend's session on the running loop, opened on first use."""
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            # No trust_env: the proxy is read once (``env_proxy``). limit=0: as many
            # connections at once as there are requests (a reply never waits for another's
            # connection).
            session = self._sessions[loop] = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(
                    ssl=_tls_context(), limit=0, keepalive_timeout=KEEPALIVE_SECONDS
                ),
            )
            # A loop that closed (a test's) left its session behind: nothing can use it now.
            await self._close_sessions(lambda owner: owner.is_closed())
        return session

    async def _close_sessions(
        self, which: Callable[[asyncio.AbstractEventLoop], bool]
    ) -> None:
        # Out of the mapping before the first await, so that no other task picks one up while
        # it closes. Closing the session of a closed loop, from any loop, only marks it closed:
        # its connections cannot run without their loop.
        closing = [self._sessions.pop(owner, None) for owner in list(self._sessions)
                   if which(owner)]
        for session in closing:
            if session is not None:
                await session.close()

    @asynccontextmanager
    async def _request(
        self, method: str, path: str, read_timeout: float, body: Mapping[str, Any] | None = None,
        *, probe: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request on the pooled session and yield its response, whatever its status.
        Connecting may take the probe timeout, each read ``read_timeout``. Every failure, in
        the request or in the caller's reading of the response, comes out as a
        ``BackendError`` (``mapped_errors``); a probe's (``probe``) reads as the server not
        answering, its name lookup counts in its connect timeout, and it does not follow
        redirects."""
        timeout = aiohttp.ClientTimeout(
            connect=self.probe_timeout if probe else None, sock_connect=self.probe_timeout,
            sock_read=read_timeout,
        )
        async with mapped_errors(self.label, read_timeout, self.token, probe=probe):
            session = await self._session()
            for attempt in range(2):
                try:
                    response = await session.request(
                        method, f"{self.url}{path}", json=body, timeout=timeout,
                        allow_redirects=not probe, proxy=self._proxy[0],
                        proxy_auth=self._proxy[1],
                    )
                    break
                except aiohttp.ServerDisconnectedError:
                    # Closed before any answer: a pooled connection that the backend closed
                    # while it was idle (it restarted, or its keep-alive ran out). Once more,
                    # on a new connection, which says whether the backend is there.
                    if attempt:
                        raise
            async with response:
                yield response

    @asynccontextmanager
    async def post(
        self, path: str, body: Mapping[str, Any], read_timeout: float | None = None,
        missing: str | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``body`` as JSON to ``path`` with the token; yields the response (read or
        stream it) once its status is known to be a success. Waits ``read_timeout`` (the
        backend's by default) for each read, the probe timeout to connect. Raises
        ``BackendError``, for failures while the response is read too; ``missing`` is its
        message for a 404, a server without that API. Leaving on an exception (a closed
        iterator, a cancelled task) closes the connection; leaving at the reply's end puts it
        back in the pool."""
        async with self._request("POST", path, read_timeout or self.read_timeout, body) as response:
            if response.status == 404 and missing is not None:
                raise BackendError(missing)
            await _raise_for_status(self, response)
            yield response
            await _read_to_end(response)

    async def _get(self, path: str) -> tuple[int, bytes]:
        """A probe's GET: its status and body."""
        async with self._request("GET", path, self.probe_timeout, probe=True) as response:
            return response.status, await response.read()

    async def probe(self) -> BackendInfo:
        """Ask the server what it is. Raises ``BackendError`` when nothing usable answers."""
        if self.kind in ("auto", "tgi"):
            status, info = await self._get("/info")
            if status == 200 and b"max_total_tokens" in info:
                return self._narrowed(self._tgi_info(info))
            if self.kind == "tgi":
                raise BackendError(
                    f"The backend {self.label} does not answer like TGI (GET /info "
                    f"gave HTTP {status}); check its kind and URL."
                )
        status, models = await self._get("/v1/models")
        if status in (401, 403):
            raise http_error(self.label, status, f"HTTP {status}", {})
        if status == 503:
            # llama-server answers every request with 503 until its model is loaded
            # (tools/server/server-http.cpp); vLLM while it starts.
            raise BackendError(
                f"The backend {self.label} is starting: it answered HTTP 503 (still loading "
                "its model?); it is checked again shortly."
            )
        not_a_backend = BackendError(
            f"The backend {self.label} does not answer like TGI or an OpenAI-compatible server"
            f" (GET /v1/models gave HTTP {status}); check its URL."
        )
        if status != 200:
            raise not_a_backend
        try:
            served = self._openai_info(json.loads(models))
        except (ValueError, AttributeError, TypeError) as err:
            raise not_a_backend from err
        if served.kind == "llama.cpp":
            served = await self._llama_server_props(served)
        return self._narrowed(served)

    def _narrowed(self, info: BackendInfo) -> BackendInfo:
        """The info with only the configured models, in their configured order."""
        if not self.models:
            return info
        offered = [model for model in self.models if model in info.models]
        if not offered:
            served = ", ".join(info.models[:10]) or "none"
            raise BackendError(
                f"The backend {self.label} serves none of its configured models "
                f"({', '.join(self.models)}); it serves: {served}."
            )
        return replace(info, model_id=offered[0], models=tuple(offered))

    def _tgi_info(self, content: bytes) -> BackendInfo:
        """TGI's ``/info``; raises ``BackendError`` when it is not what TGI sends."""
        try:
            body = json.loads(content)
            total = int(body["max_total_tokens"])
            max_input = int(
                body.get("max_input_tokens") or body.get("max_input_length") or total - 1
            )
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise BackendError(
                f"The backend {self.label} answered GET /info with something other than TGI's "
                f"info ({type(err).__name__}: {err}); check its URL and kind."
            ) from err
        return BackendInfo(
            kind="tgi",
            url=self.url,
            model_id=str(body.get("model_id", "unknown")),
            max_input_tokens=max_input,
            max_total_tokens=total,
            version=body.get("version"),
            max_stop_sequences=body.get("max_stop_sequences"),
            name=self.name,
        )

    def _openai_info(self, body: Any) -> BackendInfo:
        models = body.get("data") or []
        if not models:
            raise BackendError(f"The backend {self.label} serves no model (GET /v1/models).")
        first = models[0]
        kind: BackendKind = "llama.cpp" if first.get("owned_by") in LLAMA_CPP_OWNERS else "openai"
        if self.kind == "hf":
            kind = "hf"
        # vLLM lists each model with the context it serves (its ModelCard's max_model_len);
        # other servers' lists say nothing of it, and the configured context stands.
        served = first.get("max_model_len")
        total = served if isinstance(served, int) and served > 1 else self.context_tokens
        return BackendInfo(
            kind=kind,
            url=self.url,
            model_id=str(first.get("id", "unknown")),
            max_input_tokens=total - 1,
            max_total_tokens=total,
            name=self.name,
            models=tuple(str(model["id"]) for model in models if "id" in model),
        )

    async def _llama_server_props(self, info: BackendInfo) -> BackendInfo:
        """llama-server's own limits, from ``GET /props`` (``tools/server/server-context.cpp``,
        the ``props`` handler): the context of one slot (``default_generation_settings.n_ctx``),
        what a request has at most; its slots (``total_slots``); its build (``build_info``).
        A server without it (llama-cpp-python's) keeps the configured context."""
        status, content = await self._get("/props")
        if status != 200:
            return info
        try:
            props = json.loads(content)
            context = int(props["default_generation_settings"]["n_ctx"])
            slots = int(props["total_slots"])
        except (ValueError, TypeError, KeyError) as err:
            raise BackendError(
                f"The backend {self.label} answered GET /props with something other than "
                f"llama-server's properties ({type(err).__name__}: {err}); check its URL."
            ) from err
        return replace(info, max_input_tokens=context - 1, max_total_tokens=context, slots=slots,
                       version=props.get("build_info"))

    def wire_model(self, model: str) -> str:
        """The model as the server expects it: Inference Providers take ``id:provider``."""
        return f"{model}:{self.provider}" if self.provider else model

    async def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        params: GenerationParams,
        info: BackendInfo,
    ) -> AsyncGenerator[Delta]:
        """Stream one reply. Raises a ``BackendError`` subclass on any failure."""
        body = {
            "model": self.wire_model(info.model_id), "messages": [dict(m) for m in messages],
            "stream": True, "stream_options": {"include_usage": True},
            **openai_fields(info.kind, params),
        }
        finished = False
        async with self.post("/v1/chat/completions", body) as response:
            async for event in sse_events(self, response):
                usage = event.get("usage")
                tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
                choices = event.get("choices") or []
                if not choices:
                    if tokens is not None:
                        yield Delta(completion_tokens=tokens)
                    continue
                choice = choices[0]
                text = (choice.get("delta") or {}).get("content") or ""
                finish_reason = choice.get("finish_reason")
                if finish_reason:
                    finished = True
                if text or finish_reason or tokens is not None:
                    yield Delta(text, finish_reason, tokens)
        if not finished:
            raise StreamError(
                f"The backend {self.label} closed the stream before the reply was finished."
            )


def env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy that ``HTTP(S)_PROXY`` and ``NO_PROXY`` name for ``url`` (none: None), with
    the credentials in its URL or in ``~/.netrc``, as aiohttp reads them: once, when the
    client is made. aiohttp's ``trust_env`` would read them (and ``~/.netrc``) again for every
    request, in two calls through the loop's default executor, which the store's calls also
    use: when 64 messages came at once, each backend request waited half a second there."""
    with suppress(LookupError):
        return get_env_proxy_for_url(URL(url))
    return None, None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every session: building one loads the CA bundle, 10 to 30 ms of
    CPU. The trust store is httpx's (certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR), the
    one the backends have always been checked against."""
    return httpx.create_ssl_context()


async def _read_to_end(response: aiohttp.ClientResponse) -> None:
    """Read what is left of a body the caller is done with, so that its connection goes back
    to the pool; a server that sends for ``BODY_END_SECONDS`` more, or fails, loses the
    connection instead (it is closed), and the reply is not affected."""
    with suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(BODY_END_SECONDS):
            while await response.content.readany():
                pass


async def _raise_for_status(client: BackendClient, response: aiohttp.ClientResponse) -> None:
    """Raise the ``BackendError`` for an HTTP error status, with the server's own message."""
    if response.status < 400:
        return
    try:
        detail, kind, _ = error_parts(json.loads(await response.read()))
    except ValueError:
        detail, kind = None, None
    if detail is None:  # a bare status (TGI's router answers an unknown route with no body)
        asked = f"{response.method} {response.url.path}"
        detail = (f"it has no {asked}; check the backend's kind and URL"
                  if response.status == 404 else f"{asked} failed")
    raise http_error(client.label, response.status, detail, response.headers, kind)
