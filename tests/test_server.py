"""The ASGI app as a whole: routes, and secrets kept out of what the browser receives."""

from __future__ import annotations

import httpx

from app.server import create_app
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread


def test_health_and_page_without_leaking_the_token(
    backend: ServerThread, fake: FakeBackend
) -> None:
    app = create_app(settings_for(backend.url, backend_token="hf_s3cret_token"))
    with ServerThread(app) as server:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        seen = [httpx.get(f"{server.url}{path}") for path in ("/", "/config", "/gradio_api/info")]
    assert [r.status_code for r in seen] == [200, 200, 200]
    assert all("hf_s3cret_token" not in r.text for r in seen)
