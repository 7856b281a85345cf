"""Logging for the app: one line per record, as text or JSON, each with the request id,
and with every secret scrubbed from the finished line (tracebacks included).

Secrets are the values of the secret settings (tokens, passwords, DATABASE_URL) plus what
looks like one wherever it comes from: ``Bearer ...`` credentials, Hugging Face tokens
(``hf_...``) and the password in a ``scheme://user:password@host`` URL.
"""

from __future__ import annotations

import json
import logging
import re
import secrets as random_ids
import sys
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: ContextVar[str] = ContextVar("request_id", default="-")
# The request's client address, as uvicorn gives it (a trusted proxy's X-Forwarded-For read),
# for what has no request to read it from: Gradio's login check (``app.logins``).
client_address: ContextVar[str] = ContextVar("client_address", default="unknown")

HIDDEN = "***"
PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\bhf_[A-Za-z0-9]{8,}"),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^@\s/]+(?=@)"),
    re.compile(r"(?i)((?:authorization|api[_-]?key|password|token)[\"']?\s*[:=]\s*[\"']?)"
               r"(?!(?:bearer\s+)?\*\*\*)[^\s\"',}]+"),
)
REQUEST_ID_HEADER = "x-request-id"
GOOD_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret value and anything shaped like a credential hidden."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, HIDDEN)
    for pattern in PATTERNS:
        text = pattern.sub(
            lambda m: (m.group(1) if m.groups() else "") + HIDDEN, text
        )
    return text


def new_request_id() -> str:
    return random_ids.token_hex(8)


class ScrubbingFormatter(logging.Formatter):
    def __init__(self, secrets: Sequence[str], as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        self.secrets = list(secrets)
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = request_id.get()
        if self.as_json:
            entry = {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                "level": record.levelname,
                "logger": record.name,
                "request_id": request_id.get(),
                "message": record.getMessage(),
            }
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
            line = json.dumps(entry, ensure_ascii=False)
        else:
            line = super().format(record)
        return scrub(line, self.secrets)


def configure_logging(secrets: Sequence[str], level: str, as_json: bool) -> None:
    """Send every logger's records (uvicorn's and Gradio's too) through one scrubbing
    handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter(secrets, as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class RequestIdMiddleware:
    """Give each HTTP request an id (the client's ``X-Request-ID`` when it is a sane one),
    set it for the logs of that request and return it in the response's header; and set
    ``client_address`` for the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = given if GOOD_REQUEST_ID.match(given) else new_request_id()
        token = request_id.set(rid)
        client = scope.get("client")
        address = client_address.set(client[0] if client else "unknown")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
            client_address.reset(address)
