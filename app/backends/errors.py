"""Everything that can go wrong when talking to an inference server.

    BackendError                 base class; ``str(err)`` is one line a user can act on
    ├── BackendUnreachable       nothing answers at the URL (connection refused, DNS, reset)
    ├── BackendTimeout           connect or read took longer than the configured timeout
    ├── BackendValidationError   the request was refused: "Input validation error: ..." (too
    │   │                        many tokens, a value out of range), HTTP 400/422; never retried
    │   └── ChatTemplateError    "Template error: ..." (the model has no chat template, or it
    │                            refused these messages)
    ├── BackendOverloaded        "Model is overloaded", HTTP 429/503; retried after a backoff
    │   (``retry_after``: the server's Retry-After, in seconds, when it sends one)
    ├── GenerationError          "Request failed during generation: ...", HTTP 424
    ├── StreamError              the stream broke: an error event of no known kind, malformed
    │                            data, or the connection closed before the server said it was done
    └── NoBackendAvailable       every backend that serves the model failed or is down; the
                                 message lists each with its reason

Each class's ``kind`` names it where failures are counted (the ``kind`` label of
``playground_backend_errors``): ``unreachable``, ``timeout``, ``validation`` (a template error
too), ``overloaded``, ``generation``, ``stream``, ``no_backend``, and ``other`` for the base class.

Below, how failures become these: ``mapped_errors`` wraps every request, turning a timeout, a
connection refused or broken and malformed data in a stream into theirs. Servers report errors
in several shapes, before the stream (an HTTP status, ``http_error``) or inside it
(``event_error``; TGI's chat stream answers HTTP 200 and then sends every kind as
``{"error": {"message", "http_status_code": 422}}``). ``error_parts`` reads each server's shape
and ``classified`` reads the kind from TGI's message prefix first (``router/src/infer/mod.rs``),
then from the error's status and type (vLLM: ``vllm/entrypoints/openai``; llama-server:
``server-common.cpp``; llama-cpp-python: ``server/errors.py``).

Errors become user text only at the edges (the UI, HTTP responses); ``DEBUG=true`` re-raises.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import aiohttp

from app.logs import scrub


class BackendError(Exception):
    """Base class for inference-server failures."""

    kind: ClassVar[str] = "other"


class BackendUnreachable(BackendError):
    """Raised when no server answers at the backend URL."""

    kind = "unreachable"


class BackendTimeout(BackendError):
    """Raised when connecting or waiting for the next token exceeds its timeout."""

    kind = "timeout"


class BackendValidationError(BackendError):
    """Raised when the server rejects the request as invalid."""

    kind = "validation"


class ChatTemplateError(BackendValidationError):
    """Raised when the server could not apply the model's chat template (TGI's ``Template
    error:``, HTTP 422 ``template_error``)."""


class BackendOverloaded(BackendError):
    """Raised when the server is busy; the request may succeed later, after ``retry_after``
    seconds when the server said so (``Retry-After``; TGI never does)."""

    kind = "overloaded"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GenerationError(BackendError):
    """Raised when the model fails while generating."""

    kind = "generation"


class StreamError(BackendError):
    """Raised when the token stream breaks or carries an error event."""

    kind = "stream"


class NoBackendAvailable(BackendError):
    """Raised when no backend serving the model could take the request."""

    kind = "no_backend"


@asynccontextmanager
async def mapped_errors(
    label: str, read_timeout: float, token: str | None = None, *, probe: bool = False
) -> AsyncIterator[None]:
    """Translate transport, HTTP and in-stream failures into the ``BackendError`` tree: a
    timeout is ``BackendTimeout``, a failed connection ``BackendUnreachable``, a connection
    broken later (or malformed data) a ``StreamError``; during a ``probe`` every transport
    failure is ``BackendUnreachable``.

    The messages quote what the server said; a server that echoes the request's
    credentials (some do, in their errors) has them scrubbed before anyone sees them.
    """
    try:
        async with _translated(label, read_timeout, probe):
            yield
    except BackendError as err:
        text = str(err)
        scrubbed = scrub(text, [token] if token else [])
        if scrubbed != text:
            err.args = (scrubbed,)
        raise


@asynccontextmanager
async def _translated(label: str, read_timeout: float, probe: bool) -> AsyncIterator[None]:
    try:
        yield
    except BackendError:
        raise
    except TimeoutError as err:  # aiohttp's timeouts are TimeoutErrors
        raise BackendTimeout(
            f"The backend {label} did not answer within {read_timeout:g} s." if probe
            else f"The backend {label} sent nothing for {read_timeout:g} s; the reply timed out."
        ) from err
    except aiohttp.ClientConnectorError as err:
        raise BackendUnreachable(f"The backend {label} is unreachable.") from err
    except aiohttp.ClientError as err:
        if probe:
            raise BackendUnreachable(f"The backend {label} is unreachable.") from err
        raise StreamError(
            f"The stream from {label} broke before the reply was finished ({type(err).__name__})."
        ) from err
    except json.JSONDecodeError as err:
        raise StreamError(
            f"The backend {label} sent malformed data in the stream (not JSON); the reply "
            "was cut there."
        ) from err


def http_error(
    label: str, status: int, detail: str, headers: Mapping[str, str], kind: str | None = None
) -> BackendError:
    """The error for an HTTP error status, with the server's own message and error type."""
    if status in (401, 403):
        return BackendError(
            f"The backend {label} refused the token (HTTP {status}); check the backend's "
            "token (or HF_TOKEN)."
        )
    retry_after = _retry_after(headers.get("retry-after"))
    error = classified(label, detail, kind=kind, status=status, retry_after=retry_after)
    if error is not None:
        return error
    return BackendError(f"The backend {label} answered HTTP {status}: {detail}")


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by inference servers)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 else None


# What TGI's messages start with, by kind (``router/src/infer/mod.rs``, ``InferError``): in a
# chat stream every kind comes as ``{"error": {"message", "http_status_code": 422}}``
# (``into_openai_event``), so the message is all that tells them apart.
MESSAGE_KINDS = (
    ("Input validation error:", "validation"),
    ("Template error:", "template"),
    ("Model is overloaded", "overloaded"),
    ("Request failed during generation:", "generation"),
)
# The kind of an HTTP status (or an error's ``code``), then of an error's ``error_type`` (TGI) or
# ``type`` (vLLM: vllm/entrypoints/openai; llama-server: server-common.cpp; llama-cpp-python:
# server/errors.py).
STATUS_KINDS = {400: "validation", 422: "validation", 429: "overloaded", 503: "overloaded",
                424: "generation"}
TYPE_KINDS = {
    "validation": "validation", "template_error": "template", "overloaded": "overloaded",
    "generation": "generation", "BadRequestError": "validation", "Bad Request": "validation",
    "invalid_request_error": "validation", "exceed_context_size_error": "validation",
}


def error_parts(body: Any) -> tuple[str | None, str | None, int | None]:
    """The message, type and status of an error body, in any of the shapes servers send:
    TGI's ``{"error": "..", "error_type"}``, TGI chat's ``{"error": {"message",
    "http_status_code"}}`` (always 422, so not read), vLLM's, llama.cpp's and OpenAI's
    ``{"error": {"message", "type", "code"}}`` and vLLM's before 0.10.1 ``{"object": "error",
    "message", "type", "code"}``."""
    if not isinstance(body, dict):
        return None, None, None
    error = body.get("error")
    if isinstance(error, dict):
        body, error = error, error.get("message")
    elif error is None:
        error = body.get("message")
    kind = body.get("error_type") or body.get("type")
    status = body.get("code")
    return (
        error if isinstance(error, str) and error else None,
        kind if isinstance(kind, str) else None,
        status if isinstance(status, int) and not isinstance(status, bool) else None,
    )


def classified(
    label: str, message: str, *, kind: str | None = None, status: int | None = None,
    retry_after: float | None = None,
) -> BackendError | None:
    """The ``BackendError`` a server's error stands for: by TGI's message prefix first, then
    by its status, then by its type; None when none of them says."""
    found = next((k for prefix, k in MESSAGE_KINDS if message.startswith(prefix)), None)
    found = found or STATUS_KINDS.get(status or 0) or TYPE_KINDS.get(kind or "")
    if found == "template":
        return ChatTemplateError(f"The backend {label} could not apply the model's chat "
                                 f"template: {message}")
    if found == "validation":
        hint = ""
        if "token" in message.lower():
            hint = " Shorten the message, start a new conversation, or lower max new tokens."
        return BackendValidationError(f"The backend {label} rejected the request: {message}{hint}")
    if found == "overloaded":
        when = "shortly" if retry_after is None else f"in {retry_after:g} s"
        return BackendOverloaded(
            f"The backend {label} is overloaded; try again {when}.", retry_after
        )
    if found == "generation":
        return GenerationError(f"The model failed while generating: {message}")
    return None


def event_error(label: str, event: Mapping[str, Any]) -> BackendError:
    """The error an error event inside a stream stands for."""
    message, kind, status = error_parts(event)
    message = message or str(event.get("error"))
    error = classified(label, message, kind=kind, status=status)
    if error is not None:
        return error
    return StreamError(f"The backend {label} sent an error inside the stream: {message}")
