"""Nothing lost: the app as its own process, killed hard mid-reply, and two tabs on one
conversation. The backend is the fake TGI (tests/fake_backend.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from app.server import RECOVERY_MARGIN_SECONDS, create_app
from app.store import Store, StoredReply
from tests.conftest import REPO, answers, settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port
from tests.waiting import wait_for

# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (512, 0.2, 0.95, 40, 1.1, 0.0, 0.0, "", -1)


class AppProcess:
    """``python -m app`` on a free port with its database in a folder of the test's."""

    def __init__(self, backend_url: str, folder: Path) -> None:
        self.port = free_port()
        self.database = f"sqlite:///{folder / 'playground.db'}"
        self.env = {
            **os.environ, "PYTHONPATH": str(REPO), "APP_PORT": str(self.port),
            "BACKEND_URL": backend_url, "DATABASE_URL": self.database,
        }
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app"], cwd=self.folder, env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not answers(f"{self.url}/healthz"):
            assert self.process.poll() is None, "the app exited while starting"
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def slow_backend(fake: FakeBackend) -> Iterator[ServerThread]:
    fake.tokens = [f"word{i} " for i in range(200)]
    fake.token_delay = 0.05
    with ServerThread(fake.app()) as server:
        yield server


def test_a_reply_cut_by_sigkill_is_kept_and_marked(
    slow_backend: ServerThread, fake: FakeBackend, tmp_path: Path
) -> None:
    """The restarted app marks the reply once it is older than a live process would leave
    it (BACKEND_READ_TIMEOUT plus a margin): at once if it is, else by its periodic sweep."""
    app = AppProcess(slow_backend.url, tmp_path)
    app.env["BACKEND_READ_TIMEOUT"] = "1"
    app.start()
    store = Store(app.database)
    user = store.user_id()

    def reply() -> StoredReply | None:
        listed = store.list_conversations(user)
        return store.get_conversation(user, listed[0].id).exchanges[0].reply if listed else None

    def saved_while_streaming() -> bool:
        found = reply()
        return found is not None and found.status == "streaming" and bool(found.content)

    def marked() -> bool:
        found = reply()
        return found is None or found.status != "streaming"

    try:
        Client(app.url, verbose=False).submit(
            "count for me", None, "", "", "", *CONTROLS, api_name="/chat"
        )
        wait_for(saved_while_streaming, 30, what="a save of the reply while it streams")
        app.kill()
    finally:
        app.kill()
    app.start()
    try:
        [summary] = store.list_conversations(user)
        wait_for(marked, 1 + RECOVERY_MARGIN_SECONDS * 2, step=0.5, what="the reply to be marked")
        [exchange] = store.get_conversation(user, summary.id).exchanges
        assert exchange.user == "count for me"
        assert exchange.reply is not None
        assert exchange.reply.status == "interrupted"
        assert exchange.reply.error == "The app stopped while this reply was streaming."
        assert exchange.reply.content.startswith("word0 word1 ")
        assert "".join(fake.tokens).startswith(exchange.reply.content)
    finally:
        app.kill()


def test_two_tabs_on_one_conversation_lose_and_double_nothing(
    slow_backend: ServerThread, fake: FakeBackend, tmp_path: Path
) -> None:
    fake.tokens = fake.tokens[:20]
    app = AppProcess(slow_backend.url, tmp_path).start()
    try:
        first = Client(app.url, verbose=False)
        first.predict("opening message", None, "", "", "", *CONTROLS, api_name="/chat")
        store = Store(app.database)
        user = store.user_id()
        [summary] = store.list_conversations(user)
        tabs = [Client(app.url, verbose=False) for _ in range(2)]
        for tab in tabs:  # as a browser tab does: the page loads, then the user picks one
            tab.predict(api_name="/backend_info")
            tab.predict(summary.id, api_name="/open_chat")

        def send(pair: tuple[Client, str]) -> Any:
            tab, text = pair
            return tab.predict(text, None, "", "", "", *CONTROLS, api_name="/chat")

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(send, [(tabs[0], "from tab one"), (tabs[1], "from tab two")]))
        messages = store.get_tree(user, summary.id).messages
        users = sorted(m.content for m in messages if m.role == "user")
        assert users == ["from tab one", "from tab two", "opening message"]
        replies = [m for m in messages if m.role == "assistant"]
        assert [(m.status, m.content) for m in replies] == [("stop", "".join(fake.tokens))] * 3
        # Each tab sent what it showed, the opening exchange: two branches after it.
        opening, last = store.get_conversation(user, summary.id).exchanges
        assert opening.reply is not None
        assert {m.parent_id for m in messages if m.content.startswith("from tab")} == {
            opening.reply.id}
        assert len(last.user_alternatives) == 2
    finally:
        app.kill()


def test_a_replica_starting_leaves_the_replies_another_streams_alone(
    slow_backend: ServerThread, fake: FakeBackend, url: str
) -> None:
    """Two app replicas on one database (SQLite and PostgreSQL): one starts (or restarts)
    while the other streams; the reply streams on, unmarked, and ends finished. Every
    streaming reply used to be marked interrupted by any replica that started."""
    fake.tokens = fake.tokens[:60]  # three seconds
    settings = settings_for(slow_backend.url, database_url=url)
    store = Store(url)
    with ServerThread(create_app(settings)) as first, ThreadPoolExecutor(1) as pool:
        asked = pool.submit(httpx.post, f"{first.url}/api/v1/dialogue", timeout=60,
                            json={"message": "count for me"})
        user = store.user_id()
        deadline = time.monotonic() + 30
        while not (listed := store.list_conversations(user)) or not (
            (streaming := store.get_conversation(user, listed[0].id).exchanges[0].reply)
            and streaming.content
        ):
            assert time.monotonic() < deadline, "the reply never started"
            time.sleep(0.1)
        create_app(settings)  # the second replica starts
        during = store.get_conversation(user, listed[0].id).exchanges[0].reply
        assert during is not None
        assert (during.status, during.error) == ("streaming", None)
        assert asked.result().json()["error"] is None
    after = store.get_conversation(user, listed[0].id).exchanges[0].reply
    assert after is not None
    assert (after.status, after.content) == ("stop", "".join(fake.tokens))
