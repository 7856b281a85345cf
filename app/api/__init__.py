"""The REST API under ``/api/v1``, described by the app's OpenAPI schema (``/api/docs``).

    models.py    request and response bodies
    errors.py    ``ApiError`` and the ``{"error", "detail"}`` shape of every failure
    routes.py    the endpoints and who may call them (``AUTH_MODE``)
    dialogue.py  one turn on the page's own path (``Conversations``, ``ChatService``), streamed
                 as server-sent events or answered whole
    sharing.py   links to read-only snapshots of conversations (``app.store.shares``)
    checks.py    a reply's code blocks run and the reply checked and repaired
                 (``app.chat.checks``)
    compare.py   one message to two models side by side, the vote between the replies, and
                 the board of votes (``app.store.comparisons``)
"""

from fastapi import FastAPI

from app.api.errors import ApiError, install_error_handlers
from app.api.routes import PREFIX, RestApi
from app.chat import ChatService
from app.chat.checks import Checks
from app.chat.guard import Guard
from app.logins import LoginThrottle
from app.settings import Settings
from app.store import Accounts, Store

__all__ = ["PREFIX", "ApiError", "RestApi", "install_api"]


def install_api(
    app: FastAPI, settings: Settings, service: ChatService, store: Store, guard: Guard,
    accounts: Accounts | None = None, checks: Checks | None = None,
    logins: LoginThrottle | None = None,
) -> RestApi:
    """Add the API's routes and error answers to ``app`` (before the page is mounted at /);
    ``checks``: the runs and checks the page shares (by default, the API's own); ``logins``:
    the failed logins the page's login form counts too (by default, the API's own)."""
    api = RestApi(settings, service, store, guard, accounts, checks, logins)
    install_error_handlers(app)
    app.include_router(api.router())
    return api
