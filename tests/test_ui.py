"""The page's handlers against a fake backend: what a user sees after each action."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest
from sqlalchemy import text

from app.backends.router import RECHECK_SECONDS
from app.chat import Chat, ChatService, Exchange, ReplyLog
from app.chat.guard import Guard
from app.server import create_app, open_store
from app.store import StoredReply
from app.ui import PlaygroundUI
from app.ui.backends import CHECKS_PER_MINUTE
from app.ui.controls import CONTROL_NAMES
from app.ui.render import EARLIER, LATER, chat_messages, user_suffix
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port
from tests.stored import imported_conversation
from tests.waiting import eventually

# The marker render.live_marker puts after the text of a reply being written.
LIVE_MARKER = re.compile(r'(\n\n)?<span class="live-tail [^"]*"></span>')

# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (512, 0.2, 0.95, 40, 1.1, 0.0, 0.0, "", -1)


def make_ui(url: str, **overrides: Any) -> PlaygroundUI:
    """The page, built, its store a SQLite file in the test's own folder; the chat is
    rendered at every update of a reply (the page's live text, ``app.live``, is left out)."""
    settings = settings_for(url, **{"stream_render_interval": 0, **overrides})
    store = open_store(settings)
    ui = PlaygroundUI(ChatService(settings), store, Guard(settings, store))
    ui.build()
    return ui


async def drain(updates: AsyncIterator[dict[Any, Any]]) -> list[dict[Any, Any]]:
    return [update async for update in updates]


def chat_shown(update: dict[Any, Any]) -> list[dict[str, Any]]:
    """The chat an update shows."""
    return next(value for key, value in update.items() if isinstance(key, gr.Chatbot))


def last_reply(update: dict[Any, Any]) -> str:
    """The last message of an update's chat, without the marker of a reply being written."""
    content: str = chat_shown(update)[-1]["content"]
    return LIVE_MARKER.sub("", content)


async def test_a_reply_streams_with_its_stats(backend: ServerThread, fake: FakeBackend) -> None:
    fake.tokens = ["def", " f", "():", "\n", "    pass"]
    chat = Chat()
    ui = make_ui(backend.url)
    updates = await drain(ui.chat.send(None, "write f", None, chat, "sys", "", None, *CONTROLS))
    assert len(updates) >= 3, "the reply grows in several updates"
    assert updates[0][ui.chat.view.message] == "", "the box is cleared once the message is taken"
    final = last_reply(updates[-1])
    assert final.startswith("def f():\n    pass")
    assert "6 tokens" in final, "TGI's usage: five tokens and the EOS token"
    assert "tokens/s" in final
    assert "finished" in final
    assert chat.exchanges[0].reply == "def f():\n    pass"
    assert fake.requests[-1]["messages"][0] == {"role": "system", "content": "sys"}


async def test_a_reply_cut_at_max_new_tokens_says_so(backend: ServerThread) -> None:
    controls = (2, *CONTROLS[1:])
    ui = make_ui(backend.url)
    updates = await drain(ui.chat.send(None, "hi", None, Chat(), "", "", None, *controls))
    assert "cut at the token limit" in last_reply(updates[-1])


async def test_an_empty_message_sends_nothing(backend: ServerThread, fake: FakeBackend) -> None:
    chat = Chat()
    updates = await drain(make_ui(backend.url).chat.send(
        None, "   \n", None, chat, "", "", None, *CONTROLS,
    ))
    assert updates == [{}]
    assert chat.exchanges == []
    assert fake.requests == []


async def test_a_message_over_the_limit_is_refused_and_kept(
    backend: ServerThread, fake: FakeBackend
) -> None:
    chat = Chat(None, [Exchange("earlier", ReplyLog("reply"), done=True)])
    ui = make_ui(backend.url, max_message_chars=10)
    with pytest.raises(gr.Error, match="11 characters; the limit is 10"):
        await drain(ui.chat.send(None, "x" * 11, None, chat, "", "", None, *CONTROLS))
    assert chat.exchanges == [Exchange("earlier", ReplyLog("reply"), done=True)]
    assert fake.requests == []


async def test_a_message_too_long_for_the_context_is_refused(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.max_input_tokens, fake.max_total_tokens = 100, 200
    chat = Chat()
    controls = (50, *CONTROLS[1:])
    with pytest.raises(gr.Error, match="Shorten the message"):
        await drain(make_ui(backend.url).chat.send(
            None, "word " * 200, None, chat, "", "", None, *controls,
        ))
    assert chat.exchanges == []
    assert fake.requests == []


async def test_older_turns_left_out_are_announced(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.max_input_tokens, fake.max_total_tokens = 300, 400
    chat = Chat(None, [Exchange("q" * 150, ReplyLog("a" * 150), done=True) for _ in range(4)])
    controls = (100, *CONTROLS[1:])
    ui = make_ui(backend.url)
    updates = await drain(ui.chat.send(None, "next", None, chat, "", "", None, *controls))
    # Each exchange is estimated at 116 tokens: two fit the budget of 300 beside the message.
    assert "The 2 oldest exchanges were left out" in updates[0][ui.chat.view.notice]
    assert len(fake.requests[-1]["messages"]) == 5


async def test_backend_down_then_back_without_a_restart(fake: FakeBackend) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ui = make_ui(url)
    header = (await ui.chat.on_load(None))[ui.chat.view.header]
    assert f"The backend 'default' at {url} is unreachable" in header
    assert "no restart is needed" in header
    chat = Chat()
    updates = await drain(ui.chat.send(None, "hello?", None, chat, "", "", None, *CONTROLS))
    assert f"The backend 'default' at {url} is unreachable" in last_reply(updates[-1])
    assert "Traceback" not in last_reply(updates[-1])
    with ServerThread(fake.app(), port=port):
        # A backend that is down is probed again at most every RECHECK_SECONDS: until then a
        # message still finds it down, and is taken back (Undo) to be sent again.
        async def sent_and_answered() -> bool:
            nonlocal updates
            updates = await drain(
                ui.chat.send(None, "hello again", None, chat, "", "", None, *CONTROLS)
            )
            if last_reply(updates[-1]).startswith("Hello, world!"):
                return True
            await ui.chat.undo(None, chat)
            return False

        await eventually(sent_and_answered, RECHECK_SECONDS + 5, step=0.2,
                         what="the backend to be seen up again")
    assert last_reply(updates[-1]).startswith("Hello, world!")
    assert fake.requests[-1]["messages"][-1]["content"] == "hello again"
    assert [ex.user for ex in chat.exchanges] == ["hello?", "hello again"]


async def test_backend_dying_mid_stream_keeps_the_partial_reply(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.mode = "die_mid_stream"
    chat = Chat()
    updates = await drain(make_ui(backend.url).chat.send(
        None, "hi", None, chat, "", "", None, *CONTROLS,
    ))
    final = last_reply(updates[-1])
    assert final.startswith("Hello,")
    assert "broke before the reply was finished" in final
    assert "interrupted" in final
    assert chat.exchanges[0].reply == "Hello,"
    assert chat.exchanges[0].done


async def test_stop_closes_the_upstream_stream(fake: FakeBackend, backend: ServerThread) -> None:
    fake.tokens = [f"t{i} " for i in range(200)]
    fake.token_delay = 0.02
    ui = make_ui(backend.url)
    chat = Chat()
    updates = ui.chat.send(None, "go on", None, chat, "", "", None, *CONTROLS)
    await anext(updates)
    partial = last_reply(await anext(updates))
    await ui.chat.stop(chat)
    rest = await drain(updates)
    assert len(rest) == 1, "the handler ends at once with the reply marked stopped"
    assert last_reply(rest[0]).endswith("stopped by you_")
    assert last_reply(rest[0]).startswith(partial)
    await eventually(lambda: fake.cancelled == 1)
    assert fake.completed == 0


async def test_stop_works_while_the_backend_is_silent(
    fake: FakeBackend, backend: ServerThread
) -> None:
    fake.mode = "stall"
    ui = make_ui(backend.url)
    chat = Chat()
    updates = ui.chat.send(None, "go on", None, chat, "", "", None, *CONTROLS)
    await anext(updates)
    await anext(updates)
    asyncio.get_running_loop().call_later(0.2, chat.exchanges[-1].stop.set)
    final = last_reply((await drain(updates))[-1])
    assert final.startswith("Hello,")
    assert final.endswith("stopped by you_")
    await eventually(lambda: fake.cancelled == 1)


async def test_a_stream_that_only_pings_times_out_while_other_users_keep_streaming(
    fake: FakeBackend, backend: ServerThread
) -> None:
    """The first reply stalls after two tokens, and the fake keeps writing TGI's ':'
    keep-alive into it (axum's KeepAlive): it ends as timed out after BACKEND_READ_TIMEOUT,
    and a second user's reply streams to its end meanwhile."""
    fake.mode, fake.fail_times, fake.keepalive = "stall", 1, 0.05
    fake.tokens = [f"t{i} " for i in range(20)]
    fake.token_delay = 0.02
    ui = make_ui(backend.url, backend_read_timeout=2.0)
    stalled, other = Chat(), Chat()
    first = asyncio.ensure_future(drain(ui.chat.send(
        None, "first", None, stalled, "", "", None, *CONTROLS,
    )))
    await eventually(lambda: len(fake.generated) == 1)
    second = await drain(ui.chat.send(None, "second", None, other, "", "", None, *CONTROLS))
    assert last_reply(second[-1]).startswith("".join(fake.tokens))
    assert "finished" in last_reply(second[-1])
    assert not first.done(), "the other user's reply ended while the first one was stalled"
    final = last_reply((await first)[-1])
    assert final.startswith("t0 t1 ")
    assert "sent nothing for 2 s; the reply timed out" in final
    assert stalled.exchanges[0].reply == "t0 t1 "
    await eventually(lambda: fake.cancelled == 1)


async def test_retry_undo_and_new_chat(backend: ServerThread, fake: FakeBackend) -> None:
    ui = make_ui(backend.url)
    chat = Chat()
    await drain(ui.chat.send(None, "first", None, chat, "", "", None, *CONTROLS))
    await drain(ui.chat.retry(None, chat, "", "", None, *CONTROLS))
    assert [ex.user for ex in chat.exchanges] == ["first"]
    assert [r["messages"][-1]["content"] for r in fake.requests] == ["first", "first"]
    assert len(fake.requests[-1]["messages"]) == 1, "the retried reply is not sent back"
    store = ui.store
    with store.engine.connect() as db:
        replies = db.execute(text("SELECT count(*) FROM messages WHERE role = 'assistant'"))
        assert replies.scalar() == 2, "the store keeps the earlier version of a retried reply"
    conversation_id = chat.id
    assert conversation_id is not None
    view = ui.chat.view
    undone = await ui.chat.undo(None, chat)
    chat = undone[view.chat]
    assert (undone[view.chatbot], chat.exchanges, undone[view.message]) == ([], [], "first")
    local = await ui.users.conversations(None)
    assert store.get_conversation(local.user_id, conversation_id).exchanges == []
    await drain(ui.chat.send(None, "again", None, chat, "", "", None, *CONTROLS))
    fresh = await ui.chat.new_chat(chat)
    assert (fresh[view.chatbot], fresh[view.chat], fresh[view.title]) == ([], Chat(), "")
    assert [title for title, _ in await local.choices()] == ["first"]


async def test_a_retry_stores_the_prompt_and_settings_it_used(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = Chat()
    await drain(ui.chat.send(None, "first", None, chat, "be terse", "", None, *CONTROLS))
    again = (256, 0.9, 0.95, 40, 1.1, 0.0, 0.0, "", -1)
    await drain(ui.chat.retry(None, chat, "be thorough", "rust", None, *again))
    assert fake.requests[-1]["temperature"] == 0.9
    assert chat.id is not None
    record = ui.store.get_conversation((await ui.users.conversations(None)).user_id, chat.id)
    assert (record.system_prompt, record.language) == ("be thorough", "rust")
    assert (record.settings["max_new_tokens"], record.settings["temperature"]) == (256, 0.9)


async def test_reopening_an_imported_conversation_keeps_only_usable_settings(
    backend: ServerThread,
) -> None:
    """A file may carry any value: one the controls cannot take leaves them as they are."""
    ui = make_ui(backend.url)
    local = await ui.users.conversations(None)
    conversation = imported_conversation(ui.store, local.user_id, settings={
        "temperature": "hot", "top_p": 0.5, "seed": 1.5, "max_new_tokens": 300.0,
        "stop": ["END"], "top_k": 40.5, "model": 7,
    })
    [update] = await drain(ui.chat.open_chat(None, conversation, Chat()))
    view = ui.chat.view
    model = update.get(view.model, gr.skip())
    values = {name: update.get(control, gr.skip())
              for name, control in zip(CONTROL_NAMES, view.controls, strict=True)}
    skipped = {name for name, value in values.items() if value == gr.skip()}
    assert model == gr.skip()
    assert skipped == {"temperature", "seed", "stop", "top_k", "repetition_penalty",
                       "frequency_penalty", "presence_penalty"}
    assert (values["top_p"], values["max_new_tokens"]) == (0.5, 300)
    assert isinstance(values["max_new_tokens"], int)


async def test_the_message_is_stored_first_and_the_reply_as_it_streams(
    backend: ServerThread, fake: FakeBackend
) -> None:
    fake.tokens = [f"t{i} " for i in range(12)]
    fake.token_delay = 0.2
    ui = make_ui(backend.url)
    chat = Chat()
    updates = ui.chat.send(None, "keep me", None, chat, "", "", None, *CONTROLS)
    await anext(updates)
    assert chat.id is not None
    local = await ui.users.conversations(None)
    stored = ui.store.get_conversation(local.user_id, chat.id).exchanges
    assert [(e.user, e.reply and e.reply.status) for e in stored] == [("keep me", "streaming")]
    async for _ in updates:
        reply = ui.store.get_conversation(local.user_id, chat.id).exchanges[0].reply
        if reply is not None and reply.content:
            break
    assert reply is not None
    assert reply.status == "streaming"
    assert reply.content.startswith("t0 t1 t2"), "saved while streaming, at least every second"
    await drain(updates)
    final = ui.store.get_conversation(local.user_id, chat.id).exchanges[0].reply
    assert final is not None
    assert (final.status, final.tokens, final.content) == ("stop", 13, "".join(fake.tokens))


@pytest.mark.parametrize("keeps_running", [True, False])
async def test_a_page_that_goes_away_leaves_its_reply_running_unless_told_otherwise(
    backend: ServerThread, fake: FakeBackend, keeps_running: bool
) -> None:
    """Gradio cancels the handler's task when a page goes away: the reply goes on and is
    stored whole; with REPLY_KEEPS_RUNNING off it is stored as stopped, with its text (it
    once stayed "streaming" until the next restart, the cancellation swallowed)."""
    fake.tokens = [f"t{i} " for i in range(100)]
    fake.token_delay = 0.02
    ui = make_ui(backend.url, reply_keeps_running=keeps_running)
    chat = Chat()
    seen: list[str] = []

    async def page() -> None:
        async for update in ui.chat.send(None, "go on", None, chat, "", "", None, *CONTROLS):
            seen.append(last_reply(update))

    handler = asyncio.create_task(page())
    await eventually(lambda: any(text.startswith("t0 t1 t2") for text in seen))
    handler.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handler
    local = await ui.users.conversations(None)
    assert chat.id is not None

    def stored() -> StoredReply:
        assert chat.id is not None
        reply = ui.store.get_conversation(local.user_id, chat.id).exchanges[0].reply
        assert reply is not None
        return reply

    await eventually(lambda: stored().status != "streaming")
    if keeps_running:
        assert (stored().status, stored().content) == ("stop", "".join(fake.tokens))
        assert fake.cancelled == 0
    else:
        assert stored().status == "stopped"
        assert stored().content.startswith("t0 t1 t2")
        await eventually(lambda: fake.cancelled == 1)


async def test_replies_still_running_are_stored_as_stopped_when_the_app_stops(
    backend: ServerThread, fake: FakeBackend
) -> None:
    fake.tokens = [f"t{i} " for i in range(500)]
    fake.token_delay = 0.02
    ui = make_ui(backend.url)
    chat = Chat()
    updates = ui.chat.send(None, "go on", None, chat, "", "", None, *CONTROLS)
    await anext(updates)
    await anext(updates)
    await ui.service.aclose()  # what the app's lifespan does as it stops
    assert chat.exchanges[0].done
    local = await ui.users.conversations(None)
    assert chat.id is not None
    reply = ui.store.get_conversation(local.user_id, chat.id).exchanges[0].reply
    assert reply is not None
    assert (reply.status, reply.content) == ("stopped", chat.exchanges[0].reply)
    assert reply.content.startswith("t0 ")
    *_, last = await drain(updates)
    assert last_reply(last).endswith("stopped by you_")


async def test_a_conversation_reopens_with_its_prompt_language_and_settings(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = Chat()
    controls = (64, 0.7, 0.9, 40, 1.1, 0.0, 0.0, "END", 7)
    await drain(ui.chat.send(
        None, "Write fizzbuzz\nin Python", None, chat, "be terse", "go", fake.model_id, *controls
    ))
    assert chat.id is not None
    assert fake.requests[-1]["messages"][0] == {
        "role": "system",
        "content": "be terse\n\nWrite code in Go unless the user asks for another language, "
                   "in fenced code blocks tagged go.",
    }
    [update] = await drain(ui.chat.open_chat(None, chat.id, Chat()))
    view = ui.chat.view
    shown, opened, prompt, language, model, title = (update[c] for c in view.opening[:6])
    values = [update[control] for control in view.controls]
    assert model == fake.model_id
    assert opened.id == chat.id
    assert [ex.reply for ex in opened.exchanges] == ["Hello, world!"]
    assert shown[-1]["content"].startswith("Hello, world!\n\n_5 tokens · first token")
    assert shown[-1]["content"].endswith(" · finished_")
    assert (prompt, language, title) == ("be terse", "go", "Write fizzbuzz")
    assert tuple(values) == controls


async def test_search_rename_and_delete(backend: ServerThread) -> None:
    ui = make_ui(backend.url)
    first, second = Chat(), Chat()
    await drain(ui.chat.send(None, "sort a list in Go", None, first, "", "", None, *CONTROLS))
    await drain(ui.chat.send(None, "reverse a string", None, second, "", "", None, *CONTROLS))
    listed = ui.chat.view.conversations
    found = (await ui.chat.search(None, "GO", second))[listed]
    assert [title for title, _ in found["choices"]] == ["sort a list in Go"]
    found = (await ui.chat.search(None, "world", second))[listed]  # the replies' text
    assert len(found["choices"]) == 2
    renamed = (await ui.chat.rename(None, "String tricks", second))[listed]
    assert [title for title, _ in renamed["choices"]] == ["String tricks", "sort a list in Go"]
    remaining = (await ui.chat.delete(None, second))[listed]
    assert [title for title, _ in remaining["choices"]] == ["sort a list in Go"]


async def test_another_users_conversation_cannot_be_opened(backend: ServerThread) -> None:
    ui = make_ui(backend.url, auth_mode="password")
    chat = Chat()
    alice, mallory = gr.Request(username="alice"), gr.Request(username="mallory")
    await drain(ui.chat.send(alice, "mine", None, chat, "", "", None, *CONTROLS))
    assert chat.id is not None
    with pytest.raises(gr.Error, match="no longer exists"):
        await drain(ui.chat.open_chat(mallory, chat.id, Chat()))
    assert await (await ui.users.conversations(mallory)).choices() == []
    with pytest.raises(gr.Error, match="Sign in first"):
        await ui.users.conversations(None)


@pytest.mark.parametrize(("kind", "top_k_visible"), [("tgi", False), ("llama.cpp", True)])
async def test_controls_the_backend_ignores_are_hidden(
    fake: FakeBackend, kind: str, top_k_visible: bool
) -> None:
    fake.kind = kind  # type: ignore[assignment]
    with ServerThread(fake.app()) as server:
        ui = make_ui(server.url)
        loaded = await ui.chat.on_load(None)
        view = ui.chat.view
        header, menu = loaded[view.header], loaded[view.model]
        max_new, top_k = (loaded[view.controls[CONTROL_NAMES.index(name)]]
                          for name in ("max_new_tokens", "top_k"))
    assert f"Model **{fake.model_id}**" in header
    assert menu["value"] == fake.model_id
    assert top_k["visible"] is top_k_visible
    assert max_new["maximum"] == 2047


async def test_too_many_stop_sequences_for_tgi(backend: ServerThread) -> None:
    controls = (*CONTROLS[:7], "a\nb\nc\nd\ne", -1)
    with pytest.raises(gr.Error, match="at most 4 stop sequences"):
        await drain(
            make_ui(backend.url).chat.send(None, "hi", None, Chat(), "", "", None, *controls)
        )


async def test_a_refused_retry_keeps_the_reply_it_would_replace(backend: ServerThread) -> None:
    ui = make_ui(backend.url)
    chat = Chat()
    await drain(ui.chat.send(None, "first", None, chat, "", "", None, *CONTROLS))
    too_many_stops = (*CONTROLS[:7], "a\nb\nc\nd\ne", -1)
    with pytest.raises(gr.Error, match="at most 4 stop sequences"):
        await drain(ui.chat.retry(None, chat, "", "", None, *too_many_stops))
    assert [(ex.user, ex.reply) for ex in chat.exchanges] == [("first", "Hello, world!")]


async def test_export_then_import_through_the_page(backend: ServerThread, tmp_path: Path) -> None:
    ui = make_ui(backend.url)
    chat = Chat()
    await drain(ui.chat.send(None, "export me", None, chat, "", "", None, *CONTROLS))
    markdown = Path(await ui.transfer.export(None, chat, "markdown"))
    assert markdown.read_text().startswith("# export me")
    everything = Path(await ui.transfer.export(None, chat, "all"))
    listed = await ui.transfer.import_file(None, str(everything), chat)
    assert [title for title, _ in listed["choices"]] == ["export me", "export me"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(gr.Error, match="Nothing was imported: "):
        await ui.transfer.import_file(None, str(bad), chat)
    assert len(await (await ui.users.conversations(None)).choices()) == 2
    with pytest.raises(gr.Error, match="nothing to export yet"):
        await ui.transfer.export(None, Chat(), "json")


async def test_over_the_rate_limit_nothing_is_sent_or_stored(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url, rate_limit_per_minute=2)
    chat = Chat()
    for message in ("one", "two"):
        await drain(ui.chat.send(None, message, None, chat, "", "", None, *CONTROLS))
    with pytest.raises(gr.Error, match="2 messages in the last minute"):
        await drain(ui.chat.send(None, "three", None, chat, "", "", None, *CONTROLS))
    assert [ex.user for ex in chat.exchanges] == ["one", "two"]
    assert len(fake.requests) == 2


async def test_check_now_needs_a_signed_in_user_and_is_rate_limited(
    backend: ServerThread, fake: FakeBackend
) -> None:
    """It probes every backend: anyone could make the app do it as often as they liked."""
    signed_out = make_ui(backend.url, auth_mode="password")
    with pytest.raises(gr.Error, match="Sign in first"):
        await signed_out.backends.check_backends(None, None)
    ui = make_ui(backend.url)
    probes = fake.probes
    for _ in range(CHECKS_PER_MINUTE):
        await ui.backends.check_backends(None, None)
    assert fake.probes == probes + CHECKS_PER_MINUTE
    with pytest.raises(gr.Error, match=f"checked {CHECKS_PER_MINUTE} times in the last minute"):
        await ui.backends.check_backends(None, None)
    assert fake.probes == probes + CHECKS_PER_MINUTE


def test_an_upload_past_the_import_limit_is_refused_before_it_is_stored(
    backend: ServerThread,
) -> None:
    """The 20 MiB import limit was checked only after Gradio had stored the whole upload;
    now Gradio refuses it while it comes in (its max_file_size)."""
    with ServerThread(create_app(settings_for(backend.url))) as server:
        big = httpx.post(f"{server.url}/gradio_api/upload", timeout=60,
                         files={"files": ("all.json", b"x" * (21 * 2**20), "application/json")})
        small = httpx.post(f"{server.url}/gradio_api/upload", timeout=60,
                           files={"files": ("all.json", b"{}", "application/json")})
    assert big.status_code == 413
    assert small.status_code == 200


def edit_of(index: int, value: str) -> gr.EditData:
    return gr.EditData(None, {"index": index, "value": value, "previous_value": ""})


def sent(fake: FakeBackend) -> list[str]:
    """The texts of the last request's messages, but the system prompt."""
    return [m["content"] for m in fake.requests[-1]["messages"] if m["role"] != "system"]


async def test_an_edit_forks_and_sends_only_what_is_above_it_then_branches_switch(
    backend: ServerThread, fake: FakeBackend
) -> None:
    fake.tokens = ["ok"]
    ui = make_ui(backend.url)
    chat = Chat()
    for message in ("q1", "q2", "q3"):
        await drain(ui.chat.send(None, message, None, chat, "sys", "", None, *CONTROLS))
    updates = await drain(ui.chat.edit(None, edit_of(2, "q2, <edited> & better"), chat, "sys", "",
                                  None, *CONTROLS))

    assert sent(fake) == ["q1", "ok", "q2, <edited> & better"]
    assert [ex.user for ex in chat.exchanges] == ["q1", "q2, <edited> & better"]
    shown = chat_shown(updates[-1])
    assert [m["role"] for m in shown] == ["user", "assistant", "user", "assistant"]
    older, newer = chat.exchanges[1].user_alternatives
    assert shown[2]["content"] == (
        f"q2, &lt;edited> &amp; better\n\n[{EARLIER}](#branch-{older}) 2/2 {LATER}"
    )

    shown, chat = await ui.branches.switch(None, str(older), chat)
    assert [ex.user for ex in chat.exchanges] == ["q1", "q2", "q3"]
    assert shown[2]["content"] == f"q2\n\n{EARLIER} 1/2 [{LATER}](#branch-{newer})"
    await drain(ui.chat.send(None, "q4", None, chat, "sys", "", None, *CONTROLS))
    assert sent(fake) == ["q1", "ok", "q2", "ok", "q3", "ok", "q4"]
    assert chat.id is not None
    _, reopened = await (await ui.users.conversations(None)).open(chat.id)
    assert [ex.user for ex in reopened.exchanges] == ["q1", "q2", "q3", "q4"]


async def test_an_edit_shown_with_its_switch_keeps_the_text_and_an_unchanged_one_sends_nothing(
    backend: ServerThread, fake: FakeBackend
) -> None:
    """The edit box holds the message as the page shows it: HTML escaped, and its switch."""
    ui = make_ui(backend.url)
    chat = Chat()
    await drain(ui.chat.send(None, "a < b", None, chat, "", "", None, *CONTROLS))
    await drain(ui.chat.edit(None, edit_of(0, "a &lt; c"), chat, "", "", None, *CONTROLS))
    shown = chat_messages(chat.exchanges)[0]["content"]
    assert chat.exchanges[0].user == "a < c"
    asked = len(fake.requests)

    updates = await drain(ui.chat.edit(None, edit_of(0, shown), chat, "", "", None, *CONTROLS))
    assert len(fake.requests) == asked
    assert updates == [{ui.chat.view.chatbot: chat_messages(chat.exchanges)}]
    changed = edit_of(0, shown.replace("a &lt; c", "a &lt; d"))
    await drain(ui.chat.edit(None, changed, chat, "", "", None, *CONTROLS))
    assert sent(fake) == ["a < d"]
    assert chat.exchanges[0].user_alternatives[2] == chat.exchanges[0].user_message_id


async def test_a_retry_shows_its_versions_and_switching_back_shows_the_first(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = Chat()
    fake.tokens = ["first"]
    await drain(ui.chat.send(None, "q1", None, chat, "", "", None, *CONTROLS))
    fake.tokens = ["second"]
    updates = await drain(ui.chat.retry(None, chat, "", "", None, *CONTROLS))
    first, second = chat.exchanges[0].reply_alternatives
    reply = chat_shown(updates[-1])[-1]["content"]
    assert reply.startswith("second")
    assert reply.endswith(f"\n\n[{EARLIER}](#branch-{first}) 2/2 {LATER}")
    shown, chat = await ui.branches.switch(None, str(first), chat)
    assert shown[-1]["content"].startswith("first")
    assert shown[-1]["content"].endswith(f"\n\n{EARLIER} 1/2 [{LATER}](#branch-{second})")


async def test_edits_and_switches_are_refused_while_a_reply_streams_or_for_others(
    backend: ServerThread, fake: FakeBackend
) -> None:
    fake.tokens, fake.token_delay = [f"t{i} " for i in range(50)], 0.02
    ui = make_ui(backend.url, auth_mode="password")
    alice, mallory = gr.Request(username="alice"), gr.Request(username="mallory")
    chat = Chat()
    updates = ui.chat.send(alice, "q1", None, chat, "", "", None, *CONTROLS)
    await anext(updates)
    with pytest.raises(gr.Error, match="Wait for the reply to finish"):
        await drain(ui.chat.edit(alice, edit_of(0, "q1, edited"), chat, "", "", None, *CONTROLS))
    with pytest.raises(gr.Error, match="Wait for the reply to finish"):
        await ui.branches.switch(alice, str(chat.exchanges[0].user_message_id), chat)
    await drain(updates)
    with pytest.raises(gr.Error, match="no longer there"):
        await ui.branches.switch(mallory, str(chat.exchanges[0].user_message_id), chat)
    with pytest.raises(gr.Error, match="cannot be edited"):
        await drain(ui.chat.edit(alice, edit_of(1, "a reply"), chat, "", "", None, *CONTROLS))
    assert chat.id is not None
    assert ui.store.count_messages((await ui.users.conversations(alice)).user_id) == 2


# -- attached files -------------------------------------------------------------------------

FIZZ = "for i in range(1, 4):\n    print(i)\n"
NOTES = "Run it with ```python fizz.py```.\n"
FIZZ_BLOCK = f"File: fizz.py\n```python\n{FIZZ.rstrip()}\n```"
NOTES_BLOCK = f"File: notes.md\n````md\n{NOTES.rstrip()}\n````"


def uploads(folder: Path, files: dict[str, bytes | str]) -> list[str]:
    """Files as the Attach box hands them over: paths under their own names."""
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return [str(folder / name) for name in files]


async def test_attached_files_go_to_the_model_as_fenced_blocks_and_open_from_their_chips(
    backend: ServerThread, fake: FakeBackend, tmp_path: Path
) -> None:
    ui = make_ui(backend.url)
    chat = Chat()
    paths = uploads(tmp_path / "up", {"fizz.py": FIZZ, "notes.md": NOTES})
    updates = await drain(ui.chat.send(None, "Review.", paths, chat, "", "", None, *CONTROLS))

    assert sent(fake) == [f"Review.\n\n{FIZZ_BLOCK}\n\n{NOTES_BLOCK}"]
    assert updates[0][ui.chat.view.attach] is None, "the Attach box is emptied once taken"
    assert all(ui.chat.view.attach not in update for update in updates[1:])
    message_id = chat.exchanges[0].user_message_id
    assert chat_shown(updates[-1])[0]["content"] == (
        f"Review.\n\nAttached: [fizz.py (35 B)](#attachment-{message_id}-0) · "
        f"[notes.md (34 B)](#attachment-{message_id}-1)"
    )
    assert chat.id is not None
    _, reopened = await (await ui.users.conversations(None)).open(chat.id)
    assert reopened.exchanges[0].attachments == chat.exchanges[0].attachments
    opened = await ui.attachments.open(f"{message_id}-1", reopened)
    assert (opened["value"], opened["label"], opened["visible"]) == (
        NOTES, "notes.md (34 B)", True
    )
    with pytest.raises(gr.Error, match="no longer in this conversation"):
        await ui.attachments.open(f"{message_id}-2", reopened)

    await drain(ui.chat.send(None, "And now?", None, chat, "", "", None, *CONTROLS))
    assert sent(fake)[0] == f"Review.\n\n{FIZZ_BLOCK}\n\n{NOTES_BLOCK}", "kept in the history"


@pytest.mark.parametrize(("files", "refusal"), [
    ({"fizz.py": FIZZ, "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00"}, "logo.png is not a text file"),
    ({"big.log": "x" * 101}, "big.log is larger than 100 B"),
    ({f"f{n}.py": "pass" for n in range(3)}, "You attached 3 files; a message takes at most 2"),
])
async def test_a_binary_oversized_or_extra_file_is_refused_with_nothing_stored_or_sent(
    backend: ServerThread, fake: FakeBackend, tmp_path: Path, files: dict[str, bytes | str],
    refusal: str,
) -> None:
    ui = make_ui(backend.url, attachment_max_bytes=100, attachments_per_message=2)
    chat = Chat()
    with pytest.raises(gr.Error, match=refusal):
        await drain(ui.chat.send(None, "Look.", uploads(tmp_path / "up", files), chat, "", "", None,
                            *CONTROLS))
    assert chat.exchanges == []
    assert fake.requests == []
    assert ui.store.count_messages(ui.store.user_id()) == 0


async def test_files_too_long_for_the_context_are_named_with_what_to_drop(
    fake: FakeBackend, backend: ServerThread, tmp_path: Path
) -> None:
    fake.max_input_tokens, fake.max_total_tokens = 300, 400
    chat = Chat()
    paths = uploads(tmp_path / "up", {"small.py": "pass\n", "huge.py": "x = 1\n" * 200})
    with pytest.raises(gr.Error) as refused:
        await drain(make_ui(backend.url).chat.send(None, "Review.", paths, chat, "", "", None,
                                              *(50, *CONTROLS[1:])))
    assert "more than the 300 this model has room for" in refused.value.message
    assert refused.value.message.endswith(
        "Attached: huge.py (1.2 KiB), small.py (5 B); drop huge.py to make it fit."
    )
    assert chat.exchanges == []
    assert fake.requests == []


async def test_a_retry_sends_the_files_again_and_an_edit_keeps_them(
    backend: ServerThread, fake: FakeBackend, tmp_path: Path
) -> None:
    fake.tokens = ["ok"]
    ui = make_ui(backend.url)
    chat = Chat()
    paths = uploads(tmp_path / "up", {"fizz.py": FIZZ})
    await drain(ui.chat.send(None, "Review.", paths, chat, "", "", None, *CONTROLS))
    await drain(ui.chat.retry(None, chat, "", "", None, *CONTROLS))
    assert sent(fake) == [f"Review.\n\n{FIZZ_BLOCK}"]

    shown_with_chips = "Review, briefly." + user_suffix(chat.exchanges[0])
    await drain(ui.chat.edit(None, edit_of(0, shown_with_chips), chat, "", "", None, *CONTROLS))
    assert sent(fake) == [f"Review, briefly.\n\n{FIZZ_BLOCK}"]
    [edited] = chat.exchanges
    assert chat.id is not None
    _, reopened = await (await ui.users.conversations(None)).open(chat.id)
    assert reopened.exchanges[0].attachments == edited.attachments != ()


async def test_a_message_no_backend_answers_keeps_its_files_for_a_retry(tmp_path: Path) -> None:
    ui = make_ui(f"http://127.0.0.1:{free_port()}")
    chat = Chat()
    paths = uploads(tmp_path / "up", {"fizz.py": FIZZ})
    updates = await drain(ui.chat.send(None, "Review.", paths, chat, "", "", None, *CONTROLS))
    assert "unreachable" in last_reply(updates[-1])
    assert updates[0][ui.chat.view.attach] is None, "the message and its files are taken"
    assert chat.id is not None
    _, reopened = await (await ui.users.conversations(None)).open(chat.id)
    assert [a.name for a in reopened.exchanges[0].attachments] == ["fizz.py"]
