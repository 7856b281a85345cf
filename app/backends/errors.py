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

Servers report errors in several shapes, before the stream (an HTTP status) or inside it (TGI's
chat stream answers HTTP 200 and then sends every kind as ``{"error": {"message",
"http_status_code": 422}}``); ``app.backends.client.classified`` reads the kind from TGI's
message prefix first, then from the error's type and status.

Errors become user text only at the edges (the UI, HTTP responses); ``DEBUG=true`` re-raises.
"""

from __future__ import annotations

from typing import ClassVar


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
