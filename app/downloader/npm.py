"""Browser libraries the app serves itself, each one file taken out of a pinned npm package.

The package's tarball is fetched from the npm registry (https://registry.npmjs.org, or the
mirror npm itself is pointed at by ``NPM_CONFIG_REGISTRY``) and checked against the
``dist.integrity`` the registry published for that version (sha512, pinned here). The one file
the app serves is checked against its own sha256, written under a temporary name and renamed,
so an interrupted run leaves nothing half-written. No CDN is involved, at install time or in
the browser. The files land in ``VENDOR`` inside the package (git-ignored), where the app
reads them, whether it runs from the repository or from an installed copy (the image).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.downloader.errors import DownloadError
from app.downloader.wheel import sha256_of

VENDOR = Path(__file__).resolve().parent.parent / "static" / "vendor"
DEFAULT_REGISTRY = "https://registry.npmjs.org"
# Connecting is quick or broken; the tarball may take a while on a slow line.
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class NpmFile:
    package: str
    version: str
    integrity: str  # the registry's dist.integrity of the tarball: "sha512-<base64>"
    member: str  # the file's path inside the tarball
    sha256: str  # of that file

    @property
    def filename(self) -> str:
        """Its name in ``VENDOR``: the version in it, so that a new pin is a new URL."""
        stem, _, suffixes = Path(self.member).name.partition(".")
        return f"{stem}-{self.version}.{suffixes}"

    @property
    def path(self) -> Path:
        return VENDOR / self.filename

    def tarball_url(self, registry: str) -> str:
        return f"{registry.rstrip('/')}/{self.package}/-/{self.package}-{self.version}.tgz"

    def present(self) -> bool:
        """Whether a good copy is in ``VENDOR``."""
        if not self.path.is_file():
            return False
        with self.path.open("rb") as existing:
            return sha256_of(existing) == self.sha256


# The Mermaid previews render with this (app/preview.py): `npm view mermaid@12.3.0 dist`.
MERMAID = NpmFile(
    package="mermaid",
    version="12.3.0",
    integrity="sha512-4113TdXeLAsMruJ79OpFL5O8+LTFXhQqZ260rF3tgUmiNAtRm4Uume04I+65PRN6yZ69J4f8rVYWW8zRk65UYw==",
    member="package/dist/mermaid.min.js",
    sha256="336df803d87a38b70a01e736e666c8f7601d2ce42f5e47c8fafe5d721074b9a3",
)


def fetch_npm_file(pinned: NpmFile, registry: str = DEFAULT_REGISTRY) -> bool:
    """Put ``pinned`` in ``VENDOR``; returns False when a good copy was already there."""
    if pinned.present():
        return False
    pinned.path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="npm-") as tmp:
        tarball = Path(tmp) / "package.tgz"
        _download(pinned.tarball_url(registry), tarball, pinned)
        partial = pinned.path.with_name(pinned.filename + ".partial")
        try:
            with tarfile.open(tarball, "r:gz") as archive:
                member = archive.extractfile(pinned.member)
                if member is None:
                    raise KeyError(pinned.member)
                with member, partial.open("wb") as dst:
                    for block in iter(lambda: member.read(1 << 20), b""):
                        dst.write(block)
            with partial.open("rb") as written:
                if sha256_of(written) != pinned.sha256:
                    raise DownloadError(f"{pinned.member} inside the tarball has the wrong sha256.")
            os.replace(partial, pinned.path)
        except (KeyError, tarfile.TarError) as err:
            raise DownloadError(
                f"{pinned.package}-{pinned.version}.tgz does not hold {pinned.member}."
            ) from err
        except OSError as err:
            raise DownloadError(f"Could not write {pinned.path}: {err.strerror}.") from err
        finally:
            partial.unlink(missing_ok=True)
    return True


def _download(url: str, into: Path, pinned: NpmFile) -> None:
    print(f"Downloading {pinned.package}@{pinned.version} from {url} ...", flush=True)
    digest = hashlib.sha512()
    try:
        with httpx.stream("GET", url, timeout=TIMEOUT, follow_redirects=True) as response:
            if response.status_code != 200:
                raise DownloadError(
                    f"the registry answered {response.status_code} for {url}; check "
                    "NPM_CONFIG_REGISTRY (a mirror must serve the tarball at that path)."
                )
            with into.open("wb") as out:
                for block in response.iter_bytes(1 << 20):
                    digest.update(block)
                    out.write(block)
    except httpx.HTTPError as err:
        raise DownloadError(
            f"could not download {url} ({type(err).__name__}: {err}); check the network "
            "connection to the npm registry, or NPM_CONFIG_REGISTRY."
        ) from err
    got = "sha512-" + base64.b64encode(digest.digest()).decode()
    if got != pinned.integrity:
        raise DownloadError(
            f"{pinned.package}-{pinned.version}.tgz does not match the integrity the npm "
            "registry published for it; refusing to use it. Check your registry or proxy."
        )
