"""A library out of its npm package (app/downloader/npm.py), against a fake registry on a
loopback port that serves tarballs at the npm registry's paths
(``/{name}/-/{name}-{version}.tgz``)."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI, Response

from app.downloader import __main__ as cli
from app.downloader.errors import DownloadError
from app.downloader.npm import NpmFile, fetch_npm_file
from tests.servers import ServerThread, free_port

LIBRARY = b"window.lib = 1;\n"


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pin(tgz: bytes, member: bytes = LIBRARY) -> NpmFile:
    return NpmFile(
        package="lib", version="1.2.3",
        integrity="sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode(),
        member="package/dist/lib.min.js", sha256=hashlib.sha256(member).hexdigest(),
    )


class Registry:
    def __init__(self) -> None:
        self.tarballs: dict[str, bytes] = {}
        self.asked: list[str] = []

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/{name}/-/{filename}")
        async def tgz(name: str, filename: str) -> Response:
            self.asked.append(filename)
            if filename not in self.tarballs:
                return Response(status_code=404)
            return Response(self.tarballs[filename], media_type="application/octet-stream")

        return app


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Registry, str]]:
    monkeypatch.setattr("app.downloader.npm.VENDOR", tmp_path / "vendor")
    fake = Registry()
    with ServerThread(fake.app()) as server:
        yield fake, server.url


def test_the_file_is_taken_out_of_the_checked_tarball_once(
    registry: tuple[Registry, str],
) -> None:
    fake, url = registry
    tgz = tarball({"package/package.json": b"{}", "package/dist/lib.min.js": LIBRARY})
    fake.tarballs["lib-1.2.3.tgz"] = tgz
    pinned = pin(tgz)
    assert fetch_npm_file(pinned, url) is True
    assert pinned.path.name == "lib-1.2.3.min.js", "the version in the name: a new URL"
    assert pinned.path.read_bytes() == LIBRARY
    assert fetch_npm_file(pinned, url) is False, "a good copy in place"
    assert fake.asked == ["lib-1.2.3.tgz"]


def test_a_tarball_that_differs_from_the_pinned_integrity_is_refused(
    registry: tuple[Registry, str],
) -> None:
    fake, url = registry
    pinned = pin(tarball({"package/dist/lib.min.js": LIBRARY}))
    fake.tarballs["lib-1.2.3.tgz"] = tarball({"package/dist/lib.min.js": b"evil();"})
    with pytest.raises(DownloadError, match="does not match the integrity the npm registry"):
        fetch_npm_file(pinned, url)
    assert not pinned.path.exists()


def test_a_changed_file_in_place_is_fetched_again(registry: tuple[Registry, str]) -> None:
    fake, url = registry
    tgz = tarball({"package/dist/lib.min.js": LIBRARY})
    fake.tarballs["lib-1.2.3.tgz"] = tgz
    pinned = pin(tgz)
    pinned.path.parent.mkdir(parents=True)
    pinned.path.write_bytes(b"edited")
    assert fetch_npm_file(pinned, url) is True
    assert pinned.path.read_bytes() == LIBRARY


def test_a_registry_without_the_package_names_the_setting(
    registry: tuple[Registry, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = registry
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", url)
    assert cli.main(["mermaid"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: the registry answered 404 for ")
    assert "NPM_CONFIG_REGISTRY" in error


def test_an_unreachable_registry_says_why_it_failed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """The transport's own reason is in the message (a refused connection here; behind a proxy
    that re-signs TLS, the certificate error), as the Hub's download says it."""
    monkeypatch.setattr("app.downloader.npm.VENDOR", tmp_path / "vendor")
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["mermaid"]) == 1
    error = capsys.readouterr().err
    assert "(ConnectError: " in error
    assert "refused" in error.lower()
    assert "NPM_CONFIG_REGISTRY" in error
