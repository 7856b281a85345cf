"""The raw-prompt tab (StarChat style): the conversation rendered with the model's chat
template, editable, sent as it is; each generated token shown with its log-probability."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.backends import BackendError
from app.backends.raw import RawToken, render_prompt
from app.chat import Chat, ChatService
from app.chat.guard import MessageRefused
from app.chat.languages import system_prompt_for
from app.chat.turns import TurnRefused, TurnRequest, Turns
from app.ui.controls import CONTROL_NAMES
from app.ui.render import token_html
from app.ui.users import PageUsers


@dataclass
class RawRun:
    """The raw generation of one browser tab; setting ``stop`` ends it."""

    stop: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)


def raw_stats(tokens: list[RawToken], started: float, finish: str | None) -> str:
    seconds = time.monotonic() - started
    ending = {"length": "cut at the token limit", None: "stopped"}.get(finish, "finished")
    return f"{len(tokens)} tokens · {seconds:.2f} s · {ending}"


class RawUI:
    def __init__(self, service: ChatService, turns: Turns, users: PageUsers) -> None:
        self.service = service
        self.turns = turns
        self.users = users

    async def render(
        self, request: gr.Request | None, model: str | None, chat: Chat, system_prompt: str,
        language: str, message: str,
    ) -> tuple[str, str]:
        """The conversation on screen (and the message in the box) as one prompt, for a
        signed-in user; it asks the backend, so it counts against the user's message rate."""
        mine = await self.users.conversations(request)
        try:
            await self.turns.guard.check(mine.user_id, message or "render")
        except MessageRefused as err:
            raise gr.Error(str(err)) from err
        try:
            info = await self.service.backend_info(model or None)
        except BackendError as err:
            raise gr.Error(str(err)) from err
        messages = [{"role": "system", "content": system_prompt_for(system_prompt, language)}]
        for exchange in chat.exchanges:
            messages.append({"role": "user", "content": exchange.sent})
            if exchange.reply:
                messages.append({"role": "assistant", "content": exchange.reply})
        if message.strip():
            messages.append({"role": "user", "content": message})
        client = self.service.router.client(info.name)
        try:
            rendered = await render_prompt(client, info, messages)
        except BackendError as err:
            raise gr.Error(str(err)) from err
        if rendered.from_model:
            note = f"Rendered by {info.name} with {info.model_id}'s own chat template."
        else:
            why = rendered.problem or f"{info.name} does not share its chat template"
            note = (f"{why}. This is generic ChatML: edit it to your model's format before "
                    "generating.")
        return rendered.text, note

    async def generate(
        self, request: gr.Request | None, model: str | None, prompt: str, run: RawRun,
        *controls: Any,
    ) -> AsyncIterator[tuple[str, str]]:
        """Stream the continuation of the prompt as coloured tokens, then its stats. It is a
        call of the model as a message is (``Turns.calling``): the same limits, context
        check, failover and metrics."""
        if not prompt.strip():
            raise gr.Error("Write or render a prompt first.")
        mine = await self.users.conversations(request)
        settings = dict(zip(CONTROL_NAMES, controls, strict=True))
        asked = TurnRequest(prompt, "", {**settings, "model": model or ""})
        run.stop.clear()
        tokens: list[RawToken] = []
        finish: str | None = None
        started = last = time.monotonic()
        interval = self.service.update_interval()
        try:
            async with (
                self.turns.calling(mine.user_id, asked) as call,
                aclosing(call.continuation(run.stop)) as stream,
            ):
                async for token in stream:
                    tokens.append(token)
                    finish = token.finish_reason or finish
                    if time.monotonic() - last >= interval:
                        last = time.monotonic()
                        yield token_html(tokens), f"{len(tokens)} tokens …"
        except TurnRefused as err:
            raise gr.Error(str(err)) from err
        except BackendError as err:
            yield token_html(tokens), f"⚠️ {err}"
            return
        yield token_html(tokens), raw_stats(tokens, started, finish)

    async def stop(self, run: RawRun) -> None:
        run.stop.set()

    def tab(
        self, chat: gr.State, model: gr.Dropdown, system_prompt: gr.Textbox,
        language: gr.Dropdown, message: gr.Textbox, controls: list[Any],
    ) -> None:
        """The "Raw prompt" tab and its events, inside the page's ``gr.Tabs``; it renders
        the conversation on screen and generates with the chat tab's model and controls."""
        with gr.Tab("Raw prompt", elem_id="raw-tab"):
            raw_run = gr.State(RawRun())
            gr.Markdown(
                "The prompt exactly as the model sees it. **Render** fills it from the "
                "conversation (and the message box) with the model's chat template; "
                "edit it, then **Generate**: each token is coloured by its "
                "probability (green likely, red unlikely; hover for the log-probability)."
            )
            raw_note = gr.Markdown(elem_id="raw-note")
            raw_prompt = gr.Textbox(
                label="Prompt", lines=10, max_lines=30, elem_id="raw-prompt"
            )
            with gr.Row():
                render = gr.Button("Render", size="sm", elem_id="raw-render")
                generate = gr.Button(
                    "Generate", variant="primary", size="sm", elem_id="raw-generate"
                )
                raw_stop = gr.Button("Stop", variant="stop", size="sm",
                                     elem_id="raw-stop")
            raw_output = gr.HTML(elem_id="raw-output")
            stats = gr.Markdown(elem_id="raw-stats")
        render.click(self.render, [model, chat, system_prompt, language, message],
                     [raw_prompt, raw_note], api_name="render_prompt")
        generate.click(self.generate, [model, raw_prompt, raw_run, *controls],
                       [raw_output, stats], api_name="raw_generate")
        raw_stop.click(self.stop, [raw_run], None, queue=False, api_name="raw_stop")
