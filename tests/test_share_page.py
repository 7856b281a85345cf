"""The page of a shared conversation (/share/{token}) and the share endpoints of the REST API,
on the real app served on a loopback port."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.server import create_app, open_store
from app.store import Accounts
from app.store.shares import Shares
from tests.conftest import settings_for
from tests.servers import ServerThread
from tests.stored import exchange
from tests.test_api import PASSWORD, Api, start_api  # noqa: F401 (a fixture)

HOSTILE = '<script>alert(1)</script> and <img src=x onerror="alert(2)">'
CODE_REPLY = "Like this:\n\n```python\ndef add(a, b):\n    return a + b\n```\n"


@contextmanager
def shared_app(backend: ServerThread, **overrides: Any) -> Iterator[tuple[ServerThread, str]]:
    """The app with accounts on, and the token of a share of one conversation of Alice's, who
    wrote HTML into her message and has a system prompt of her own."""
    settings = settings_for(backend.url, auth_mode="password", **overrides)
    store = open_store(settings)
    alice = Accounts(store).signup("alice", PASSWORD)
    conversation = exchange(store, alice, None, f"Write add. {HOSTILE}", CODE_REPLY,
                            title="Adding numbers",
                            system_prompt="Alice's private prompt").conversation_id
    token = Shares(store).create(alice, conversation).token
    with ServerThread(create_app(settings)) as server:
        yield server, token


def test_anyone_with_the_link_reads_the_conversation_with_highlighted_code(
    backend: ServerThread,
) -> None:
    with shared_app(backend) as (server, token):
        page = httpx.get(f"{server.url}/share/{token}")
        style = httpx.get(f"{server.url}/share/style.css")

    assert page.status_code == 200, "no sign-in needed"
    assert page.headers["content-type"].startswith("text/html")
    assert "<h1>Adding numbers</h1>" in page.text
    assert '<span class="k">def</span>' in page.text, "the code is highlighted"
    assert 'href="style.css"' in page.text
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert "pre code .k" in style.text


def test_html_in_a_message_shows_as_text_and_nothing_can_run(backend: ServerThread) -> None:
    with shared_app(backend) as (server, token):
        page = httpx.get(f"{server.url}/share/{token}")

    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script" not in page.text
    assert "<img" not in page.text
    assert not re.search(r"<(form|button|input|textarea)\b", page.text), "no controls"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy, "no scripts, frames, images or fonts"
    assert "style-src 'self'" in policy, "the served stylesheet only"
    assert "unsafe-inline" not in policy
    assert page.headers["x-robots-tag"] == "noindex"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"


def test_the_page_shows_nothing_of_its_owner_beyond_the_snapshot(backend: ServerThread) -> None:
    with shared_app(backend) as (server, token):
        page = httpx.get(f"{server.url}/share/{token}")

    assert "alice" not in page.text.casefold()
    assert "private prompt" not in page.text
    assert not re.search(r"[0-9a-f]{32}", page.text), "no conversation id"


def test_unknown_and_revoked_links_answer_404_with_a_sentence(backend: ServerThread) -> None:
    with shared_app(backend) as (server, token):
        store = open_store(settings_for(backend.url))
        shares = Shares(store)
        [share] = shares.list(store.user_id("alice"))
        before = httpx.get(f"{server.url}/share/{token}")
        shares.revoke(store.user_id("alice"), share.id)
        after = httpx.get(f"{server.url}/share/{token}")
        unknown = httpx.get(f"{server.url}/share/{'A' * 43}")

    assert before.status_code == 200
    for gone in (after, unknown):
        assert gone.status_code == 404
        assert "does not exist, or its owner has revoked it" in gone.text
        assert "Adding numbers" not in gone.text
        assert gone.headers["x-robots-tag"] == "noindex"


def test_with_sharing_off_the_page_answers_404(backend: ServerThread) -> None:
    with shared_app(backend, allow_sharing=False) as (server, token):
        page = httpx.get(f"{server.url}/share/{token}")
    assert page.status_code == 404
    assert "Sharing conversations is off on this server." in page.text


# -- the REST API ----------------------------------------------------------------------------


def share(api: Api, headers: dict[str, str], dialogue_id: str) -> httpx.Response:
    return api.http.post(f"/dialogues/{dialogue_id}/share", headers=headers)


def test_share_list_and_revoke_through_the_api(start_api: Callable[..., Api]) -> None:  # noqa: F811
    api = start_api()
    alice = api.user("alice")
    dialogue = api.say(alice, "Write add.").json()["dialogue_id"]

    made = share(api, alice, dialogue)
    assert made.status_code == 201
    body = made.json()
    assert body["url"] == f"{api.server.url}/share/{body['token']}"
    assert (body["title"], body["dialogue_id"]) == ("Write add.", dialogue)
    assert "Write add." in httpx.get(body["url"]).text
    listed = api.http.get("/shares", headers=alice).json()
    assert [s["id"] for s in listed] == [body["id"]]

    assert api.http.delete(f"/shares/{body['id']}", headers=alice).status_code == 204
    assert httpx.get(body["url"]).status_code == 404
    assert api.http.get("/shares", headers=alice).json() == []
    again = api.http.delete(f"/shares/{body['id']}", headers=alice)
    assert again.status_code == 404
    assert again.json()["error"] == f"No share {body['id']} among yours."


def test_another_user_can_neither_share_nor_revoke_through_the_api(
    start_api: Callable[..., Api],  # noqa: F811
) -> None:
    api = start_api()
    alice, bob = api.user("alice"), api.user("bob")
    dialogue = api.say(alice, "Write add.").json()["dialogue_id"]
    made = share(api, alice, dialogue).json()

    assert share(api, bob, dialogue).status_code == 404
    assert api.http.delete(f"/shares/{made['id']}", headers=bob).status_code == 404
    assert api.http.get("/shares", headers=bob).json() == []
    assert httpx.get(made["url"]).status_code == 200
    assert share(api, {}, dialogue).status_code == 401


@pytest.mark.parametrize("call", ["share", "list", "revoke"])
def test_with_sharing_off_the_api_refuses(
    start_api: Callable[..., Api], call: str,  # noqa: F811
) -> None:
    api = start_api(allow_sharing=False)
    alice = api.user("alice")
    dialogue = api.say(alice, "Write add.").json()["dialogue_id"]
    answer = {
        "share": lambda: share(api, alice, dialogue),
        "list": lambda: api.http.get("/shares", headers=alice),
        "revoke": lambda: api.http.delete("/shares/1", headers=alice),
    }[call]()
    assert answer.status_code == 403
    assert answer.json()["error"] == "Sharing is off on this server (ALLOW_SHARING=false)."
