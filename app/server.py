"""The ASGI app: FastAPI with the Gradio page mounted at ``/``, a health route, the
Prometheus metrics, the pages of shared conversations and the previews of code; while it runs,
the backends are probed and replies left streaming by a stopped process are marked
interrupted, in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from functools import partial

import gradio as gr
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.exc import OperationalError

from app.api import install_api
from app.chat import ChatService
from app.chat.checks import Checks
from app.chat.guard import Guard
from app.chat.turns import Turns
from app.live import install_live
from app.logins import RULE, LoginLocked, LoginThrottle
from app.logs import RequestIdMiddleware, client_address
from app.preview import install_preview
from app.settings import Settings
from app.share_page import install_share_page
from app.store import Accounts, Store, transfer
from app.store.leases import ProcessLease
from app.ui import PlaygroundUI
from app.ui.gradio_compat import configure_queue
from app.ui.page import PAGE_CSS, page_script

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> Store:
    """The store at DATABASE_URL, migrated."""
    store = Store(settings.database_url.get_secret_value())
    store.migrate()
    return store


def report(marked: int) -> None:
    if marked:
        log.warning("Marked %d reply(ies) cut off by a stopped process as interrupted", marked)


async def keep_lease(lease: ProcessLease, interval: float) -> None:
    """Renew the process's lease every ``interval`` seconds, marking the replies of dead
    processes as it does, until cancelled. A database that fails is tried again at the next
    heartbeat."""
    while True:
        await asyncio.sleep(interval)
        try:
            report(await asyncio.to_thread(lease.beat))
        except OperationalError:  # SQLite's "database is locked", a server gone
            log.warning("Could not renew this process's lease", exc_info=True)


def create_app(settings: Settings, service: ChatService | None = None) -> FastAPI:
    chat = service or ChatService(settings)
    store = open_store(settings)
    lease = ProcessLease(store, timedelta(seconds=settings.lease_expiry))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        report(await asyncio.to_thread(lease.beat))  # taken before any reply begins
        tasks = [
            asyncio.create_task(chat.router.run_checks(), name="backend checks"),
            asyncio.create_task(keep_lease(lease, settings.lease_heartbeat_interval),
                                name="lease"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await chat.aclose()  # every reply ended and saved, as stopped
            await asyncio.to_thread(lease.release)

    api = FastAPI(
        title="Coding Playground", docs_url="/api/docs", openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    api.add_middleware(RequestIdMiddleware)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The app is up; it says nothing about the backends, which may come and go (see
        /metrics and the page's Backends panel)."""
        return {"status": "ok"}

    @api.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus metrics: replies, active streams, time to first token, tokens/s,
        backend errors by kind, backends up or down, response cache."""
        return Response(chat.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    guard = Guard(settings, store)
    checks = Checks(chat, Turns(chat, guard))  # one sandbox's places, for the API and the page
    accounts, logins = Accounts(store), LoginThrottle(store)  # the API's and the page's
    install_api(api, settings, chat, store, guard, accounts, checks, logins)
    install_share_page(api, settings, store)

    ui = PlaygroundUI(chat, store, guard, checks)
    install_preview(api, ui.previews)
    install_live(api, chat.replies)
    demo = ui.build()
    configure_queue(
        demo, concurrency=settings.queue_concurrency, max_size=settings.queue_max_size,
        session_capacity=settings.session_capacity,
    )
    # show_error=False: an unexpected exception shows as a generic error, never its text;
    # the messages meant for users are raised as gr.Error and always shown.
    # max_file_size: an upload past the import limit is refused before Gradio stores it.
    # enable_monitoring=False: no /monitoring (configure_queue keeps no record for it).
    app: FastAPI = gr.mount_gradio_app(
        api, demo, path="/", footer_links=["api", "settings"], show_error=False, css=PAGE_CSS,
        enable_monitoring=False,
        max_file_size=transfer.DEFAULT_MAX_BYTES, js=page_script(),
        auth=page_login(accounts, logins) if settings.auth_mode == "password" else None,
        auth_message=f"Sign in with your playground account. {RULE}",
    )
    return app


def page_login(
    accounts: Accounts, logins: LoginThrottle
) -> Callable[[str, str], Awaitable[bool]]:
    """Gradio's login check: a name and password of an account in the database, failures
    counted in ``logins`` with the API's. Locked out, the form's POST /login answers 400 (the
    one refusal Gradio's form shows, as "Incorrect Credentials"; the page's auth message says
    why) with Retry-After and the API's sentence."""

    async def check(name: str, password: str) -> bool:
        try:
            user_id = await logins.attempt(name, client_address.get(), partial(
                accounts.check_password, name, password))
        except LoginLocked as err:
            raise HTTPException(
                400, detail=str(err), headers={"Retry-After": str(err.seconds)}
            ) from err
        return user_id is not None

    return check
