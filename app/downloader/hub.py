"""A Hub model's snapshot in the shared model cache, the folder TGI reads at ``/data``.

The cache has the Hugging Face layout: ``models--org--name/snapshots/<commit>/<files>``, the files
being links into ``blobs/``, and ``refs/<revision>`` naming the commit. ``huggingface_hub`` does the
transfers; this module picks the files, looks in the cache first, and tells the failures apart.

- The cache first: when it holds every selected file of the revision (checked against the file
  listing ``huggingface_hub`` keeps beside the snapshot), the Hub is not asked at all, so a second
  run is a fast no-op and works offline. ``refresh`` asks the Hub for the revision's current commit.
- Weights once: when the selected files include ``*.safetensors``, the same weights in the other
  formats (``OTHER_WEIGHT_FORMATS``) are left out.
- Interruptions: ``huggingface_hub`` retries a transfer that breaks off, from the end of the last
  10 MiB piece it wrote (an HTTP Range request). A run that was stopped leaves the finished files
  in the cache and the next run fetches only the others; huggingface_hub 2.4 starts an unfinished
  file over, and leaves the stopped run's part of it behind as ``blobs/<etag>.<id>.incomplete``.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, constants, get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

from app.downloader.errors import (
    DiskFullError,
    DownloadError,
    GatedModelError,
    HubUnreachableError,
    ModelNotFoundError,
)
from app.sizes import size_text

OTHER_WEIGHT_FORMATS = ("*.bin", "*.pth", "*.pt", "*.h5", "*.msgpack", "*.ckpt", "*.gguf")


@dataclass(frozen=True)
class HubModel:
    """A repo at a revision, its files filtered by glob patterns, fetched into ``cache_dir``."""

    repo_id: str
    revision: str
    cache_dir: Path
    token: str | None = field(default=None, repr=False)
    allow_patterns: list[str] | None = None
    ignore_patterns: list[str] | None = None

    @property
    def page(self) -> str:
        return f"{constants.ENDPOINT}/{self.repo_id}"

    def ignore_patterns_for(self, files: Iterable[str]) -> list[str] | None:
        """The user's ignore patterns, plus the other weight formats when the files the user's
        patterns select include safetensors weights."""
        selected = filter_repo_objects(
            files, allow_patterns=self.allow_patterns, ignore_patterns=self.ignore_patterns
        )
        if not any(name.endswith(".safetensors") for name in selected):
            return self.ignore_patterns
        return [*(self.ignore_patterns or []), *OTHER_WEIGHT_FORMATS]


@dataclass(frozen=True)
class Snapshot:
    """The snapshot's folder, and whether this run downloaded (False: it was in the cache)."""

    path: Path
    downloaded: bool


def fetch_snapshot(model: HubModel, *, refresh: bool = False) -> Snapshot:
    """Find the snapshot in the cache or download it; with ``refresh``, ask the Hub in any case.

    Raises GatedModelError, ModelNotFoundError, DiskFullError or HubUnreachableError, and
    DownloadError when the Hub or the disk fails in another way.
    """
    try:
        cached = None if refresh else cached_snapshot(model)
        if cached is not None:
            return Snapshot(cached, downloaded=False)
        print(
            f"Fetching {model.repo_id} ({model.revision}) from {constants.ENDPOINT} into "
            f"{model.cache_dir} ...", flush=True,
        )
        return Snapshot(_download(model), downloaded=True)
    except (httpx2.HTTPError, OSError) as err:
        raise _explain(err, model) from err


def cached_snapshot(model: HubModel) -> Path | None:
    """The snapshot's folder when the cache holds all its selected files; the Hub is not asked."""
    try:
        listing = get_cached_repo_tree(
            model.repo_id, revision=model.revision, cache_dir=model.cache_dir
        )
        folder = snapshot_download(
            model.repo_id, revision=model.revision, cache_dir=model.cache_dir,
            allow_patterns=model.allow_patterns,
            ignore_patterns=model.ignore_patterns_for(entry.path for entry in listing),
            local_files_only=True,
        )
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError):
        return None
    return Path(folder)


def _download(model: HubModel) -> Path:
    info = HfApi().model_info(
        model.repo_id, revision=model.revision, files_metadata=True, token=model.token
    )
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
    ignore = model.ignore_patterns_for(sizes)
    chosen = list(filter_repo_objects(
        sizes, allow_patterns=model.allow_patterns, ignore_patterns=ignore
    ))
    if not chosen:
        patterns = " ".join([*(model.allow_patterns or []), *(model.ignore_patterns or [])])
        raise ModelNotFoundError(
            f"No file of {model.repo_id} (revision {model.revision}) matches {patterns}: it has "
            f"{', '.join(sorted(sizes))}. Check the pattern (LLAMACPP_MODEL_FILE in the llamacpp "
            "profiles); names are case-sensitive."
        )
    skipped = [
        name for name in filter_repo_objects(
            sizes, allow_patterns=model.allow_patterns, ignore_patterns=model.ignore_patterns
        )
        if name not in chosen
    ]
    if skipped:
        print(
            f"Leaving out {', '.join(skipped)}: the same weights are fetched as safetensors.",
            flush=True,
        )
    try:
        folder = snapshot_download(
            model.repo_id, revision=model.revision, cache_dir=model.cache_dir,
            allow_patterns=model.allow_patterns, ignore_patterns=ignore, token=model.token,
        )
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise _disk_full(model, [sizes[name] for name in chosen]) from err
    return Path(folder)


def _disk_full(model: HubModel, sizes: list[int | None]) -> DiskFullError:
    known = [size for size in sizes if size is not None]
    needed = f" ({model.repo_id} takes {size_text(sum(known))})" if len(known) == len(sizes) else ""
    return DiskFullError(
        f"No space left on the disk of {model.cache_dir.resolve()}{needed}: free some space "
        "there, or set MODEL_CACHE_DIR to a folder on a larger disk."
    )


def _explain(err: Exception, model: HubModel) -> DownloadError:
    """The user's version of an error of huggingface_hub, the network or the disk."""
    what = f"{model.repo_id} (revision {model.revision})"
    if isinstance(err, GatedRepoError):
        if model.token is None:
            return GatedModelError(
                f"{model.repo_id} is gated: accept its licence on {model.page} while signed in, "
                "then set HF_TOKEN to an access token of that account."
            )
        return GatedModelError(
            f"The token in HF_TOKEN has no access to the gated model {model.repo_id}: accept its "
            f"licence on {model.page} with the token's account (gated models may also wait for "
            "approval), or use a token of an account that has access."
        )
    if isinstance(err, RevisionNotFoundError):
        return ModelNotFoundError(
            f"{model.repo_id} has no revision {model.revision!r}: set MODEL_REVISION to a branch, "
            f"tag or commit listed on {model.page}."
        )
    if isinstance(err, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"No model {model.repo_id} on {constants.ENDPOINT}: check MODEL_ID; for a private "
            "model, set HF_TOKEN to a token with access to it."
        )
    cause = err.__cause__ if isinstance(err, LocalEntryNotFoundError) else err
    if isinstance(cause, OfflineModeIsEnabled):
        return HubUnreachableError(
            f"Offline mode is on (HF_HUB_OFFLINE=1) and {what} is not complete in "
            f"{model.cache_dir}: unset HF_HUB_OFFLINE to download it."
        )
    if isinstance(cause, httpx2.TransportError):
        return HubUnreachableError(
            f"Could not download from the Hub at {constants.ENDPOINT} ({type(cause).__name__}: "
            f"{cause}) and {what} is not complete in {model.cache_dir}: check the network "
            "connection, and HF_ENDPOINT if you use a mirror."
        )
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code
        return DownloadError(
            f"The Hub answered HTTP {status} for {what}"
            f"{': ' + cause.server_message if cause.server_message else ''}. Try again later."
        )
    return DownloadError(f"Could not fetch {what} into {model.cache_dir}: {err}")
