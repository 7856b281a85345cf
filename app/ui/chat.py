"""The chat tab's handlers: Send/Stop, Retry/Undo/Clear, edits of earlier messages, and the
conversation list (open, search, rename, delete). They are async generators or coroutines that
know the turn service and the user's conversations, never HTTP; each answers with the
components it changes, by name (``ChatView``), the others left as they are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from app.backends import BackendError, BackendInfo
from app.chat import Chat, ChatService, Exchange
from app.chat.conversations import Conversations, NotFound
from app.chat.replies import LiveReply
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.store import ConversationRecord
from app.ui.attachments import AttachmentsUI
from app.ui.backends import BackendsPanel
from app.ui.branches import edited
from app.ui.controls import CONTROL_NAMES, control_updates
from app.ui.gradio_compat import Outputs
from app.ui.render import chat_messages, dropped_notice, header_markdown
from app.ui.users import PageUsers


def page_request(
    text: str, system_prompt: str, language: str, model: str | None, controls: tuple[Any, ...]
) -> TurnRequest:
    """A message as the page sends it: the chat tab's prompt, language and controls (in
    ``CONTROL_NAMES``' order), and the model picked (none: the conversation's)."""
    settings = dict(zip(CONTROL_NAMES, controls, strict=True))
    if model:
        settings["model"] = model
    return TurnRequest(text, system_prompt, settings, language)


@dataclass
class ChatView:
    """The components the chat's handlers update (the page builds them)."""

    chatbot: gr.Chatbot
    chat: gr.State
    message: gr.Textbox
    attach: gr.File
    notice: gr.Markdown
    header: gr.Markdown
    conversations: gr.Radio
    title: gr.Textbox
    confirm: gr.Row
    system_prompt: gr.Textbox
    language: gr.Dropdown
    model: gr.Dropdown
    controls: list[Any]
    backends: gr.Markdown
    # The browser keeps the conversation on screen, to show it again after a reload.
    last: gr.BrowserState

    @property
    def replying(self) -> list[Any]:
        """What the handlers that stream a reply change."""
        return [self.chatbot, self.chat, self.message, self.notice, self.header,
                self.conversations, self.last]

    @property
    def opening(self) -> list[Any]:
        """What opening a conversation changes."""
        return [self.chatbot, self.chat, self.system_prompt, self.language, self.model,
                self.title, *self.controls]

    def controls_as(self, values: list[Any]) -> Outputs:
        return dict(zip(self.controls, values, strict=True))


@dataclass
class ChatButtons:
    """The chat's buttons, and the search box of the conversation list."""

    send: gr.Button
    stop: gr.Button
    retry: gr.Button
    undo: gr.Button
    clear: gr.Button
    new: gr.Button
    search: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    confirm: gr.Button
    cancel: gr.Button
    check: gr.Button


class ChatUI:
    def __init__(
        self, service: ChatService, turns: Turns, users: PageUsers, backends: BackendsPanel,
        attachments: AttachmentsUI,
    ) -> None:
        self.service = service
        self.turns = turns
        self.users = users
        self.backends = backends
        self.attachments = attachments
        self.settings = service.settings
        self.view: ChatView  # set by ``wire``, as the page is built

    async def _info(self, model: str | None) -> tuple[BackendInfo | None, BackendError | None]:
        try:
            return await self.service.backend_info(model or None), None
        except BackendError as err:
            if self.settings.debug:
                raise
            return None, err

    async def _list(self, mine: Conversations, chat: Chat, search: str = "") -> Outputs:
        return {self.view.conversations: gr.update(choices=await mine.choices(search),
                                                   value=chat.id)}

    # -- loading and the model -----------------------------------------------------------

    async def on_load(self, request: gr.Request | None) -> Outputs:
        """The title line for the default model, the conversation list, the model menu, the
        backends' table and the controls the backend honours."""
        v = self.view
        info, error = await self._info(None)
        if self.users.signed_out(request):
            listed = gr.update(choices=[])  # nothing to list yet
        else:
            listed = gr.update(choices=await (await self.users.conversations(request)).choices())
        return {v.header: header_markdown(info, error), v.conversations: listed,
                v.model: self.backends.model_menu(info.model_id if info else None),
                v.backends: self.backends.status_panel(), **v.controls_as(control_updates(info))}

    async def model_picked(self, model: str | None) -> Outputs:
        """The title line for the model just picked (its backend and limits), and the
        controls its kind of backend honours."""
        info, error = await self._info(model)
        return {self.view.header: header_markdown(info, error),
                **self.view.controls_as(control_updates(info))}

    # -- a reply -------------------------------------------------------------------------

    async def send(
        self, request: gr.Request | None, text: str, files: list[str] | None, chat: Chat,
        system_prompt: str, language: str, model: str | None, *controls: Any,
    ) -> AsyncIterator[Outputs]:
        """Send a new message with the files attached (paths); the Attach box is emptied once
        the message is taken."""
        if not text.strip():
            yield {}
            return
        mine = await self.users.conversations(request)
        asked = replace(
            page_request(text, system_prompt, language, model, controls),
            files=self.attachments.read(files),
        )
        emptied = {self.view.attach: None}
        async for update in self._reply(mine, chat, asked):
            yield update | emptied
            emptied = {}

    async def retry(
        self, request: gr.Request | None, chat: Chat, system_prompt: str, language: str,
        model: str | None, *controls: Any,
    ) -> AsyncIterator[Outputs]:
        """Ask again for the last message, with the prompt and settings on the page; its reply
        is replaced once the new one starts (the store keeps the earlier version)."""
        if not chat.exchanges or not chat.exchanges[-1].done:
            yield {}
            return
        last = chat.exchanges[-1]
        mine = await self.users.conversations(request)
        asked = page_request(last.user, system_prompt, language, model, controls)
        async for update in self._reply(mine, chat, asked, retried=last):
            yield update

    async def edit(
        self, request: gr.Request | None, edit: gr.EditData, chat: Chat, system_prompt: str,
        language: str, model: str | None, *controls: Any,
    ) -> AsyncIterator[Outputs]:
        """Answer an earlier message as edited, as Send does: the conversation forks there,
        and the old branch stays a switch away."""
        found = edited(chat, edit)
        if found is None:
            yield {self.view.chatbot: chat_messages(chat.exchanges)}
            return
        mine = await self.users.conversations(request)
        asked = page_request(found[1], system_prompt, language, model, controls)
        async for update in self._reply(mine, chat, asked, edited=found[0]):
            yield update

    async def _reply(
        self, mine: Conversations, chat: Chat, asked: TurnRequest,
        retried: Exchange | None = None, edited: Exchange | None = None,
    ) -> AsyncIterator[Outputs]:
        """Stream a reply, storing the message first and the reply as it grows.

        A refusal (gr.Error) leaves the conversation, shown and stored, as it was; a backend
        that does not answer is shown in the conversation, the message kept.
        """
        v = self.view
        try:
            turn = await self.turns.start(mine, chat, asked, retried, edited)
        except TurnRefused as err:
            if err.backend_error is None:
                raise gr.Error(str(err)) from err
            await self.turns.unanswered(mine, chat, asked, err, retried, edited)
            listed = await self._list(mine, chat) if retried is None else {}
            yield {v.chatbot: chat_messages(chat.exchanges), v.chat: chat, v.message: "",
                   v.notice: "", v.header: header_markdown(None, err.backend_error),
                   v.last: chat.id, **listed}
            return
        shown = len(turn.exchange.log)  # the text in the render below
        # The browser keeps the conversation's id at once, to reopen it after a reload.
        yield {v.chatbot: chat_messages(chat.exchanges), v.chat: chat, v.message: "",
               v.notice: dropped_notice(turn.dropped_exchanges, turn.budget),
               v.header: header_markdown(turn.info, None), v.last: chat.id}
        # The conversation list is read while the backend works on the first token, and goes
        # out with the next render: at 64 messages at once, reading it first delayed every
        # first token.
        choices = await mine.choices() if retried is None else None
        async for update in self._follow(chat, turn.live, shown):
            if choices is not None:  # selected only while the tab still shows it
                update[v.conversations] = (
                    gr.update(choices=choices, value=chat.id) if chat.on_screen
                    else gr.update(choices=choices)
                )
                choices = None
            yield update

    async def _follow(self, chat: Chat, live: LiveReply, shown: int) -> AsyncIterator[Outputs]:
        """The chat pane as the reply ``live`` (running on the server) grows past the text
        rendered (``shown``, an offset in its log), while the tab shows its conversation:
        rendered every STREAM_RENDER_INTERVAL and at the end; in
        between, the page's script shows the text as it comes (``app.live``). A tab that goes
        away (closed, reloaded) leaves the reply running, unless REPLY_KEEPS_RUNNING is off:
        then it stops it."""
        loop = asyncio.get_running_loop()
        rendered = loop.time()
        try:
            async for _ in live.exchange.log.chunks(shown):
                if not chat.on_screen:
                    break
                if loop.time() - rendered >= self.settings.stream_render_interval:
                    rendered = loop.time()
                    # ``chat`` changes in place in the page's state: sending it again would
                    # only make Gradio 6.31 rebuild the State's config at every update.
                    yield {self.view.chatbot: chat_messages(chat.exchanges)}
            # Gradio sends a handler's last update again as it ends: off screen, one that
            # changes nothing, so that the conversation left stays off screen.
            yield {self.view.chatbot: chat_messages(chat.exchanges)} if chat.on_screen else {}
        finally:
            if chat.on_screen and not live.done and not self.service.replies.keeps_running:
                live.stop()

    async def stop(self, chat: Chat) -> None:
        """Ask the reply in progress to end, for every tab that shows it; they show it as
        stopped."""
        for exchange in chat.exchanges:
            exchange.stop.set()

    async def undo(self, request: gr.Request | None, chat: Chat) -> Outputs:
        """Take back the last exchange (from the store too) and put its message in the box."""
        if not chat.exchanges:
            return {}
        await self.stop(chat)
        last = chat.exchanges.pop()
        await (await self.users.conversations(request)).forget(chat, last)
        v = self.view
        return {v.chatbot: chat_messages(chat.exchanges), v.chat: chat, v.message: last.user}

    # -- the conversations ---------------------------------------------------------------

    async def leave(self, chat: Chat) -> None:
        """The tab moves to another conversation: a reply still being written in this one
        no longer paints over the next one. It goes on (REPLY_KEEPS_RUNNING), or ends,
        stopped and kept."""
        chat.on_screen = False
        if not self.service.replies.keeps_running:
            await self.stop(chat)

    async def new_chat(self, chat: Chat) -> Outputs:
        """Start an empty conversation; the one on screen stays in the list, with its reply
        going on if one is being written."""
        await self.leave(chat)
        v = self.view
        return {v.chatbot: [], v.chat: Chat(), v.title: "", v.conversations: gr.update(value=None)}

    async def open_chat(
        self, request: gr.Request | None, conversation_id: str | None, chat: Chat
    ) -> AsyncIterator[Outputs]:
        """Show a stored conversation with its system prompt, model and settings, and its
        reply still being written, if any, as it grows."""
        if not conversation_id or conversation_id == chat.id:
            yield {}
            return
        try:
            record, opened = await (await self.users.conversations(request)).open(
                conversation_id
            )
        except NotFound as err:
            raise gr.Error("That conversation no longer exists.") from err
        await self.leave(chat)
        async for update in self._shown(record, opened):
            yield update

    async def reopen(
        self, request: gr.Request | None, conversation_id: str | None, chat: Chat
    ) -> AsyncIterator[Outputs]:
        """At page load: the conversation the browser showed last (a reload, or another tab
        of it), with its reply still being written, if any; nothing when it is gone."""
        if not conversation_id or chat.id is not None:
            yield {}
            return
        try:
            record, opened = await (await self.users.conversations(request)).open(
                conversation_id
            )
        except (NotFound, gr.Error):  # deleted meanwhile, or another account's
            yield {}
            return
        selected = {self.view.conversations: gr.update(value=record.id)}  # in the sidebar, once
        async for update in self._shown(record, opened):
            yield update | selected
            selected = {}

    async def _shown(self, record: ConversationRecord, opened: Chat) -> AsyncIterator[Outputs]:
        """The conversation with its prompt, language, model, title and settings, then the
        chat pane alone as its reply being written (if any) grows."""
        v = self.view
        live = self.service.replies.attach(opened)
        shown = len(live.exchange.log) if live is not None else 0
        settings = record.settings  # kept as the page keeps them, when written
        yield {v.chatbot: chat_messages(opened.exchanges), v.chat: opened,
               v.system_prompt: record.system_prompt, v.language: record.language or "",
               v.title: record.title,
               **({v.model: settings["model"]} if "model" in settings else {}),
               **{control: settings[name] for name, control in zip(CONTROL_NAMES, v.controls,
                                                                   strict=True)
                  if name in settings}}
        if live is not None:
            async for update in self._follow(opened, live, shown):
                yield update

    async def search(self, request: gr.Request | None, text: str, chat: Chat) -> Outputs:
        return await self._list(await self.users.conversations(request), chat, text)

    async def rename(self, request: gr.Request | None, title: str, chat: Chat) -> Outputs:
        if chat.id is None:
            raise gr.Error("Send a first message before naming the conversation.")
        if not title.strip():
            raise gr.Error("Give the conversation a title.")
        mine = await self.users.conversations(request)
        await mine.rename(chat.id, title.strip()[:200])
        return await self._list(mine, chat)

    async def delete(self, request: gr.Request | None, chat: Chat) -> Outputs:
        """Delete the conversation on screen (after the user confirmed)."""
        await self.leave(chat)
        mine = await self.users.conversations(request)
        if chat.id is not None:
            await mine.delete(chat.id)
        empty = Chat()
        v = self.view
        return {v.chatbot: [], v.chat: empty, v.title: "", v.confirm: gr.update(visible=False),
                **await self._list(mine, empty)}

    # -- wiring --------------------------------------------------------------------------

    def wire(self, page: gr.Blocks, v: ChatView, b: ChatButtons) -> None:
        """Connect the chat's components and buttons to the handlers above."""
        self.view = v
        inputs = [v.chat, v.system_prompt, v.language, v.model, *v.controls]
        gr.on(
            [v.message.submit, b.send.click], self.send, [v.message, v.attach, *inputs],
            # The Attach box is an output only to be emptied: no progress or error cover
            # there, which would keep its files from being changed after a refusal.
            [*v.replying, v.attach], api_name="chat", show_progress_on=v.replying,
            # A message sent before the last reply's handler has ended (it may show as
            # finished a moment before) goes once it has, rather than being dropped.
            trigger_mode="always_last",
        )
        b.retry.click(self.retry, inputs, v.replying, api_name="retry")
        # Private: an edit needs the event data only the page sends.
        v.chatbot.edit(self.edit, inputs, v.replying, api_visibility="private")
        # Stop, Undo and the conversation switches signal the streaming handler rather
        # than cancel it, so that its last update (the reply marked stopped) is saved.
        b.stop.click(self.stop, [v.chat], None, queue=False, api_name="stop")
        b.undo.click(self.undo, [v.chat], [v.chatbot, v.chat, v.message], queue=False,
                     api_name="undo")
        gr.on(
            [b.clear.click, b.new.click], self.new_chat, [v.chat],
            [v.chatbot, v.chat, v.title, v.conversations], queue=False, api_name="new_chat",
        )
        v.conversations.input(self.open_chat, [v.conversations, v.chat], v.opening,
                              api_name="open_chat")
        v.conversations.change(None, [v.conversations], [v.last], js="(id) => id")
        b.search.change(self.search, [b.search, v.chat], [v.conversations], queue=False,
                        api_name="search")
        b.rename.click(self.rename, [v.title, v.chat], [v.conversations], queue=False,
                       api_name="rename")
        b.delete.click(lambda: gr.update(visible=True), None, [v.confirm], queue=False,
                       api_visibility="private")
        b.cancel.click(lambda: gr.update(visible=False), None, [v.confirm], queue=False,
                       api_visibility="private")
        b.confirm.click(
            self.delete, [v.chat], [v.chatbot, v.chat, v.title, v.conversations, v.confirm],
            queue=False, api_name="delete",
        )
        page.load(
            self.on_load, None, [v.header, v.conversations, v.model, v.backends, *v.controls],
            api_name="backend_info",
        ).then(self.reopen, [v.last, v.chat], [*v.opening, v.conversations],
               api_visibility="private")
        v.model.input(self.model_picked, [v.model], [v.header, *v.controls], queue=False,
                      api_visibility="private")
        b.check.click(self.backends.check_backends, [v.model], [v.backends, v.model],
                      api_name="check_backends")
