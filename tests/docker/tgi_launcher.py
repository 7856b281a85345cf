"""Stands in for TGI's launcher (``text-generation-launcher``) in the docker tier: it takes the
arguments containers/compose.yaml and the Docker Space's start give TGI, refuses to start unless
the model is in the Hugging Face hub cache (``--huggingface-hub-cache``, ``/data`` by default;
TGI runs there with ``HF_HUB_OFFLINE=1``), "loads" for a moment (``/health`` does not answer
yet), then serves tests/fake_backend.py's TGI on ``--hostname``:``--port``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import uvicorn

from tests.docker.hub_cache import snapshot
from tests.fake_backend import FakeBackend

LOADING_SECONDS = float(os.environ.get("TGI_STANDIN_LOADING_SECONDS", "2"))


def main() -> int:
    parser = argparse.ArgumentParser(prog="text-generation-launcher")
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--revision", default="main")
    parser.add_argument("--max-input-tokens", type=int, default=4095)
    parser.add_argument("--max-total-tokens", type=int, default=4096)
    # As TGI's (launcher/src/main.rs): from the environment when not given; its images
    # set PORT=80 (Dockerfile_intel, Dockerfile).
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "80")))
    parser.add_argument("--hostname", default=os.environ.get("HOSTNAME", "0.0.0.0"))
    parser.add_argument("--quantize")
    # As TGI's (launcher/src/main.rs, ``#[clap(long, env)] huggingface_hub_cache``, handed to
    # its download and shard processes as HUGGINGFACE_HUB_CACHE); its Intel CPU image, which
    # compose's cpu profile runs with the cache at /data, sets HUGGINGFACE_HUB_CACHE=/data
    # (Dockerfile_intel). The CUDA image sets HF_HOME=/data instead (Dockerfile), whose hub
    # cache is /data/hub: the stand-in, one image under both tags, follows the Intel one.
    parser.add_argument("--huggingface-hub-cache", type=Path,
                        default=Path(os.environ.get("HUGGINGFACE_HUB_CACHE", "/data")))
    args = parser.parse_args()
    found = snapshot(args.huggingface_hub_cache, args.model_id, args.revision)
    if found is None:
        print(f"Error: {args.model_id} at revision {args.revision} is not in "
              f"{args.huggingface_hub_cache} and "
              "HF_HUB_OFFLINE=1 forbids downloading it", file=sys.stderr)
        return 1
    print(f"Loading {args.model_id} from {found}", flush=True)
    time.sleep(LOADING_SECONDS)
    backend = FakeBackend(
        model_id=args.model_id, max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens, token_delay=0.02,
        tokens=["Here", " is", " a", " reverse", ":", "\n\n```python\n",
                "def reverse(s):\n", "    return s[::-1]\n", "```"],
    )
    print(f"Connected; serving on {args.hostname}:{args.port}", flush=True)
    uvicorn.run(backend.app(), host=args.hostname, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
