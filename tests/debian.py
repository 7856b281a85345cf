"""Debian packages the test tiers need but this machine's Debian does not have: fetched once
with apt's own client from a source list of their own (the machine's apt sources and state
stay as they are), unpacked with ``dpkg -x`` into the cache folder and kept there.

Used for Debian trixie's ``docker-buildx`` (tests/docker_engine.py) and ``kubectl``
(tests/test_kubernetes.py): static Go binaries needing only libc6 >= 2.34, which bookworm has.
A package may be picked by its exact version: apt's candidate can be another package of the
same name (this machine's installed ``kubectl`` is the Google Cloud SDK's, not Debian's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coding-playground"
TRIXIE = "deb http://deb.debian.org/debian trixie main"


def unpacked(name: str, version: str | None = None, source: str = TRIXIE) -> Path:
    """The folder holding package ``name`` unpacked (its ``usr/...``), at ``version`` or, with
    none, at the version the source offers; fetched the first time."""
    kept = [folder for folder in sorted(CACHE.glob(f"{name}-{version or '*'}"))
            if not folder.name.endswith(".partial")]
    if kept:
        return kept[-1]
    work = Path(tempfile.mkdtemp(prefix=f"pg-{name}-"))
    try:
        (work / "sources.list").write_text(source + "\n")
        for part in ("lists/partial", "archives/partial"):
            (work / part).mkdir(parents=True)
        apt = ["apt-get", "-o", f"Dir::Etc::sourcelist={work}/sources.list",
               "-o", "Dir::Etc::sourceparts=/nonexistent", "-o", f"Dir::State::Lists={work}/lists",
               "-o", f"Dir::Cache::archives={work}/archives", "-o", "Debug::NoLocking=1"]
        wanted = f"{name}={version}" if version else name
        for step in (["update"], ["download", wanted]):
            subprocess.run([*apt, *step], cwd=work, check=True, capture_output=True,
                           timeout=600)
        [package] = work.glob(f"{name}_*.deb")
        folder = CACHE / f"{name}-{package.name.split('_')[1].replace('%3a', ':')}"
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg", "-x", str(package), str(partial)], check=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return unpacked(name, version, source)
