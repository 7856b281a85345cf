"""The machine a benchmark ran on, and the code it measured, for its results file."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def describe() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_bytes() / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "temp_dir": tempfile.gettempdir(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # when the report is written
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def code_version(path: Path = REPO, folder: str = "app") -> dict[str, Any]:
    """The commit of the checkout at ``path`` and whether ``folder`` differs from it."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(path), *args], capture_output=True,
                                  text=True, timeout=30, check=False)
        except OSError:
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", folder)
    return {"path": str(path), "commit": commit or None,
            "uncommitted_changes": bool(changed) if commit else None}
