"""The Compare tab: one message answered by two models side by side, the user's vote between
the two replies, and the board the votes make.

A comparison goes into the conversation on screen (a new one if none), with the chat tab's
system prompt, language and settings, through the door the REST API uses
(``app.chat.compare``): both replies count against the user's limits, and they are kept as
two versions of one reply. They stream side by side, each with its speed, as the chat's
replies do (rendered every STREAM_RENDER_INTERVAL, the page's script showing the text in
between); Stop stops both, and one side failing leaves the other whole. Once both have ended:
the four vote buttons, and under each side "Continue with this one", which puts that reply
on the conversation's branch and shows it in the Chat tab. Blind: two models at random, their
names shown once the vote is in (that vote is final).

Check both: once both replies have ended, the same tests (the tab's Tests box, else a test file
attached to the message) run on both replies' Python code through the chat's own check
(``Checks.check``, without repair: the answers are compared as written), and each side's
result, its badge and each test's outcome, shows under its column; the notice says which
passed, for the vote to follow. Each check is kept with its reply, as a check from the chat
is. Where code does not run here (SNIPPET_RUNS), the tab has no Check both and says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app.arena.rating import Outcome
from app.arena.rules import ArenaError, board_owner
from app.chat import Chat, ChatService
from app.chat.checks import RUNS_OFF, CheckRefused, Checks, attached_tests
from app.chat.compare import Comparer, Pair, SideName, hidden, merged, pick_models
from app.chat.conversations import NotFound, StoreError
from app.chat.turns import TurnRefused
from app.markdown import escape_markdown
from app.store.comparisons import StoredComparison, VoteFinal
from app.ui.branches import BUSY, BranchesUI, busy
from app.ui.chat import page_request
from app.ui.checks import TESTS_PLACEHOLDER
from app.ui.gradio_compat import Outputs
from app.ui.render import board_markdown, chat_messages, compared_markdown, model_choices
from app.ui.trace import check_markdown, version_shown
from app.ui.users import PageUsers

# The vote buttons: (label, outcome).
VOTES: list[tuple[str, Outcome]] = [
    ("Left better", "left"), ("Right better", "right"), ("Tie", "tie"), ("Both bad", "both_bad"),
]
SIDE_NAMES: dict[SideName, str] = {"left": "Left", "right": "Right"}
# The id of the page's Chat tab, which "Continue with this one" selects.
CHAT_TAB = "chat"
NO_TESTS = ("Check both runs the same tests on both answers: write them in Tests for Check "
            "both, or attach a test file to the message.")
CHECK_OFF = f"Check both is off: {RUNS_OFF}"


@dataclass
class CompareView:
    """The tab's components."""

    left_model: gr.Dropdown
    right_model: gr.Dropdown
    blind: gr.Checkbox
    notice: gr.Markdown
    columns: dict[SideName, gr.Markdown]
    keep: dict[SideName, gr.Button]
    votes_row: gr.Row
    votes: list[gr.Button]
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    board_panel: gr.Accordion
    board: gr.Markdown
    everyone: gr.Checkbox | None
    pair: gr.State
    # Check both (None where code does not run here) and each side's result.
    tests: gr.Textbox | None
    check: gr.Button | None
    checked: dict[SideName, gr.Markdown]


@dataclass
class ChatParts:
    """What the tab shares with the Chat tab: the conversation, its prompt, language and
    settings, the chat pane and the page's tabs (to show the conversation there), the
    conversation list and the browser's memory of the conversation on screen."""

    chat: gr.State
    system_prompt: gr.Textbox
    language: gr.Dropdown
    controls: list[Any]
    chatbot: gr.Chatbot
    tabs: gr.Tabs
    conversations: gr.Radio
    last: gr.BrowserState


class CompareUI:
    def __init__(
        self, service: ChatService, comparer: Comparer, users: PageUsers, branches: BranchesUI,
        checks: Checks,
    ) -> None:
        self.service = service
        self.comparer = comparer
        self.checks = checks
        self.users = users
        self.branches = branches
        self.settings = service.settings
        self.view: CompareView  # set by ``tab``
        self.parts: ChatParts  # set by ``wire``

    def model_menus(self) -> Outputs:
        """Both pickers with the models on offer: the default model on the left, another on
        the right."""
        choices = model_choices(self.service.models())
        values = [value for _, value in choices]
        left = self.settings.default_model if self.settings.default_model in values else None
        left = left or (values[0] if values else None)
        right = next((value for value in values if value != left), left)
        v = self.view
        return {v.left_model: gr.update(choices=choices, value=left),
                v.right_model: gr.update(choices=choices, value=right)}

    def _columns(self, pair: Pair, names: tuple[str, str] | None = None) -> Outputs:
        """Both sides as they stand; ``names``: the models' once a blind vote showed them."""
        shown = {}
        for index, (side, turn) in enumerate(pair.sides.items()):
            name = (names[index] if names is not None else pair.model(turn)
                    or f"{SIDE_NAMES[side]}: hidden until your vote")
            shown[self.view.columns[side]] = compared_markdown(
                name, turn.exchange, pair.shown(turn.exchange.error)
            )
        return shown

    def _ended(self, pair: Pair, visible: bool) -> Outputs:
        """The vote buttons, the "Continue" ones and Check both, shown once both replies have
        ended."""
        v = self.view
        check = {v.check: gr.update(visible=visible)} if v.check is not None else {}
        return {v.votes_row: gr.update(visible=visible), **check,
                **{button: gr.update(visible=visible) for button in v.keep.values()}}

    async def send(
        self, request: gr.Request | None, text: str, left: str | None, right: str | None,
        blind: bool, chat: Chat, system_prompt: str, language: str, *controls: Any,
    ) -> AsyncIterator[Outputs]:
        """Send the message to both models (two at random when ``blind``) and stream both
        replies side by side; a refusal (one model twice, a limit) is the notice, with
        nothing sent."""
        v = self.view
        if not text.strip():
            yield {}
            return
        mine = await self.users.conversations(request)
        if busy(chat):
            yield {v.notice: BUSY.format("comparing")}
            return
        try:
            models = pick_models(self.service.models(), left, right, blind)
        except ArenaError as err:
            yield {v.notice: str(err)}
            return
        asked = page_request(text, system_prompt, language, None, controls)
        try:
            pair = await self.comparer.start(mine, chat, asked, models, blind)
        except TurnRefused as err:
            yield {v.notice: hidden(str(err), models) if blind else str(err)}
            return
        shown = {side: len(turn.exchange.log) for side, turn in pair.sides.items()}
        listed = gr.update(choices=await mine.choices(),
                           value=chat.id if chat.on_screen else None)
        yield {**self._columns(pair), **self._ended(pair, False), v.notice: "", v.message: "",
               **{box: "" for box in v.checked.values()},
               v.pair: pair, self.parts.conversations: listed, self.parts.last: chat.id}
        async for update in self._follow(pair, shown):
            yield update
        comparison_id, error = await asyncio.shield(pair.recorded)
        on_screen = {self.parts.chatbot: chat_messages(chat.exchanges)} if chat.on_screen else {}
        yield {**self._columns(pair), **self._ended(pair, comparison_id is not None),
               v.notice: error or "", **on_screen}

    async def _follow(self, pair: Pair, shown: dict[SideName, int]) -> AsyncIterator[Outputs]:
        """Both sides rendered every STREAM_RENDER_INTERVAL while either grows (the page's
        script shows the text in between); a tab that goes away stops both unless
        REPLY_KEEPS_RUNNING."""
        loop = asyncio.get_running_loop()
        rendered = loop.time()
        streams = {side: turn.exchange.log.chunks(shown[side])
                   for side, turn in pair.sides.items()}
        try:
            async for _ in merged(streams):
                if loop.time() - rendered >= self.settings.stream_render_interval:
                    rendered = loop.time()
                    yield self._columns(pair)
        finally:
            if not pair.done and not self.service.replies.keeps_running:
                pair.stop()

    async def check_both(
        self, request: gr.Request | None, pair: Pair | None, tests: str | None
    ) -> AsyncIterator[Outputs]:
        """Run ``tests`` (none: a test file attached to the message) on both replies' code, at
        once, without repair (``Checks.check``), and show each side's result under its column;
        the notice says which passed. A side that cannot be checked (no Python code, a
        failed reply) says why in its place."""
        v = self.view
        if pair is None or not pair.recorded.done():
            yield {v.notice: "Check both once both replies have ended."}
            return
        mine = await self.users.conversations(request)
        tests = tests or ""
        if not tests.strip():
            try:
                _, asked, _ = await mine.exchange_of(pair.left.exchange.reply_id or 0)
            except NotFound:
                yield {v.notice: "That comparison's conversation is gone; send another."}
                return
            if not attached_tests(asked.attachments):
                yield {v.notice: NO_TESTS}
                return
        yield {v.notice: "", **{box: check_markdown(None, None, None)
                                for box in v.checked.values()}}

        async def checked(side: SideName) -> dict[str, Any] | str:
            reply_id = pair.sides[side].exchange.reply_id
            if reply_id is None:
                return "This side has no stored reply to check."
            trace: dict[str, Any] | None = None
            try:
                steps = self.checks.check(mine, reply_id, tests, repair=False)
                async with aclosing(steps) as progress:
                    async for step in progress:
                        trace = step.trace
            except (CheckRefused, StoreError) as err:
                return pair.shown(str(err)) or ""
            return trace or "The check ended before its first result."

        left, right = await asyncio.gather(checked("left"), checked("right"))
        shown: Outputs = {}
        badges: dict[SideName, dict[str, Any] | None] = {}
        results: dict[SideName, dict[str, Any] | str] = {"left": left, "right": right}
        for side, result in results.items():
            if isinstance(result, str):
                shown[v.checked[side]] = f"**Check**: {result}"
                badges[side] = None
                continue
            reply_id = pair.sides[side].exchange.reply_id
            shown[v.checked[side]] = check_markdown(result, reply_id, None)
            badges[side] = version_shown(result, reply_id)
        yield {**shown, v.notice: checked_notice(badges["left"], badges["right"])}

    async def stop(self, pair: Pair | None) -> None:
        """Ask both replies to end."""
        if pair is not None:
            pair.stop()

    def voter(self, outcome: Outcome) -> Callable[..., Awaitable[Outputs]]:
        async def vote(request: gr.Request | None, pair: Pair | None, everyone: bool) -> Outputs:
            return await self.vote(request, outcome, pair, everyone)

        return vote

    async def vote(
        self, request: gr.Request | None, outcome: Outcome, pair: Pair | None, everyone: bool,
    ) -> Outputs:
        """Store the vote on the comparison on screen; a blind one shows its names (and its
        vote is final). The board follows."""
        v = self.view
        if pair is None or not pair.recorded.done():
            return {v.notice: "Vote once both replies have ended."}
        comparison_id, error = pair.recorded.result()
        if comparison_id is None:
            return {v.notice: error}
        mine = await self.users.conversations(request)
        try:
            voted = await mine.vote(comparison_id, outcome)
        except VoteFinal as err:
            return {v.notice: str(err)}
        except NotFound:
            return {v.notice: "That comparison is gone; send another."}
        board = await self.board(request, everyone)
        return {**self._columns(pair, (voted.left.model, voted.right.model)),
                v.notice: voted_notice(voted), v.board: board,
                **({v.votes_row: gr.update(visible=False)} if pair.blind else {})}

    async def board(self, request: gr.Request | None, everyone: bool) -> str:
        """The user's board, or every user's where ALLOW_SHARED_BOARD allows it."""
        mine = await self.users.conversations(request)
        try:
            owner = board_owner(self.settings, mine.user_id, everyone)
        except ArenaError as err:
            return str(err)
        return board_markdown(await mine.board(everyone=owner is None))

    def keeper(self, side: SideName) -> Callable[..., Awaitable[tuple[Any, Chat, Any]]]:
        async def keep(
            request: gr.Request | None, pair: Pair | None, chat: Chat
        ) -> tuple[Any, Chat, Any]:
            return await self.keep(request, side, pair, chat)

        return keep

    async def keep(
        self, request: gr.Request | None, side: SideName, pair: Pair | None, chat: Chat
    ) -> tuple[Any, Chat, Any]:
        """Go on with ``side``'s reply: it becomes the conversation's branch, shown in the
        Chat tab."""
        if pair is None or chat.id != pair.conversation_id:
            raise gr.Error("That comparison's conversation is no longer on screen; open it "
                           "from the sidebar.")
        reply_id = pair.sides[side].exchange.reply_id
        messages, switched = await self.branches.switch(request, str(reply_id), chat)
        return messages, switched, gr.Tabs(selected=CHAT_TAB)

    # -- the tab -------------------------------------------------------------------------

    def tab(self) -> CompareView:
        """The "Compare" tab, inside the page's ``gr.Tabs``; ``wire`` connects it."""
        with gr.Tab("Compare", elem_id="compare-tab"):
            gr.Markdown(
                "One message, two models side by side, in the conversation on screen (with "
                "its system prompt and settings). Vote once both have ended; **Blind** picks "
                "two models at random and shows their names after your vote."
            )
            with gr.Row(equal_height=True):
                left_model = gr.Dropdown([], label="Left model", scale=3, min_width=200,
                                         elem_id="compare-left-model")
                right_model = gr.Dropdown([], label="Right model", scale=3, min_width=200,
                                          elem_id="compare-right-model")
                blind = gr.Checkbox(label="Blind", scale=1, min_width=100,
                                    elem_id="compare-blind")
            notice = gr.Markdown(elem_id="compare-notice")
            columns: dict[SideName, gr.Markdown] = {}
            keep: dict[SideName, gr.Button] = {}
            checked: dict[SideName, gr.Markdown] = {}
            with gr.Row(elem_id="compare-columns"):
                for side, name in SIDE_NAMES.items():
                    with gr.Column(min_width=300):
                        columns[side] = gr.Markdown(f"**{name}**", elem_id=f"compare-{side}",
                                                    container=True)
                        checked[side] = gr.Markdown(elem_id=f"compare-check-{side}",
                                                    elem_classes=["compare-check"])
                        keep[side] = gr.Button(
                            "Continue with this one", size="sm", visible=False,
                            elem_id=f"compare-keep-{side}",
                        )
            with gr.Row(visible=False, elem_id="compare-votes") as votes_row:
                votes = [gr.Button(label, size="sm", min_width=100,
                                   elem_id=f"vote-{outcome.replace('_', '-')}")
                         for label, outcome in VOTES]
            tests, check = self._check_parts()
            with gr.Row(elem_id="compare-message-row", elem_classes=["message-row"]):
                message = gr.Textbox(
                    placeholder="A message for both models", show_label=False, lines=1,
                    max_lines=12, scale=8, elem_id="compare-message",
                )
                with gr.Column(scale=1, min_width=120):
                    send = gr.Button("Send", variant="primary", elem_id="compare-send")
                    stop = gr.Button("Stop", variant="stop", elem_id="compare-stop")
            with gr.Accordion("Board", open=False, elem_id="compare-board-panel") as board_panel:
                everyone = None
                if self.settings.allow_shared_board:
                    everyone = gr.Checkbox(label="All users' votes", elem_id="compare-everyone")
                board = gr.Markdown(elem_id="compare-board")
        self.view = CompareView(left_model, right_model, blind, notice, columns, keep,
                                votes_row, votes, message, send, stop, board_panel, board,
                                everyone, gr.State(None), tests, check, checked)
        return self.view

    def _check_parts(self) -> tuple[gr.Textbox | None, gr.Button | None]:
        """Check both and its tests, where code runs here; else why it is not there."""
        if not self.settings.runs_allowed:
            gr.Markdown(CHECK_OFF, elem_id="compare-check-off")
            return None, None
        with gr.Accordion("Tests for Check both", open=False, elem_id="compare-check-fold"):
            tests = gr.Textbox(
                label="Tests run on both answers (Python: assert lines, test_ functions); "
                      "empty: those of a test file attached to the message",
                placeholder=TESTS_PLACEHOLDER, lines=4, max_lines=20, elem_id="compare-tests",
            )
        check = gr.Button("Check both", size="sm", visible=False, elem_id="compare-check")
        return tests, check

    def wire(self, page: gr.Blocks, parts: ChatParts) -> None:
        """Connect the tab's components to the handlers above, and to the Chat tab's
        ``parts``."""
        v = self.view
        self.parts = parts
        everyone: list[Any] = [v.everyone] if v.everyone is not None else [gr.State(False)]
        page.load(self.model_menus, None, [v.left_model, v.right_model],
                  api_visibility="private")
        v.blind.change(lambda blind: [gr.update(interactive=not blind)] * 2, [v.blind],
                       [v.left_model, v.right_model], queue=False, api_visibility="private")
        check = [v.check] if v.check is not None else []
        outputs = [*v.columns.values(), *v.keep.values(), v.votes_row, v.notice, v.message,
                   v.pair, parts.chatbot, parts.conversations, parts.last, *check,
                   *v.checked.values()]
        gr.on(
            [v.message.submit, v.send.click], self.send,
            [v.message, v.left_model, v.right_model, v.blind, parts.chat, parts.system_prompt,
             parts.language, *parts.controls],
            outputs, api_name="compare", show_progress_on=[v.notice],
        )
        v.stop.click(self.stop, [v.pair], None, queue=False, api_name="compare_stop")
        if v.check is not None and v.tests is not None:
            v.check.click(self.check_both, [v.pair, v.tests], [*v.checked.values(), v.notice],
                          api_visibility="private", show_progress_on=[v.notice])
        for button, (_, outcome) in zip(v.votes, VOTES, strict=True):
            button.click(self.voter(outcome), [v.pair, *everyone],
                         [*v.columns.values(), v.notice, v.board, v.votes_row],
                         api_visibility="private")
        for side, button in v.keep.items():
            button.click(self.keeper(side), [v.pair, parts.chat],
                         [parts.chatbot, parts.chat, parts.tabs], api_visibility="private")
        shown = [v.board_panel.expand, *([v.everyone.change] if v.everyone is not None else [])]
        gr.on(shown, self.board, everyone, [v.board], api_name="compare_board")


def voted_notice(voted: StoredComparison) -> str:
    """The vote, with both models' names."""
    label = next(label for label, outcome in VOTES if outcome == voted.outcome)
    left, right = (escape_markdown(side.model) for side in (voted.left, voted.right))
    return f"Your vote: **{label}**. Left: {left}; right: {right}."


def checked_notice(left: dict[str, Any] | None, right: dict[str, Any] | None) -> str:
    """What the tests say of the two answers (each side's version checked, None where it could
    not be), for the vote to follow."""
    def said(version: dict[str, Any] | None) -> str:
        return "not checked" if version is None else str(version["badge"])

    passed = [name for name, version in (("left", left), ("right", right))
              if version is not None and version["ok"]]
    verdict = {0: "Neither answer passes the tests.", 2: "Both answers pass the tests."}.get(
        len(passed), f"Only the {passed[0]} answer passes the tests."
    )
    return f"Tests: left {said(left)}; right {said(right)}. {verdict}"
