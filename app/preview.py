"""Live previews of HTML, SVG and Mermaid code: ``GET /preview/{id}``.

The page hands the server the code to preview (``Previews.add``, for the signed-in user) and
shows ``/preview/{id}`` in an ``<iframe sandbox="allow-scripts">``. The id is 256 random bits
and is the only key: the frame needs no cookie, and a link opened in a new tab works the same.

Every answer is sandboxed by its own Content-Security-Policy (``sandbox allow-scripts``), in
the frame and opened alone in a tab alike: the document gets an opaque origin, so its scripts
run but cannot read the app's cookies, storage or DOM, nor call the app's API with the user's
session. The policy also forbids every network access (``connect-src 'none'``; scripts,
styles, images and fonts only inline or ``data:``), forms, and being framed by another site.
What it cannot forbid: the previewed page navigating its own frame elsewhere.

- HTML is served as it is (its CSS and scripts inline).
- SVG is wrapped in an HTML document (never served as ``image/svg+xml``).
- Mermaid is a document that loads the pinned library the app serves itself (fetched from the
  npm registry at install time, ``python -m app.downloader mermaid``) and renders the diagram;
  only that script and the document's own one, both carrying the answer's nonce, may run.
  Without the library, it says how to install it.

Previews live in this process's memory: they are cheap to make again from the code, never
needed after a restart, and a page's requests reach the replica that made its previews
(containers/nginx.conf routes a browser to one replica). Each user keeps the latest
``PREVIEWS_PER_USER``; all of them together at most ``PREVIEWS_TOTAL_BYTES``, oldest out
first. An unknown or evicted id answers 404 with a sentence saying to press Preview again.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass
from html import escape
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from app.downloader.npm import MERMAID
from app.sizes import size_text

PATH = "/preview"
PREVIEWS_PER_USER = 20
PREVIEWS_TOTAL_BYTES = 64 * 1024 * 1024

Kind = Literal["html", "svg", "mermaid"]

_SVG_START = re.compile(r"\s*(?:<\?xml[^>]*>\s*)?<svg\b")
KIND_OF_LANGUAGE: dict[str, Kind] = {
    "html": "html", "htm": "html", "svg": "svg", "mermaid": "mermaid", "mmd": "mermaid",
}

NOT_FOUND = ("This preview is gone: previews are kept for a while in the server's memory "
             f"(the latest {PREVIEWS_PER_USER} of each user). Press Preview again.")
NO_MERMAID = ("Mermaid previews need the Mermaid library, which is not installed on this "
              "server. Its operator installs it with: python -m app.downloader mermaid "
              "(scripts/run and scripts/test do it; the image has it).")

_BASE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:; "
    "media-src data: blob:; connect-src 'none'; form-action 'none'; base-uri 'none'; "
    "frame-ancestors 'self'; sandbox allow-scripts"
)
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "Cache-Control": "no-store",
}


def preview_kind(language: str, code: str) -> Kind | None:
    """What a block of ``language`` can be previewed as: ``xml`` (or untagged text) that is
    an SVG image counts as SVG; None when it cannot be previewed."""
    kind = KIND_OF_LANGUAGE.get(language.strip().lower())
    if kind is None and language.strip().lower() in ("xml", "text", "") and _SVG_START.match(code):
        kind = "svg"
    return kind


class PreviewTooLarge(ValueError):
    """The code is longer than PREVIEW_MAX_BYTES; the message says so."""


@dataclass(frozen=True)
class Preview:
    id: str
    owner: int
    kind: Kind
    code: str

    @property
    def size(self) -> int:
        return len(self.code.encode())


class Previews:
    """The previews of this process, by id (see the module docstring for the bounds)."""

    def __init__(self, max_bytes: int, per_user: int = PREVIEWS_PER_USER,
                 total_bytes: int = PREVIEWS_TOTAL_BYTES) -> None:
        self.max_bytes = max_bytes
        self.per_user = per_user
        self.total_bytes = total_bytes
        self._by_id: OrderedDict[str, Preview] = OrderedDict()  # oldest first
        self._of_user: dict[int, deque[str]] = {}
        self._bytes = 0

    def add(self, owner: int, kind: Kind, code: str) -> Preview:
        """Keep ``code`` for user ``owner``; the oldest previews go past the bounds."""
        preview = Preview(secrets.token_urlsafe(32), owner, kind, code)
        if preview.size > self.max_bytes:
            raise PreviewTooLarge(
                f"This code is {size_text(preview.size)}; a preview takes at most "
                f"{size_text(self.max_bytes)} (PREVIEW_MAX_BYTES)."
            )
        self._by_id[preview.id] = preview
        self._bytes += preview.size
        mine = self._of_user.setdefault(owner, deque())
        mine.append(preview.id)
        while len(mine) > self.per_user:
            self._drop(mine[0])
        while self._bytes > self.total_bytes:
            self._drop(next(iter(self._by_id)))
        return preview

    def get(self, preview_id: str) -> Preview | None:
        return self._by_id.get(preview_id)

    def _drop(self, preview_id: str) -> None:
        preview = self._by_id.pop(preview_id)
        self._bytes -= preview.size
        mine = self._of_user[preview.owner]
        mine.remove(preview_id)
        if not mine:
            del self._of_user[preview.owner]


def policy(script_src: str) -> str:
    return f"{_BASE_POLICY}; script-src {script_src}"


def _page(title: str, body: str, head: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        "<style>body { margin: 0; padding: 8px; font: 14px/1.5 system-ui, sans-serif; }"
        "</style>"
        f"{head}</head>\n<body>\n{body}\n</body></html>\n"
    )


def _message(title: str, sentence: str, status: int) -> HTMLResponse:
    body = f"<p>{escape(sentence)}</p>"
    return HTMLResponse(_page(title, body), status_code=status,
                        headers={**_HEADERS, "Content-Security-Policy": policy("'none'")})


def _mermaid(preview: Preview) -> HTMLResponse:
    if not MERMAID.path.is_file():
        return _message("Mermaid is not installed", NO_MERMAID, 503)
    nonce = secrets.token_urlsafe(18)
    body = (
        f'<pre class="mermaid">{escape(preview.code)}</pre>\n'
        f'<script nonce="{nonce}" src="{MERMAID.filename}"></script>\n'
        f'<script nonce="{nonce}">mermaid.initialize({{startOnLoad: false, '
        'securityLevel: "strict"}); mermaid.run();</script>'
    )
    return HTMLResponse(_page("Mermaid preview", body), headers={
        **_HEADERS, "Content-Security-Policy": policy(f"'nonce-{nonce}'"),
    })


def answer(preview: Preview) -> HTMLResponse:
    """The document that shows ``preview``, with its policy."""
    if preview.kind == "mermaid":
        return _mermaid(preview)
    document = preview.code if preview.kind == "html" else _page("SVG preview", preview.code)
    return HTMLResponse(document, headers={
        **_HEADERS, "Content-Security-Policy": policy("'unsafe-inline'"),
    })


def install_preview(app: FastAPI, previews: Previews) -> None:
    """Add the preview documents and the Mermaid library to ``app`` (before the page is
    mounted at /, which would otherwise ask for a sign-in)."""

    @app.get(f"{PATH}/{MERMAID.filename}", include_in_schema=False)
    async def mermaid_library() -> Response:
        if not MERMAID.path.is_file():
            return PlainTextResponse(NO_MERMAID, status_code=404, headers=_HEADERS)
        return FileResponse(MERMAID.path, media_type="text/javascript", headers={
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "public, max-age=31536000, immutable",
        })

    @app.get(f"{PATH}/{{preview_id}}", include_in_schema=False)
    async def preview_page(preview_id: str) -> HTMLResponse:
        preview = previews.get(preview_id)
        if preview is None:
            return _message("Preview gone", NOT_FOUND, 404)
        return answer(preview)
