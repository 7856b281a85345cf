"""Clients for inference servers; they know nothing of Gradio."""

from app.backends.client import (
    CONTROLS,
    BackendClient,
    BackendInfo,
    BackendKind,
    Delta,
    GenerationParams,
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

__all__ = [
    "CONTROLS",
    "BackendClient",
    "BackendError",
    "BackendInfo",
    "BackendKind",
    "BackendOverloaded",
    "BackendTimeout",
    "BackendUnreachable",
    "BackendValidationError",
    "Delta",
    "GenerationError",
    "GenerationParams",
    "StreamError",
]
