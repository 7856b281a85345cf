"""Branches on the page. Editing an earlier message (the chat's edit button) forks the
conversation there: ``edited`` reads the edit, and the page answers the new version as Send
does. Each message with alternatives shows a switch (``render.switcher``) whose arrows are
links to ``#branch-<id>``; a script catches their clicks, puts the id in a hidden box and
presses a hidden button, whose handler (``BranchesUI.switch``) puts that branch on screen, in
the store too, so that it is the one shown again later and the one the model is sent."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.chat import Chat, Exchange
from app.markdown import unescape_html
from app.store import NotFound
from app.ui.render import BRANCH_LINK, chat_messages, exchange_at, user_suffix
from app.ui.scripts import call
from app.ui.users import PageUsers

BUSY = "Wait for the reply to finish (or press Stop) before {}."


def busy(chat: Chat) -> bool:
    return any(not exchange.done for exchange in chat.exchanges)


def edited(chat: Chat, edit: gr.EditData) -> tuple[Exchange, str] | None:
    """The exchange whose message the user edited and the message's new text; None when the
    text is unchanged or empty. Raises ``gr.Error`` while a reply streams, or for a message
    not stored (yet)."""
    exchange = exchange_at(chat.exchanges, edit.index) if isinstance(edit.index, int) else None
    if exchange is None or chat.id is None or exchange.user_message_id is None:
        raise gr.Error("That message cannot be edited; open the conversation again.")
    if busy(chat):
        raise gr.Error(BUSY.format("editing a message"))
    text = unescape_html(str(edit.value).removesuffix(user_suffix(exchange)))
    if not text.strip() or text == exchange.user:
        return None
    return exchange, text


class BranchesUI:
    def __init__(self, users: PageUsers) -> None:
        self.users = users

    async def switch(
        self, request: gr.Request | None, target: str, chat: Chat
    ) -> tuple[Any, Chat]:
        """Show the branch through the message ``target`` (an id) of the conversation."""
        if busy(chat):
            raise gr.Error(BUSY.format("switching to another version"))
        mine = await self.users.conversations(request)
        try:
            switched = await mine.switch(chat, int(target))
        except (NotFound, ValueError) as err:
            raise gr.Error(
                "That version is no longer there; open the conversation again."
            ) from err
        return chat_messages(switched.exchanges), switched

    def controls(self, page: gr.Blocks, chatbot: gr.Chatbot, chat: gr.State) -> None:
        """The hidden box and button the switch links press, and the script that does it."""
        target = gr.Textbox(visible="hidden", elem_id="branch-target")
        switch = gr.Button(visible="hidden", elem_id="branch-switch")
        switch.click(self.switch, [target, chat], [chatbot, chat], api_name="switch_branch")
        page.load(None, js=call("link_presses.js", BRANCH_LINK, "branch-target", "branch-switch"))
