"""Metrics, logs and secrets, and the response cache: the app as its own process against fake
backends (tests/fake_backend.py stands in for TGI and an OpenAI-compatible server)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from gradio_client import Client

from app.backends import GenerationParams
from app.chat import ChatService
from app.chat.service import Progress
from tests.conftest import REPO, answers, settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port

# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (64, 0.2, 0.95, 40, 1.1, 0.0, 0.0, "", -1)
MESSAGES = [{"role": "user", "content": "hi"}]

BACKEND_TOKEN = "tok-Zq81vXlarge-secret"
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUv"
DB_PASSWORD = "pw-Kx77-database"


async def updates_of(
    service: ChatService, params: GenerationParams, owner: int = 1
) -> list[Progress]:
    info = await service.backend_info()
    stream = service.stream_reply(info, MESSAGES, params, asyncio.Event(), owner)
    async with aclosing(stream):
        return [p async for p in stream]


async def final(service: ChatService, params: GenerationParams, owner: int = 1) -> Progress:
    """The last update, with the whole reply as what it added."""
    updates = await updates_of(service, params, owner)
    return replace(updates[-1], added=text_of(updates))


def text_of(updates: list[Progress]) -> str:
    return "".join(update.added for update in updates)


async def test_many_streaming_replies_share_the_update_budget(
    fake: FakeBackend, backend: ServerThread
) -> None:
    """Alone, a reply is updated every STREAM_INTERVAL; with ten streaming, each is updated
    ten times less often (STREAM_UPDATES_PER_SECOND for them all), and no text is lost."""
    fake.tokens, fake.token_delay = [f" t{i}" for i in range(40)], 0.01
    service = ChatService(
        settings_for(backend.url, stream_interval=0.02, stream_updates_per_second=50)
    )
    params = GenerationParams(max_new_tokens=40)
    alone = await updates_of(service, params)
    crowd = await asyncio.gather(*(updates_of(service, params) for _ in range(10)))
    whole = "".join(fake.tokens)
    assert text_of(alone) == whole
    assert all(text_of(updates) == whole for updates in crowd), "no text is lost"
    assert len(alone) >= 10, f"alone, a 0.4 s reply had only {len(alone)} updates"
    most = max(len(updates) for updates in crowd)
    assert most <= 6, f"with ten streaming, a reply still had {most} updates"
    assert service.update_interval() == 0.02, "the budget is back when the replies end"


async def test_deterministic_replies_are_cached_within_the_bound(
    fake: FakeBackend, backend: ServerThread
) -> None:
    service = ChatService(settings_for(backend.url, response_cache_size=2))
    greedy = GenerationParams(max_new_tokens=16, temperature=0.0)
    first = await final(service, greedy)
    again = await final(service, greedy)
    assert len(fake.requests) == 1, "the second identical request never reached the backend"
    assert again.added == first.added == "Hello, world!"
    assert again.stats.cached
    assert "from the response cache" in again.stats.line()
    await final(service, GenerationParams(max_new_tokens=16, temperature=0.7))
    await final(service, GenerationParams(max_new_tokens=16, temperature=0.7))
    assert len(fake.requests) == 3, "sampled replies are never cached"
    for seed in (1, 2):  # two more entries push the first out of a cache of two
        await final(service, GenerationParams(max_new_tokens=16, temperature=0.7, seed=seed))
    await final(service, greedy)
    assert len(fake.requests) == 6
    assert 'playground_response_cache_total{result="hit"} 1.0' in service.metrics.render().decode()


async def test_one_users_cache_hit_tells_nothing_of_anothers_questions(
    fake: FakeBackend, backend: ServerThread
) -> None:
    service = ChatService(settings_for(backend.url, response_cache_size=8))
    greedy = GenerationParams(max_new_tokens=16, temperature=0.0)
    await final(service, greedy, owner=1)
    theirs = await final(service, greedy, owner=2)
    assert not theirs.stats.cached, "the same question from another user is asked anew"
    assert len(fake.requests) == 2
    assert (await final(service, greedy, owner=2)).stats.cached


async def test_the_cache_is_off_by_default(fake: FakeBackend, backend: ServerThread) -> None:
    service = ChatService(settings_for(backend.url))
    greedy = GenerationParams(max_new_tokens=16, temperature=0.0)
    await final(service, greedy)
    await final(service, greedy)
    assert len(fake.requests) == 2


def test_no_secret_reaches_logs_pages_or_metrics_in_a_failing_run(
    fake: FakeBackend, backend: ServerThread, tmp_path: Path
) -> None:
    """A full failing run: one backend quotes our token in its error, one is unreachable,
    Inference Providers are configured with HF_TOKEN; everything at DEBUG level."""
    fake.mode = "echo_auth"
    port = free_port()
    backends = [
        {"name": "careless", "kind": "tgi", "url": backend.url, "token": BACKEND_TOKEN},
        {"name": "gone", "kind": "openai", "url": f"http://127.0.0.1:{free_port()}",
         "token": BACKEND_TOKEN},
        {"name": "hosted", "kind": "hf", "url": f"http://127.0.0.1:{free_port()}",
         "models": ["org/model"]},
    ]
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "APP_PORT": str(port),
        "BACKENDS": json.dumps(backends), "HF_TOKEN": HF_TOKEN,
        "BACKEND_TOKEN": BACKEND_TOKEN, "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}?password={DB_PASSWORD}",
        "BACKEND_RETRIES": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not answers(f"{url}/healthz"):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        client = Client(url, verbose=False)
        client.predict(api_name="/backend_info")
        shown = client.predict("hi", None, "", "", "", *CONTROLS, api_name="/chat")
        reply = json.dumps(shown)
        assert "bad request with Authorization: Bearer ***" in reply, "the error is shown"
        metrics = httpx.get(f"{url}/metrics").text
        errors = 'playground_backend_errors_total{backend="careless",kind="validation"} 1.0'
        assert errors in metrics
        assert 'playground_backend_up{backend="gone"} 0.0' in metrics
        api = httpx.get(f"{url}/api/v1/models", headers={"X-Request-ID": "trace-me-1"})
        assert api.headers["x-request-id"] == "trace-me-1"
        pages = reply + metrics + api.text + httpx.get(f"{url}/api/openapi.json").text
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    logs = out + err
    assert '"level": "WARNING"' in logs, "the failures were logged"
    assert all(json.loads(line) for line in err.splitlines() if line.startswith("{"))
    for secret in (BACKEND_TOKEN, HF_TOKEN, DB_PASSWORD):
        assert secret not in logs
        assert secret not in pages
