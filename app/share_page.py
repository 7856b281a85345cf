"""The page of a shared conversation, ``GET /share/{token}``: the snapshot, read-only, for
anyone holding the link, with no sign-in (app.store.shares says what a snapshot holds).

It is plain HTML written here, outside Gradio: the title and the exchanges rendered from
Markdown (``app.markdown.to_html``: raw HTML shows as text, code is highlighted on the
server), with no controls and no script. Its one stylesheet is served beside it. Every answer
forbids scripts and inline styles (Content-Security-Policy), indexing, referrers and caching,
so that a revoked snapshot is not kept anywhere. An unknown or revoked token, or sharing off
(ALLOW_SHARING=false), answers 404 with a plain sentence.
"""

from __future__ import annotations

import asyncio
import functools
from html import escape
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from app.chat.models import FINISH_TEXT
from app.markdown import highlight_css, to_html
from app.settings import Settings
from app.store import Store
from app.store.shares import SharedConversation, SharedExchange, Shares

PATH = "/share"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Robots-Tag": "noindex",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
NOT_FOUND = "This shared conversation does not exist, or its owner has revoked it."
SHARING_OFF = "Sharing conversations is off on this server."

PAGE_CSS = """
body { margin: 0; font: 16px/1.5 system-ui, sans-serif; color: #1f2328; background: #f6f8fa; }
main { max-width: 52rem; margin: 0 auto; padding: 1.5rem 1rem 3rem; }
h1 { font-size: 1.5rem; margin: 0 0 0.25rem; overflow-wrap: anywhere; }
.meta, footer { color: #59636e; font-size: 0.9rem; }
.message { background: #fff; border: 1px solid #d1d9e0; border-radius: 8px;
           padding: 0.25rem 1rem; margin: 1rem 0; overflow-wrap: anywhere; }
.user { border-left: 4px solid #0969da; }
.reply { border-left: 4px solid #1a7f37; }
.who { font-size: 0.8rem; font-weight: 600; color: #59636e; margin: 0.5rem 0 0; }
pre { background: #f6f8fa; padding: 0.75rem; border-radius: 6px; overflow-x: auto; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9em; }
table { border-collapse: collapse; } th, td { border: 1px solid #d1d9e0; padding: 0.25rem 0.5rem; }
"""


def share_url(root: str, token: str) -> str:
    """The link of the share with ``token`` on the app whose public root URL is ``root``."""
    return f"{root.rstrip('/')}{PATH}/{token}"


def token_from(link: str) -> str:
    """The token in a share's link (any host, a query or fragment ignored), or the token
    itself given alone."""
    path = urlsplit(link.strip()).path.rstrip("/")
    return path.rsplit("/", 1)[-1]


@functools.cache
def stylesheet() -> str:
    return PAGE_CSS + highlight_css()


def _message(kind: str, who: str, text: str) -> str:
    return (f'<section class="message {kind}"><p class="who">{escape(who)}</p>'
            f"{to_html(text)}</section>")


def _exchange(exchange: SharedExchange) -> str:
    parts = [_message("user", "Message", exchange.user)]
    if exchange.reply is not None:
        who = "Reply" + (f" from {exchange.model}" if exchange.model else "")
        if exchange.status in FINISH_TEXT and exchange.status != "stop":
            who += f" ({FINISH_TEXT[exchange.status]})"
        parts.append(_message("reply", who, exchange.reply))
    return "\n".join(parts)


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(title)} · Coding Playground</title>"
        '<link rel="stylesheet" href="style.css"></head>\n'
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def page_html(shared: SharedConversation) -> str:
    """The whole page of a shared conversation."""
    day = shared.created_at.strftime("%Y-%m-%d")
    body = "\n".join([
        f"<header><h1>{escape(shared.title)}</h1>",
        f'<p class="meta">A read-only copy of a conversation, shared on {day}.</p></header>',
        *(_exchange(exchange) for exchange in shared.exchanges),
        "<footer><p>To continue this conversation, sign in to the playground and paste this "
        "page's link into <em>Import a shared link</em> (under <em>Export and import</em> in "
        "the sidebar).</p></footer>",
    ])
    return _document(shared.title, body)


def install_share_page(app: FastAPI, settings: Settings, store: Store) -> None:
    """Add the share page and its stylesheet to ``app`` (before the page is mounted at /)."""
    shares = Shares(store)

    @app.get(f"{PATH}/style.css", include_in_schema=False)
    async def share_style() -> Response:
        return Response(stylesheet(), media_type="text/css", headers=HEADERS)

    @app.get(f"{PATH}/{{token}}", include_in_schema=False)
    async def share_page(token: str) -> HTMLResponse:
        if not settings.allow_sharing:
            return _not_found(SHARING_OFF)
        shared = await asyncio.to_thread(shares.read, token)
        if shared is None:
            return _not_found(NOT_FOUND)
        return HTMLResponse(page_html(shared), headers=HEADERS)


def _not_found(sentence: str) -> HTMLResponse:
    body = f"<h1>Not found</h1>\n<p>{escape(sentence)}</p>"
    return HTMLResponse(_document("Not found", body), status_code=404, headers=HEADERS)
