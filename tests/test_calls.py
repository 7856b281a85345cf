"""Every call of a model takes the same door (``Turns``): a message sent on the page, the raw
prompt's Generate and a snippet's Refine are held to the same limits (the running-replies
caps, the message rate, the model's context), fail over to the next backend the same way, and
are counted in the same metrics. Each limit is tried on each path, against the fake TGI and
OpenAI-compatible servers of ``tests/fake_backend.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import gradio as gr
import pytest

from app.chat import Chat, ChatService
from app.chat.guard import Guard
from app.server import open_store
from app.ui import PlaygroundUI
from app.ui.raw import RawRun
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread
from tests.waiting import eventually

# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (16, 0.0, 0.95, 40, 1.1, 0.0, 0.0, "", -1)
PATHS = ["chat", "raw", "refine"]

Ask = Callable[[str], Coroutine[Any, Any, str]]


def page(url: str | None = None, **overrides: Any) -> PlaygroundUI:
    """The page, built, on the backend at ``url`` (or those of BACKENDS in ``overrides``)."""
    settings = settings_for(url or "http://127.0.0.1:1", **{"stream_render_interval": 0,
                                                           **overrides})
    store = open_store(settings)
    ui = PlaygroundUI(ChatService(settings), store, Guard(settings, store))
    ui.build()
    return ui


async def asker(ui: PlaygroundUI, path: str) -> Ask:
    """A function that asks the model ``text`` on ``path`` and returns what came back (the
    reply, the tokens' text, or the refined code); a refusal raises ``gr.Error``."""
    if path == "chat":
        async def chat(text: str) -> str:
            shown = Chat()
            async for _ in ui.chat.send(None, text, None, shown, "", "", None, *CONTROLS):
                pass
            return shown.exchanges[-1].reply if shown.exchanges else ""
        return chat
    if path == "raw":
        async def raw(text: str) -> str:
            out = [html async for html, _ in ui.raw.generate(None, None, text, RawRun(),
                                                              *CONTROLS)]
            return out[-1] if out else ""
        return raw
    user_id = (await ui.users.conversations(None)).user_id
    snippet = await asyncio.to_thread(ui.snippets.library.save, user_id, "s", "python", "x = 1")

    async def refine(text: str) -> str:
        shown = await ui.snippets.refine(None, snippet, text)
        return str(shown[ui.snippets.view.code]["value"])
    return refine


def refined_reply(fake: FakeBackend) -> None:
    """Replies with one code block, which a refinement keeps."""
    fake.tokens = ["```python\n", "x = 2\n", "```\n"]


@pytest.fixture
def slow(fake: FakeBackend) -> FakeBackend:
    refined_reply(fake)
    fake.token_delay = 0.05
    return fake


@pytest.mark.parametrize("path", PATHS)
async def test_each_path_answers_from_the_backend(
    path: str, fake: FakeBackend, backend: ServerThread
) -> None:
    refined_reply(fake)
    answer = await (await asker(page(backend.url), path))("make it two")
    assert "x = 2" in answer, f"{path} got {answer!r}"
    assert fake.requests, "the backend was asked"


@pytest.mark.parametrize("path", PATHS)
async def test_each_path_waits_its_turn_behind_the_running_replies_cap(
    path: str, slow: FakeBackend, backend: ServerThread
) -> None:
    """With MAX_RUNNING_REPLIES=1 and a reply being written, each path is refused with the
    same sentence, and nothing reaches the backend; once the reply ends, it goes through."""
    ui = page(backend.url, max_running_replies=1)
    busy = asyncio.create_task((await asker(ui, "chat"))("a long one"))
    await eventually(lambda: slow.chunks > 0, what="the first reply to be under way")
    asked = len(slow.requests)
    ask = await asker(ui, path)
    with pytest.raises(gr.Error, match="The server is writing 1 replies"):
        await ask("make it two")
    assert len(slow.requests) == asked, "a refused call asks nothing"
    await busy
    assert await ask("make it two")


@pytest.mark.parametrize("path", PATHS)
async def test_each_path_holds_its_place_while_it_streams(
    path: str, slow: FakeBackend, backend: ServerThread
) -> None:
    """A raw generation or a refinement under way counts among the running replies: a
    message sent meanwhile is refused."""
    ui = page(backend.url, max_running_replies=1)
    running = asyncio.create_task((await asker(ui, path))("make it two"))
    await eventually(lambda: slow.chunks > 0, what="the call to be under way")
    with pytest.raises(gr.Error, match="The server is writing 1 replies"):
        await (await asker(ui, "chat"))("me too")
    await running


@pytest.mark.parametrize("path", PATHS)
async def test_each_path_counts_against_the_message_rate(
    path: str, fake: FakeBackend, backend: ServerThread
) -> None:
    refined_reply(fake)
    ui = page(backend.url, rate_limit_per_minute=1)
    ask = await asker(ui, path)
    await ask("make it two")
    with pytest.raises(gr.Error, match="1 message in the last minute, the most allowed"):
        await ask("make it three")
    assert len(fake.requests) == 1


@pytest.mark.parametrize("path", PATHS)
async def test_each_path_refuses_what_does_not_fit_the_context(
    path: str, fake: FakeBackend, backend: ServerThread
) -> None:
    fake.max_input_tokens, fake.max_total_tokens = 600, 1024
    ask = await asker(page(backend.url), path)
    with pytest.raises(gr.Error, match="Shorten the message"):
        await ask("word " * 1000)
    assert fake.requests == []


@pytest.fixture
def spare() -> FakeBackend:
    spare = FakeBackend(kind="openai", tokens=["```python\n", "x = 3\n", "```\n"])
    spare.served = [FakeBackend().model_id]
    return spare


@pytest.fixture
def spare_server(spare: FakeBackend) -> Iterator[ServerThread]:
    with ServerThread(spare.app()) as server:
        yield server


@pytest.mark.parametrize("path", PATHS)
async def test_each_path_fails_over_to_the_next_backend_and_is_measured(
    path: str, fake: FakeBackend, backend: ServerThread, spare: FakeBackend,
    spare_server: ServerThread,
) -> None:
    """The first backend is overloaded before its first token: the call goes to the next one
    serving the model, and the metrics count the failure and the answer."""
    fake.mode = "overloaded"
    ui = page(backends=[{"name": "gpu", "url": backend.url},
                        {"name": "spare", "url": spare_server.url}])
    answer = await (await asker(ui, path))("make it three")
    assert "3" in answer, f"{path} got {answer!r}"
    assert spare.requests, "the spare answered"
    metrics = ui.service.metrics.render().decode()
    assert 'playground_backend_errors_total{backend="gpu",kind="overloaded"} 1.0' in metrics
    assert f'model="{fake.model_id}",outcome="stop"' in metrics
    assert 'playground_time_to_first_token_seconds_count{backend="spare"} 1.0' in metrics
