"""Everything that can go wrong when talking to an inference server.

    BackendError                 base class; ``str(err)`` is one line a user can act on
    ├── BackendUnreachable       nothing answers at the URL (connection refused, DNS, reset)
    ├── BackendTimeout           connect or read took longer than the configured timeout
    ├── BackendValidationError   HTTP 422 or TGI ``error_type: validation`` (e.g. too many tokens)
    ├── BackendOverloaded        HTTP 429/503 or ``error_type: overloaded``; try again later
    │   (``retry_after``: the server's Retry-After, in seconds)
    ├── GenerationError          HTTP 424 or ``error_type: generation``; the model failed mid-way
    ├── StreamError              the stream broke: an ``error`` event inside it, malformed data,
    │                            or the connection closed before the server said it was done
    └── NoBackendAvailable       every backend that serves the model failed or is down; the
                                 message lists each with its reason

Errors become user text only at the edges (the UI, HTTP responses); ``DEBUG=true`` re-raises.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class for inference-server failures."""


class BackendUnreachable(BackendError):
    """Raised when no server answers at the backend URL."""


class BackendTimeout(BackendError):
    """Raised when connecting or waiting for the next token exceeds its timeout."""


class BackendValidationError(BackendError):
    """Raised when the server rejects the request as invalid (HTTP 422)."""


class BackendOverloaded(BackendError):
    """Raised when the server is busy (HTTP 429 or 503); the request may succeed later,
    after ``retry_after`` seconds when the server said so (``Retry-After``)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GenerationError(BackendError):
    """Raised when the model fails while generating (HTTP 424)."""


class StreamError(BackendError):
    """Raised when the token stream breaks or carries an error event."""


class NoBackendAvailable(BackendError):
    """Raised when no backend serving the model could take the request."""
