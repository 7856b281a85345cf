"""Why a model could not be fetched. Every message says what to do; none holds the token.

    DownloadError            the model could not be fetched or checked (the wheel, or the Hub
    │                        answered with another error)
    ├── GatedModelError      the Hub model is gated and HF_TOKEN is missing or has no access
    ├── ModelNotFoundError   no such Hub model, or no such revision of it
    ├── DiskFullError        the disk of the model cache filled up (ENOSPC)
    └── HubUnreachableError  the Hub cannot be reached (network, HF_ENDPOINT, HF_HUB_OFFLINE=1)
                             and the model is not in the cache

``python -m app.downloader`` turns each into one line on stderr and its own exit code.
"""

from __future__ import annotations


class DownloadError(Exception):
    """The model could not be fetched or checked; the message says what to do."""


class GatedModelError(DownloadError):
    """The model is gated: no token was given, or the token's account has no access."""


class ModelNotFoundError(DownloadError):
    """The Hub has no such model (or hides a private one) or no such revision of it."""


class DiskFullError(DownloadError):
    """Writing into the model cache failed with ENOSPC."""


class HubUnreachableError(DownloadError):
    """The Hub could not be reached, or offline mode is on, and the model is not cached."""
