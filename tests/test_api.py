"""The REST API (/api/v1) of the real app, served on a loopback port, against a fake TGI."""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from sqlalchemy.exc import OperationalError

from app.chat.log import waiting_notice
from app.server import create_app
from app.store import Accounts, Store
from app.store.leases import ProcessLease
from app.store.limits import Limits
from app.store.running import Running
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port
from tests.stored import exchange
from tests.waiting import wait_for

PASSWORD = "a long enough passphrase"
SSE = "text/event-stream"


@dataclass
class Api:
    """One running app and an HTTP client for its API."""

    server: ServerThread
    database_url: str
    http: httpx.Client

    def signup(self, name: str, password: str = PASSWORD) -> httpx.Response:
        return self.http.post("/signup", json={"name": name, "password": password})

    def login(self, name: str, password: str = PASSWORD) -> httpx.Response:
        return self.http.post("/login", json={"name": name, "password": password})

    def user(self, name: str) -> dict[str, str]:
        """Sign up and log in; the headers that authenticate as this user."""
        assert self.signup(name).status_code == 201
        token = self.login(name).json()["token"]
        return {"Authorization": f"Bearer {token}"}

    def say(self, headers: dict[str, str], message: str, **fields: Any) -> httpx.Response:
        return self.http.post("/dialogue", headers=headers, json={"message": message, **fields})

    def messages(
        self, headers: dict[str, str], dialogue_id: str, **params: str
    ) -> httpx.Response:
        return self.http.get(
            "/messages", headers=headers, params={"dialogue_id": dialogue_id, **params}
        )


@pytest.fixture
def start_api(backend: ServerThread, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start the whole app (page and API) with accounts on, unless told otherwise."""
    with ExitStack() as stack:

        def start(**overrides: Any) -> Api:
            database_url = f"sqlite:///{tmp_path / f'api-{free_port()}.db'}"
            options = {"database_url": database_url, "auth_mode": "password",
                       "allow_signup": True, **overrides}
            server = stack.enter_context(ServerThread(create_app(
                settings_for(backend.url, **options)
            )))
            http = stack.enter_context(httpx.Client(base_url=f"{server.url}/api/v1", timeout=30))
            return Api(server, options["database_url"], http)

        yield start


@pytest.fixture
def api(start_api: Callable[..., Api]) -> Api:
    return start_api()


def events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, one per ``data:`` line."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) <= {"error", "detail"}
    assert isinstance(body["error"], str)
    assert body["error"]
    assert "Traceback" not in response.text
    return body


# -- accounts -------------------------------------------------------------------------------


def test_sign_up_log_in_and_ask_who_i_am(api: Api) -> None:
    created = api.signup("alice")
    assert created.status_code == 201
    assert created.json() == {"id": created.json()["id"], "name": "alice"}

    login = api.login("alice")
    assert login.status_code == 200
    body = login.json()
    assert set(body) == {"token", "expires_at"}
    expires = datetime.fromisoformat(body["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(hours=168))) < timedelta(minutes=1)

    me = api.http.get("/me", headers={"Authorization": f"Bearer {body['token']}"})
    assert me.json() == created.json()


def test_sign_up_refusals_say_what_to_change(api: Api) -> None:
    api.signup("alice")
    taken = assert_error_shape(api.signup("Alice", "another passphrase"), 409)
    assert "taken" in taken["error"]
    weak = assert_error_shape(api.signup("bob", "pw"), 422)
    assert "8 to 1024 characters" in weak["error"]
    bad_name = assert_error_shape(api.signup("b b", PASSWORD), 422)
    assert "letters" in bad_name["error"]
    assert api.login("bob").status_code == 401, "nothing was created"


def test_a_wrong_password_and_an_unknown_name_get_the_same_401(api: Api) -> None:
    api.signup("alice")
    wrong = api.login("alice", "not the passphrase")
    unknown = api.login("nobody", PASSWORD)
    for response in (wrong, unknown):
        assert_error_shape(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "token" not in response.json()
        assert "not the passphrase" not in response.text
    assert wrong.json() == unknown.json() == {"error": "Wrong name or password."}


def test_logout_and_the_owners_own_tokens(api: Api) -> None:
    """A token could not be revoked by its owner."""
    alice = api.user("alice")
    other = {"Authorization": f"Bearer {api.login('alice').json()['token']}"}
    listed = api.http.get("/tokens", headers=alice).json()
    assert [t["current"] for t in listed] == [False, True], "newest first"
    assert set(listed[0]) == {"id", "created_at", "expires_at", "current"}, "never the token"
    assert api.http.delete(f"/tokens/{listed[0]['id']}", headers=alice).status_code == 204
    assert api.http.get("/me", headers=other).status_code == 401
    bob = api.user("bob")
    assert api.http.delete(f"/tokens/{listed[1]['id']}", headers=bob).status_code == 404
    assert api.http.post("/logout", headers=alice).status_code == 204
    assert api.http.get("/me", headers=alice).status_code == 401
    assert api.http.get("/me", headers=bob).status_code == 200


def test_failed_logins_are_throttled_per_account_and_address(api: Api) -> None:
    """Each failed login costs an argon2 hash; they were not limited."""
    api.user("alice")
    for _ in range(5):
        assert api.login("alice", "a wrong passphrase").status_code == 401
    refused = api.login("alice")
    assert refused.status_code == 429, "even the right password, until the window passes"
    assert 0 < int(refused.headers["retry-after"]) <= 900
    assert "Too many failed logins; try again in" in refused.json()["error"]
    for name in ("bob", "dave", "erin"):  # 15 more failures from this address, 20 in all
        for _ in range(5):
            assert api.login(name, "a wrong passphrase").status_code == 401
    assert api.login("carol", "whatever it is").status_code == 429, "20 from this address"


def test_the_page_login_form_and_the_api_share_one_throttle(api: Api) -> None:
    """Gradio's login form (POST /login) checked passwords without any limit: a name locked
    out of the API could still be tried on the page, as often as anyone liked."""
    api.user("alice")

    def page_login(password: str) -> httpx.Response:
        form = {"username": "alice", "password": password}
        return api.http.post(f"{api.server.url}/login", data=form)

    for _ in range(3):
        assert page_login("a wrong passphrase").status_code == 400, "the form's refusal"
    for _ in range(2):
        assert api.login("alice", "a wrong passphrase").status_code == 401
    locked = api.login("alice")
    assert locked.status_code == 429, "5 failures on the two doors together"
    refused = page_login(PASSWORD)
    assert refused.status_code == 400, "the one refusal Gradio's form shows"
    assert "access-token" not in refused.headers.get("set-cookie", "")
    seconds = int(refused.headers["retry-after"])
    assert 0 < seconds <= 900
    assert abs(seconds - int(locked.headers["retry-after"])) <= 1
    assert refused.json() == {"detail": f"Too many failed logins; try again in {seconds} s."}
    assert PASSWORD not in refused.text
    login_page = api.http.get(f"{api.server.url}/").text
    assert "5 failed logins for a name, or 20 from one address" in login_page, (
        "the login page says why the right password can be refused")


def test_models_answers_from_the_checks_state_without_probing_each_call(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    assert api.http.get("/models", headers=alice).status_code == 200
    probes = fake.probes
    for _ in range(10):
        assert api.http.get("/models", headers=alice).json()["model"] == fake.model_id
    assert fake.probes == probes, "GET /models probed every backend on each call"


def test_missing_forged_expired_and_malformed_tokens_get_the_same_401(api: Api) -> None:
    alice = api.user("alice")
    store = Store(api.database_url)
    accounts = Accounts(store)
    user_id = api.http.get("/me", headers=alice).json()["id"]
    expired = accounts.issue_token(user_id, timedelta(seconds=-1))
    revoked = accounts.issue_token(user_id, timedelta(hours=1))
    accounts.revoke(revoked)
    store.engine.dispose()
    attempts: list[dict[str, str]] = [
        {},
        {"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": "Bearer not a token!"},
        {"Authorization": alice["Authorization"].replace("Bearer", "Basic")},
        {"Authorization": alice["Authorization"] + "x"},
    ]
    answers = [api.http.get("/me", headers=headers) for headers in attempts]
    for response in answers:
        assert_error_shape(response, 401)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert len({response.text for response in answers}) == 1, "nothing tells them apart"
    for path in ("/models", "/dialogues"):
        assert api.http.get(path).status_code == 401
    assert api.http.post("/dialogue", json={"message": "hi"}).status_code == 401
    assert api.http.get("/me", headers=alice).status_code == 200, "the real token still works"


def test_sign_up_can_be_closed(start_api: Callable[..., Api]) -> None:
    api = start_api(allow_signup=False)
    closed = assert_error_shape(api.signup("alice"), 403)
    assert "ALLOW_SIGNUP" in closed["error"]
    store = Store(api.database_url)
    Accounts(store).signup("carol", PASSWORD)  # made by an operator
    store.engine.dispose()
    assert api.login("carol").status_code == 200


def test_without_accounts_every_request_is_the_local_user(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    api = start_api(auth_mode="none")
    me = api.http.get("/me")
    assert me.status_code == 200
    assert me.json()["name"] == "local"
    reply = api.say({}, "hello")
    assert reply.status_code == 200
    assert reply.json()["reply"] == "Hello, world!"
    listed = api.http.get("/dialogues", headers={"Authorization": "Bearer ignored"})
    assert [d["id"] for d in listed.json()] == [reply.json()["dialogue_id"]]
    for response in (api.signup("alice"), api.login("alice")):
        assert "Accounts are off" in assert_error_shape(response, 403)["error"]


@pytest.mark.usefixtures("oauth_app")
def test_in_hf_mode_no_token_opens_the_api_not_even_one_from_password_mode(
    start_api: Callable[..., Api],
) -> None:
    before = start_api()
    token = before.user("alice")
    assert before.http.get("/me", headers=token).status_code == 200
    # The same database, the app restarted as a Space signs people in: with Hugging Face.
    api = start_api(auth_mode="hf", database_url=before.database_url)
    for response in (api.http.get("/me", headers=token), api.http.get("/dialogues"),
                     api.say(token, "hello")):
        assert "AUTH_MODE=hf" in assert_error_shape(response, 401)["error"]
    for response in (api.signup("bob"), api.login("alice")):
        assert "AUTH_MODE=hf" in assert_error_shape(response, 403)["error"]


# -- dialogues ------------------------------------------------------------------------------


def test_a_reply_is_returned_whole_and_stored(api: Api, fake: FakeBackend) -> None:
    fake.tokens = ["def", " f", "():", "\n", "    pass"]
    alice = api.user("alice")
    response = api.say(alice, "write f\nplease", system_prompt="Be terse.")
    assert response.status_code == 200
    body = response.json()
    assert body["reply"] == "def f():\n    pass"
    assert body["error"] is None
    assert body["stats"]["tokens"] == 6, "TGI counts the EOS token"
    assert body["stats"]["finish"] == "stop"
    assert body["stats"]["time_to_first_token"] >= 0
    assert fake.requests[-1]["messages"] == [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "write f\nplease"},
    ]

    listed = api.http.get("/dialogues", headers=alice).json()
    assert [(d["id"], d["title"]) for d in listed] == [(body["dialogue_id"], "write f")]
    assert datetime.fromisoformat(listed[0]["updated_at"]).tzinfo is not None
    stored = api.messages(alice, body["dialogue_id"]).json()
    assert stored["system_prompt"] == "Be terse."
    [exchange] = stored["exchanges"]
    assert exchange["user"] == "write f\nplease"
    assert exchange["reply"]["id"] == body["message_id"]
    assert exchange["reply"]["content"] == "def f():\n    pass"
    assert exchange["reply"]["status"] == "stop"
    assert exchange["reply"]["stats"] == body["stats"]
    assert exchange["reply"]["model"] == fake.model_id


def test_a_streamed_reply_arrives_as_ordered_events(api: Api, fake: FakeBackend) -> None:
    fake.tokens = ["Sure", ":", " `x", "[::-1]", "`"]
    alice = api.user("alice")
    with api.http.stream(
        "POST", "/dialogue", headers=alice, json={"message": "reverse x", "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(SSE)
        received = list(events(response))
    first, *deltas, last = received
    assert set(first) == {"dialogue_id", "message_id"}
    assert first["message_id"] == last["message_id"]
    assert all(set(event) == {"delta"} and event["delta"] for event in deltas)
    assert "".join(event["delta"] for event in deltas) == "Sure: `x[::-1]`"
    assert last["done"] is True
    assert last["error"] is None
    assert last["stats"]["tokens"] == 6
    assert last["stats"]["finish"] == "stop"
    [exchange] = api.messages(alice, first["dialogue_id"]).json()["exchanges"]
    assert exchange["reply"]["id"] == last["message_id"]
    assert exchange["reply"]["content"] == "Sure: `x[::-1]`"


def test_accept_event_stream_asks_for_events_too(api: Api) -> None:
    alice = api.user("alice")
    headers = {**alice, "Accept": SSE}
    with api.http.stream("POST", "/dialogue", headers=headers, json={"message": "hi"}) as reply:
        received = list(events(reply))
    assert received[-1]["done"] is True
    assert "".join(e.get("delta", "") for e in received) == "Hello, world!"


def test_continuing_a_dialogue_sends_the_earlier_turns(api: Api, fake: FakeBackend) -> None:
    alice = api.user("alice")
    first = api.say(alice, "first question", system_prompt="Be terse.", max_new_tokens=3)
    dialogue_id = first.json()["dialogue_id"]
    assert first.json()["reply"] == "Hello, world"
    assert first.json()["stats"]["finish"] == "length"
    second = api.say(alice, "second question", dialogue_id=dialogue_id)
    assert second.json()["dialogue_id"] == dialogue_id
    sent = fake.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "Hello, world"},
        {"role": "user", "content": "second question"},
    ]
    assert sent["max_tokens"] == 3, "the dialogue's settings are kept with it"
    stored = api.messages(alice, dialogue_id).json()["exchanges"]
    assert [e["user"] for e in stored] == ["first question", "second question"]


def test_a_conversation_from_the_page_continues_with_its_settings(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    user_id = api.http.get("/me", headers=alice).json()["id"]
    store = Store(api.database_url)
    # As the page stores its controls: stop sequences one per line, -1 for a random seed.
    page_settings = {"max_new_tokens": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                     "stop": "END\nSTOP", "seed": -1, "frequency_penalty": 0.5}
    dialogue_id = exchange(store, user_id, None, "first question", "first answer",
                           title="From the page", system_prompt="Be kind.",
                           settings=page_settings, language="python").conversation_id
    store.engine.dispose()

    body = api.say(alice, "go on", dialogue_id=dialogue_id, temperature=0.1).json()
    assert body["reply"] == "Hello,"
    sent = fake.requests[-1]
    assert sent["messages"][0] == {
        "role": "system", "content": "Be kind.\n\nWrite code in Python unless the user asks "
        "for another language, in fenced code blocks tagged python.",
    }, "with the conversation's language, as the page sends it"
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (2, 0.1, 0.9)
    assert (sent["stop"], sent["frequency_penalty"]) == (["END", "STOP"], 0.5)
    assert sent.get("seed") is None
    assert "top_k" not in sent, "TGI's Messages API takes no top-k; it is not sent"
    stored = api.messages(alice, dialogue_id).json()
    assert stored["title"] == "From the page"
    assert stored["system_prompt"] == "Be kind."


def test_messages_give_the_branch_on_screen_or_the_whole_tree(
    api: Api, fake: FakeBackend
) -> None:
    alice, bob = api.user("alice"), api.user("bob")
    user_id = api.http.get("/me", headers=alice).json()["id"]
    dialogue_id = api.say(alice, "first").json()["dialogue_id"]
    api.say(alice, "second", dialogue_id=dialogue_id)
    store = Store(api.database_url)
    first, second = store.get_conversation(user_id, dialogue_id).exchanges
    assert first.reply is not None
    edit = store.begin_turn(user_id, dialogue_id, "", {}, None, message="second, edited",
                            parent=first.reply.id)
    store.save_reply(user_id, edit.reply_id, "edited answer", status="stop")
    store.switch_branch(user_id, dialogue_id, second.user_message_id)
    store.engine.dispose()

    branch = api.messages(alice, dialogue_id).json()
    assert [e["user"] for e in branch["exchanges"]] == ["first", "second"]
    tree = api.messages(alice, dialogue_id, view="tree").json()
    assert set(tree) == {"dialogue_id", "title", "system_prompt", "leaf_id", "messages"}
    assert [(m["role"], m["content"], m["parent_id"]) for m in tree["messages"]] == [
        ("user", "first", None), ("assistant", "Hello, world!", first.user_message_id),
        ("user", "second", first.reply.id),
        ("assistant", "Hello, world!", second.user_message_id),
        ("user", "second, edited", first.reply.id),
        ("assistant", "edited answer", edit.user_message_id),
    ]
    assert tree["leaf_id"] == tree["messages"][3]["id"]
    assert tree["messages"][5]["stats"]["finish"] == "stop"
    assert tree["messages"][0]["stats"] is None

    api.say(alice, "third", dialogue_id=dialogue_id)
    assert [m["content"] for m in fake.requests[-1]["messages"] if m["role"] != "system"] == [
        "first", "Hello, world!", "second", "Hello, world!", "third"], "the branch on screen"
    assert_error_shape(api.messages(bob, dialogue_id, view="tree"), 404)
    assert_error_shape(api.messages(alice, dialogue_id, view="everything"), 422)


@contextmanager
def long_reply(
    api: Api, fake: FakeBackend, user: dict[str, str], tokens: int, **fields: Any,
) -> Iterator[tuple[str, Iterator[dict[str, Any]]]]:
    """A streamed dialogue of ``tokens`` paced tokens, open once its first piece has come: its
    id and the rest of its events (the first piece included)."""
    fake.tokens = [f"token{i} " for i in range(tokens)]
    fake.token_delay = 0.02
    with api.http.stream(
        "POST", "/dialogue", headers=user,
        json={"message": "long one", "stream": True, **fields},
    ) as response:
        received = events(response)
        dialogue_id = next(received)["dialogue_id"]
        first = next(received)
        assert "delta" in first
        yield dialogue_id, itertools.chain([first], received)


def stored_reply(api: Api, user: dict[str, str], dialogue_id: str) -> dict[str, Any]:
    exchange: dict[str, Any] = api.messages(user, dialogue_id).json()["exchanges"][0]
    return dict(exchange["reply"])


def test_the_offset_to_pick_a_reply_up_counts_characters_as_the_page_does(
    api: Api, fake: FakeBackend
) -> None:
    """Emoji outside the BMP, a ZWJ sequence, a letter and its combining accent, CJK: the
    ``offset`` is in code points, the unit of the page's live text (``app.chat.log``), so what
    a client has plus what it is sent from there is the reply, nothing doubled or lost."""
    alice = api.user("alice")
    fake.tokens = ["🦀 ", "👩\u200d", "💻 cafe", "\u0301 ", "漢字 ", *(f"{i} " for i in range(60))]
    fake.token_delay = 0.02
    whole = "".join(fake.tokens)
    with api.http.stream("POST", "/dialogue", headers=alice,
                         json={"message": "emoji", "stream": True}) as response:
        received = events(response)
        dialogue_id = next(received)["dialogue_id"]
        got = next(received)["delta"] + next(received)["delta"]
    with api.http.stream("GET", f"/dialogues/{dialogue_id}/stream", headers=alice,
                         params={"offset": len(got)}) as response:
        _, *deltas, _ = events(response)
    assert got + "".join(event["delta"] for event in deltas) == whole
    with api.http.stream("GET", f"/dialogues/{dialogue_id}/stream", headers=alice,
                         params={"offset": 4}) as ended:
        _, rest, _ = events(ended)
    assert rest["delta"] == whole[4:] == "💻 cafe\u0301 漢字 " + whole[15:]


def test_a_database_that_does_not_answer_is_a_503_to_try_again(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's failures reach a client mapped once (``app.chat.conversations``): a
    database locked or gone is a 503 with Retry-After and a sentence, never a traceback."""
    alice = api.user("alice")

    def locked(*args: Any) -> None:
        raise OperationalError("SELECT …", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(Store, "list_conversations", locked)
    answer = api.http.get("/dialogues", headers=alice)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert answer.json() == {
        "error": "The database did not answer; nothing was changed. Try again in a moment."
    }


@pytest.mark.parametrize("step", [(Running, "hold"), (Limits, "take")],
                         ids=["running place", "message rate"])
def test_a_database_that_does_not_answer_at_admission_refuses_the_message_whole(
    api: Api, monkeypatch: pytest.MonkeyPatch, step: tuple[type, str]
) -> None:
    """A message's admission counts it in the database (the user's running replies,
    ``Guard.hold``; the message rate, ``Guard.check``): a database that does not answer
    then is a 503 to try again, and nothing is stored or held."""
    alice = api.user("alice")

    def locked(*args: Any) -> None:
        raise OperationalError("INSERT …", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(*step, locked)
    answer = api.say(alice, "hello")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert "The database did not answer" in assert_error_shape(answer, 503)["error"]
    monkeypatch.undo()
    assert api.http.get("/dialogues", headers=alice).json() == []
    assert api.say(alice, "hello").status_code == 200, "nothing was left held"


def test_a_client_that_leaves_mid_stream_picks_the_reply_up_where_it_left(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    with long_reply(api, fake, alice, 100) as (dialogue_id, received):
        got = next(received)["delta"]
    # Leaving the block closed the connection before the reply ended: it goes on.
    with api.http.stream(
        "GET", f"/dialogues/{dialogue_id}/stream", headers=alice, params={"offset": len(got)}
    ) as response:
        assert response.status_code == 200
        first, *deltas, last = events(response)
    assert first["dialogue_id"] == dialogue_id
    assert got + "".join(event["delta"] for event in deltas) == "".join(fake.tokens)
    assert (last["done"], last["stats"]["finish"], last["message_id"]) == (
        True, "stop", first["message_id"])
    assert (fake.cancelled, fake.completed) == (0, 1)
    assert stored_reply(api, alice, dialogue_id)["content"] == "".join(fake.tokens)

    # Once it has ended, the same call gives the whole reply at once.
    with api.http.stream("GET", f"/dialogues/{dialogue_id}/stream", headers=alice) as again:
        _, whole, end = events(again)
    assert whole["delta"] == "".join(fake.tokens)
    assert end == last


def test_a_reply_waiting_for_a_slot_is_told_so_before_its_text(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    """Against llama-server with one slot (the fake stands for it: tests/fake_backend.py): while
    one reply holds the slot, the next is told first that it waits, then streams once the slot
    is free; a reply that finds the slot free is told nothing."""
    fake.kind, fake.slots = "llama.cpp", 1
    api = start_api()
    alice, bob = api.user("alice"), api.user("bob")
    with (
        long_reply(api, fake, alice, 20) as (_, first),
        api.http.stream("POST", "/dialogue", headers=bob,
                        json={"message": "me too", "stream": True}) as response,
    ):
        received = events(response)
        opened, waiting = next(received), next(received)
        assert set(opened) == {"dialogue_id", "message_id"}
        assert waiting == {"waiting": 0, "notice": waiting_notice(0)}
        assert "Queued" in waiting["notice"]
        list(first)  # the first reply ends: its slot is free
        *deltas, end = received
    assert "".join(event["delta"] for event in deltas) == "".join(fake.tokens)
    assert end["error"] is None
    with api.http.stream("POST", "/dialogue", headers=bob,
                         json={"message": "alone", "stream": True}) as response:
        assert not [event for event in events(response) if "waiting" in event]


def test_a_client_that_asked_for_it_stops_the_reply_by_leaving(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    with long_reply(api, fake, alice, 200, stop_on_disconnect=True) as (dialogue_id, _):
        pass
    wait_for(lambda: fake.cancelled == 1)
    assert fake.completed == 0
    wait_for(lambda: stored_reply(api, alice, dialogue_id)["status"] != "streaming")
    stopped = stored_reply(api, alice, dialogue_id)
    assert stopped["status"] == "stopped"
    assert stopped["stats"]["finish"] == "stopped"
    assert stopped["content"].startswith("token0 ")
    assert len(stopped["content"]) < len("".join(fake.tokens))


@pytest.mark.parametrize("keeps_running", [True, False])
def test_a_client_that_gives_up_waiting_stops_the_reply_only_if_replies_do_not_keep_running(
    start_api: Callable[..., Api], fake: FakeBackend, keeps_running: bool
) -> None:
    api = start_api(reply_keeps_running=keeps_running)
    fake.tokens = [f"token{i} " for i in range(100)]
    fake.token_delay = 0.02
    alice = api.user("alice")
    request = api.http.build_request("POST", "/dialogue", headers=alice,
                                     json={"message": "long one"})
    head = f"POST {request.url.raw_path.decode()} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in request.headers.items())
    with socket.create_connection((request.url.host, request.url.port)) as client:
        client.sendall(f"{head}\r\n".encode() + request.content)
        wait_for(lambda: fake.chunks > 0, what="the reply under way")
    # The connection is closed before the answer came: the client gave up waiting.
    [dialogue] = api.http.get("/dialogues", headers=alice).json()
    wait_for(lambda: stored_reply(api, alice, dialogue["id"])["status"] != "streaming")
    reply = stored_reply(api, alice, dialogue["id"])
    if keeps_running:
        assert (reply["status"], reply["content"]) == ("stop", "".join(fake.tokens))
        assert fake.cancelled == 0
    else:
        assert reply["status"] == "stopped"
        assert fake.cancelled == 1


def test_stop_from_another_client_ends_the_reply_for_its_follower(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    with long_reply(api, fake, alice, 200) as (dialogue_id, received):
        mallory = api.user("mallory")
        assert api.http.post(f"/dialogues/{dialogue_id}/stop", headers=mallory).status_code \
            == 404
        assert api.http.post(f"/dialogues/{dialogue_id}/stop", headers=alice).status_code == 204
        last = list(received)[-1]
    assert last["stats"]["finish"] == "stopped"
    wait_for(lambda: stored_reply(api, alice, dialogue_id)["status"] == "stopped")
    assert fake.cancelled == 1
    assert api.http.get(f"/dialogues/{dialogue_id}/stream", headers=mallory).status_code == 404


def test_a_reply_another_process_writes_is_not_followed_here(api: Api) -> None:
    alice = api.user("alice")
    store = Store(api.database_url)
    ProcessLease(store, timedelta(minutes=1)).beat()  # the other process, alive
    user_id = store.user_id("alice")
    begun = store.begin_turn(user_id, None, "", {}, None, message="hi", title="hi")
    store.save_reply(user_id, begun.reply_id, "half a rep")
    answer = api.http.get(f"/dialogues/{begun.conversation_id}/stream", headers=alice)
    assert "another app process" in assert_error_shape(answer, 409)["error"].lower()
    store.engine.dispose()


def test_running_replies_are_limited_per_user_and_per_process(
    start_api: Callable[..., Api], fake: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = start_api(max_running_replies_per_user=1, max_running_replies=2)
    release = Running.release

    def slowly(self: Running, place: int) -> None:  # a database slow to answer
        time.sleep(0.5)
        release(self, place)

    monkeypatch.setattr(Running, "release", slowly)
    alice, bob, carol = api.user("alice"), api.user("bob"), api.user("carol")
    with long_reply(api, fake, alice, 300) as (dialogue_id, _):
        refused = api.say(alice, "and another")
        assert refused.status_code == 429
        assert "stop one or wait" in assert_error_shape(refused, 429)["error"]
        assert len(api.http.get("/dialogues", headers=alice).json()) == 1, "nothing stored"
        with long_reply(api, fake, bob, 300):
            full = api.say(carol, "me too")
            assert_error_shape(full, 503)
            assert full.headers["Retry-After"] == "5"
        assert api.http.post(f"/dialogues/{dialogue_id}/stop", headers=alice).status_code == 204
        # Stop answers once the reply has ended: stored, its place given back.
        assert stored_reply(api, alice, dialogue_id)["status"] == "stopped"
    fake.token_delay = 0
    assert api.say(alice, "now it fits").status_code == 200, "at once, after the stop"


def test_a_dialogue_deleted_while_its_reply_streams_stays_deleted(
    api: Api, fake: FakeBackend, caplog: pytest.LogCaptureFixture,
) -> None:
    alice = api.user("alice")
    with long_reply(api, fake, alice, 40) as (dialogue_id, received):
        assert api.http.delete(f"/dialogues/{dialogue_id}", headers=alice).status_code == 204
        last = list(received)[-1]
    assert last["done"] is True
    assert last["error"] is None, "the reply still reached its client"
    assert api.messages(alice, dialogue_id).status_code == 404
    assert api.http.get("/dialogues", headers=alice).json() == []
    assert "Could not save" not in caplog.text


def test_a_backend_failure_mid_reply_is_reported_and_kept(api: Api, fake: FakeBackend) -> None:
    fake.mode = "generation_error"
    alice = api.user("alice")
    body = api.say(alice, "hi").json()
    assert body["reply"] == "Hello,"
    assert "CUDA out of memory" in body["error"]
    assert body["stats"]["finish"] == "interrupted"
    stored = api.messages(alice, body["dialogue_id"]).json()["exchanges"][0]["reply"]
    assert (stored["status"], stored["content"]) == ("interrupted", "Hello,")
    assert "CUDA out of memory" in stored["error"]


def test_messages_that_cannot_be_sent_are_refused_and_not_stored(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    api = start_api(max_message_chars=50)
    alice = api.user("alice")
    too_long = assert_error_shape(api.say(alice, "x" * 51), 422)
    assert "51 characters; the limit is 50" in too_long["error"]
    assert "empty" in assert_error_shape(api.say(alice, "  \n "), 422)["error"]
    overflow = assert_error_shape(api.say(alice, "hi", max_new_tokens=2040), 422)
    assert "lower max new tokens" in overflow["error"]
    never = assert_error_shape(api.say(alice, "hi", max_new_tokens=100000), 422)["error"]
    assert never == (
        "Max new tokens (100000) leaves no room for the message in this model's context "
        "(2048 tokens, shared by the message and the reply). Set max new tokens below 2048, "
        "like 1024."
    )
    invalid = assert_error_shape(api.say(alice, "hi", temperature=9, colour="blue"), 422)
    assert [problem["loc"] for problem in invalid["detail"]] == [
        ["body", "temperature"], ["body", "colour"],
    ]
    assert all("input" not in problem for problem in invalid["detail"])
    nul = assert_error_shape(api.say(alice, "a\x00b"), 422)
    assert "NUL" in nul["error"]
    broken = api.http.post(
        "/dialogue", headers={**alice, "Content-Type": "application/json"}, content=b"{nope",
    )
    assert_error_shape(broken, 422)
    assert fake.requests == []
    assert api.http.get("/dialogues", headers=alice).json() == []


def test_the_backends_model_or_why_there_is_none(
    start_api: Callable[..., Api], fake: FakeBackend, backend: ServerThread
) -> None:
    api = start_api(backend_check_interval=0.2)
    alice = api.user("alice")
    model = api.http.get("/models", headers=alice).json()
    assert (model["model"], model["backend"]) == (fake.model_id, "tgi")
    assert (model["max_input_tokens"], model["max_total_tokens"]) == (1024, 2048)
    assert "temperature" in model["controls"]

    backend.stop()  # the background checks find it gone
    wait_for(lambda: api.http.get("/models", headers=alice).status_code == 503)
    unreachable = assert_error_shape(api.http.get("/models", headers=alice), 503)
    assert "unreachable" in unreachable["error"]
    refused = assert_error_shape(api.say(alice, "hi"), 503)
    assert "unreachable" in refused["error"]
    assert api.http.get("/dialogues", headers=alice).json() == [], "nothing stored"


def test_users_cannot_reach_each_others_dialogues(api: Api, fake: FakeBackend) -> None:
    alice, bob = api.user("alice"), api.user("bob")
    dialogue_id = api.say(alice, "alice's secret").json()["dialogue_id"]
    sent = len(fake.requests)

    assert api.http.get("/dialogues", headers=bob).json() == []
    missing = secrets.token_hex(16)
    for target in (dialogue_id, missing):
        answers = [
            api.messages(bob, target),
            api.say(bob, "let me in", dialogue_id=target),
            api.http.delete(f"/dialogues/{target}", headers=bob),
        ]
        for response in answers:
            body = assert_error_shape(response, 404)
            assert body["error"] == f"No dialogue {target!r} among yours."
            assert "alice" not in response.text
    assert len(fake.requests) == sent, "nothing went to the backend"
    stored = api.messages(alice, dialogue_id).json()
    assert [e["user"] for e in stored["exchanges"]] == ["alice's secret"]

    assert api.http.delete(f"/dialogues/{dialogue_id}", headers=alice).status_code == 204
    assert api.messages(alice, dialogue_id).status_code == 404
    assert api.http.get("/dialogues", headers=alice).json() == []


def test_unknown_endpoints_answer_in_the_api_shape(api: Api) -> None:
    body = assert_error_shape(api.http.get("/nothing/here"), 404)
    assert "/api/v1/nothing/here" in body["error"]
    assert httpx.get(f"{api.server.url}/api/openapi.json").status_code == 200


def test_passwords_and_tokens_stay_out_of_logs_and_responses(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [
        api.signup("alice"),
        api.signup("alice", "an other passphrase"),
        api.signup("bob", "tiny"),
        api.login("alice", "a wrong passphrase"),
        api.login("alice", "z" * 1025),
        api.http.post("/login", json={"name": "alice", "password": PASSWORD, "extra": 1}),
    ]
    login = api.login("alice")
    token = login.json()["token"]
    alice = {"Authorization": f"Bearer {token}"}
    responses += [
        api.http.get("/me", headers=alice),
        api.say(alice, "hi"),
        api.say(alice, 5),  # type: ignore[arg-type]
        api.http.get("/me", headers={"Authorization": f"Bearer {token}x"}),
    ]
    secrets_sent = [PASSWORD, "an other passphrase", "tiny", "a wrong passphrase", "z" * 1025]
    for response in responses:
        for secret in [*secrets_sent, token]:
            assert secret not in response.text
    assert token in login.text
    for secret in [*secrets_sent, token]:
        assert secret not in caplog.text


# -- fuzzing --------------------------------------------------------------------------------


@dataclass
class Fuzzed:
    url: str
    token: str


@pytest.fixture
def fuzzed_app(start_api: Callable[..., Api]) -> Fuzzed:
    api = start_api()
    return Fuzzed(api.server.url, api.user("fuzzer")["Authorization"].removeprefix("Bearer "))


FUZZ_EXAMPLES = 30  # per endpoint and generation mode
# Not fuzzed: the first call would revoke the fuzzer's own token (test_logout_and_the_owners_
# own_tokens covers them).
ENDS_THE_SESSION = {"POST /api/v1/logout", "DELETE /api/v1/tokens/{token_id}"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_api_fail(
    fuzzed_app: Fuzzed, fake: FakeBackend, mode: GenerationMode
) -> None:
    """Requests generated from the app's own OpenAPI schema, fitting it (positive) or not
    (negative), get an answer and never a 5xx, authenticated with a real token."""
    schema = schemathesis.openapi.from_url(f"{fuzzed_app.url}/api/openapi.json")
    auth = {"Authorization": f"Bearer {fuzzed_app.token}"}
    answers: dict[str, Counter[int]] = {}
    no_invalid_input: set[str] = set()  # operations without parameters or body
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        if operation.label in ENDS_THE_SESSION:
            continue
        answers[operation.label] = Counter()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def call(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(
                base_url=fuzzed_app.url, headers=auth, checks=[not_a_server_error], timeout=30
            )
            answers[case.operation.label][response.status_code] += 1

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label
            no_invalid_input.add(operation.label)
    assert set(answers) == {
        "POST /api/v1/signup", "POST /api/v1/login", "GET /api/v1/me", "GET /api/v1/models",
        "POST /api/v1/dialogue", "GET /api/v1/dialogues", "GET /api/v1/messages",
        "DELETE /api/v1/dialogues/{dialogue_id}", "GET /healthz", "GET /api/v1/tokens",
        "GET /api/v1/dialogues/{dialogue_id}/stream", "POST /api/v1/dialogues/{dialogue_id}/stop",
        "POST /api/v1/dialogues/{dialogue_id}/share", "GET /api/v1/shares",
        "DELETE /api/v1/shares/{share_id}", "POST /api/v1/messages/{message_id}/run",
        "POST /api/v1/messages/{message_id}/check", "GET /api/v1/messages/{message_id}/check",
        "POST /api/v1/compare", "POST /api/v1/comparisons/{comparison_id}/vote",
        "GET /api/v1/comparisons", "GET /api/v1/board",
    }
    assert no_invalid_input <= {
        "GET /api/v1/me", "GET /api/v1/models", "GET /healthz", "GET /api/v1/tokens",
    }
    assert all(answers[label] for label in set(answers) - no_invalid_input), answers
    if mode is GenerationMode.POSITIVE:
        assert answers["POST /api/v1/dialogue"][200] > 0, "some replies came from the backend"
        assert fake.requests


def test_over_the_rate_limit_the_api_answers_429_with_retry_after(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    api = start_api(rate_limit_per_minute=2)
    alice = api.user("alice")
    assert [api.say(alice, f"message {i}").status_code for i in range(2)] == [200, 200]
    refused = api.say(alice, "one too many")
    body = assert_error_shape(refused, 429)
    assert "2 messages in the last minute" in body["error"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert len(fake.requests) == 2, "the refused message never reached the backend"


# -- attached files -------------------------------------------------------------------------


def test_a_dialogue_takes_attached_files_and_lists_them_with_its_messages(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    files = [{"name": "fizz.py", "content": "print('fizz')\n"},
             {"name": "notes.txt", "content": "ünïcode"}]
    said = api.say(alice, "Review these.", attachments=files)
    assert said.status_code == 200, said.text
    assert fake.requests[-1]["messages"][-1]["content"] == (
        "Review these.\n\nFile: fizz.py\n```python\nprint('fizz')\n```"
        "\n\nFile: notes.txt\n```text\nünïcode\n```"
    )
    dialogue_id = said.json()["dialogue_id"]
    [exchange] = api.messages(alice, dialogue_id).json()["exchanges"]
    assert exchange["attachments"] == [
        {"name": "fizz.py", "language": "python", "size": 14, "content": "print('fizz')\n"},
        {"name": "notes.txt", "language": "text", "size": 9, "content": "ünïcode"},
    ]
    tree = api.messages(alice, dialogue_id, view="tree").json()["messages"]
    assert [len(m["attachments"]) for m in tree] == [2, 0]


@pytest.mark.parametrize(("files", "refusal"), [
    ([{"name": "blob.bin", "content": "a\u0000b"}], "blob.bin is not a text file"),
    ([{"name": "lone.txt", "content": "\ud800"}], "lone.txt is not a text file"),
    ([{"name": "big.txt", "content": "é" * 51}], "big.txt is larger than 100 B"),
    ([{"name": f"f{n}.py", "content": "pass"} for n in range(3)],
     "You attached 3 files; a message takes at most 2"),
])
def test_a_refused_file_is_a_422_naming_it_and_nothing_is_stored(
    start_api: Callable[..., Api], fake: FakeBackend, files: list[dict[str, str]], refusal: str
) -> None:
    api = start_api(attachment_max_bytes=100, attachments_per_message=2)
    alice = api.user("alice")
    # Escaped as JSON allows, so that a lone surrogate reaches the app.
    raw = json.dumps({"message": "Look.", "attachments": files})
    said = api.http.post("/dialogue", content=raw,
                         headers={**alice, "Content-Type": "application/json"})
    body = assert_error_shape(said, 422)
    assert refusal in body["error"]
    assert api.http.get("/dialogues", headers=alice).json() == []
    assert fake.requests == []
