"""Clients for inference servers; they know nothing of Gradio."""

from app.backends.client import BackendClient, BackendInfo, Delta
from app.backends.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnreachable,
    BackendValidationError,
    ChatTemplateError,
    GenerationError,
    StreamError,
)
from app.backends.sampling import (
    CONTROLS,
    BackendKind,
    GenerationParams,
    InvalidSetting,
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
    "ChatTemplateError",
    "Delta",
    "GenerationError",
    "GenerationParams",
    "InvalidSetting",
    "StreamError",
]
