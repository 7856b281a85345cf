"""The ASGI app as a whole: routes, and secrets kept out of what the browser receives."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.server import create_app
from app.store import Store
from bench.client import GradioTarget, find_endpoint, gradio_stream, open_page
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread


def test_health_and_page_without_leaking_the_token_or_the_handlers_timings(
    backend: ServerThread, fake: FakeBackend
) -> None:
    app = create_app(settings_for(backend.url, backend_token="hf_s3cret_token"))
    with ServerThread(app) as server:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        seen = [httpx.get(f"{server.url}{path}") for path in ("/", "/config", "/gradio_api/info")]
        # Gradio's monitoring summary (its handlers' timings) is not for everyone to read.
        monitoring = httpx.get(f"{server.url}/monitoring/summary")
    assert [r.status_code for r in seen] == [200, 200, 200]
    assert monitoring.status_code == 403
    assert all("hf_s3cret_token" not in r.text for r in seen)


async def test_pages_past_the_session_capacity_are_forgotten_oldest_first(
    backend: ServerThread, tmp_path: Path
) -> None:
    """With room for one page's state, a page whose state was pushed out by a newer page sends
    its next message into a new conversation; with room for both, into the same one."""
    conversations = {}
    for capacity in (1, 2):
        database = f"sqlite:///{tmp_path / f'{capacity}.db'}"
        app = create_app(settings_for(backend.url, session_capacity=capacity,
                                      database_url=database, rate_limit_per_minute=0))
        with ServerThread(app) as server:
            target = GradioTarget(server.url, await find_endpoint(server.url))
            first = await open_page(target)
            assert not (await gradio_stream(target, "one", session=first)).error
            await open_page(target)  # a second page
            assert not (await gradio_stream(target, "two", session=first)).error
        store = Store(database)
        conversations[capacity] = [
            store.get_conversation(store.user_id(), c.id).exchanges
            for c in store.list_conversations(store.user_id())
        ]
    assert [len(c) for c in conversations[2]] == [2], "both messages in one conversation"
    assert sorted(len(c) for c in conversations[1]) == [1, 1], "the forgotten page started anew"
