"""The page's handlers against a fake backend: what a user sees after each action."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr
import pytest

from app.chat import ChatService, Exchange
from app.ui import PlaygroundUI
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port

# max_new_tokens, temperature, top_p, top_k, repeat_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (512, 0.2, 0.95, 40, 1.1, 0.0, 0.0, "", -1)


def make_ui(url: str, **overrides: Any) -> PlaygroundUI:
    return PlaygroundUI(ChatService(settings_for(url, **overrides)))


async def drain(updates: AsyncIterator[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [update async for update in updates]


def last_reply(update: tuple[Any, ...]) -> str:
    content: str = update[0][-1]["content"]
    return content


async def test_a_reply_streams_with_its_stats(backend: ServerThread, fake: FakeBackend) -> None:
    fake.tokens = ["def", " f", "():", "\n", "    pass"]
    conversation: list[Exchange] = []
    updates = await drain(make_ui(backend.url).send("write f", conversation, "sys", *CONTROLS))
    assert len(updates) >= 3, "the reply grows in several updates"
    assert updates[0][2] == "", "the message box is cleared once the message is taken"
    final = last_reply(updates[-1])
    assert final.startswith("def f():\n    pass")
    assert "5 tokens" in final
    assert "tokens/s" in final
    assert "finished" in final
    assert conversation[0].reply == "def f():\n    pass"
    assert fake.requests[-1]["messages"][0] == {"role": "system", "content": "sys"}


async def test_a_reply_cut_at_max_new_tokens_says_so(backend: ServerThread) -> None:
    controls = (2, *CONTROLS[1:])
    updates = await drain(make_ui(backend.url).send("hi", [], "", *controls))
    assert "cut at the token limit" in last_reply(updates[-1])


async def test_an_empty_message_sends_nothing(backend: ServerThread, fake: FakeBackend) -> None:
    conversation: list[Exchange] = []
    updates = await drain(make_ui(backend.url).send("   \n", conversation, "", *CONTROLS))
    assert updates == [(gr.skip(),) * 5]
    assert conversation == []
    assert fake.requests == []


async def test_a_message_over_the_limit_is_refused_and_kept(
    backend: ServerThread, fake: FakeBackend
) -> None:
    conversation = [Exchange("earlier", "reply", done=True)]
    ui = make_ui(backend.url, max_message_chars=10)
    with pytest.raises(gr.Error, match="11 characters; the limit is 10"):
        await drain(ui.send("x" * 11, conversation, "", *CONTROLS))
    assert conversation == [Exchange("earlier", "reply", done=True)]
    assert fake.requests == []


async def test_a_message_too_long_for_the_context_is_refused(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.max_input_tokens, fake.max_total_tokens = 100, 200
    conversation: list[Exchange] = []
    with pytest.raises(gr.Error, match="Shorten the message"):
        await drain(make_ui(backend.url).send("word " * 200, conversation, "", *CONTROLS))
    assert conversation == []
    assert fake.requests == []


async def test_older_turns_left_out_are_announced(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.max_input_tokens, fake.max_total_tokens = 300, 400
    conversation = [Exchange("q" * 150, "a" * 150, done=True) for _ in range(4)]
    controls = (100, *CONTROLS[1:])
    updates = await drain(make_ui(backend.url).send("next", conversation, "", *controls))
    # Each exchange is estimated at 116 tokens: two fit the budget of 300 beside the message.
    assert "The 2 oldest exchanges were left out" in updates[0][3]
    assert len(fake.requests[-1]["messages"]) == 5


async def test_backend_down_then_back_without_a_restart(fake: FakeBackend) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ui = make_ui(url)
    header = (await ui.on_load())[0]
    assert f"The backend at {url} is unreachable" in header
    conversation: list[Exchange] = []
    updates = await drain(ui.send("hello?", conversation, "", *CONTROLS))
    assert f"⚠️ The backend at {url} is unreachable" in last_reply(updates[-1])
    assert "Traceback" not in last_reply(updates[-1])
    with ServerThread(fake.app(), port=port):
        updates = await drain(ui.send("hello again", conversation, "", *CONTROLS))
    assert last_reply(updates[-1]).startswith("Hello, world!")
    assert fake.requests[-1]["messages"][-1]["content"] == "hello again"
    assert [ex.user for ex in conversation] == ["hello?", "hello again"]


async def test_backend_dying_mid_stream_keeps_the_partial_reply(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.mode = "die_mid_stream"
    conversation: list[Exchange] = []
    updates = await drain(make_ui(backend.url).send("hi", conversation, "", *CONTROLS))
    final = last_reply(updates[-1])
    assert final.startswith("Hello,")
    assert "broke before the reply was finished" in final
    assert "interrupted" in final
    assert conversation[0].reply == "Hello,"
    assert conversation[0].done


async def test_stop_closes_the_upstream_stream(fake: FakeBackend, backend: ServerThread) -> None:
    fake.tokens = [f"t{i} " for i in range(200)]
    fake.token_delay = 0.02
    ui = make_ui(backend.url)
    conversation: list[Exchange] = []
    updates = ui.send("go on", conversation, "", *CONTROLS)
    await anext(updates)
    partial = last_reply(await anext(updates))
    await ui.stop(conversation)
    rest = await drain(updates)
    assert len(rest) == 1, "the handler ends at once with the reply marked stopped"
    assert last_reply(rest[0]).endswith("stopped by you_")
    assert last_reply(rest[0]).startswith(partial)
    await wait_for(lambda: fake.cancelled == 1)
    assert fake.completed == 0


async def test_stop_works_while_the_backend_is_silent(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.mode = "stall"
    ui = make_ui(backend.url)
    conversation: list[Exchange] = []
    updates = ui.send("go on", conversation, "", *CONTROLS)
    await anext(updates)
    await anext(updates)
    asyncio.get_running_loop().call_later(0.2, conversation[-1].stop.set)
    final = last_reply((await drain(updates))[-1])
    assert final.startswith("Hello,")
    assert final.endswith("stopped by you_")
    await wait_for(lambda: fake.cancelled == 1)


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the fake backend never saw the stream closed")


async def test_retry_undo_and_clear(backend: ServerThread, fake: FakeBackend) -> None:
    ui = make_ui(backend.url)
    conversation: list[Exchange] = []
    await drain(ui.send("first", conversation, "", *CONTROLS))
    await drain(ui.retry(conversation, "", *CONTROLS))
    assert [ex.user for ex in conversation] == ["first"]
    assert [r["messages"][-1]["content"] for r in fake.requests] == ["first", "first"]
    assert len(fake.requests[-1]["messages"]) == 1, "the retried reply is not sent back"
    shown, conversation, box = await ui.undo(conversation)
    assert (shown, conversation, box) == ([], [], "first")
    await drain(ui.send("again", conversation, "", *CONTROLS))
    assert await ui.clear(conversation) == ([], [], "")


@pytest.mark.parametrize(("kind", "top_k_visible"), [("tgi", False), ("llama.cpp", True)])
async def test_controls_the_backend_ignores_are_hidden(
    fake: FakeBackend, kind: str, top_k_visible: bool
) -> None:
    fake.kind = kind  # type: ignore[assignment]
    with ServerThread(fake.app()) as server:
        header, max_new, *_, top_k, _rp, _fp, _pp, _stop, _seed = await make_ui(
            server.url
        ).on_load()
    assert f"Model **{fake.model_id}**" in header
    assert top_k["visible"] is top_k_visible
    assert max_new["maximum"] == 2047


async def test_too_many_stop_sequences_for_tgi(backend: ServerThread) -> None:
    controls = (*CONTROLS[:7], "a\nb\nc\nd\ne", -1)
    with pytest.raises(gr.Error, match="at most 4 stop sequences"):
        await drain(make_ui(backend.url).send("hi", [], "", *controls))


async def test_a_refused_retry_keeps_the_reply_it_would_replace(backend: ServerThread) -> None:
    ui = make_ui(backend.url)
    conversation: list[Exchange] = []
    await drain(ui.send("first", conversation, "", *CONTROLS))
    too_many_stops = (*CONTROLS[:7], "a\nb\nc\nd\ne", -1)
    with pytest.raises(gr.Error, match="at most 4 stop sequences"):
        await drain(ui.retry(conversation, "", *too_many_stops))
    assert [(ex.user, ex.reply) for ex in conversation] == [("first", "Hello, world!")]
