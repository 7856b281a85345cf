"""What every benchmark's command line and results file share: ``--quick``, ``--app-path``,
``--output``, and a report that names the machine and the code measured."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.machine import REPO, code_version, describe

RESULTS = Path(__file__).resolve().parent / "results"


def parser(
    module: str, doc: str | None, quick: str, files: str, app_path: bool = True
) -> argparse.ArgumentParser:
    """``python -m bench.<module>``'s parser with the shared options; ``files`` names what a
    run writes."""
    made = argparse.ArgumentParser(
        prog=f"python -m bench.{module}", description=doc.split("\n\n")[0] if doc else None
    )
    made.add_argument("--quick", action="store_true", help=quick)
    if app_path:
        made.add_argument("--app-path", type=Path, default=REPO,
                          help="run the app from this checkout (default: this one)")
    made.add_argument("--output", type=Path, default=None,
                      help=f"folder for {files} (default: {RESULTS} for a full run, nothing "
                           "for --quick)")
    return made


def output_folder(args: argparse.Namespace) -> Path | None:
    folder: Path | None = args.output or (None if args.quick else RESULTS)
    return folder


def report(
    benchmark: str, args: argparse.Namespace, started: datetime, **fields: Any
) -> dict[str, Any]:
    """The results file's header (benchmark, mode, date, machine, app), then ``fields``."""
    header: dict[str, Any] = {
        "benchmark": benchmark,
        "mode": "quick" if args.quick else "full",
        "date": started.isoformat(timespec="seconds"),
        "machine": describe(),
    }
    if getattr(args, "app_path", None) is not None:
        header["app"] = code_version(args.app_path.resolve())
    return header | fields


def write_json(folder: Path, name: str, content: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
