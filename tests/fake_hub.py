"""A stand-in for the Hugging Face Hub, which cannot be reached here, for the downloader's tests.

It speaks the HTTP that huggingface_hub 2.4.0 speaks (``hf_api.py``'s ``model_info`` and
``list_repo_tree``, ``file_download.py``'s ``get_hf_file_metadata`` and ``http_get``,
``utils/_http.py``'s ``hf_raise_for_status``). Point ``HF_ENDPOINT`` at ``url``.

- ``GET /api/models/{org}/{name}`` and ``.../revision/{revision}`` (``model_info``;
  ``snapshot_download`` asks it for the commit): ``id``, ``sha``, ``gated``, ``private``,
  ``siblings`` as ``[{"rfilename"}]``; with ``?blobs=true`` each sibling also has ``size``,
  ``blobId`` and, for LFS files, ``lfs: {sha256, size, pointerSize}``.
- ``GET /api/models/{org}/{name}/tree/{revision}?recursive=true&expand=false``
  (``list_repo_tree``): ``[{"type": "file", "oid", "size", "path", "lfs"?}]``, one page, no
  ``Link`` header.
- ``HEAD`` and ``GET /{org}/{name}/resolve/{revision}/{filename}``: a file kept in git answers
  200 with ``ETag`` (its git blob sha1), ``X-Repo-Commit``, ``Content-Length`` and
  ``Accept-Ranges``; an LFS file (weights) answers 302 to the CDN with ``X-Linked-Etag`` (its
  sha256), ``X-Linked-Size``, ``X-Repo-Commit`` and the ``ETag`` of its LFS pointer, as the Hub
  does: huggingface_hub reads the metadata off the 302 and downloads from ``Location``.
- ``GET /cdn/{sha256}`` on a second origin, ``cdn_url`` (so huggingface_hub drops the
  ``Authorization`` header for it, as for the Hub's CDN): the bytes, ``ETag`` the sha256.
  ``Range: bytes=N-`` (on the CDN and on ``resolve``) answers 206 with ``Content-Range``.
- Errors as ``hf_raise_for_status`` reads them: ``X-Error-Code`` and ``X-Error-Message``
  headers and an ``{"error": message}`` body. An unknown repo answers 401 ``RepoNotFound``
  without a token and 404 with one; an unknown revision 404 ``RevisionNotFound``; an unknown
  file 404 ``EntryNotFound``; a gated repo's file 401 ``GatedRepo`` without a token and 403
  ``GatedRepo`` with a token that is not in ``tokens``. A gated repo's info and tree are public,
  as on the Hub.
- No Xet: no ``X-Xet-Hash`` header, no ``xet-auth`` link, no ``xetHash`` in the tree, so
  huggingface_hub downloads over plain HTTP even with ``hf_xet`` installed.

``requests`` records every request; while ``down`` is set, every request answers 503. A file
named in ``cut`` has its next transfer broken off half-way (once); one named in ``stall`` sends
half, sets ``stalled`` and sends no more.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.downloader.wheel import sha256_of
from tests.servers import ServerThread

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".h5", ".msgpack", ".ckpt")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes

    @property
    def is_lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @cached_property
    def sha256(self) -> str:
        return sha256_of(io.BytesIO(self.data))

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()

    @property
    def blob_id(self) -> str:
        """The git object of the file in the repo: the file itself, or its LFS pointer."""
        return git_blob_id(self.pointer if self.is_lfs else self.data)

    def lfs(self, sha_key: str) -> dict[str, Any]:
        return {sha_key: self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}


class FakeRepo:
    """A repo with one commit, which ``main`` points to."""

    def __init__(self, files: dict[str, bytes], *, gated: bool = False) -> None:
        self.files = {path: HubFile(path, data) for path, data in files.items()}
        self.gated = gated
        digest = hashlib.sha1()
        for path, data in sorted(files.items()):
            digest.update(path.encode() + b"\0" + data)
        self.sha = digest.hexdigest()


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo]
    tokens: set[str] = field(default_factory=set)
    url: str = ""
    cdn_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    stalled: threading.Event = field(default_factory=threading.Event)
    down: bool = False

    @contextmanager
    def serving(self) -> Iterator[FakeHub]:
        """Serve the Hub and its CDN, each on its own loopback port."""
        with ServerThread(self.app()) as hub, ServerThread(self.app()) as cdn:
            self.url, self.cdn_url = hub.url, cdn.url
            yield self

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/models/{org}/{name}", self.model_info),
            Route("/api/models/{org}/{name}/revision/{revision}", self.model_info),
            Route("/api/models/{org}/{name}/tree/{revision}", self.tree),
            Route("/{org}/{name}/resolve/{revision}/{path:path}", self.resolve,
                  methods=["GET", "HEAD"]),
            Route("/cdn/{sha256}", self.cdn, methods=["GET", "HEAD"]),
        ])

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def _record(self, request: Request) -> Response | None:
        """Record the request; while ``down``, answer it with 503 as the Hub does when down."""
        self.requests.append(Recorded(
            request.method, request.url.path, request.headers.get("range"),
            request.headers.get("authorization"),
        ))
        return Response("Service Unavailable", status_code=503) if self.down else None

    def _token(self, request: Request) -> str | None:
        value = request.headers.get("authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None

    def _find(self, request: Request, revision: str | None) -> FakeRepo | Response:
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        repo = self.repos.get(repo_id)
        if repo is None:
            status = 404 if self._token(request) else 401
            return _error(status, "RepoNotFound", "Repository not found")
        if revision not in (None, "main", repo.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    async def model_info(self, request: Request) -> Response:
        if (down := self._record(request)) is not None:
            return down
        repo = self._find(request, request.path_params.get("revision"))
        if isinstance(repo, Response):
            return repo
        blobs = request.query_params.get("blobs") == "true"
        siblings = []
        for path, hub_file in repo.files.items():
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling |= {"blobId": hub_file.blob_id, "size": len(hub_file.data)}
                if hub_file.is_lfs:
                    sibling["lfs"] = hub_file.lfs("sha256")
            siblings.append(sibling)
        org, name = request.path_params["org"], request.path_params["name"]
        return JSONResponse({
            "_id": repo.sha[:24], "id": f"{org}/{name}", "modelId": f"{org}/{name}",
            "author": org, "sha": repo.sha, "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z", "private": False, "disabled": False,
            "gated": "manual" if repo.gated else False, "downloads": 0, "likes": 0,
            "tags": ["safetensors"], "library_name": "transformers", "siblings": siblings,
        })

    async def tree(self, request: Request) -> Response:
        if (down := self._record(request)) is not None:
            return down
        repo = self._find(request, request.path_params["revision"])
        if isinstance(repo, Response):
            return repo
        entries = []
        for path, hub_file in repo.files.items():
            entry: dict[str, Any] = {
                "type": "file", "oid": hub_file.blob_id, "size": len(hub_file.data), "path": path,
            }
            if hub_file.is_lfs:
                entry["lfs"] = hub_file.lfs("oid")
            entries.append(entry)
        return JSONResponse(entries)

    async def resolve(self, request: Request) -> Response:
        if (down := self._record(request)) is not None:
            return down
        repo = self._find(request, request.path_params["revision"])
        if isinstance(repo, Response):
            return repo
        hub_file = repo.files.get(request.path_params["path"])
        if hub_file is None:
            return _error(404, "EntryNotFound", "Entry not found", commit=repo.sha)
        if repo.gated and (denied := self._gate(request, repo)) is not None:
            return denied
        headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if hub_file.is_lfs:
            return Response(
                b"Found. Redirecting", status_code=302, media_type="text/plain",
                headers=headers | {
                    "Location": f"{self.cdn_url}/cdn/{hub_file.sha256}",
                    "ETag": f'"{hub_file.blob_id}"',
                    "X-Linked-Etag": f'"{hub_file.sha256}"',
                    "X-Linked-Size": str(len(hub_file.data)),
                },
            )
        return await self._send(request, hub_file, headers | {"ETag": f'"{hub_file.blob_id}"'})

    def _gate(self, request: Request, repo: FakeRepo) -> Response | None:
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        token = self._token(request)
        if token is None:
            return _error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must "
                          "have access to it and be authenticated to access it. Please log in.")
        if token not in self.tokens:
            return _error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are "
                          f"not in the authorized list. Visit {self.url}/{repo_id} to ask for "
                          "access.")
        return None

    async def cdn(self, request: Request) -> Response:
        if (down := self._record(request)) is not None:
            return down
        for repo in self.repos.values():
            for hub_file in repo.files.values():
                if hub_file.sha256 == request.path_params["sha256"]:
                    return await self._send(request, hub_file, {"ETag": f'"{hub_file.sha256}"'})
        return Response("Not Found", status_code=404)

    async def _send(self, request: Request, hub_file: HubFile, headers: dict[str, str]) -> Response:
        """The file's bytes, from ``Range: bytes=N-`` on; a file in ``cut`` or ``stall`` is sent
        half-way only."""
        total = len(hub_file.data)
        start = int(request.headers.get("range", "bytes=0-").removeprefix("bytes=").split("-")[0])
        headers = headers | {"Accept-Ranges": "bytes", "Content-Length": str(total - start)}
        status = 200
        if start:
            status, headers["Content-Range"] = 206, f"bytes {start}-{total - 1}/{total}"
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers)
        body = hub_file.data[start:]
        if hub_file.path in self.cut | self.stall:
            mode = "cut" if hub_file.path in self.cut else "stall"
            self.cut.discard(hub_file.path)
            return StreamingResponse(
                self._half(body, mode), status_code=status, headers=headers,
            )
        return Response(body, status_code=status, headers=headers)

    async def _half(self, body: bytes, mode: str) -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        if mode == "cut":
            raise RuntimeError("the stand-in Hub cut this transfer off half-way")
        self.stalled.set()
        await asyncio.sleep(3600)


def _error(status: int, code: str, message: str, commit: str | None = None) -> Response:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if commit is not None:
        headers["X-Repo-Commit"] = commit
    return JSONResponse({"error": message}, status_code=status, headers=headers)
