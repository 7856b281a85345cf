"""The snippet side of the page: save code blocks from replies, then in the library open,
search, rename, tag, download, delete, refine with the model (each refinement a new version,
shown as a diff), run in the sandbox, and preview (HTML, SVG, Mermaid) the version on screen."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.chat import Chat, ChatService
from app.chat.checks import CheckRefused, Checks
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.markdown import fenced
from app.preview import preview_kind
from app.snippets.bwrap import languages
from app.snippets.extract import CodeBlock, extract_blocks
from app.snippets.library import (
    NotFound,
    SnippetLibrary,
    SnippetRecord,
    StoreError,
    diff_text,
    filename,
)
from app.ui.downloads import Downloads
from app.ui.gradio_compat import Outputs
from app.ui.preview import PreviewUI
from app.ui.render import result_markdown
from app.ui.users import PageUsers

REFINE_TEMPERATURE = 0.2
REFINE_PROMPT = (
    "You revise code. Answer with the complete new version of the code in one fenced code "
    "block tagged {language}, then at most two sentences on what changed."
)


def block_label(block: CodeBlock) -> str:
    first = next((line.strip() for line in block.code.splitlines() if line.strip()), "(empty)")
    return f"#{block.index + 1} {block.language}: {first[:60]}"


# gr.Code's names for the languages it highlights; the others show as plain text.
CODE_HIGHLIGHT = {"python": "python", "javascript": "javascript", "typescript": "typescript",
                  "bash": "shell", "sql": "sql", "c": "c", "cpp": "cpp", "html": "html"}


def _code_language(language: str) -> str | None:
    return CODE_HIGHLIGHT.get(language)


@dataclass(frozen=True)
class SavePanel:
    """The components that save a code block of the conversation to the library."""

    find: gr.Button
    found: gr.Dropdown
    title: gr.Textbox
    tags: gr.Textbox
    keep: gr.Button


@dataclass
class SnippetView:
    """The components that show the snippet open in the library (the tab builds them)."""

    snippet: gr.State
    title: gr.Textbox
    tags: gr.Textbox
    code: gr.Code
    version: gr.Dropdown
    diff: gr.Code
    download: gr.DownloadButton
    run: gr.Button
    preview: gr.Button
    library: gr.Radio
    instruction: gr.Textbox

    @property
    def shown(self) -> list[Any]:
        """What showing a snippet (or none) changes."""
        return [self.snippet, self.title, self.tags, self.code, self.version, self.diff,
                self.download, self.run, self.preview]


class SnippetsUI:
    def __init__(
        self, service: ChatService, turns: Turns, checks: Checks, library: SnippetLibrary,
        users: PageUsers, runs_allowed: bool, downloads: Downloads, preview: PreviewUI,
    ) -> None:
        self.service = service
        self.checks = checks
        self.library = library
        self.preview = preview
        self.downloads = downloads
        self.turns = turns
        self.users = users
        self.runs_allowed = runs_allowed
        self.view: SnippetView  # set by ``tab``, as the page is built

    async def _library(self, request: gr.Request | None) -> tuple[SnippetLibrary, int]:
        return self.library, (await self.users.conversations(request)).user_id

    async def _open(self, request: gr.Request | None, snippet_id: int | None) -> SnippetRecord:
        if snippet_id is None:
            raise gr.Error("Open a snippet from the library first.")
        library, user_id = await self._library(request)
        try:
            return await asyncio.to_thread(library.get, user_id, snippet_id)
        except NotFound as err:
            raise gr.Error("That snippet no longer exists.") from err

    async def _choices(self, request: gr.Request | None, search: str = "") -> list[Any]:
        library, user_id = await self._library(request)
        found = await asyncio.to_thread(library.list, user_id, search)
        return [(f"{s.title} ({s.language}, v{s.latest_version})", s.id) for s in found]

    # -- saving code from the conversation ------------------------------------------------

    async def code_blocks(self, chat: Chat) -> Any:
        """The code blocks of the conversation's replies, newest first."""
        found = [
            (f"{block_label(block)}", f"{position}:{block.index}")
            for position, exchange in enumerate(chat.exchanges)
            for block in extract_blocks(exchange.reply)
        ]
        found.reverse()
        return gr.update(choices=found, value=found[0][1] if found else None)

    async def save(
        self, request: gr.Request | None, chat: Chat, choice: str | None, title: str, tags: str,
    ) -> tuple[Any, Any]:
        if not choice:
            raise gr.Error("Pick a code block first (Find code blocks).")
        position, index = (int(part) for part in choice.split(":"))
        exchange = chat.exchanges[position]
        block = extract_blocks(exchange.reply)[index]
        library, user_id = await self._library(request)
        try:
            await asyncio.to_thread(
                library.save, user_id, title.strip() or block_label(block), block.language,
                block.code, [tag.strip() for tag in tags.split(",") if tag.strip()],
                chat.id, exchange.reply_id,
            )
        except StoreError as err:
            raise gr.Error(str(err)) from err
        gr.Info("Saved to the snippet library.")
        return gr.update(choices=await self._choices(request)), ""

    # -- the library ----------------------------------------------------------------------

    async def search(self, request: gr.Request | None, text: str | None) -> Any:
        """The library, narrowed by ``text`` (None, as a page sends it while it loads: all)."""
        return gr.update(choices=await self._choices(request, text or ""))

    async def open(self, request: gr.Request | None, snippet_id: int | None) -> Outputs:
        record = await self._open(request, snippet_id)
        return self._show(record, record.versions[-1].number)

    def _show(self, record: SnippetRecord, number: int) -> Outputs:
        """The snippet at its version ``number``: code, versions, the diff from the version
        before, its file to download, and Run and Preview where they apply."""
        version = record.versions[number - 1]
        numbers = [(f"v{v.number}" + (f": {v.instruction[:50]}" if v.instruction else ""),
                    v.number) for v in record.versions]
        diff = ""
        if number > 1:
            before = record.versions[number - 2]
            diff = (diff_text(before.code, version.code, f"v{before.number}", f"v{number}")
                    or "(no change)")
        v = self.view
        return {
            v.snippet: record.id, v.title: record.title, v.tags: ", ".join(record.tags),
            v.code: gr.update(value=version.code, language=_code_language(record.language)),
            v.version: gr.update(choices=numbers, value=number), v.diff: diff,
            v.download: self._download(record, number),
            v.run: gr.update(visible=self.runs_allowed and record.language in languages()),
            v.preview: gr.update(
                visible=preview_kind(record.language, version.code) is not None
            ),
        }

    async def show_version(
        self, request: gr.Request | None, snippet_id: int | None, number: int | None
    ) -> Outputs:
        record = await self._open(request, snippet_id)
        return self._show(record, number or record.versions[-1].number)

    def _download(self, record: SnippetRecord, number: int) -> str:
        return str(self.downloads.write(filename(record), record.versions[number - 1].code))

    async def rename(
        self, request: gr.Request | None, snippet_id: int | None, title: str, tags: str
    ) -> Any:
        record = await self._open(request, snippet_id)
        library, user_id = await self._library(request)
        try:
            await asyncio.to_thread(library.rename, user_id, record.id, title)
            await asyncio.to_thread(
                library.set_tags, user_id, record.id,
                [tag.strip() for tag in tags.split(",") if tag.strip()],
            )
        except StoreError as err:
            raise gr.Error(str(err)) from err
        return gr.update(choices=await self._choices(request), value=record.id)

    async def delete(self, request: gr.Request | None, snippet_id: int | None) -> Outputs:
        """Delete the snippet open, with every version; nothing is open then."""
        record = await self._open(request, snippet_id)
        library, user_id = await self._library(request)
        await asyncio.to_thread(library.delete, user_id, record.id)
        v = self.view
        return {v.library: gr.update(choices=await self._choices(request), value=None),
                v.snippet: None, v.title: "", v.tags: "", v.code: gr.update(value=""),
                v.version: gr.update(choices=[], value=None), v.diff: "", v.download: None,
                v.run: gr.update(visible=False), v.preview: gr.update(visible=False)}

    # -- refine and run -------------------------------------------------------------------

    async def refine(
        self, request: gr.Request | None, snippet_id: int | None, instruction: str,
        model: str | None = None,
    ) -> Outputs:
        """Ask the model picked on the page (None: the default) for a new version; it is kept
        as the snippet's next version. Cancelling (the page's Stop) closes the upstream
        stream and keeps nothing."""
        record = await self._open(request, snippet_id)
        if not instruction.strip():
            raise gr.Error("Say what to change first.")
        mine = await self.users.conversations(request)
        asked = TurnRequest(instruction, REFINE_PROMPT.format(language=record.language),
                            {"temperature": REFINE_TEMPERATURE, "model": model or ""})
        sent = f"{fenced(record.code, record.language)}\n\nChange: {instruction}"
        reply = await self._generate(mine.user_id, asked, sent)
        blocks = extract_blocks(reply)
        if not blocks:
            raise gr.Error("The model answered without a code block; try again or rephrase.")
        block = next((b for b in blocks if b.language == record.language), blocks[0])
        library, user_id = await self._library(request)
        try:
            await asyncio.to_thread(
                library.add_version, user_id, record.id, block.code, instruction.strip()
            )
        except StoreError as err:
            raise gr.Error(str(err)) from err
        updated = await self._open(request, record.id)
        v = self.view
        return {**self._show(updated, updated.versions[-1].number),
                v.library: gr.update(choices=await self._choices(request), value=record.id),
                v.instruction: ""}

    async def _generate(self, user_id: int, asked: TurnRequest, sent: str) -> str:
        """The model's whole answer to ``sent``, asked through the door of every model call
        (``Turns.calling``: the same limits, context check, failover and metrics as a
        message)."""
        parts = []
        try:
            async with (
                self.turns.calling(user_id, asked, sent) as call,
                aclosing(call.reply(asyncio.Event())) as stream,
            ):
                async for progress in stream:
                    parts.append(progress.added)
                    if progress.error is not None:
                        raise gr.Error(str(progress.error))
        except TurnRefused as err:
            raise gr.Error(str(err)) from err
        return "".join(parts)

    async def run(
        self, request: gr.Request | None, snippet_id: int | None, number: int | None
    ) -> str:
        record = await self._open(request, snippet_id)
        code = record.versions[(number or len(record.versions)) - 1].code
        try:
            result = await self.checks.run_code(code, record.language)
        except CheckRefused as err:
            raise gr.Error(str(err)) from err
        return result_markdown(result)

    async def show_preview(
        self, request: gr.Request | None, snippet_id: int | None, number: int | None
    ) -> tuple[Any, str]:
        """Preview the version on screen."""
        record = await self._open(request, snippet_id)
        code = record.versions[(number or len(record.versions)) - 1].code
        return await self.preview.show(request, record.language, code)


    def save_panel(self) -> SavePanel:
        """The chat tab's "Save code from this conversation" fold; ``tab`` wires it."""
        with gr.Accordion("Save code from this conversation", open=False):
            with gr.Row(equal_height=True):
                find = gr.Button("Find code blocks", size="sm", elem_id="find-code")
                found = gr.Dropdown(
                    [], label="Code block", scale=3, elem_id="code-blocks"
                )
            with gr.Row(equal_height=True):
                new_title = gr.Textbox(label="Title", elem_id="snippet-title")
                new_tags = gr.Textbox(label="Tags, comma-separated",
                                      elem_id="snippet-tags")
                keep = gr.Button("Save to library", size="sm", elem_id="save-code")
        return SavePanel(find, found, new_title, new_tags, keep)

    def tab(
        self, page: gr.Blocks, saving: SavePanel, chat: gr.State, model: gr.Dropdown,
    ) -> None:
        """The "Snippets" tab and its events, with those of the chat tab's ``saving`` fold;
        refinement uses the chat tab's ``model`` (no library listed before a Hugging Face
        sign-in)."""
        with gr.Tab("Snippets", elem_id="snippets-tab"):
            snippet = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1, min_width=220):
                    snippet_search = gr.Textbox(
                        placeholder="Search titles, tags and code", show_label=False,
                        elem_id="snippet-search",
                    )
                    library = gr.Radio([], show_label=False, elem_id="snippets")
                with gr.Column(scale=3):
                    with gr.Row(equal_height=True):
                        snippet_title = gr.Textbox(label="Title", elem_id="open-title")
                        snippet_tags = gr.Textbox(label="Tags", elem_id="open-tags")
                        retitle = gr.Button("Save title and tags", size="sm",
                                            elem_id="retitle")
                    code = gr.Code(label="Code", interactive=False, elem_id="code")
                    with gr.Row(equal_height=True):
                        version = gr.Dropdown([], label="Version", elem_id="version")
                        download = gr.DownloadButton("Download", elem_id="download")
                        preview = gr.Button("Preview", visible=False, size="sm",
                                            elem_id="preview-snippet")
                        forget = gr.Button("Delete", variant="stop", size="sm",
                                           elem_id="delete-snippet")
                    with gr.Row(visible=False) as forget_row:
                        gr.Markdown("Delete this snippet and all its versions?")
                        forget_yes = gr.Button("Delete", variant="stop", size="sm",
                                               elem_id="confirm-snippet")
                        forget_no = gr.Button("Keep", size="sm")
                    with gr.Row(equal_height=True):
                        instruction = gr.Textbox(
                            label="What to change", scale=4, elem_id="instruction",
                        )
                        refine = gr.Button("Refine", variant="primary", size="sm",
                                           elem_id="refine")
                        refine_stop = gr.Button("Stop", variant="stop", size="sm",
                                                elem_id="refine-stop")
                    diff = gr.Code(label="Changes from the version before",
                                   interactive=False, elem_id="diff")
                    run = gr.Button("Run in the sandbox", visible=False, size="sm",
                                    elem_id="run")
                    output = gr.Markdown(elem_id="run-output")
                panel = self.preview.panel("snippet-preview")
        self.view = v = SnippetView(snippet, snippet_title, snippet_tags, code, version, diff,
                                    download, run, preview, library, instruction)
        shown = v.shown
        saving.find.click(self.code_blocks, [chat], [saving.found], queue=False,
                          api_name="code_blocks")
        saving.keep.click(self.save, [chat, saving.found, saving.title, saving.tags],
                          [library, saving.title], api_name="save_snippet")
        snippet_search.change(self.search, [snippet_search], [library], queue=False,
                              api_name="search_snippets")
        library.input(self.open, [library], shown, api_name="open_snippet")
        version.input(self.show_version, [snippet, version], shown,
                      api_name="show_version")
        retitle.click(self.rename, [snippet, snippet_title, snippet_tags], [library],
                      api_name="rename_snippet")
        forget.click(lambda: gr.update(visible=True), None, [forget_row], queue=False,
                     api_visibility="private")
        forget_no.click(lambda: gr.update(visible=False), None, [forget_row],
                        queue=False, api_visibility="private")
        forget_yes.click(
            self.delete, [snippet], [library, *shown], api_name="delete_snippet"
        ).then(lambda: gr.update(visible=False), None, [forget_row], api_visibility="private")
        refining = refine.click(
            self.refine, [snippet, instruction, model],
            [*shown, library, instruction], api_name="refine",
        )
        refine_stop.click(None, None, None, cancels=[refining], api_visibility="private")
        run.click(self.run, [snippet, version], [output], api_name="run")
        preview.click(self.show_preview, [snippet, version], panel.outputs,
                      api_name="preview_snippet")
        page.load(
            self.users.signed_in_only(self.search), [snippet_search], [library],
            api_visibility="private",
        )
