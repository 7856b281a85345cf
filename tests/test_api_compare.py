"""Compare through the REST API (/api/v1/compare, /comparisons, /board) of the real app, with
two fake backends of different speeds: a TGI serving one model and a vLLM serving another."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.chat.export import export_markdown
from app.server import create_app
from app.store import Store, transfer
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port
from tests.test_api import Api, assert_error_shape, events
from tests.waiting import wait_for

FAST = "bigcode/starcoder2-3b"  # the TGI of the ``backend`` fixture
SLOW = "Qwen/Qwen2.5-Coder-7B-Instruct"
FAST_TOKENS = ["def", " f", "():", " pass"]
SLOW_TOKENS = ["Hi", " from", " the", " slow", " one"]


@pytest.fixture
def slow() -> FakeBackend:
    return FakeBackend(kind="openai", model_id=SLOW, tokens=list(SLOW_TOKENS), token_delay=0.06)


@pytest.fixture
def start_arena(
    backend: ServerThread, fake: FakeBackend, slow: FakeBackend, tmp_path: Path
) -> Iterator[Callable[..., Api]]:
    """Start the whole app with accounts on and both backends."""
    fake.tokens, fake.token_delay = list(FAST_TOKENS), 0.01
    with ExitStack() as stack:
        second = stack.enter_context(ServerThread(slow.app()))

        def start(**overrides: Any) -> Api:
            database_url = f"sqlite:///{tmp_path / f'arena-{free_port()}.db'}"
            settings = settings_for(backend.url, **{
                "backends": [{"name": "gpu", "kind": "tgi", "url": backend.url},
                             {"name": "vllm", "kind": "openai", "url": second.url}],
                "database_url": database_url, "auth_mode": "password", "allow_signup": True,
                **overrides,
            })
            server = stack.enter_context(ServerThread(create_app(settings)))
            http = stack.enter_context(httpx.Client(base_url=f"{server.url}/api/v1", timeout=30))
            return Api(server, database_url, http)

        yield start


@pytest.fixture
def arena(start_arena: Callable[..., Api]) -> Api:
    return start_arena()


def compare(api: Api, user: dict[str, str], **fields: Any) -> httpx.Response:
    return api.http.post("/compare", headers=user, json={"message": "reverse a string", **fields})


def streamed(api: Api, user: dict[str, str], **fields: Any) -> list[dict[str, Any]]:
    with api.http.stream("POST", "/compare", headers=user,
                         json={"message": "reverse a string", "stream": True, **fields}) as answer:
        assert answer.status_code == 200, answer.read()
        return list(events(answer))


def by_side(received: list[dict[str, Any]], side: str) -> tuple[str, dict[str, Any]]:
    """A side's text, joined from its deltas, and its end."""
    mine = [e for e in received if e.get("side") == side]
    assert mine[-1]["done"] is True
    assert all("delta" in e for e in mine[:-1])
    return "".join(e["delta"] for e in mine[:-1]), mine[-1]


def test_two_models_stream_side_by_side_a_vote_is_stored_and_the_board_shows_both(
    arena: Api, fake: FakeBackend, slow: FakeBackend
) -> None:
    alice = arena.user("alice")
    received = streamed(arena, alice, left=FAST, right=SLOW)
    opened, last = received[0], received[-1]
    assert opened["blind"] is False
    assert (opened["left"]["model"], opened["right"]["model"]) == (FAST, SLOW)
    left_text, left_end = by_side(received, "left")
    right_text, right_end = by_side(received, "right")
    assert (left_text, right_text) == ("".join(FAST_TOKENS), "".join(SLOW_TOKENS))
    assert (left_end["message_id"], right_end["message_id"]) == (
        opened["left"]["message_id"], opened["right"]["message_id"])
    for end in (left_end, right_end):
        assert end["error"] is None
        assert end["stats"]["finish"] == "stop"
        assert end["stats"]["time_to_first_token"] > 0
    assert left_end["stats"]["tokens_per_second"] > right_end["stats"]["tokens_per_second"]
    assert received.index(left_end) < received.index(right_end), "the fast side ends first"
    assert last["done"] is True
    assert last["error"] is None
    assert (fake.requests[-1]["messages"][-1]["content"],
            slow.requests[-1]["messages"][-1]["content"]) == ("reverse a string",) * 2

    # Both replies answer one message: two versions of one reply.
    tree = arena.messages(alice, opened["dialogue_id"], view="tree").json()["messages"]
    assert [m["role"] for m in tree] == ["user", "assistant", "assistant"]
    assert {m["parent_id"] for m in tree[1:]} == {tree[0]["id"]}
    assert [m["model"] for m in tree[1:]] == [FAST, SLOW]

    listed = arena.http.get("/comparisons", headers=alice).json()
    assert [c["id"] for c in listed] == [last["comparison_id"]]
    assert listed[0]["outcome"] is None
    assert listed[0]["left"]["first_token_ms"] == pytest.approx(
        left_end["stats"]["time_to_first_token"] * 1000)
    voted = arena.http.post(f"/comparisons/{last['comparison_id']}/vote", headers=alice,
                            json={"outcome": "left"})
    assert voted.status_code == 200, voted.text
    assert (voted.json()["outcome"], voted.json()["left"]["model"]) == ("left", FAST)
    assert arena.http.post(f"/comparisons/{last['comparison_id']}/vote", headers=alice,
                           json={"outcome": "tie"}).json()["outcome"] == "tie", "changeable"
    arena.http.post(f"/comparisons/{last['comparison_id']}/vote", headers=alice,
                    json={"outcome": "left"})

    board = arena.http.get("/board", headers=alice).json()
    assert [row["model"] for row in board] == [FAST, SLOW]
    best, worst = board
    assert best["rating"] > 1000 > worst["rating"]
    assert best["low"] < best["rating"] < best["high"]
    assert (best["votes"], best["comparisons"], best["backends"]) == (1, 1, ["gpu"])
    assert worst["backends"] == ["vllm"]
    assert best["first_token_ms"] > 0
    assert best["tokens_per_second"] > worst["tokens_per_second"] > 0

    bob = arena.user("bob")
    assert arena.http.get("/board", headers=bob).json() == [], "each user's own board"
    other = arena.http.post(f"/comparisons/{last['comparison_id']}/vote", headers=bob,
                            json={"outcome": "right"})
    assert "No comparison" in assert_error_shape(other, 404)["error"]
    assert_error_shape(arena.http.post("/comparisons/999/vote", headers=alice,
                                       json={"outcome": "left"}), 404)
    assert_error_shape(arena.http.post(f"/comparisons/{last['comparison_id']}/vote",
                                       headers=alice, json={"outcome": "better"}), 422)


def test_the_whole_answer_holds_both_replies_and_continues_the_conversation(
    arena: Api, fake: FakeBackend, slow: FakeBackend
) -> None:
    alice = arena.user("alice")
    first = arena.say(alice, "hello", model=SLOW).json()
    answer = compare(arena, alice, left=SLOW, right=FAST, dialogue_id=first["dialogue_id"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["dialogue_id"] == first["dialogue_id"]
    assert (body["left"]["model"], body["left"]["reply"]) == (SLOW, "".join(SLOW_TOKENS))
    assert (body["right"]["model"], body["right"]["reply"]) == (FAST, "".join(FAST_TOKENS))
    assert body["left"]["stats"]["tokens_per_second"] < body["right"]["stats"][
        "tokens_per_second"]
    assert isinstance(body["comparison_id"], int)
    assert body["error"] is None
    # Each side was sent the conversation so far.
    assert [m["content"] for m in fake.requests[-1]["messages"][-3:]] == [
        "hello", "".join(SLOW_TOKENS), "reverse a string"]


def test_a_blind_comparison_hides_the_names_until_the_vote(arena: Api) -> None:
    alice = arena.user("alice")
    wait_for(lambda: len(arena.http.get("/models", headers=alice).json()["models"]) == 2)
    received = streamed(arena, alice, blind=True)
    text = json.dumps(received)
    for name in (FAST, SLOW, "gpu", "vllm", "tgi"):
        assert name not in text
    opened, last = received[0], received[-1]
    assert (opened["blind"], opened["left"]["model"], opened["right"]["model"]) == (
        True, None, None)
    texts = {by_side(received, side)[0] for side in ("left", "right")}
    assert texts == {"".join(FAST_TOKENS), "".join(SLOW_TOKENS)}, "two different models"

    comparison = f"/comparisons/{last['comparison_id']}"
    listed = arena.http.get("/comparisons", headers=alice)
    assert FAST not in listed.text
    assert SLOW not in listed.text
    assert listed.json()[0]["left"]["model"] is None
    assert arena.http.get("/board", headers=alice).json() == [], "it would show the names"

    voted = arena.http.post(f"{comparison}/vote", headers=alice, json={"outcome": "right"})
    assert voted.status_code == 200
    shown = {voted.json()[side]["model"] for side in ("left", "right")}
    assert shown == {FAST, SLOW}
    again = arena.http.post(f"{comparison}/vote", headers=alice, json={"outcome": "left"})
    assert "final" in assert_error_shape(again, 409)["error"]
    assert {row["model"] for row in arena.http.get("/board", headers=alice).json()} == {
        FAST, SLOW}


def test_a_blind_comparisons_replies_hide_their_models_until_the_vote(arena: Api) -> None:
    alice = arena.user("alice")
    wait_for(lambda: len(arena.http.get("/models", headers=alice).json()["models"]) == 2)
    compared = compare(arena, alice, blind=True).json()
    dialogue = compared["dialogue_id"]
    store = Store(arena.database_url)

    def readable() -> dict[str, str]:
        """Where the user reads the conversation: its messages (branch and tree) and its
        exports."""
        user_id = store.user_id("alice")
        return {"branch": arena.messages(alice, dialogue).text,
                "tree": arena.messages(alice, dialogue, view="tree").text,
                "json": transfer.export_json(store, user_id, dialogue),
                "markdown": export_markdown(store, user_id, dialogue)}

    try:
        for where, text in readable().items():
            for name in (FAST, SLOW, '"gpu"', '"vllm"'):
                assert name not in text, (where, name)
        assert json.loads(readable()["json"])["conversations"][0]["comparisons"] == []
        arena.http.post(f"/comparisons/{compared['comparison_id']}/vote", headers=alice,
                        json={"outcome": "tie"})
        tree = arena.messages(alice, dialogue, view="tree").json()
        assert {m["model"] for m in tree["messages"] if m["role"] == "assistant"} == {
            FAST, SLOW}, "shown once voted"
        shown = readable()
        assert FAST in shown["json"]
        assert SLOW in shown["json"]
        assert FAST in shown["markdown"] or SLOW in shown["markdown"], "the branch on screen"
    finally:
        store.engine.dispose()


def test_the_same_model_twice_and_a_half_named_pair_are_refused_and_nothing_stored(
    arena: Api, fake: FakeBackend
) -> None:
    alice = arena.user("alice")
    same = assert_error_shape(compare(arena, alice, left=FAST, right=FAST), 422)
    assert same["error"] == f"Both sides are {FAST}: pick two different models to compare."
    assert_error_shape(compare(arena, alice, left=FAST), 422)
    assert_error_shape(compare(arena, alice, left=FAST, right=SLOW, blind=True), 422)
    unknown = assert_error_shape(compare(arena, alice, left=FAST, right="nobody/offers"), 422)
    assert "No backend offers the model 'nobody/offers'" in unknown["error"]
    assert arena.http.get("/dialogues", headers=alice).json() == []
    assert fake.requests == []


def test_a_blind_comparison_needs_two_models_on_offer(
    start_arena: Callable[..., Api], backend: ServerThread
) -> None:
    api = start_arena(backends=[{"name": "gpu", "kind": "tgi", "url": backend.url}])
    alice = api.user("alice")
    refused = assert_error_shape(compare(api, alice, blind=True), 422)
    assert "needs two models on offer" in refused["error"]


def test_one_side_failing_leaves_the_other_whole_and_says_which(
    arena: Api, fake: FakeBackend
) -> None:
    fake.mode = "generation_error"
    alice = arena.user("alice")
    received = streamed(arena, alice, left=FAST, right=SLOW)
    left_end = by_side(received, "left")[1]
    right_text, right_end = by_side(received, "right")
    assert "CUDA out of memory" in left_end["error"]
    assert left_end["stats"]["finish"] == "interrupted"
    assert right_text == "".join(SLOW_TOKENS)
    assert right_end["error"] is None
    assert right_end["stats"]["finish"] == "stop"
    assert isinstance(received[-1]["comparison_id"], int), "recorded all the same"

    whole = compare(arena, alice, left=SLOW, right=FAST).json()
    assert (whole["left"]["error"], whole["left"]["reply"]) == (None, "".join(SLOW_TOKENS))
    assert "CUDA out of memory" in whole["right"]["error"]


def test_both_replies_count_against_the_users_limits(
    start_arena: Callable[..., Api], fake: FakeBackend, slow: FakeBackend
) -> None:
    api = start_arena(rate_limit_per_minute=3)
    alice = api.user("alice")
    assert compare(api, alice, left=FAST, right=SLOW).status_code == 200
    assert api.say(alice, "one more").status_code == 200
    over = assert_error_shape(compare(api, alice, left=FAST, right=SLOW), 429)
    assert "3 messages in the last minute" in over["error"]
    assert len(api.http.get("/dialogues", headers=alice).json()) == 2, "nothing stored"

    api = start_arena(max_running_replies_per_user=1)
    bob = api.user("bob")
    running = assert_error_shape(compare(api, bob, left=FAST, right=SLOW), 429)
    assert "stop one or wait" in running["error"]
    assert api.http.get("/dialogues", headers=bob).json() == []
    assert len(fake.requests) + len(slow.requests) == 3, "only the first comparison's and one"


def long_replies(fake: FakeBackend, slow: FakeBackend) -> None:
    """Replies of 200 tokens a side, still streaming when a test stops or leaves them."""
    fake.tokens = [f"fast{i} " for i in range(200)]
    slow.tokens = [f"slow{i} " for i in range(200)]


def test_a_client_that_leaves_stops_both(
    arena: Api, fake: FakeBackend, slow: FakeBackend
) -> None:
    long_replies(fake, slow)
    alice = arena.user("alice")
    with arena.http.stream("POST", "/compare", headers=alice, json={
        "message": "long", "left": FAST, "right": SLOW, "stream": True,
        "stop_on_disconnect": True,
    }) as answer:
        received = events(answer)
        opened = next(received)
        next(event for event in received if "delta" in event)
    wait_for(lambda: fake.cancelled == 1 and slow.cancelled == 1)
    assert fake.completed == slow.completed == 0

    def stored() -> list[dict[str, Any]]:
        tree = arena.messages(alice, opened["dialogue_id"], view="tree").json()
        return [m for m in tree["messages"] if m["role"] == "assistant"]

    wait_for(lambda: all(m["status"] == "stopped" for m in stored()))
    wait_for(lambda: len(arena.http.get("/comparisons", headers=alice).json()) == 1)


def test_stopping_the_dialogue_stops_both_and_following_it_follows_the_reply_on_screen(
    arena: Api, fake: FakeBackend, slow: FakeBackend
) -> None:
    long_replies(fake, slow)
    alice = arena.user("alice")
    with arena.http.stream("POST", "/compare", headers=alice, json={
        "message": "long", "left": FAST, "right": SLOW, "stream": True,
    }) as answer:
        received = events(answer)
        opened = next(received)
        next(event for event in received if "delta" in event)
    dialogue = f"/dialogues/{opened['dialogue_id']}"
    with arena.http.stream("GET", f"{dialogue}/stream", headers=alice) as followed:
        first = next(events(followed))
    assert first["message_id"] == opened["right"]["message_id"], "the conversation's leaf"

    assert arena.http.post(f"{dialogue}/stop", headers=alice).status_code == 204
    wait_for(lambda: (fake.cancelled, slow.cancelled) == (1, 1))
    tree = arena.messages(alice, opened["dialogue_id"], view="tree").json()
    assert [m["status"] for m in tree["messages"] if m["role"] == "assistant"] == [
        "stopped", "stopped"]


def test_the_board_of_everyone_only_where_the_operator_allows_it(
    start_arena: Callable[..., Api],
) -> None:
    api = start_arena()
    alice = api.user("alice")
    closed = assert_error_shape(api.http.get("/board", headers=alice,
                                             params={"everyone": "true"}), 403)
    assert "ALLOW_SHARED_BOARD" in closed["error"]

    api = start_arena(allow_shared_board=True)
    alice, bob = api.user("alice"), api.user("bob")
    compared = compare(api, alice, left=FAST, right=SLOW).json()
    api.http.post(f"/comparisons/{compared['comparison_id']}/vote", headers=alice,
                  json={"outcome": "right"})
    assert api.http.get("/board", headers=bob).json() == []
    everyone = api.http.get("/board", headers=bob, params={"everyone": "true"}).json()
    assert [row["model"] for row in everyone] == [SLOW, FAST]


def test_the_json_export_carries_both_answers_and_the_vote(arena: Api) -> None:
    alice = arena.user("alice")
    compared = compare(arena, alice, left=FAST, right=SLOW).json()
    arena.http.post(f"/comparisons/{compared['comparison_id']}/vote", headers=alice,
                    json={"outcome": "both_bad"})
    store = Store(arena.database_url)
    try:
        document = json.loads(transfer.export_json(
            store, store.user_id("alice"), compared["dialogue_id"]))
        conversation = document["conversations"][0]
        replies = {m["id"]: m for m in conversation["messages"] if m["role"] == "assistant"}
        (exported,) = conversation["comparisons"]
        assert exported["outcome"] == "both_bad"
        assert exported["blind"] is False
        assert exported["voted_at"] is not None
        assert replies[exported["left"]["reply"]]["content"] == "".join(FAST_TOKENS)
        assert replies[exported["right"]["reply"]]["content"] == "".join(SLOW_TOKENS)
        assert (exported["left"]["model"], exported["right"]["model"]) == (FAST, SLOW)
        assert exported["left"]["tokens_per_second"] > 0
        # The export imports again (the comparisons are read, not restored).
        transfer.import_json(store, store.user_id("alice"), json.dumps(document))
    finally:
        store.engine.dispose()
