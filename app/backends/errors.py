"""Everything that can go wrong when talking to an inference server.

    BackendError                 base class; ``str(err)`` is one line a user can act on
    ├── BackendUnreachable       nothing answers at the URL (connection refused, DNS, reset)
    ├── BackendTimeout           connect or read took longer than the configured timeout
    ├── BackendValidationError   HTTP 422 or TGI ``error_type: validation`` (e.g. too many tokens)
    ├── BackendOverloaded        HTTP 429/503 or ``error_type: overloaded``; try again later
    ├── GenerationError          HTTP 424 or ``error_type: generation``; the model failed mid-way
    └── StreamError              the stream broke: an ``error`` event inside it, malformed data,
                                 or the connection closed before the server said it was done

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
    """Raised when the server is busy (HTTP 429 or 503); the request may succeed later."""


class GenerationError(BackendError):
    """Raised when the model fails while generating (HTTP 424)."""


class StreamError(BackendError):
    """Raised when the token stream breaks or carries an error event."""
