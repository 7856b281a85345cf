"""The ASGI app: FastAPI with the Gradio page mounted at ``/`` and a health route."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from app.chat import ChatService
from app.settings import Settings
from app.ui import PlaygroundUI


def create_app(settings: Settings, service: ChatService | None = None) -> FastAPI:
    service = service or ChatService(settings)
    api = FastAPI(title="Coding Playground", docs_url="/api/docs", openapi_url="/api/openapi.json")

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The app is up; it says nothing about the backend, which may come and go."""
        return {"status": "ok"}

    demo = PlaygroundUI(service).build()
    # Gradio caps concurrent events at ``max_threads`` even for async handlers; raise the cap
    # together with the per-event limit so that users do not wait for one another.
    demo.max_threads = settings.queue_concurrency
    demo.queue(
        default_concurrency_limit=settings.queue_concurrency, max_size=settings.queue_max_size
    )
    # show_error=False: an unexpected exception shows as a generic error, never its text;
    # the messages meant for users are raised as gr.Error and always shown.
    app: FastAPI = gr.mount_gradio_app(
        api, demo, path="/", footer_links=["api", "settings"], show_error=False
    )
    return app
