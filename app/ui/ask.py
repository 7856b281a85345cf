"""``/ask``: the one endpoint of the page's Gradio API meant for code (``gradio_client``, the
page's "Use via API"), the way in from a program where the REST API is closed (a Space,
``AUTH_MODE=hf``) or not wanted.

One message, to a new conversation or one of the caller's (``dialogue_id``), on the page's own
path (``Turns``): the same checks and limits, the same user (who the page's session or the
Hugging Face sign-in says), stored as the page stores it. Its parameters are named and, but for
the message, optional; each update is the reply so far, and the last one ends it. Every other
handler of the page is left out of the API page (``undocumented``: still there for the page
itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr
from gradio.events import api

from app.chat import Chat
from app.chat.conversations import NotFound
from app.chat.log import waiting_notice
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.settings import Settings
from app.ui.users import PageUsers

API_NAME = "ask"


class AskEndpoint:
    def __init__(self, turns: Turns, users: PageUsers, settings: Settings) -> None:
        self.turns = turns
        self.users = users
        self.settings = settings

    def wire(self, demo: gr.Blocks) -> None:
        """Add ``/ask`` to the page, and leave the page's other handlers off its API page."""
        api(self.ask, api_name=API_NAME)
        for fn in demo.fns.values():
            if fn.api_name != API_NAME and fn.api_visibility == "public":
                fn.api_visibility = "undocumented"

    async def ask(
        self, message: str, dialogue_id: str = "", system_prompt: str = "", model: str = "",
        max_new_tokens: int = 0, temperature: float = 0.2, top_p: float = 0.95,
        seed: int = -1, request: gr.Request = None,  # type: ignore[assignment]
    ) -> AsyncIterator[dict[str, Any]]:
        """Ask the model, as the page's Send does, and stream its reply. `dialogue_id`
        continues one of your conversations (its earlier turns are sent; the generation
        settings are those given here, the model the conversation's unless one is given);
        empty starts a new one. `system_prompt` empty: the conversation's, else the default.
        `model` empty: the conversation's, else the default (see the page's model menu).
        `max_new_tokens` 0: the server's default. `seed` -1: random. Each update is
        {dialogue_id, message_id, reply (the text so far), notice (while the reply waits for
        the model), stats (at the end: tokens, time_to_first_token, tokens_per_second,
        finish), error}; the last one has the stats."""
        mine = await self.users.conversations(request)
        record, chat = None, Chat()
        if dialogue_id:
            try:
                record, chat = await mine.open(dialogue_id)
            except NotFound as err:
                raise gr.Error(f"No conversation {dialogue_id!r} among yours.") from err
        given: dict[str, Any] = {
            "max_new_tokens": max_new_tokens or self.settings.max_new_tokens,
            "temperature": temperature, "top_p": top_p, "seed": seed,
        }
        if model:
            given["model"] = model
        asked = TurnRequest.to(record, message, system_prompt or None, given,
                               self.settings.system_prompt)
        try:
            turn = await self.turns.start(mine, chat, asked)
        except TurnRefused as err:
            raise gr.Error(str(err)) from err
        exchange = turn.exchange
        async for _ in exchange.log.chunks():
            waiting = exchange.log.waiting
            yield {"dialogue_id": chat.id, "message_id": exchange.reply_id,
                   "reply": exchange.reply, "stats": None, "error": None,
                   "notice": None if waiting is None else waiting_notice(waiting)}
        stats = exchange.stats
        yield {"dialogue_id": chat.id, "message_id": exchange.reply_id, "reply": exchange.reply,
               "notice": None, "error": exchange.error,
               "stats": None if stats is None else dataclasses.asdict(stats)}
