"""The StarChat-style page: chat, Send/Stop, Retry/Undo/Clear, edits of earlier messages,
system prompt and generation controls. Handlers are async generators; they know the chat
service, never HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import gradio as gr

from app.backends import BackendError, BackendInfo
from app.chat import Chat, ChatService, Exchange
from app.chat.cache import Lru
from app.chat.guard import Guard
from app.chat.history import History
from app.chat.languages import LANGUAGE_NAMES
from app.chat.replies import LiveReply
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.preview import Previews
from app.store import ConversationRecord, NotFound, Store, transfer
from app.store.store import LOCAL_USER
from app.ui.attachments import AttachmentsUI
from app.ui.backends import BackendsPanel
from app.ui.branches import BranchesUI, edited
from app.ui.controls import CONTROL_NAMES, control_updates, generation_controls
from app.ui.downloads import Downloads
from app.ui.gradio_compat import SkippingBlocks, oauth_username
from app.ui.page import page_behaviour
from app.ui.preview import PreviewUI
from app.ui.raw import RawUI
from app.ui.render import chat_messages, dropped_notice, header_markdown
from app.ui.sharing import SharingUI
from app.ui.snippets import SnippetsUI
from app.ui.transfer import TransferUI

EXAMPLES = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and "
    "punctuation, with a few doctests.",
    "Write a Bash one-liner that lists the 10 largest files under the current directory.",
    "Write a SQL query that returns the second highest salary from an `employees` table.",
    "Convert this JavaScript to TypeScript with types: "
    "`function sum(xs) { return xs.reduce((a, b) => a + b, 0); }`",
    "Find the bug and fix it: `def mean(xs): return sum(xs) / len(xs)`",
]

# Outputs of the handlers that stream a reply, in this order.
REPLY_OUTPUTS = ("chatbot", "chat", "message", "notice", "header", "conversations", "last")

USER_IDS_KEPT = 10_000

SIGN_IN_FIRST = "Sign in with Hugging Face first (the button at the top of the page)."

# Conversations of Hugging Face users are stored under this prefix, so that they can never be
# those of a password account of the same name (account names have no colon).
HF_USER_PREFIX = "hf:"


def skip_all() -> tuple[Any, ...]:
    return (gr.skip(),) * len(REPLY_OUTPUTS)


class PlaygroundUI:
    def __init__(self, service: ChatService, store: Store, guard: Guard) -> None:
        self.service = service
        self.store = store
        self.guard = guard
        self.turns = Turns(service, guard)
        self.settings = service.settings
        # Names to ids of the users seen lately (not of every user ever seen).
        self._user_ids = Lru[str, int](USER_IDS_KEPT)
        self.downloads = Downloads()
        self.transfer = TransferUI(self.history_for, self.downloads, transfer.AttachmentLimits(
            self.settings.attachment_max_bytes, self.settings.attachments_per_message,
        ))
        self.branches = BranchesUI(self.history_for)
        self.backends = BackendsPanel(service, self.history_for)
        self.previews = Previews(self.settings.preview_max_bytes)
        self.preview = PreviewUI(self.previews, self.history_for)
        self.attachments = AttachmentsUI(service.settings)

    async def history_for(self, request: gr.Request | None) -> History:
        """The signed-in user's conversations; with AUTH_MODE=none, the local user's."""
        if self.settings.auth_mode == "none":
            name = LOCAL_USER
        elif self.settings.auth_mode == "hf":
            username = oauth_username(request)
            if username is None:
                raise gr.Error(SIGN_IN_FIRST)
            name = HF_USER_PREFIX + username
        elif request is None or not request.username:
            raise gr.Error("Sign in first.")
        else:
            name = request.username
        user_id = self._user_ids.get(name)
        if user_id is None:
            user_id = await asyncio.to_thread(self.store.user_id, name)
            self._user_ids.put(name, user_id)
        return History(self.store, user_id)

    # -- helpers -------------------------------------------------------------------------

    async def _info(self, model: str | None) -> tuple[BackendInfo | None, BackendError | None]:
        try:
            return await self.service.backend_info(model or None), None
        except BackendError as err:
            if self.settings.debug:
                raise
            return None, err

    @staticmethod
    async def _list(history: History, chat: Chat, search: str = "") -> Any:
        return gr.update(choices=await history.choices(search), value=chat.id)

    # -- events --------------------------------------------------------------------------

    async def model_picked(self, model: str | None) -> list[Any]:
        """The title line for the model just picked (its backend and limits), and the
        controls its kind of backend honours."""
        info, error = await self._info(model)
        return [header_markdown(info, error), *control_updates(info)]

    async def on_load(self, request: gr.Request | None) -> list[Any]:
        info, error = await self._info(None)
        header = header_markdown(info, error)
        if self.settings.auth_mode == "hf" and oauth_username(request) is None:
            conversations = gr.update(choices=[])  # signed out: nothing to list yet
        else:
            history = await self.history_for(request)
            conversations = gr.update(choices=await history.choices())
        menu = self.backends.model_menu(info.model_id if info else None)
        return [header, conversations, menu, self.backends.status_panel(),
                *control_updates(info)]

    async def send(
        self, request: gr.Request | None, text: str, files: list[str] | None, chat: Chat,
        system_prompt: str, language: str, model: str | None, *controls: Any,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Send a new message with the files attached (paths); outputs as in
        ``REPLY_OUTPUTS``, then the Attach box, emptied once the message is taken."""
        if not text.strip():
            yield *skip_all(), gr.skip()
            return
        history = await self.history_for(request)
        asked = replace(
            self._request(text, system_prompt, language, model, controls),
            files=self.attachments.read(files),
        )
        attached: Any = None
        async for update in self._reply(history, chat, asked):
            yield *update, attached
            attached = gr.skip()

    async def retry(
        self, request: gr.Request | None, chat: Chat, system_prompt: str, language: str,
        model: str | None, *controls: Any,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Ask again for the last message, with the prompt and settings on the page; its reply
        is replaced once the new one starts (the store keeps the earlier version)."""
        if not chat.exchanges or not chat.exchanges[-1].done:
            yield skip_all()
            return
        last = chat.exchanges[-1]
        history = await self.history_for(request)
        asked = self._request(last.user, system_prompt, language, model, controls)
        async for update in self._reply(history, chat, asked, retried=last):
            yield update

    async def edit(
        self, request: gr.Request | None, edit: gr.EditData, chat: Chat, system_prompt: str,
        language: str, model: str | None, *controls: Any,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Answer an earlier message as edited, as Send does: the conversation forks there,
        and the old branch stays a switch away. Outputs as in ``REPLY_OUTPUTS``."""
        found = edited(chat, edit)
        if found is None:
            yield chat_messages(chat.exchanges), *skip_all()[1:]
            return
        history = await self.history_for(request)
        asked = self._request(found[1], system_prompt, language, model, controls)
        async for update in self._reply(history, chat, asked, edited=found[0]):
            yield update

    @staticmethod
    def _request(
        text: str, system_prompt: str, language: str, model: str | None, controls: tuple[Any, ...]
    ) -> TurnRequest:
        settings = dict(zip(CONTROL_NAMES, controls, strict=True))
        if model:
            settings["model"] = model
        return TurnRequest(text, system_prompt, settings, language)

    async def _reply(
        self, history: History, chat: Chat, asked: TurnRequest, retried: Exchange | None = None,
        edited: Exchange | None = None,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Stream a reply, storing the message first and the reply as it grows.

        A refusal (gr.Error) leaves the conversation, shown and stored, as it was; a backend
        that does not answer is shown in the conversation, the message kept.
        """
        try:
            turn = await self.turns.start(history, chat, asked, retried, edited)
        except TurnRefused as err:
            if err.backend_error is None:
                raise gr.Error(str(err)) from err
            await self.turns.unanswered(history, chat, asked, err, retried, edited)
            conversations = await self._list(history, chat) if retried is None else gr.skip()
            header = header_markdown(None, err.backend_error)
            yield chat_messages(chat.exchanges), chat, "", "", header, conversations, chat.id
            return
        notice = dropped_notice(turn.dropped_exchanges, turn.budget)
        header = header_markdown(turn.info, None)
        seen = turn.live.version
        # The browser keeps the conversation's id at once, to reopen it after a reload.
        yield chat_messages(chat.exchanges), chat, "", notice, header, gr.skip(), chat.id
        # The conversation list is read while the backend works on the first token, and goes
        # out with the next render: at 64 messages at once, reading it first delayed every
        # first token.
        choices = await history.choices() if retried is None else None
        async for shown in self._follow(chat, turn.live, seen):
            listed: Any = gr.skip()
            if choices is not None:  # selected only while the tab still shows it
                listed = (gr.update(choices=choices, value=chat.id) if chat.on_screen
                          else gr.update(choices=choices))
            yield shown, *(gr.skip(),) * 4, listed, gr.skip()
            choices = None

    async def _follow(self, chat: Chat, live: LiveReply, seen: int) -> AsyncIterator[Any]:
        """The chat pane as the reply ``live`` (running on the server) grows after the version
        shown (``seen``), while the tab shows its conversation: rendered every
        STREAM_RENDER_INTERVAL and at the end; in between, the page's script shows the text
        as it comes (``app.live``). A tab that goes away (closed, reloaded) leaves the reply
        running, unless REPLY_KEEPS_RUNNING is off: then it stops it."""
        loop = asyncio.get_running_loop()
        rendered = loop.time()
        try:
            while True:
                seen = await live.after(seen)
                ended = live.done  # before the render: its last update is then in it
                if not chat.on_screen:
                    # Gradio sends a handler's last update again as it ends: one that
                    # changes nothing, so that the conversation left stays off screen.
                    yield gr.skip()
                    return
                if not ended and loop.time() - rendered < self.settings.stream_render_interval:
                    continue
                rendered = loop.time()
                # ``chat`` changes in place in the page's state: sending it again would only
                # make Gradio 6.31 rebuild the State's config at every update.
                yield chat_messages(chat.exchanges)
                if ended:
                    return
        finally:
            if chat.on_screen and not live.done and not self.service.replies.keeps_running:
                live.stop()

    async def stop(self, chat: Chat) -> None:
        """Ask the reply in progress to end, for every tab that shows it; they show it as
        stopped."""
        for exchange in chat.exchanges:
            exchange.stop.set()

    async def undo(self, request: gr.Request | None, chat: Chat) -> tuple[Any, Chat, str]:
        """Take back the last exchange (from the store too) and put its message in the box."""
        if not chat.exchanges:
            return gr.skip(), chat, gr.skip()
        await self.stop(chat)
        last = chat.exchanges.pop()
        await (await self.history_for(request)).forget(chat, last)
        return chat_messages(chat.exchanges), chat, last.user

    async def leave(self, chat: Chat) -> None:
        """The tab moves to another conversation: a reply still being written in this one
        no longer paints over the next one. It goes on (REPLY_KEEPS_RUNNING), or ends,
        stopped and kept."""
        chat.on_screen = False
        if not self.service.replies.keeps_running:
            await self.stop(chat)

    async def new_chat(self, chat: Chat) -> tuple[list[Any], Chat, str, Any]:
        """Start an empty conversation; the one on screen stays in the list, with its reply
        going on if one is being written."""
        await self.leave(chat)
        return [], Chat(), "", gr.update(value=None)

    async def open_chat(
        self, request: gr.Request | None, conversation_id: str | None, chat: Chat
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Show a stored conversation with its system prompt, model and settings, and its
        reply still being written, if any, as it grows."""
        if not conversation_id or conversation_id == chat.id:
            yield (gr.skip(),) * (6 + len(CONTROL_NAMES))
            return
        try:
            record, opened = await (await self.history_for(request)).open(conversation_id)
        except NotFound as err:
            raise gr.Error("That conversation no longer exists.") from err
        await self.leave(chat)
        async for update in self._shown(record, opened):
            yield update

    async def reopen(
        self, request: gr.Request | None, conversation_id: str | None, chat: Chat
    ) -> AsyncIterator[tuple[Any, ...]]:
        """At page load: the conversation the browser showed last (a reload, or another tab
        of it), with its reply still being written, if any; nothing when it is gone."""
        nothing = (gr.skip(),) * (7 + len(CONTROL_NAMES))
        if not conversation_id or chat.id is not None:
            yield nothing
            return
        try:
            record, opened = await (await self.history_for(request)).open(conversation_id)
        except (NotFound, gr.Error):  # deleted meanwhile, or another account's
            yield nothing
            return
        selected = gr.update(value=record.id)  # in the sidebar, once
        async for update in self._shown(record, opened):
            yield *update, selected
            selected = gr.skip()

    async def _shown(
        self, record: ConversationRecord, opened: Chat
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Outputs of ``open_chat``: the conversation, then the chat pane alone at each
        update of its reply being written."""
        live = self.service.replies.attach(opened)
        seen = live.version if live is not None else 0
        settings = record.settings
        values = [settings.get(name, gr.skip()) for name in CONTROL_NAMES]
        yield (chat_messages(opened.exchanges), opened, record.system_prompt,
               record.language or "", settings.get("model", gr.skip()), record.title,
               *values)
        if live is not None:
            async for shown in self._follow(opened, live, seen):
                yield shown, *(gr.skip(),) * (5 + len(CONTROL_NAMES))

    async def search(self, request: gr.Request | None, text: str, chat: Chat) -> Any:
        return await self._list(await self.history_for(request), chat, text)

    async def rename(self, request: gr.Request | None, title: str, chat: Chat) -> Any:
        if chat.id is None:
            raise gr.Error("Send a first message before naming the conversation.")
        if not title.strip():
            raise gr.Error("Give the conversation a title.")
        history = await self.history_for(request)
        await history.rename(chat.id, title.strip()[:200])
        return await self._list(history, chat)

    async def delete(
        self, request: gr.Request | None, chat: Chat
    ) -> tuple[list[Any], Chat, str, Any, Any]:
        """Delete the conversation on screen (after the user confirmed)."""
        await self.leave(chat)
        history = await self.history_for(request)
        if chat.id is not None:
            await history.delete(chat.id)
        empty = Chat()
        return [], empty, "", await self._list(history, empty), gr.update(visible=False)

    def _signed_in_only(self, load: Any) -> Any:
        """A page-load handler that does nothing, rather than fail, before a Hugging Face
        sign-in."""

        async def run(request: gr.Request | None, *args: Any) -> Any:
            if self.settings.auth_mode == "hf" and oauth_username(request) is None:
                return gr.skip()
            return await load(request, *args)

        return run

    # -- layout --------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        s = self.settings
        snippets = SnippetsUI(
            self.service, self.guard, self.history_for, s.runs_allowed, self.downloads,
            self.preview,
        )
        raw = RawUI(self.service, self.guard, self.history_for)
        sharing = SharingUI(self.history_for) if s.allow_sharing else None
        # Gradio's copies of served and uploaded files: checked hourly, gone after a day.
        with SkippingBlocks(title="Coding Playground", delete_cache=(3600, 86400)) as demo:
            chat = gr.State(Chat())
            with gr.Sidebar(label="Conversations", open=True):
                new = gr.Button("New conversation", elem_id="new-chat")
                if s.auth_mode == "password":
                    gr.Button("Sign out", link="/logout", size="sm", elem_id="sign-out")
                if s.auth_mode == "hf":
                    # Its presence makes Gradio add /login/huggingface, /login/callback,
                    # /logout and the session cookie that carries the login.
                    gr.LoginButton(size="sm", elem_id="sign-in")
                search = gr.Textbox(
                    placeholder="Search titles and messages", show_label=False,
                    elem_id="search",
                )
                conversations = gr.Radio(
                    [], label="Conversations", show_label=False, elem_id="conversations"
                )
                title = gr.Textbox(
                    label="Title", placeholder="A new title, then Rename", elem_id="title"
                )
                with gr.Row():
                    rename = gr.Button("Rename", size="sm", elem_id="rename")
                    delete = gr.Button("Delete", size="sm", variant="stop", elem_id="delete")
                with gr.Row(visible=False) as confirm_row:
                    gr.Markdown("Delete this conversation for good?")
                    confirm = gr.Button("Delete", size="sm", variant="stop", elem_id="confirm")
                    cancel = gr.Button("Keep", size="sm", elem_id="cancel")
                with gr.Accordion("Export and import", open=False):
                    self.transfer.controls(chat, conversations)
                    if sharing is not None:
                        sharing.import_box(conversations)
                if sharing is not None:
                    sharing.panel(demo, chat, self._signed_in_only)
                page_behaviour(demo)
            header = gr.Markdown(header_markdown(None, None), elem_id="header")
            if s.auth_mode == "hf":
                gr.Markdown(
                    "Sign in with Hugging Face (in the sidebar) to chat; you see only your own "
                    "conversations.", elem_id="sign-in-note",
                )
            if s.ephemeral_history:
                gr.Markdown(
                    "**This Space has no persistent storage: conversations and snippets are "
                    "lost when it restarts.** Its owner can add storage in the Space's "
                    "settings.", elem_id="storage-warning",
                )
            backends, check = self.backends.panel()
            with gr.Tabs():
                with gr.Tab("Chat", elem_id="chat-tab"):
                    with gr.Row():
                        chatbot = gr.Chatbot(
                            height=520, buttons=["copy", "copy_all"], elem_id="chat",
                            show_label=False, placeholder="Ask for code, a fix, or an explanation.",
                            editable="user", scale=3,
                        )
                        self.preview.chat_request(self.preview.panel("chat-preview"))
                    self.branches.controls(demo, chatbot, chat)
                    self.attachments.viewer(demo, chat)
                    notice = gr.Markdown(elem_id="notice")
                    with gr.Row():
                        message = gr.Textbox(
                            placeholder="Type a message; Enter sends, Shift+Enter adds a line",
                            show_label=False, lines=1, max_lines=12, scale=8, elem_id="message",
                        )
                        with gr.Column(scale=1, min_width=120):
                            send = gr.Button("Send", variant="primary", elem_id="send")
                            stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    attach = self.attachments.box()
                    with gr.Row(equal_height=True):
                        language = gr.Dropdown(
                            [("Any language", ""),
                             *((name, key) for key, name in LANGUAGE_NAMES.items())],
                            value="", label="Language", show_label=False, scale=2,
                            min_width=160, elem_id="language",
                        )
                        model = gr.Dropdown(
                            [], label="Model", show_label=False, scale=3, min_width=200,
                            allow_custom_value=True, elem_id="model",
                        )
                        retry = gr.Button("Retry", size="sm", elem_id="retry")
                        undo = gr.Button("Undo", size="sm", elem_id="undo")
                        clear = gr.Button("Clear", size="sm", elem_id="clear")
                    gr.Examples(EXAMPLES, inputs=[message], label="Try one")
                    with gr.Accordion("System prompt and generation settings", open=False):
                        system_prompt = gr.Textbox(s.system_prompt, label="System prompt", lines=4)
                        controls = generation_controls(s)
                    saving = snippets.save_panel()

                raw.tab(chat, model, system_prompt, language, message, controls)
                snippets.tab(demo, saving, chat, model, self._signed_in_only)

            # The browser keeps the conversation on screen, to show it again after a reload.
            last = gr.BrowserState(None, storage_key="coding-playground-conversation")
            reply_outputs = [chatbot, chat, message, notice, header, conversations, last]
            gr.on(
                [message.submit, send.click], self.send,
                [message, attach, chat, system_prompt, language, model, *controls],
                # The Attach box is an output only to be emptied: no progress or error cover
                # there, which would keep its files from being changed after a refusal.
                [*reply_outputs, attach], api_name="chat", show_progress_on=reply_outputs,
                # A message sent before the last reply's handler has ended (it may show as
                # finished a moment before) goes once it has, rather than being dropped.
                trigger_mode="always_last",
            )
            retry.click(
                self.retry, [chat, system_prompt, language, model, *controls], reply_outputs,
                api_name="retry",
            )
            # Private: an edit needs the event data only the page sends.
            chatbot.edit(
                self.edit, [chat, system_prompt, language, model, *controls], reply_outputs,
                api_visibility="private",
            )
            # Stop, Undo and the conversation switches signal the streaming handler rather
            # than cancel it, so that its last update (the reply marked stopped) is saved.
            stop.click(self.stop, [chat], None, queue=False, api_name="stop")
            undo.click(
                self.undo, [chat], [chatbot, chat, message], queue=False, api_name="undo"
            )
            gr.on(
                [clear.click, new.click], self.new_chat, [chat],
                [chatbot, chat, title, conversations], queue=False, api_name="new_chat",
            )
            shown = [chatbot, chat, system_prompt, language, model, title, *controls]
            conversations.input(
                self.open_chat, [conversations, chat], shown, api_name="open_chat"
            )
            conversations.change(None, [conversations], [last], js="(id) => id")
            search.change(
                self.search, [search, chat], [conversations], queue=False, api_name="search"
            )
            rename.click(
                self.rename, [title, chat], [conversations], queue=False, api_name="rename"
            )
            delete.click(lambda: gr.update(visible=True), None, [confirm_row], queue=False,
                         api_visibility="private")
            cancel.click(lambda: gr.update(visible=False), None, [confirm_row], queue=False,
                         api_visibility="private")
            confirm.click(
                self.delete, [chat], [chatbot, chat, title, conversations, confirm_row],
                queue=False, api_name="delete",
            )
            demo.load(
                self.on_load, None, [header, conversations, model, backends, *controls],
                api_name="backend_info",
            ).then(self.reopen, [last, chat], [*shown, conversations], api_visibility="private")
            model.input(self.model_picked, [model], [header, *controls], queue=False,
                        api_visibility="private")
            check.click(self.backends.check_backends, [model], [backends, model],
                        api_name="check_backends")
        blocks: gr.Blocks = demo
        return blocks
