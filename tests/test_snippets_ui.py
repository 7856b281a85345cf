"""The snippet handlers of the page against the fake backend: save, refine, versions, refusals."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pytest

from app.chat import Chat, ChatService
from app.chat.guard import Guard
from app.server import open_store
from app.snippets.library import diff_text
from app.snippets.limits import RunLimits
from app.snippets.sandbox import RunResult, run_snippet
from app.ui import PlaygroundUI
from app.ui.snippets import SnippetsUI
from tests.conftest import settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread
from tests.waiting import eventually

CONTROLS: tuple[Any, ...] = (512, 0.2, 0.95, 40, 1.1, 0.0, 0.0, "", -1)
REPLY = ["Two blocks:\n", "```python\n", "x = 1\n", "```\n", "~~~bash\n", "echo hi\n", "~~~\n"]


def handlers(url: str, **overrides: Any) -> tuple[PlaygroundUI, SnippetsUI]:
    """The page's chat and snippet handlers, runs allowed."""
    settings = settings_for(url, **{"snippet_runs": "on", **overrides})
    store = open_store(settings)
    ui = PlaygroundUI(ChatService(settings), store, Guard(settings, store))
    ui.build()
    return ui, ui.snippets


async def saved_snippet(
    url: str, fake: FakeBackend, **overrides: Any
) -> tuple[SnippetsUI, int]:
    ui, snippets = handlers(url, **overrides)
    fake.tokens = REPLY
    chat = Chat()
    async for _ in ui.chat.send(None, "show me", None, chat, "", "", None, *CONTROLS):
        pass
    found = await snippets.code_blocks(chat)
    assert [label for label, _ in found["choices"]] == ["#2 bash: echo hi", "#1 python: x = 1"]
    listed, _ = await snippets.save(None, chat, found["choices"][1][1], "one", "demo, x")
    [(label, snippet_id)] = listed["choices"]
    assert label == "one (python, v1)"
    return snippets, snippet_id


async def test_save_then_refine_keeps_versions_and_shows_the_diff(
    backend: ServerThread, fake: FakeBackend
) -> None:
    snippets, snippet_id = await saved_snippet(backend.url, fake)
    fake.tokens = ["```python\n", "x = 2\n", "```\n"]
    shown = await snippets.refine(None, snippet_id, "make it two")
    v = snippets.view
    title, tags, code, version, diff, download, listed, instruction = (
        shown[v.title], shown[v.tags], shown[v.code], shown[v.version], shown[v.diff],
        shown[v.download], shown[v.library], shown[v.instruction],
    )
    assert (title, tags, code["value"], version["value"]) == ("one", "demo, x", "x = 2", 2)
    assert diff == diff_text("x = 1", "x = 2", "v1", "v2")
    assert "-x = 1" in diff
    assert "+x = 2" in diff
    assert download.endswith("one.py")
    assert instruction == ""
    assert listed["choices"][0][0] == "one (python, v2)"
    older = await snippets.show_version(None, snippet_id, 1)
    assert older[snippets.view.code]["value"] == "x = 1"


async def test_a_refinement_without_code_is_refused_and_keeps_the_versions(
    backend: ServerThread, fake: FakeBackend
) -> None:
    snippets, snippet_id = await saved_snippet(backend.url, fake)
    fake.tokens = ["I would rather not."]
    with pytest.raises(gr.Error, match="without a code block"):
        await snippets.refine(None, snippet_id, "make it two")
    with pytest.raises(gr.Error, match="Say what to change"):
        await snippets.refine(None, snippet_id, "  ")
    assert (await snippets.open(None, snippet_id))[snippets.view.version]["value"] == 1


async def test_runs_can_be_turned_off(backend: ServerThread, fake: FakeBackend) -> None:
    snippets, snippet_id = await saved_snippet(backend.url, fake, snippet_runs="off")
    assert (await snippets.open(None, snippet_id))[snippets.view.run]["visible"] is False
    with pytest.raises(gr.Error, match=r"Code does not run on this server \(SNIPPET_RUNS\)"):
        await snippets.run(None, snippet_id, 1)


def test_runs_are_off_by_default_when_others_can_reach_the_app() -> None:
    assert settings_for("http://x:1").runs_allowed
    assert not settings_for("http://x:1", app_host="0.0.0.0").runs_allowed
    assert settings_for("http://x:1", app_host="0.0.0.0", snippet_runs="on").runs_allowed
    assert not settings_for("http://x:1", snippet_runs="off").runs_allowed


async def test_the_library_lists_while_the_page_loads_its_search_box(
    backend: ServerThread, fake: FakeBackend
) -> None:
    """A page still loading sends the empty search box as None: that raised AttributeError."""
    snippets, _ = await saved_snippet(backend.url, fake)
    listed = await snippets.search(None, None)
    assert listed["choices"][0][0].startswith("one (")


async def first_block_saved(
    url: str, fake: FakeBackend, code: str, fence: str = "```", **overrides: Any
) -> tuple[SnippetsUI, int]:
    """A reply holding one Python block, that block saved as a snippet."""
    ui, snippets = handlers(url, **overrides)
    fake.tokens = [f"{fence}python\n", f"{code}\n", f"{fence}\n"]
    chat = Chat()
    async for _ in ui.chat.send(None, "show me", None, chat, "", "", None, *CONTROLS):
        pass
    found = await snippets.code_blocks(chat)
    listed, _ = await snippets.save(None, chat, found["choices"][0][1], "saved", "")
    snippet_id: int = listed["choices"][0][1]
    return snippets, snippet_id


async def test_a_snippet_holding_four_backticks_reaches_the_refine_prompt_whole(
    backend: ServerThread, fake: FakeBackend
) -> None:
    """The refine prompt fenced the code with four backticks, which such code closes."""
    code = 'print("````")\nprint("done")'
    snippets, snippet_id = await first_block_saved(backend.url, fake, code, fence="`````")
    fake.tokens = ["```python\n", "print(1)\n", "```\n"]
    await snippets.refine(None, snippet_id, "simpler")
    sent = fake.requests[-1]["messages"][1]["content"]
    assert sent.startswith(f"`````python\n{code}\n`````\n\nChange: simpler")


async def test_snippet_runs_beyond_the_cap_are_refused_until_one_ends(
    backend: ServerThread, fake: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippets, snippet_id = await first_block_saved(
        backend.url, fake, "import time\ntime.sleep(1.5)\nprint('slept')",
        snippet_runs_at_once=1,
    )
    started: list[str] = []

    async def recorded(code: str, language: str, limits: RunLimits) -> RunResult:
        started.append(code)
        return await run_snippet(code, language, limits)

    monkeypatch.setattr("app.chat.checks.run_snippet", recorded)
    first = asyncio.create_task(snippets.run(None, snippet_id, None))
    await eventually(lambda: started, what="the first run to start")
    with pytest.raises(gr.Error, match="The sandbox is busy: it runs 1 at once"):
        await snippets.run(None, snippet_id, None)
    assert "slept" in await first
    assert "slept" in await snippets.run(None, snippet_id, None), "room again after it ended"


async def test_refinement_asks_the_model_on_the_page_and_can_be_stopped(
    backend: ServerThread, fake: FakeBackend
) -> None:
    """It used to ask the default model whatever the page showed, and could not be stopped."""
    fake.kind, fake.served = "openai", ["acme/default-coder", "acme/picked-coder"]
    snippets, snippet_id = await first_block_saved(backend.url, fake, "x = 1")
    fake.tokens = ["```python\n", "x = 2\n", "```\n"]
    await snippets.refine(None, snippet_id, "two", "acme/picked-coder")
    assert fake.requests[-1]["model"] == "acme/picked-coder"
    fake.tokens, fake.token_delay = [f"t{i} " for i in range(200)], 0.02
    sent = fake.chunks
    refining = asyncio.create_task(snippets.refine(None, snippet_id, "longer", None))
    await eventually(lambda: fake.chunks >= sent + 3, what="the refinement's reply to stream")
    refining.cancel()  # what the page's Stop does to the running event
    with pytest.raises(asyncio.CancelledError):
        await refining
    await eventually(lambda: fake.cancelled, what="the upstream stream to close")
    assert fake.cancelled == 1, "the upstream stream was closed"
    shown = await snippets.open(None, snippet_id)
    assert shown[snippets.view.version]["value"] == 2, "no version was added"


async def test_opening_snippets_and_exporting_leave_no_pile_of_files(
    backend: ServerThread, fake: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each export and each snippet opened wrote a temporary folder, never removed."""
    # A temporary folder of the test's own: other processes write to the machine's.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ui, snippets = handlers(backend.url)
    fake.tokens = REPLY
    chat = Chat()
    async for _ in ui.chat.send(None, "show me", None, chat, "", "", None, *CONTROLS):
        pass
    found = await snippets.code_blocks(chat)
    listed, _ = await snippets.save(None, chat, found["choices"][1][1], "one", "")
    snippet_id = listed["choices"][0][1]
    temp = Path(tempfile.gettempdir())
    before = set(temp.iterdir())
    for _ in range(100):
        shown = await snippets.open(None, snippet_id)
    for _ in range(20):
        exported = Path(await ui.transfer.export(None, chat, "json"))
    assert set(temp.iterdir()) - before == set(), "nothing new beside the downloads folder"
    kept = list(ui.downloads.folder.iterdir())
    assert len(kept) == ui.downloads.keep, "the oldest went as new ones came"
    assert Path(shown[snippets.view.download]).read_text() == "x = 1", "still on screen"
    assert exported.is_file()
