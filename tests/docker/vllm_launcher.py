"""Stands in for vLLM's OpenAI-compatible server as its image starts it (vLLM 0.11.0:
``python3 -m vllm.entrypoints.openai.api_server``, docker/Dockerfile's ENTRYPOINT; the image
holds this file at that module's path): it takes the arguments containers/compose.yaml gives
vLLM, refuses to start unless the model is in the Hugging Face cache (the model loader asks
huggingface_hub with ``local_files_only`` under ``HF_HUB_OFFLINE=1``), then serves
tests/fake_backend.py's vLLM ("openai" kind) on ``--host``:``--port``.

From vLLM 0.11.0's source:

==================================================  ===========================================
behaviour                                           vLLM source
==================================================  ===========================================
``--host`` (none: every address), ``--port`` 8000,  ``vllm/entrypoints/openai/cli_args.py``
``--api-key``, an optional positional model that    (``make_arg_parser``); ``api_server.py``
this entry point ignores (the server then loads     ``__main__`` (``sock_addr = (args.host or
the default model, ``Qwen/Qwen3-0.6B``)             "", args.port)``); ``config/model.py``
``--model``, ``--revision``, ``--max-model-len``,   ``vllm/engine/arg_utils.py``
``--served-model-name``, ``--gpu-memory-           (``EngineArgs.add_cli_args``);
utilization`` (0.9), ``--dtype``, ``--download-     ``config/cache.py``
dir``
the model from the cache only when offline, the    ``model_executor/model_loader/
cache being ``--download-dir`` or                   weight_utils.py``
huggingface_hub's (``HF_HUB_CACHE``, else           (``download_weights_from_hf``);
``HF_HOME``/hub)                                    ``transformers_utils/config.py``
==================================================  ===========================================
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from tests.docker.hub_cache import snapshot
from tests.fake_backend import FakeBackend

DEFAULT_MODEL = "Qwen/Qwen3-0.6B"


def hub_cache(download_dir: str | None) -> Path:
    """Where huggingface_hub looks, as vLLM hands it ``cache_dir=download_dir``."""
    if download_dir:
        return Path(download_dir)
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path.home() / ".cache/huggingface"
    return Path(home) / "hub"


def main() -> int:
    parser = argparse.ArgumentParser(prog="vllm.entrypoints.openai.api_server")
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--download-dir")
    parser.add_argument("--api-key", nargs="+")
    args = parser.parse_args()
    cache = hub_cache(args.download_dir)
    if snapshot(cache, args.model, args.revision) is None:
        # The stand-in has no Hub to fall back on: offline or not, the model must be cached.
        print(f"OSError: {args.model} at revision {args.revision} is not in {cache}",
              file=sys.stderr)
        return 1
    name = (args.served_model_name or [args.model])[0]
    backend = FakeBackend(
        kind="openai", model_id=name, max_total_tokens=args.max_model_len,
        max_input_tokens=args.max_model_len - 1, token_delay=0.02,
        tokens=["Here", " is", " a", " reverse", ":", "\n\n```python\n",
                "def reverse(s):\n", "    return s[::-1]\n", "```"],
    )
    print(f"Starting vLLM API server on http://{args.host or '0.0.0.0'}:{args.port}", flush=True)
    uvicorn.run(backend.app(), host=args.host or "0.0.0.0", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
