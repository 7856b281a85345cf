"""The StarChat-style page: chat, Send/Stop, Retry/Undo/Clear, system prompt and generation
controls. Handlers are async generators; they know the chat service, never HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import gradio as gr

from app.backends import BackendError, BackendInfo, GenerationParams
from app.chat import ChatService, ContextOverflow, Exchange
from app.ui.render import chat_messages, dropped_notice, header_markdown

EXAMPLES = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and "
    "punctuation, with a few doctests.",
    "Write a Bash one-liner that lists the 10 largest files under the current directory.",
    "Write a SQL query that returns the second highest salary from an `employees` table.",
    "Convert this JavaScript to TypeScript with types: "
    "`function sum(xs) { return xs.reduce((a, b) => a + b, 0); }`",
    "Find the bug and fix it: `def mean(xs): return sum(xs) / len(xs)`",
]

# Controls in the order the handlers receive them; each is shown only where the backend
# honours it (see ``app.backends.CONTROLS``).
CONTROL_NAMES = (
    "max_new_tokens", "temperature", "top_p", "top_k", "repeat_penalty",
    "frequency_penalty", "presence_penalty", "stop", "seed",
)

Conversation = list[Exchange]


class PlaygroundUI:
    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.settings = service.settings

    # -- helpers -------------------------------------------------------------------------

    async def _info(self) -> tuple[BackendInfo | None, BackendError | None]:
        try:
            return await self.service.backend_info(), None
        except BackendError as err:
            if self.settings.debug:
                raise
            return None, err

    def _params(self, info: BackendInfo, values: tuple[Any, ...]) -> GenerationParams:
        given = dict(zip(CONTROL_NAMES, values, strict=True))
        stops = tuple(line for line in str(given.pop("stop") or "").splitlines() if line)
        if info.max_stop_sequences is not None and len(stops) > info.max_stop_sequences:
            raise gr.Error(
                f"This backend takes at most {info.max_stop_sequences} stop sequences; "
                f"you gave {len(stops)}. Remove some (one per line)."
            )
        seed = given.pop("seed")
        top_k = given.pop("top_k")
        return GenerationParams(
            stop=stops,
            seed=None if seed is None or int(seed) < 0 else int(seed),
            top_k=int(top_k) if top_k else None,
            max_new_tokens=int(given.pop("max_new_tokens")),
            **{name: float(value) for name, value in given.items()},
        )

    # -- events --------------------------------------------------------------------------

    async def on_load(self) -> list[Any]:
        info, error = await self._info()
        header = header_markdown(info, error, self.settings.backend_root)
        if info is None:
            return [header, *(gr.update() for _ in CONTROL_NAMES)]
        updates = []
        for name in CONTROL_NAMES:
            if name == "max_new_tokens":
                updates.append(gr.update(maximum=info.max_total_tokens - 1, visible=True))
            else:
                updates.append(gr.update(visible=name in info.controls))
        return [header, *updates]

    async def send(
        self, text: str, conversation: Conversation, system_prompt: str, *controls: Any
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Send a new message: outputs (chatbot, conversation, message box, notice, header)."""
        if not text.strip():
            yield (gr.skip(),) * 5
            return
        limit = self.settings.max_message_chars
        if len(text) > limit:
            raise gr.Error(
                f"Your message has {len(text)} characters; the limit is {limit}. "
                "Shorten it or split it into parts. Nothing was sent."
            )
        async for update in self._reply(text, conversation, system_prompt, controls):
            yield update

    async def retry(
        self, conversation: Conversation, system_prompt: str, *controls: Any
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Ask again for the last message; its reply is replaced once the new one starts."""
        if not conversation or not conversation[-1].done:
            yield (gr.skip(),) * 5
            return
        last = conversation[-1]
        async for update in self._reply(
            last.user, conversation, system_prompt, controls, replaces_last=True
        ):
            yield update

    async def _reply(
        self, text: str, conversation: Conversation, system_prompt: str,
        controls: tuple[Any, ...], replaces_last: bool = False,
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Stream a reply to ``text``; a refusal (gr.Error) leaves the conversation as it was."""
        history = conversation[:-1] if replaces_last else conversation
        info, error = await self._info()
        header = header_markdown(info, error, self.settings.backend_root)
        if info is None:
            if replaces_last:
                conversation.pop()
            conversation.append(Exchange(user=text, error=str(error), done=True))
            yield chat_messages(conversation), conversation, "", "", header
            return
        params = self._params(info, controls)
        try:
            fitted = self.service.fit(
                info, system_prompt, history, text, params.max_new_tokens
            )
        except ContextOverflow as err:
            raise gr.Error(str(err)) from err
        notice = dropped_notice(fitted.dropped_exchanges, fitted.budget)
        if replaces_last:
            conversation.pop()
        exchange = Exchange(user=text)
        conversation.append(exchange)
        yield chat_messages(conversation), conversation, "", notice, header
        stream = self.service.stream_reply(info, fitted.messages, params, exchange.stop)
        async with aclosing(stream):
            async for progress in stream:
                exchange.reply = progress.text
                exchange.stats = progress.stats
                if progress.error is not None:
                    exchange.error = str(progress.error)
                exchange.done = progress.done
                yield chat_messages(conversation), conversation, gr.skip(), gr.skip(), gr.skip()

    async def stop(self, conversation: Conversation) -> None:
        """Ask the reply in progress to end; its handler shows it as stopped."""
        for exchange in conversation:
            exchange.stop.set()

    async def undo(self, conversation: Conversation) -> tuple[Any, Conversation, str]:
        """Take back the last exchange and put its message in the box for editing."""
        if not conversation:
            return gr.skip(), conversation, gr.skip()
        await self.stop(conversation)
        last = conversation.pop()
        return chat_messages(conversation), conversation, last.user

    async def clear(self, conversation: Conversation) -> tuple[list[Any], Conversation, str]:
        """Empty the conversation in place, so that a reply still streaming ends in it too."""
        await self.stop(conversation)
        conversation.clear()
        return [], conversation, ""

    # -- layout --------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        s = self.settings
        with gr.Blocks(title="Coding Playground") as demo:
            conversation = gr.State([])
            header = gr.Markdown(header_markdown(None, None, s.backend_root), elem_id="header")
            chatbot = gr.Chatbot(
                height=520, buttons=["copy", "copy_all"], elem_id="chat", show_label=False,
                placeholder="Ask for code, a fix, or an explanation.",
            )
            notice = gr.Markdown(elem_id="notice")
            with gr.Row():
                message = gr.Textbox(
                    placeholder="Type a message; Enter sends, Shift+Enter adds a line",
                    show_label=False, lines=1, max_lines=12, scale=8, elem_id="message",
                )
                with gr.Column(scale=1, min_width=120):
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Row():
                retry = gr.Button("Retry", size="sm", elem_id="retry")
                undo = gr.Button("Undo", size="sm", elem_id="undo")
                clear = gr.Button("Clear", size="sm", elem_id="clear")
            gr.Examples(EXAMPLES, inputs=[message], label="Try one")
            with gr.Accordion("System prompt and generation settings", open=False):
                system_prompt = gr.Textbox(s.system_prompt, label="System prompt", lines=4)
                controls = [
                    gr.Slider(1, s.context_tokens - 1, value=s.max_new_tokens, step=1,
                              label="Max new tokens"),
                    gr.Slider(0.0, 2.0, value=0.2, step=0.05, label="Temperature",
                              info="0 picks the likeliest token every time"),
                    gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p"),
                    gr.Slider(0, 200, value=40, step=1, label="Top-k", visible=False,
                              info="0 turns it off"),
                    gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repeat penalty",
                              visible=False),
                    gr.Slider(-2.0, 2.0, value=0.0, step=0.1, label="Frequency penalty"),
                    gr.Slider(-2.0, 2.0, value=0.0, step=0.1, label="Presence penalty"),
                    gr.Textbox("", label="Stop sequences", lines=2, info="One per line"),
                    gr.Number(
                        -1, label="Seed", precision=0, minimum=-1, info="-1 for a random seed"
                    ),
                ]

            reply_outputs = [chatbot, conversation, message, notice, header]
            send_inputs = [message, conversation, system_prompt, *controls]
            gr.on(
                [message.submit, send.click], self.send, send_inputs, reply_outputs,
                api_name="chat",
            )
            retry.click(
                self.retry, [conversation, system_prompt, *controls], reply_outputs,
                api_name="retry",
            )
            # Stop, Undo and Clear signal the streaming handler rather than cancel it, so that
            # its last update (the reply marked stopped) is the one the page keeps.
            stop.click(self.stop, [conversation], None, queue=False, api_name="stop")
            undo.click(
                self.undo, [conversation], [chatbot, conversation, message], queue=False,
                api_name="undo",
            )
            clear.click(
                self.clear, [conversation], [chatbot, conversation, message], queue=False,
                api_name="clear",
            )
            demo.load(self.on_load, None, [header, *controls], api_name="backend_info")
        blocks: gr.Blocks = demo
        return blocks
