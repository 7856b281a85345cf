"""Run and Check in the chat: a reply's code run in the sandbox where it stands, and a reply
checked against tests and repaired (``app.chat.checks`` does both; this module is the page's
side of it).

How the actions reach the page. Each code block of a finished reply in a language the sandbox
runs is followed by a Run link, and a reply with Python code has a Check link under it
(``render.RUN_LINK``, ``render.CHECK_LINK``): ``#run-block-<reply id>-<block index>`` and
``#check-reply-<reply id>``. A script (``link_presses.js``, as for the branch switches)
catches their clicks, puts the link's value in a hidden box and presses a hidden button, whose
handler (``ChecksUI.run``, ``ChecksUI.check``) does the rest. Links rendered by the server,
rather than buttons a script adds to the code blocks it finds (as ``preview.js`` does for
Preview), because:

- the block's index is ``extract_blocks``' own, counted by the server on the reply's text,
  where the browser sees other blocks (an indented code block is a ``<pre>`` too, a Mermaid
  block is drawn) and no reply id;
- a link is Markdown, which the chat's sanitizer keeps (it keeps no attribute but classes
  on most elements), and it is part of the message: every re-render of the chat by Gradio
  shows it again, where a button added to the page's DOM is gone at the next render;
- the run's result goes right under the link, in the reply, so it is rendered with it and
  shows again after a reload (``Exchange.runs``).

A check shows its trace in the chat as it grows (``trace.check_markdown``), at most every
``STREAM_RENDER_INTERVAL`` while the model answers a repair and at each step; each repaired
version is a version of the reply, shown as it is stored, and once the check ends the
conversation is opened again, with its last version on screen. The Tests fold holds the
user's own tests (and whether to repair); a test file attached to the message counts too.
Refusals (runs off, the sandbox busy, no Python code, the message rate) are ``gr.Error``
sentences.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

import gradio as gr

from app.chat import Chat, Exchange
from app.chat.checks import CheckRefused, Checks
from app.chat.conversations import Conversations, NotFound, StoreError
from app.settings import Settings
from app.ui.branches import BUSY, busy
from app.ui.gradio_compat import Outputs
from app.ui.render import CHECK_LINK, RUN_LINK, Checking, chat_messages
from app.ui.scripts import call
from app.ui.users import PageUsers

GONE = "That reply is no longer on screen; open the conversation again."
TESTS_PLACEHOLDER = (
    "assert add(2, 2) == 4\n\ndef test_negative():\n    assert add(-1, 1) == 0"
)


@dataclass(frozen=True)
class CheckInputs:
    """The Tests fold of the chat tab: the user's own tests, and whether to repair."""

    tests: gr.Textbox
    repair: gr.Checkbox


@dataclass(frozen=True)
class CheckView:
    """What Run and Check change: the chat pane, and the conversation the tab holds."""

    chatbot: gr.Chatbot
    chat: gr.State


def on_screen(chat: Chat, reply_id: str) -> Exchange:
    """The exchange on screen whose reply is ``reply_id``; ``gr.Error`` when it is not."""
    found = next((e for e in chat.exchanges if str(e.reply_id) == reply_id), None)
    if found is None or found.reply_id is None:
        raise gr.Error(GONE)
    if not found.done:
        raise gr.Error(BUSY.format("running or checking its code"))
    return found


class ChecksUI:
    def __init__(self, checks: Checks, users: PageUsers, settings: Settings) -> None:
        self.checks = checks
        self.users = users
        self.settings = settings
        self.view: CheckView  # set by ``controls``, as the page is built

    async def run(self, request: gr.Request | None, target: str, chat: Chat) -> Outputs:
        """Run the block ``target`` ("<reply id>-<block index>") of a reply on screen and show
        its result under the block."""
        reply_id, _, index = target.partition("-")
        exchange = on_screen(chat, reply_id)
        if not index.isdigit():
            raise gr.Error(GONE)
        mine = await self.users.conversations(request)
        try:
            await self.checks.run_block(mine, int(reply_id), int(index))
            # The runs as kept, this one among them.
            exchange.runs = dict((await mine.exchange_of(int(reply_id)))[2].runs or {})
        except CheckRefused as err:
            raise gr.Error(str(err)) from err
        except NotFound as err:
            raise gr.Error(GONE) from err
        except StoreError as err:
            raise gr.Error(str(err)) from err
        return {self.view.chatbot: chat_messages(chat.exchanges)}

    async def check(
        self, request: gr.Request | None, target: str, tests: str | None, repair: bool, chat: Chat
    ) -> AsyncIterator[Outputs]:
        """Check the reply ``target`` (its id) of the conversation on screen against the
        user's ``tests`` (none: those of an attached test file, the reply's own, or the
        model's), repairing it unless ``repair`` is off; the trace grows in the chat. A tab
        that moves to another conversation meanwhile is left alone: the check goes on, kept
        with the reply."""
        shown = on_screen(chat, target)
        if busy(chat):
            raise gr.Error(BUSY.format("checking a reply"))
        mine = await self.users.conversations(request)
        v = self.view
        loop = asyncio.get_running_loop()
        yield {v.chatbot: chat_messages(chat.exchanges, Checking(shown))}
        rendered = loop.time()
        try:
            steps = self.checks.check(mine, int(target), tests or "", repair)
            async with aclosing(steps) as progress:
                async for step in progress:
                    due = loop.time() - rendered >= self.settings.stream_render_interval
                    if not chat.on_screen or (step.answer and not due):
                        continue
                    rendered = loop.time()
                    versions = step.trace["versions"]
                    reopened: Outputs = {}
                    if versions and versions[-1]["reply_id"] != shown.reply_id:
                        # A repaired version, stored: on screen now, as a version of the reply.
                        chat, shown = await self._reopened(mine, chat, versions[-1]["reply_id"])
                        reopened = {v.chat: chat}
                    shown.check = step.trace
                    checking = Checking(shown, step.answer)
                    yield reopened | {v.chatbot: chat_messages(chat.exchanges, checking)}
            if chat.on_screen:
                chat = (await self._reopened(mine, chat, shown.reply_id))[0]
        except (CheckRefused, StoreError) as err:
            if chat.on_screen:  # the chat as kept: the trace so far, without the answer under way
                yield {v.chatbot: chat_messages(chat.exchanges), v.chat: chat}
            raise gr.Error(GONE if isinstance(err, NotFound) else str(err)) from err
        # Gradio sends a handler's last update again as it ends: off screen, one that changes
        # nothing.
        yield {v.chatbot: chat_messages(chat.exchanges), v.chat: chat} if chat.on_screen else {}

    @staticmethod
    async def _reopened(
        mine: Conversations, chat: Chat, reply_id: int | None
    ) -> tuple[Chat, Exchange]:
        """The conversation on screen as stored, and its exchange whose reply is
        ``reply_id`` (else its last)."""
        if chat.id is None:
            raise NotFound("The conversation is not stored.")
        opened = (await mine.open(chat.id))[1]
        found = next((e for e in opened.exchanges if e.reply_id == reply_id),
                     opened.exchanges[-1] if opened.exchanges else None)
        if found is None:
            raise NotFound("The conversation has no reply left.")
        return opened, found

    # -- layout --------------------------------------------------------------------------

    def tests_box(self) -> CheckInputs:
        """The chat tab's Tests fold."""
        with gr.Accordion("Tests for Check", open=False, elem_id="check-fold"):
            tests = gr.Textbox(
                label="Your tests (Python: assert lines, test_ functions); empty: those of an "
                      "attached test file, the reply's own, or the model's",
                placeholder=TESTS_PLACEHOLDER, lines=4, max_lines=20, elem_id="check-tests",
            )
            repair = gr.Checkbox(
                True, label=f"Repair what fails (at most {self.settings.check_rounds} rounds, "
                            "each a new version of the reply)", elem_id="check-repair",
            )
        return CheckInputs(tests, repair)

    def controls(
        self, page: gr.Blocks, view: CheckView, inputs: CheckInputs
    ) -> None:
        """The hidden boxes and buttons the Run and Check links press, and the script that
        does it."""
        self.view = view
        run_target = gr.Textbox(visible="hidden", elem_id="run-target")
        run = gr.Button(visible="hidden", elem_id="run-press")
        check_target = gr.Textbox(visible="hidden", elem_id="check-target")
        check = gr.Button(visible="hidden", elem_id="check-press")
        run.click(self.run, [run_target, view.chat], [view.chatbot],
                  api_visibility="private", show_progress="minimal")
        check.click(self.check, [check_target, inputs.tests, inputs.repair, view.chat],
                    [view.chatbot, view.chat], api_visibility="private",
                    show_progress="minimal")
        page.load(None, js=call("link_presses.js", RUN_LINK, "run-target", "run-press"))
        page.load(None, js=call("link_presses.js", CHECK_LINK, "check-target", "check-press"))
