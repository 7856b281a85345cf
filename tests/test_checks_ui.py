"""Run and Check in the chat, through the page's handlers against the fake backend and the real
sandbox: what a user sees after each action, and again once the conversation is opened anew."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
import pytest

from app.chat import Chat, ChatService
from app.chat.guard import Guard
from app.server import open_store
from app.snippets.bwrap import languages
from app.snippets.limits import RunLimits
from app.snippets.sandbox import RunResult, run_snippet
from app.ui import PlaygroundUI
from app.ui.render import BRANCH_LINK, CHECK_LINK, EARLIER, LATER, RUN_LINK, chat_messages
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread
from tests.test_ui import CONTROLS, chat_shown, drain
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("sandbox")

# A reply whose Python holds a bug its own tests find, a Bash block, and SQL.
BUGGY = ("Here it is:\n\n```python\ndef add(a, b):\n    return a - b\n\n"
         "assert add(1, 0) == 1\nassert add(2, 2) == 4\n```\n\n"
         "```bash\necho \"sum: $((2 + 2))\"\n```\n\n```sql\nselect 1;\n```\n")
FIXED = ["The sign was wrong:\n\n", "```python\n", "def add(a, b):\n", "    return a + b\n",
         "```\n"]
# What a repair prompt holds (``app.checks.repair.repair_messages``).
REPAIR_PROMPT = "What failed:"


@pytest.fixture
def sandbox() -> None:
    if "python" not in languages():
        pytest.fail("the sandbox cannot run Python here: scripts/test installs bubblewrap")


def make_ui(url: str, **overrides: Any) -> PlaygroundUI:
    settings = settings_for(url, **{"stream_render_interval": 0, "snippet_runs": "on",
                                    **overrides})
    store = open_store(settings)
    ui = PlaygroundUI(ChatService(settings), store, Guard(settings, store))
    ui.build()
    return ui


async def answered(ui: PlaygroundUI, fake: FakeBackend, reply: str) -> Chat:
    """A conversation whose one reply is ``reply``."""
    fake.tokens = [reply]
    chat = Chat()
    await drain(ui.chat.send(None, "Write add(a, b).", None, chat, "", "", None, *CONTROLS))
    return chat


async def collected(updates: AsyncIterator[dict[Any, Any]], into: list[dict[Any, Any]]) -> None:
    """Each of ``updates`` into ``into``, as they come (those before a failure too)."""
    async for update in updates:
        into.append(update)


def reply_shown(update: dict[Any, Any]) -> str:
    content: str = chat_shown(update)[-1]["content"]
    return content


async def test_a_block_runs_in_place_and_its_run_shows_again_once_reopened(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, BUGGY)
    reply_id = chat.exchanges[0].reply_id
    shown = chat_messages(chat.exchanges)[-1]["content"]
    # A Run link after the Python and Bash blocks, none after the SQL; Check for the Python.
    assert f"({RUN_LINK}{reply_id}-0 " in shown
    assert f"({RUN_LINK}{reply_id}-1 " in shown
    assert f"{RUN_LINK}{reply_id}-2" not in shown
    assert f"({CHECK_LINK}{reply_id} " in shown
    update = await ui.runs.run(None, f"{reply_id}-1", chat)
    shown = reply_shown(update)
    assert "Run of block 2 (Bash): **exit code 0**" in shown
    assert "stdout:\n```text\nsum: 4\n```" in shown
    # In place: after the Bash block, before the SQL.
    assert shown.index("sum: 4") < shown.index("select 1;")
    _, reopened = await (await ui.users.conversations(None)).open(chat.id or "")
    assert chat_messages(reopened.exchanges)[-1]["content"] == shown


async def test_a_check_shows_the_failing_test_then_the_repaired_version_passing(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, BUGGY)
    first = chat.exchanges[0].reply_id
    fake.answers = {REPAIR_PROMPT: FIXED}
    updates = await drain(ui.runs.check(None, str(first), "", True, chat))
    shown = [reply_shown(update) for update in updates if ui.runs.view.chatbot in update]
    assert "**Checking**" in shown[0], "the check shows at once, before its tests run"
    failing = next(text for text in shown if "add(2, 2) is 0, expected 4" in text)
    assert "1 of 2 fails" in failing
    assert "against the tests the reply holds" in failing
    assert any("**Repair 1 of 3**: the model is answering" in text for text in shown)
    final = shown[-1]
    assert "**Repair 1** (code changed)" in final
    assert "-    return a - b\n+    return a + b" in final
    assert re.search(r'check-pass">2/2 tests pass</span> · this version', final)
    assert "**Ended: passed** after 1 repair." in final
    assert "_Repair 1 of a check: the model's fix of what failed_" in final
    assert final.startswith("The sign was wrong:"), "the repaired version is on screen"
    assert f"[{EARLIER}]({BRANCH_LINK}{first}) 2/2 {LATER}" in final
    opened = updates[-1][ui.runs.view.chat]
    assert opened.exchanges[-1].reply_id != first
    # The trace and the badge are kept: the conversation opened anew shows them.
    _, reopened = await (await ui.users.conversations(None)).open(chat.id or "")
    assert chat_messages(reopened.exchanges)[-1]["content"] == final


async def test_the_users_own_tests_are_checked_without_repair_when_asked(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, BUGGY)
    reply_id = chat.exchanges[0].reply_id
    requests = len(fake.requests)
    updates = await drain(ui.runs.check(None, str(reply_id), "assert add(3, 3) == 6\n", False,
                                        chat))
    final = reply_shown(updates[-1])
    assert "against your tests · no repair" in final
    assert "add(3, 3) is 0, expected 6" in final
    assert "1 of 1 fails" in final
    assert "**Ended: failing (repair was off)**." in final
    assert len(fake.requests) == requests, "the model was not asked"


async def test_tests_the_model_wrote_are_marked_as_the_models(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, "```python\ndef add(a, b):\n    return a + b\n```\n")
    fake.answers = {"The code:": ["```python\n", "assert add(1, 2) == 3\n", "```\n"]}
    updates = await drain(ui.runs.check(None, str(chat.exchanges[0].reply_id), "", True, chat))
    final = reply_shown(updates[-1])
    assert "against tests the model wrote (they may be wrong)" in final
    assert 'check-pass">1/1 test passes</span>' in final
    assert "**Ended: passed**." in final


async def test_run_and_check_say_so_where_runs_are_off(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url, snippet_runs="off")
    chat = await answered(ui, fake, BUGGY)
    reply_id = chat.exchanges[0].reply_id
    with pytest.raises(gr.Error, match=r"Code does not run on this server \(SNIPPET_RUNS\)"):
        await ui.runs.run(None, f"{reply_id}-0", chat)
    with pytest.raises(gr.Error, match=r"Code does not run on this server \(SNIPPET_RUNS\)"):
        await drain(ui.runs.check(None, str(reply_id), "", True, chat))
    assert chat.exchanges[0].runs == {}
    assert chat.exchanges[0].check is None


async def test_code_the_sandbox_does_not_run_gets_no_link_and_a_sentence(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, "```sql\nselect 1;\n```\n")
    reply_id = chat.exchanges[0].reply_id
    shown = chat_messages(chat.exchanges)[-1]["content"]
    assert RUN_LINK not in shown
    assert CHECK_LINK not in shown
    assert "_No Run for SQL: the sandbox runs " in shown
    with pytest.raises(gr.Error, match="Check runs Python code; this reply's code is sql"):
        await drain(ui.runs.check(None, str(reply_id), "", True, chat))
    with pytest.raises(gr.Error, match=r"The sandbox runs .*; a sql block cannot run"):
        await ui.runs.run(None, f"{reply_id}-0", chat)


async def test_a_reply_not_on_screen_or_still_written_is_refused(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, BUGGY)
    with pytest.raises(gr.Error, match="no longer on screen"):
        await ui.runs.run(None, "999999-0", chat)
    chat.exchanges[0].done = False
    with pytest.raises(gr.Error, match="Wait for the reply to finish"):
        await drain(ui.runs.check(None, str(chat.exchanges[0].reply_id), "", True, chat))


async def test_a_check_goes_on_unseen_once_the_tab_shows_another_conversation(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, BUGGY)
    reply_id = chat.exchanges[0].reply_id
    fake.answers = {REPAIR_PROMPT: FIXED}
    updates = ui.runs.check(None, str(reply_id), "", True, chat)
    await anext(updates)
    await ui.chat.new_chat(chat)
    rest = await drain(updates)
    assert rest[-1] == {}, "nothing painted over the conversation now on screen"
    assert all(ui.runs.view.chatbot not in update for update in rest)
    _, reopened = await (await ui.users.conversations(None)).open(chat.id or "")
    assert reopened.exchanges[-1].check is not None
    assert reopened.exchanges[-1].check["outcome"] == "passed", "the check went on, kept"


async def test_a_repair_the_backend_fails_ends_the_check_with_a_sentence_and_keeps_its_trace(
    backend: ServerThread, fake: FakeBackend
) -> None:
    ui = make_ui(backend.url)
    chat = await answered(ui, fake, BUGGY)
    fake.tokens, fake.mode = FIXED, "generation_error"  # it fails at its third token
    updates: list[dict[Any, Any]] = []
    with pytest.raises(gr.Error, match="out of memory"):
        await collected(ui.runs.check(None, str(chat.exchanges[0].reply_id), "", True, chat),
                        updates)
    shown = reply_shown(updates[-1])
    assert "1 of 2 fails" in shown
    assert "_The check stopped before its end._" in shown
    assert "Traceback" not in shown


async def test_a_run_beyond_the_sandbox_places_is_refused_until_one_ends(
    backend: ServerThread, fake: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ui = make_ui(backend.url, snippet_runs_at_once=1)
    chat = await answered(ui, fake, "```bash\nsleep 1; echo slept\n```\n")
    target = f"{chat.exchanges[0].reply_id}-0"
    started: list[str] = []

    async def recorded(code: str, language: str, limits: RunLimits) -> RunResult:
        started.append(code)
        return await run_snippet(code, language, limits)

    monkeypatch.setattr("app.chat.checks.run_snippet", recorded)
    first = asyncio.create_task(ui.runs.run(None, target, chat))
    await eventually(lambda: started, what="the first run to start")
    with pytest.raises(gr.Error, match="The sandbox is busy: it runs 1 at once"):
        await ui.runs.run(None, target, chat)
    assert "slept" in reply_shown(await first)


async def test_a_check_over_the_message_rate_is_refused_with_the_chat_as_it_was(
    backend: ServerThread, fake: FakeBackend
) -> None:
    """Tests the model writes are a call of the model: they count against the rate."""
    ui = make_ui(backend.url, rate_limit_per_minute=1)
    chat = await answered(ui, fake, "```python\ndef add(a, b):\n    return a + b\n```\n")
    before = chat_messages(chat.exchanges)
    updates: list[dict[Any, Any]] = []
    with pytest.raises(gr.Error, match="1 message in the last minute"):
        await collected(ui.runs.check(None, str(chat.exchanges[0].reply_id), "", True, chat),
                        updates)
    assert chat_shown(updates[-1]) == before
    assert chat.exchanges[0].check is None
