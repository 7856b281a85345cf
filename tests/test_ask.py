"""``/ask`` (app/ui/ask.py), the page's Gradio API for code, called as a program calls it: with
``gradio_client`` against the running app (the fake backend behind it). In a Space, with its
Hugging Face sign-in, tests/test_space.py calls it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from app.server import create_app
from app.store import Store
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread


@pytest.fixture
def start(backend: ServerThread, tmp_path: Path) -> Iterator[Callable[..., Client]]:
    """The app (its database in the test's folder) and a client of its Gradio API."""
    with ServerThread(create_app(settings_for(
        backend.url, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
    ))) as server:
        yield lambda: Client(server.url, verbose=False)


@pytest.fixture
def client(start: Callable[..., Client]) -> Client:
    return start()


def test_the_api_page_offers_one_endpoint_with_named_optional_parameters(
    client: Client,
) -> None:
    api = client.view_api(return_format="dict", print_info=False)
    assert isinstance(api, dict)
    assert list(api["named_endpoints"]) == ["/ask"]
    parameters = {p["parameter_name"]: p for p in api["named_endpoints"]["/ask"]["parameters"]}
    assert list(parameters) == ["message", "dialogue_id", "system_prompt", "model",
                                "max_new_tokens", "temperature", "top_p", "seed"]
    assert not parameters["message"]["parameter_has_default"]
    assert all(p["parameter_has_default"] for name, p in parameters.items() if name != "message")
    assert parameters["temperature"]["parameter_default"] == 0.2
    assert api["unnamed_endpoints"] == {}


def test_a_reply_streams_and_is_stored_as_the_page_stores_it(
    client: Client, fake: FakeBackend, tmp_path: Path
) -> None:
    fake.tokens = ["def ", "rev(s):", " return", " s[::-1]"]
    fake.token_delay = 0.05
    job = client.submit(message="Reverse a string in Python", temperature=0.0,
                        max_new_tokens=64, api_name="/ask")
    updates: list[dict[str, Any]] = list(job)
    last = job.result()
    assert len({u["reply"] for u in updates}) > 1, "the reply came in more than one update"
    assert last["reply"] == "def rev(s): return s[::-1]"
    assert last["stats"]["finish"] == "stop"
    assert last["stats"]["tokens"] == 5
    assert last["error"] is None
    assert all(u["stats"] is None for u in updates[:-1])
    assert fake.requests[-1]["max_tokens"] == 64
    assert fake.requests[-1]["temperature"] == 0.0
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    [summary] = store.list_conversations(store.user_id("local"))
    assert summary.id == last["dialogue_id"]
    [exchange] = store.get_conversation(store.user_id("local"), summary.id).exchanges
    assert exchange.reply is not None
    assert (exchange.user, exchange.reply.content) == ("Reverse a string in Python",
                                                       last["reply"])


def test_a_conversation_goes_on_with_its_earlier_turns(
    client: Client, fake: FakeBackend
) -> None:
    first = client.predict(message="first question", system_prompt="Be terse.",
                           api_name="/ask")
    second = client.predict(message="second question", dialogue_id=first["dialogue_id"],
                            api_name="/ask")
    assert second["dialogue_id"] == first["dialogue_id"]
    sent = fake.requests[-1]["messages"]
    assert [m["content"] for m in sent] == ["Be terse.", "first question", "Hello, world!",
                                            "second question"]


def test_bad_input_is_refused_with_a_sentence_and_nothing_stored(
    start: Callable[..., Client], fake: FakeBackend, tmp_path: Path,
) -> None:
    client = start()
    with pytest.raises(Exception, match="The message is empty; nothing was sent"):
        client.predict(message="   ", api_name="/ask")
    with pytest.raises(Exception, match="No conversation 'nope' among yours"):
        client.predict(message="hi", dialogue_id="nope", api_name="/ask")
    assert fake.requests == []
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert store.list_conversations(store.user_id("local")) == []


def test_it_counts_against_the_same_rate_limit_as_the_page(
    backend: ServerThread, tmp_path: Path
) -> None:
    settings = settings_for(backend.url, rate_limit_per_minute=1,
                            database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    with ServerThread(create_app(settings)) as server:
        client = Client(server.url, verbose=False)
        client.predict(message="one", api_name="/ask")
        with pytest.raises(Exception, match="1 message"):
            client.predict(message="two", api_name="/ask")
