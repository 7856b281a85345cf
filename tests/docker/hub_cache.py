"""A model's snapshot in a Hugging Face cache, found offline as huggingface_hub finds it:
``models--org--name/refs/<revision>`` names the commit (a revision that is a commit names
itself), ``snapshots/<commit>/`` holds the files. Shared by the docker tier's stand-ins of the
inference servers, which refuse to start without their model in the cache, as the real ones
do with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

from pathlib import Path


def snapshot(cache: Path, model_id: str, revision: str) -> Path | None:
    """The snapshot's folder when it holds a config and safetensors weights, else None."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    folder = repo / "snapshots" / commit
    has_weights = any(folder.glob("*.safetensors"))
    return folder if (folder / "config.json").is_file() and has_weights else None
