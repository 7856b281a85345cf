"""Nothing lost: the app as its own process killed hard mid-reply, alone and beside another
process on the same database (the leases of app.store.leases), and two tabs on one
conversation. The backend is the fake TGI (tests/fake_backend.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
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
from sqlalchemy import text

from app.server import create_app
from app.store import Store
from tests.conftest import REPO, answers, settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port
from tests.waiting import wait_for

# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (512, 0.2, 0.95, 40, 1.1, 0.0, 0.0, "", -1)


class AppProcess:
    """``python -m app`` on a free port, with its database at ``database`` (default: a SQLite
    file in ``folder``, where it runs)."""

    def __init__(self, backend_url: str, folder: Path, database: str = "") -> None:
        self.port = free_port()
        self.database = database or f"sqlite:///{folder / 'playground.db'}"
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


def start_reply(app: AppProcess, message: str) -> str:
    """Ask ``app`` for a reply over the REST API and leave once it has begun: the reply runs
    on in the app (REPLY_KEEPS_RUNNING). Returns its dialogue's id."""
    with httpx.stream("POST", f"{app.url}/api/v1/dialogue", timeout=30,
                      json={"message": message, "stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                dialogue_id: str = json.loads(line.removeprefix("data: "))["dialogue_id"]
                return dialogue_id
    raise AssertionError(f"no event from POST /dialogue ({response.status_code})")


def reply_of(app: AppProcess, dialogue_id: str) -> dict[str, Any]:
    """The dialogue's first reply as ``GET /messages`` of ``app`` shows it."""
    response = httpx.get(f"{app.url}/api/v1/messages", params={"dialogue_id": dialogue_id},
                         timeout=30)
    response.raise_for_status()
    reply: dict[str, Any] = response.json()["exchanges"][0]["reply"]
    return reply


def saved_while_streaming(store: Store, dialogue_id: str) -> bool:
    """Some of the dialogue's reply is in the database, and it is still streaming."""
    [exchange] = store.get_conversation(store.user_id(), dialogue_id).exchanges
    return exchange.reply is not None and exchange.reply.status == "streaming" and bool(
        exchange.reply.content)


def assert_cut_and_counted(reply: dict[str, Any], fake: FakeBackend) -> None:
    """A reply cut off by its process's death: interrupted, its text as far as it was saved,
    and its stats counting that text's tokens (each of the fake's tokens is one word)."""
    assert (reply["status"], reply["error"]) == (
        "interrupted", "The app stopped while this reply was streaming.")
    assert reply["content"].startswith("word0 word1 ")
    assert "".join(fake.tokens).startswith(reply["content"])
    assert reply["stats"]["finish"] == "interrupted"
    assert reply["stats"]["tokens"] == len(reply["content"].split())


def test_a_reply_cut_by_sigkill_is_marked_soon_after_a_restart(
    slow_backend: ServerThread, fake: FakeBackend, tmp_path: Path
) -> None:
    """Killed mid-reply and started again on the same database, with the default settings:
    the reply is marked interrupted seconds after its process's lease expires, with its text
    and its tokens. It used to wait for BACKEND_READ_TIMEOUT plus 10 s and a sweep (over two
    minutes), and then said 0 tokens."""
    app = AppProcess(slow_backend.url, tmp_path)
    store = Store(app.database)
    try:
        dialogue_id = start_reply(app.start(), "count for me")
        wait_for(lambda: saved_while_streaming(store, dialogue_id), 30,
                 what="a save of the reply while it streams")
    finally:
        app.kill()
    try:
        app.start()
        wait_for(lambda: reply_of(app, dialogue_id)["status"] != "streaming", 30, step=0.2,
                 what="the reply to be marked interrupted")
        assert_cut_and_counted(reply_of(app, dialogue_id), fake)
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


def test_a_replica_killed_leaves_the_others_replies_alone_and_its_own_are_marked(
    slow_backend: ServerThread, fake: FakeBackend, url: str, tmp_path: Path
) -> None:
    """Two app processes on one database (SQLite and PostgreSQL), each writing a reply; the
    second starts while the first's reply streams and leaves it alone. The first is killed:
    the survivor marks its reply interrupted (text and tokens kept) once its lease expires,
    while its own reply streams on and ends finished."""
    fake.tokens = [f"word{i} " for i in range(400)]  # 20 s
    # A short expiry, so that the survivor's reply need not stream for long after the kill.
    lease = {"LEASE_HEARTBEAT_INTERVAL": "0.5", "LEASE_EXPIRY": "3"}
    doomed = AppProcess(slow_backend.url, tmp_path, url)
    survivor = AppProcess(slow_backend.url, tmp_path, url)
    for app in (doomed, survivor):
        app.env.update(lease)
    store = Store(url)
    try:
        cut = start_reply(doomed.start(), "count for me")
        wait_for(lambda: saved_while_streaming(store, cut), 30,
                 what="a save of the first reply while it streams")
        survivor.start()
        kept = start_reply(survivor, "count for me too")
        wait_for(lambda: saved_while_streaming(store, kept), 30,
                 what="a save of the second reply while it streams")
        during = reply_of(survivor, cut)
        assert (during["status"], during["error"]) == ("streaming", None), (
            "a process starting marked a live process's reply")
        doomed.kill()
        wait_for(lambda: reply_of(survivor, cut)["status"] != "streaming", 30, step=0.2,
                 what="the killed process's reply to be marked interrupted")
        assert_cut_and_counted(reply_of(survivor, cut), fake)
        assert reply_of(survivor, kept)["status"] == "streaming"
        wait_for(lambda: reply_of(survivor, kept)["status"] != "streaming", 60, step=0.5,
                 what="the survivor's reply to end")
        finished = reply_of(survivor, kept)
        assert (finished["status"], finished["error"]) == ("stop", None)
        assert finished["content"] == "".join(fake.tokens)
    finally:
        doomed.kill()
        survivor.kill()


def test_a_process_that_stops_cleanly_gives_its_lease_back(backend: ServerThread, url: str) -> None:
    """The app holds a lease while it serves and deletes it as it stops: an operator's
    ``SELECT * FROM leases`` lists the processes alive."""
    store = Store(url)

    def leases() -> list[tuple[str, int]]:
        with store.engine.connect() as db:
            return [(host, pid) for host, pid in db.execute(text("SELECT host, pid FROM leases"))]

    with ServerThread(create_app(settings_for(backend.url, database_url=url))):
        assert leases() == [(socket.gethostname(), os.getpid())]
    assert leases() == []
    store.engine.dispose()
