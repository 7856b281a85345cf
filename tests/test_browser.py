"""The page in a real browser (Debian's chromium driven by Playwright), against the fake
backend standing in for TGI with a slow, long reply."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, FilePayload, Page, expect, sync_playwright

from app.server import create_app, open_store
from app.store import Accounts
from app.ui.backends import BackendsPanel
from app.ui.render import EARLIER, LATER
from tests.conftest import OUTPUT, RunningApp, settings_for
from tests.fake_backend import TGI_VERSION, FakeBackend
from tests.servers import ServerThread
from tests.waiting import wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
REPLY = ["Here", " is", " the", " code", ":\n\n", "```python\n", "def add(a, b):\n",
         "    return a + b\n", "```\n\n"] + [f"word{i} " for i in range(400)]


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, backend: ServerThread, fake: FakeBackend) -> Iterator[Page]:
    fake.tokens = REPLY
    fake.token_delay = 0.02
    app = create_app(settings_for(backend.url, stream_interval=0.05))
    with ServerThread(app) as server:
        context = browser.new_context(viewport={"width": 1200, "height": 1100})
        page = context.new_page()
        page.goto(server.url)
        yield page
        context.close()


def bot_text(page: Page) -> str:
    text: str = page.locator("#chat .message.bot").last.inner_text()
    return text


def test_type_watch_the_reply_grow_and_stop_it(page: Page, fake: FakeBackend) -> None:
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    page.locator("#message textarea").fill("Write an add function in Python.")
    page.locator("#send").click()
    expect(page.locator("#chat .message.bot")).to_contain_text("word1 ", timeout=15_000)
    first = len(bot_text(page))
    wait_for(lambda: len(bot_text(page)) > first, 5, what="the reply to grow while it streams")
    expect(page.locator("#chat .message.bot pre code").first).to_contain_text("return a + b")
    page.locator("#stop").click()
    expect(page.locator("#chat .message.bot")).to_contain_text("stopped by you")
    wait_for(lambda: fake.cancelled, 5, what="Stop to close the upstream stream")
    assert fake.cancelled == 1, "Stop closed the upstream stream"
    assert fake.completed == 0
    stopped_at = len(bot_text(page))
    time.sleep(0.5)  # a quiet interval: streaming on, it would show some 25 more tokens
    assert len(bot_text(page)) == stopped_at, "nothing more arrives after Stop"
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-stop.png"), full_page=True)


CODE_REPLY = ["Here:\n\n", "```python\n"] + [f"x{i} = {i}\n" for i in range(80)] + [
    "```\n\n", "All done."]


@pytest.mark.parametrize("render_every", [60.0, 0.5])
def test_the_reply_grows_between_renders_inside_its_code_block_and_ends_rendered(
    browser: Browser, backend: ServerThread, fake: FakeBackend, render_every: float
) -> None:
    """The chat is rendered by the server every STREAM_RENDER_INTERVAL; in between the page
    shows the text as it comes from the reply's live channel (app/live.py, app/ui/live.js).
    Rendered once a minute, the whole reply arrives that way; rendered twice a second, the text
    past a render that ended inside the code block goes on inside that block. Either way the
    end is the rendered reply, each line once."""
    fake.tokens = CODE_REPLY
    fake.token_delay = 0.05
    settings = settings_for(backend.url, stream_interval=0.05,
                            stream_render_interval=render_every)
    with ServerThread(create_app(settings)) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.locator("#message textarea").fill("Write some assignments.")
        page.locator("#message textarea").press("Enter")
        bot = page.locator("#chat .message.bot").last
        expect(bot).to_contain_text("x3 = 3", timeout=15_000)
        shown = len(bot_text(page))
        wait_for(lambda: len(bot_text(page)) > shown, 5, what="the reply to grow")
        if render_every > 10:
            assert bot.locator("pre").count() == 0, "no render since the first"
            expect(bot.locator(".live-text")).to_contain_text("x5 = 5")
        else:
            expect(bot.locator("pre code .live-text")).not_to_have_count(0, timeout=5_000)
        expect(bot).to_contain_text("finished", timeout=20_000)
        expect(bot.locator(".live-text")).to_have_count(0)
        code = bot.locator("pre code").inner_text()
        assert [code.count(f"x{i} = {i}\n") for i in (0, 40, 79)] == [1, 1, 1]
        expect(bot).to_contain_text("All done.")
        page.close()


# ASCII, emoji (ZWJ sequences, skin tones, a variation selector, flags), CJK and combining
# marks, in prose and in a code block; "é" both composed and as e + U+0301, each to stay as
# it came. Tokens split grapheme clusters: a base from its mark, ZWJ sequences inside, a flag
# between its two regional indicators, an emoji from its skin tone.
UNICODE_REPLY = [
    "Crabs ", "🦀", " and coders ", "👩", "\u200d", "💻", " write ", "漢", "字", " and ", "かな",
    ". Café or cafe", "\u0301", ", nin", "\u0303", "o, ", "❤", "\ufe0f", ". Flags ", "🇫", "🇷",
    " ", "🇯🇵", ", a family ", "👨\u200d", "👩\u200d👧", "\u200d👦", " waves ", "👋", "🏽",
    " 1.\n\n",
    "```python\n", "# ", "🦀", " 2 crabs", " and ", "漢", "字", "\n",
    "word = ", "'cafe", "\u0301", " nin", "\u0303", "o'", "\n",
    "team = ", "'👩", "\u200d", "💻", "👨\u200d", "👩\u200d👧", "\u200d👦", "'", "\n",
    "flags = ", "'🇫", "🇷", "🇯", "🇵", "'", "\n",
    "```\n\n",
    "Done ", "✅", " 3 ", "終", "わり", ", e", "\u0301", "👍", "🏿", ".",
]
UNICODE_TEXT = "".join(UNICODE_REPLY)
FROM_CODE = UNICODE_TEXT.split("```python\n")[1]
UNICODE_CODE = FROM_CODE.split("```")[0]

# At every frame the page paints while the reply is written (its marker is there), what the
# last reply shows, if it changed: its text, its code block's, the offsets of its markers,
# its live text and whether that is inside the code block.
SAMPLE_FRAMES = """() => {
  window.samples = [];
  let last = "";
  const frame = () => {
    const bot = Array.from(document.querySelectorAll("#chat .message.bot")).pop();
    const markers = bot ? Array.from(bot.querySelectorAll("span.live-tail")) : [];
    if (markers.length) {
      const code = Array.from(bot.querySelectorAll("pre code")).pop();
      const sample = {
        text: bot.innerText,
        code: code ? code.innerText : null,
        at: markers.map((marker) => marker.className.match(/live-at-(\\d+)/)[1]).join(),
        live: Array.from(bot.querySelectorAll(".live-text"), (span) => span.textContent).join(),
        inCode: bot.querySelectorAll("pre code .live-text").length > 0,
      };
      const seen = JSON.stringify(sample);
      if (seen !== last) window.samples.push(sample);
      last = seen;
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}"""


def visible(text: str) -> str:
    """``text`` less what the rendered Markdown and the live plain text show differently:
    whitespace and the code fences (with their info string); every other character stays."""
    return re.sub(r"\s+|`+(?:python)?", "", text)


@pytest.mark.parametrize("render_every", [60.0, 0.4])
def test_emoji_cjk_and_combining_marks_show_once_each_in_order_while_the_reply_streams(
    browser: Browser, backend: ServerThread, fake: FakeBackend, render_every: float,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a reply streams, the page shows the server's renders and, past each render's
    offset, the text from the live channel; offsets count code points, which JavaScript's
    strings do not (an emoji is two UTF-16 units). A reply of emoji, CJK and combining marks,
    its tokens splitting grapheme clusters, streams through several renders (twice and more a
    second) or through the live text alone (one render a minute). At every frame painted the
    reply shows a prefix of its text: no character doubled, lost or out of order, nor a
    combining mark, a ZWJ or a flag's second half cut from its base by a line break inside
    the code block. At the end the rendered reply holds the whole text, each character once."""
    fake.tokens = UNICODE_REPLY
    fake.token_delay = 0.05
    # The live channel ends every half second and the browser opens it again from the last
    # event's id, an offset too.
    monkeypatch.setattr("app.live.HELD_SECONDS", 0.5)
    settings = settings_for(backend.url, stream_interval=0.05,
                            stream_render_interval=render_every)
    expected = visible(UNICODE_TEXT)
    with ServerThread(create_app(settings)) as server:
        page = browser.new_page()
        page.goto(server.url)
        page.evaluate(SAMPLE_FRAMES)
        page.locator("#message textarea").fill("Say it with emoji.")
        page.locator("#message textarea").press("Enter")
        bot = page.locator("#chat .message.bot").last
        expect(bot).to_contain_text("finished", timeout=20_000)
        samples = page.evaluate("window.samples")
        shown = ""
        for sample in samples:
            now = visible(sample["text"])
            assert expected.startswith(now), (
                f"shown: {sample['text']!r}\n(live text: {sample['live']!r}, after the render "
                f"at {sample['at']}), is not the reply's text; shown before: {shown!r}")
            assert len(now) >= len(shown), f"{sample['text']!r} lost text shown before"
            shown = now
            # The code block's text as it is, line breaks included, less the one Markdown
            # ends it with (the live text past it, closing fence and all, goes on inside it
            # until the next render).
            if sample["code"] is not None:
                assert FROM_CODE.startswith(sample["code"].removesuffix("\n")), (
                    f"the code block shows {sample['code']!r} (live text: {sample['live']!r}, "
                    f"after the render at {sample['at']}), not the reply's {FROM_CODE!r}")
        renders = {sample["at"] for sample in samples}
        lives = {sample["live"] for sample in samples}
        assert len(lives) >= 10, "the text came in many live events"
        if render_every > 10:
            assert len(renders) == 1, "no render since the first"
            assert len(visible(samples[-1]["live"])) > len(expected) * 0.8, (
                "the live text carried most of the reply")
        else:
            assert len(renders) >= 4, f"several renders mid-reply: {renders}"
            assert any(sample["inCode"] for sample in samples), "live text inside the code block"
        # The end: the rendered reply (its code block's Run link after it), then its stats
        # and its Check link.
        expect(bot.locator(".live-text")).to_have_count(0)
        text, stats, actions = bot.inner_text().rsplit("\n\n", 2)
        assert re.fullmatch(r"\d+ tokens · .* · finished", stats)
        assert actions == "✓ Check"
        assert visible(text.replace("▶ Run", "", 1)) == expected
        assert bot.locator("pre code").inner_text() == UNICODE_CODE
        page.close()


def leave_mid_reply(page: Page) -> None:
    """Send a long message, press New once the reply is under way, see the new conversation
    stay empty, then open the old one again."""
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    page.locator("#message textarea").fill("a long answer, please")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("word3 ", timeout=15_000)
    page.locator("#new-chat").click()
    expect(page.locator("#chat .message")).to_have_count(0)
    # A quiet interval: an update of the reply left behind would show by now.
    time.sleep(0.5)
    expect(page.locator("#chat .message")).to_have_count(0)
    page.locator("#conversations").get_by_text("a long answer, please").click()
    expect(page.locator("#chat .message.user")).to_have_text(["a long answer, please"])


def test_new_conversation_mid_reply_stays_empty_and_the_old_reply_goes_on(
    page: Page, fake: FakeBackend
) -> None:
    """The reply left behind used to repaint the conversation being left; now it also goes
    on (REPLY_KEEPS_RUNNING), shown growing when its conversation is opened again."""
    fake.token_delay = 0.03
    leave_mid_reply(page)
    grows_live(page)
    expect(page.locator("#chat .message.bot")).to_contain_text("finished", timeout=20_000)
    expect(page.locator("#chat .message.bot")).to_contain_text("word399 ")
    assert (fake.cancelled, fake.completed) == (0, 1)


def test_new_conversation_mid_reply_stays_empty_and_the_old_reply_is_kept_stopped(
    browser: Browser, backend: ServerThread, fake: FakeBackend
) -> None:
    """With REPLY_KEEPS_RUNNING off, leaving stops the reply: its last update, "stopped by
    you", once repainted the new conversation with the old one; it goes nowhere now, and the
    old conversation holds the partial reply, marked stopped."""
    fake.tokens = REPLY
    fake.token_delay = 0.03
    settings = settings_for(backend.url, stream_interval=0.05, reply_keeps_running=False)
    with ServerThread(create_app(settings)) as server:
        page = browser.new_page(viewport={"width": 1200, "height": 1100})
        page.goto(server.url)
        leave_mid_reply(page)
        expect(page.locator("#chat .message.bot")).to_contain_text("stopped by you")
        expect(page.locator("#chat .message.bot")).to_contain_text("word3 ")
        assert "word399 " not in bot_text(page)
        wait_for(lambda: fake.cancelled, 5, what="leaving to close the upstream stream")
        assert fake.completed == 0


def grows_live(page: Page) -> None:
    """The reply on the page grows while the test watches."""
    expect(page.locator("#chat .message.bot")).to_contain_text("word", timeout=15_000)
    shown = len(bot_text(page))
    wait_for(lambda: len(bot_text(page)) > shown, 5, what="the reply to grow on the page")


def test_a_reply_goes_on_through_a_reload_shows_in_a_second_tab_and_stops_in_both(
    page: Page, fake: FakeBackend
) -> None:
    fake.token_delay = 0.03
    page.locator("#message textarea").fill("Write an add function in Python.")
    page.locator("#send").click()
    expect(page.locator("#chat .message.bot")).to_contain_text("word3 ", timeout=15_000)
    page.reload()
    expect(page.locator("#chat .message.user")).to_have_text(["Write an add function in Python."])
    grows_live(page)
    expect(page.locator("#conversations input:checked")).to_have_count(1)

    second = page.context.new_page()
    second.goto(page.url)
    grows_live(second)
    second.locator("#stop").click()
    for tab in (second, page):
        expect(tab.locator("#chat .message.bot")).to_contain_text("stopped by you")
    wait_for(lambda: fake.cancelled, 5, what="Stop to close the upstream stream")
    assert fake.completed == 0
    assert bot_text(page) == bot_text(second), "both tabs show the same reply"
    second.close()


def test_a_reply_waiting_for_the_engines_slot_says_so_until_its_text_comes(
    browser: Browser, backend: ServerThread, fake: FakeBackend
) -> None:
    """Against llama-server with one slot (the fake stands for it: tests/fake_backend.py), two
    people, the second on a phone: while the first one's reply holds the slot, the second sees
    "Queued" where the reply will be and the Backends panel shows the slot busy and one
    waiting; once the first stops, the second's text replaces it."""
    fake.kind, fake.slots = "llama.cpp", 1
    fake.tokens, fake.token_delay = REPLY, 0.02
    with ServerThread(create_app(settings_for(backend.url, stream_interval=0.05))) as server:
        first, second = (browser.new_context(viewport={"width": width, "height": height})
                         .new_page() for width, height in ((1200, 1100), (390, 844)))
        for page in (first, second):
            page.goto(server.url)
        first.locator("#message textarea").fill("Write an add function in Python.")
        first.locator("#send").click()
        expect(first.locator("#chat .message.bot").first).to_contain_text("word1 ",
                                                                         timeout=15_000)
        second.locator("#message textarea").fill("Write a sub function in Python.")
        second.locator("#send").click()
        notice = second.locator("#chat .message.bot .live-waiting")
        expect(notice).to_contain_text("Queued", timeout=15_000)
        expect(notice).to_contain_text("your reply starts as soon as")
        OUTPUT.mkdir(exist_ok=True)
        second.screenshot(path=str(OUTPUT / "browser-queued.png"))
        first.get_by_text("Backends", exact=True).click()
        expect(first.locator("#backends")).to_contain_text("1/1 busy")
        expect(first.locator("#backends")).to_contain_text("1 queued")
        first.locator("#backends").screenshot(path=str(OUTPUT / "browser-backends-slots.png"))
        first.locator("#stop").click()
        expect(second.locator("#chat .message.bot").first).to_contain_text("word1 ",
                                                                          timeout=15_000)
        expect(notice).to_have_count(0)
        second.locator("#stop").click()
        for page in (first, second):
            page.context.close()


def test_a_reply_is_finished_and_stored_after_every_page_closed(
    browser: Browser, backend: ServerThread, fake: FakeBackend, tmp_path: Path
) -> None:
    fake.tokens = REPLY
    fake.token_delay = 0.01
    settings = settings_for(backend.url, database_url=f"sqlite:///{tmp_path / 'closed.db'}")
    with ServerThread(create_app(settings)) as server:
        context = browser.new_context(viewport={"width": 1200, "height": 1100})
        page = context.new_page()
        page.goto(server.url)
        page.locator("#message textarea").fill("a long answer, please")
        page.locator("#send").click()
        expect(page.locator("#chat .message.bot")).to_contain_text("word3 ", timeout=15_000)
        page.close()
        wait_for(lambda: fake.completed == 1, 15, what="the reply to finish with no page open")
        store = open_store(settings)
        [summary] = store.list_conversations(store.user_id())

        def status() -> str | None:
            [exchange] = store.get_conversation(store.user_id(), summary.id).exchanges
            return exchange.reply.status if exchange.reply else None

        wait_for(lambda: status() == "stop", 5, what="the finished reply to be stored")
        assert fake.cancelled == 0
        again = context.new_page()
        again.goto(server.url)  # the browser shows the conversation it showed last
        expect(again.locator("#chat .message.bot")).to_contain_text("word399 ")
        expect(again.locator("#chat .message.bot")).to_contain_text("finished")
        context.close()


def test_the_backends_panel_polls_only_while_unfolded(
    browser: Browser, backend: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every open page used to have the server build the panel every 5 s, folded or not.
    Here the period is 1 s, and each check that nothing is built lasts 3.5 periods."""
    built: list[float] = []
    status_panel = BackendsPanel.status_panel

    def counted(panel: BackendsPanel) -> str:
        built.append(time.monotonic())
        return status_panel(panel)

    monkeypatch.setattr(BackendsPanel, "status_panel", counted)
    monkeypatch.setattr("app.ui.backends.STATUS_REFRESH_SECONDS", 1.0)
    with ServerThread(create_app(settings_for(backend.url))) as server:
        page = browser.new_page(viewport={"width": 1000, "height": 900})  # a narrow window
        page.goto(server.url)
        # The header comes with the panel built at load.
        expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
        started = len(built)
        time.sleep(3.5)  # a quiet interval
        assert len(built) == started, "folded: no polling"
        page.get_by_text("Backends", exact=True).click()
        expect(page.locator("#backends")).to_contain_text("up")
        wait_for(lambda: len(built) >= started + 3, 10,
                 what="the unfolded panel to be built at once, then every second")
        # Marks that need no emoji font (there was none here: they showed as empty boxes),
        # and headers on one line each (they broke as "Stat e", "Kin d").
        panel = page.locator("#backends")
        assert not any(ord(char) > 0x2FFF for char in panel.inner_text())
        expect(panel.locator(".state-up")).to_have_css("color", "rgb(26, 127, 55)")
        for header in panel.locator("th").all():
            lines = header.evaluate(
                "th => { const text = document.createRange(); text.selectNodeContents(th);"
                " return new Set([...text.getClientRects()].map(r => Math.round(r.top))).size; }"
            )
            assert lines == 1, f"{header.inner_text()!r} on one line"
        page.get_by_text("Backends", exact=True).click()
        folded = len(built)
        time.sleep(3.5)  # a quiet interval
        # A tick already on its way as the panel folded may land; polling on would be 3.
        assert len(built) <= folded + 1, "folded again: no more polling"
        page.close()


def test_tgi_gets_no_repetition_penalty_by_default_and_greedy_at_temperature_0(
    page: Page, fake: FakeBackend
) -> None:
    """The page's own controls, untouched, against the TGI fake, which records what TGI would
    generate with: OpenAI's presence penalty of 0 that the page sent was a repetition penalty
    of 2.0 on TGI (router/src/lib.rs), and its top-p of 0.95 turned temperature 0 back into
    sampling (server/.../utils/tokens.py)."""
    fake.tokens, fake.token_delay = ["Hello", ",", " world", "!"], 0.0
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    page.get_by_text("System prompt and generation settings").click()
    expect(page.locator("#repetition-penalty")).to_be_visible()
    expect(page.locator("#presence-penalty")).to_be_hidden()
    page.locator("#message textarea").fill("first question")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    assert "presence_penalty" not in fake.requests[-1]
    assert fake.generated[-1]["repetition_penalty"] is None
    assert fake.generated[-1]["do_sample"] is True, "temperature 0.2 samples"
    temperature = page.locator("#temperature input[type=number]")
    temperature.fill("0")
    temperature.press("Enter")
    page.locator("#message textarea").fill("second question")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_have_count(2)
    expect(page.locator("#chat .message.bot").last).to_contain_text("finished")
    assert fake.requests[-1]["temperature"] == 0
    assert fake.generated[-1]["do_sample"] is False, "greedy"
    assert fake.generated[-1]["top_p"] is None


@pytest.mark.engine
def test_a_real_reply_in_the_page(browser: Browser, running_app: RunningApp) -> None:
    """The whole path a newcomer takes: the page, the real engine, the default model."""
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(running_app.url)
    expect(page.locator("#header")).to_contain_text("SmolLM2-135M-Instruct", timeout=15_000)
    page.locator("#message textarea").fill("Write a Python function that reverses a string.")
    page.locator("#message textarea").press("Enter")
    reply = page.locator("#chat .message.bot").last
    expect(reply).to_contain_text("tokens/s", timeout=60_000)
    expect(reply.locator("pre code").first).to_contain_text("def ")
    stats = reply.locator("em").last.inner_text()
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "engine-reply-stats.txt").write_text(stats + "\n")
    page.screenshot(path=str(OUTPUT / "engine-reply.png"), full_page=True)
    assert "first token" in stats
    page.close()


def test_conversations_in_the_sidebar(page: Page, fake: FakeBackend) -> None:
    fake.tokens = ["Hello", ",", " world", "!"]
    fake.token_delay = 0.0
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    page.locator("#message textarea").fill("first question")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    page.locator("#new-chat").click()
    expect(page.locator("#chat .message")).to_have_count(0)
    page.locator("#message textarea").fill("second question")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    listed = page.locator("#conversations label")
    expect(listed).to_have_count(2)
    expect(listed.first).to_contain_text("second question")
    page.locator("#conversations").get_by_text("first question").click()
    expect(page.locator("#chat .message.user")).to_have_text(["first question"])
    page.locator("#delete").click()
    page.locator("#confirm").click()
    expect(listed).to_have_count(1)
    expect(listed.first).to_contain_text("second question")
    expect(page.locator("#chat .message")).to_have_count(0)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-conversations.png"), full_page=True)


def sign_in(browser: Browser, url: str, name: str, password: str) -> Page:
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(url)
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    return page


def test_accounts_see_only_their_own_conversations(
    browser: Browser, backend: ServerThread, tmp_path: Path
) -> None:
    settings = settings_for(backend.url, auth_mode="password")
    accounts = Accounts(open_store(settings))
    accounts.signup("alice", "correct horse")
    accounts.signup("bob", "battery staple")
    with ServerThread(create_app(settings)) as server:
        refused = sign_in(browser, server.url, "alice", "wrong password")
        expect(refused.get_by_text("Incorrect Credentials")).to_be_visible()
        alice = sign_in(browser, server.url, "alice", "correct horse")
        # The page's load fills the (empty) list: a message sent before it ends would have its
        # conversation listed, then the list emptied by the load.
        expect(alice.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
        alice.locator("#message textarea").fill("alice's secret plan")
        alice.locator("#message textarea").press("Enter")
        expect(alice.locator("#chat .message.bot")).to_contain_text("finished")
        expect(alice.locator("#conversations label")).to_have_count(1)
        bob = sign_in(browser, server.url, "bob", "battery staple")
        expect(bob.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
        expect(bob.locator("#conversations label")).to_have_count(0)
        bob.locator("#search input, #search textarea").first.fill("secret")
        expect(bob.locator("#conversations label")).to_have_count(0)
        OUTPUT.mkdir(exist_ok=True)
        alice.screenshot(path=str(OUTPUT / "browser-signed-in.png"), full_page=True)


PAYLOADS = [
    '<img src=x onerror="window.pwned=1">',
    "<script>window.pwned=1</script>",
    '<svg onload="window.pwned=1"></svg>',
    '<a href="javascript:window.pwned=1">click</a>',
]


def test_html_in_messages_replies_titles_and_imports_shows_as_text(
    page: Page, fake: FakeBackend, tmp_path: Path
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    fake.tokens = ["Reply with ", *PAYLOADS, "\n\n```python\nprint('<b>kept</b>')\n```\n"]
    fake.token_delay = 0.0
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    page.locator("#message textarea").fill(" ".join(PAYLOADS))
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    for payload in PAYLOADS:
        expect(page.locator("#chat .message.user")).to_contain_text(payload)
        expect(page.locator("#chat .message.bot")).to_contain_text(payload)
    expect(page.locator("#conversations label").first).to_contain_text(PAYLOADS[0])
    document = {
        "format": "coding-playground.conversations", "version": 1,
        "exported_at": "2026-11-23T00:00:00+00:00",
        "conversations": [{
            "id": "x", "title": PAYLOADS[1], "model": None, "backend": None, "language": None,
            "system_prompt": "", "settings": {},
            "created_at": "2026-11-23T00:00:00+00:00", "updated_at": "2026-11-23T00:00:01+00:00",
            "messages": [{
                "id": 1, "role": "user", "content": PAYLOADS[2], "reply_to": None,
                "status": "complete", "error": None, "tokens": None,
                "time_to_first_token": None, "tokens_per_second": None, "model": None,
                "backend": None, "created_at": "2026-11-23T00:00:00+00:00",
                "updated_at": "2026-11-23T00:00:00+00:00",
            }],
        }],
    }
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(document))
    page.get_by_text("Export and import").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#import").click()
    chooser.value.set_files(str(hostile))
    expect(page.locator("#conversations label")).to_have_count(2)
    page.locator("#conversations").get_by_text(PAYLOADS[1]).click()
    expect(page.locator("#chat .message.user")).to_contain_text(PAYLOADS[2])
    page.locator("#new-chat").click()
    page.locator("#message textarea").fill("again")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    page.get_by_text("Save code from this conversation").click()
    page.locator("#find-code").click()
    page.locator("#snippet-title textarea").fill(PAYLOADS[3])
    page.locator("#save-code").click()
    page.get_by_role("tab", name="Snippets").click()
    page.locator("#snippets").get_by_text(PAYLOADS[3], exact=False).click()
    expect(page.locator("#code")).to_contain_text("print('<b>kept</b>')")
    assert page.evaluate("window.pwned") is None, "no payload ran"
    assert dialogs == []
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-xss.png"), full_page=True)


FIRST_VERSION = ["Here:\n\n", "```python\n", "def add(a, b):\n", "    return a + b\n", "\n",
                 "print(add(2, 3))\n", "```\n"]
SECOND_VERSION = ["```python\n", "def add(a, b, c=0):\n", "    return a + b + c\n", "\n",
                  "print(add(2, 3, 4))\n", "```\n", "It takes a third number now."]


def test_the_coding_loop_ask_save_refine_diff_run(page: Page, fake: FakeBackend) -> None:
    fake.tokens, fake.token_delay = FIRST_VERSION, 0.0
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    page.locator("#message textarea").fill("Write an add function in Python.")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    page.get_by_text("Save code from this conversation").click()
    page.locator("#find-code").click()
    expect(page.locator("#code-blocks input")).to_have_value("#1 python: def add(a, b):")
    page.locator("#snippet-title textarea").fill("add numbers")
    page.locator("#save-code").click()
    expect(page.get_by_text("Saved to the snippet library.")).to_be_visible()

    page.get_by_role("tab", name="Snippets").click()
    page.locator("#snippets").get_by_text("add numbers (python, v1)").click()
    expect(page.locator("#code")).to_contain_text("return a + b")
    fake.tokens = SECOND_VERSION
    page.locator("#instruction textarea").fill("Take an optional third number.")
    page.locator("#refine").click()
    expect(page.locator("#snippets")).to_contain_text("add numbers (python, v2)")
    expect(page.locator("#code")).to_contain_text("return a + b + c")
    expect(page.locator("#diff")).to_contain_text("+def add(a, b, c=0):")
    expect(page.locator("#diff")).to_contain_text("-def add(a, b):")
    assert "Take an optional third number." in fake.requests[-1]["messages"][-1]["content"]

    asked = len(fake.requests)
    fake.tokens, fake.token_delay = [f"t{i} " for i in range(300)], 0.02
    page.locator("#instruction textarea").fill("Make it much longer.")
    page.locator("#refine").click()
    wait_for(lambda: len(fake.requests) > asked, what="the refinement to reach the backend")
    page.locator("#refine-stop").click()
    wait_for(lambda: fake.cancelled, what="Stop to close the upstream stream")
    expect(page.locator("#snippets")).to_contain_text("add numbers (python, v2)")

    page.locator("#run").click()
    expect(page.locator("#run-output")).to_contain_text("exit code 0")
    expect(page.locator("#run-output")).to_contain_text("9")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-coding-loop.png"), full_page=True)


def test_pick_a_model_see_the_backends_and_use_the_raw_prompt(
    browser: Browser, backend: ServerThread, fake: FakeBackend
) -> None:
    """Two backends: the fake TGI and a fake OpenAI-compatible server with another model."""
    fake.tokens = ["Hello", " from", " TGI"]
    other = FakeBackend(kind="openai", model_id="Qwen/Qwen2.5-Coder-7B-Instruct",
                        tokens=["Hi", " from", " vLLM"])
    with ServerThread(other.app()) as second:
        settings = settings_for(backend.url, backends=[
            {"name": "gpu", "kind": "tgi", "url": backend.url},
            {"name": "vllm", "kind": "openai", "url": second.url},
        ])
        with ServerThread(create_app(settings)) as server:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.goto(server.url)
            expect(page.locator("#header")).to_contain_text("on backend gpu")
            page.locator("#model input").click()
            page.get_by_role("option", name="Qwen/Qwen2.5-Coder-7B-Instruct (vllm)").click()
            expect(page.locator("#header")).to_contain_text("on backend vllm")
            page.get_by_text("System prompt and generation settings").click()
            expect(page.locator("#presence-penalty")).to_be_visible()
            expect(page.locator("#repetition-penalty")).to_be_hidden()
            page.locator("#message textarea").fill("hello?")
            page.locator("#send").click()
            expect(page.locator("#chat .message.bot")).to_contain_text("Hi from vLLM")
            assert other.requests[-1]["model"] == "Qwen/Qwen2.5-Coder-7B-Instruct"

            page.get_by_text("Backends", exact=True).click()
            expect(page.locator("#backends")).to_contain_text("gpu")
            expect(page.locator("#backends")).to_contain_text("vllm")
            expect(page.locator("#backends")).to_contain_text(TGI_VERSION)

            page.locator("#model input").click()
            page.get_by_role("option", name="bigcode/starcoder2-3b (gpu)").click()
            expect(page.locator("#repetition-penalty")).to_be_visible()
            expect(page.locator("#presence-penalty")).to_be_hidden()
            page.get_by_role("tab", name="Raw prompt").click()
            page.locator("#raw-render").click()
            expect(page.locator("#raw-prompt textarea")).to_have_value(
                re.compile(r"<fake>user: hello\?</fake>")
            )
            expect(page.locator("#raw-note")).to_contain_text("own chat template")
            page.locator("#raw-generate").click()
            expect(page.locator("#raw-stats")).to_contain_text("4 tokens")
            tokens = page.locator("#raw-tokens .tok")
            expect(tokens).to_have_count(4)
            expect(tokens.last).to_have_text("</s>")
            assert fake.inputs[-1].count(1) == 1, "the rendered prompt reached TGI with one BOS"
            assert "logprob -0.100" in (tokens.first.get_attribute("title") or "")
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / "browser-raw-prompt.png"), full_page=True)
            page.close()


def test_share_read_signed_out_import_and_revoke_a_conversation(
    browser: Browser, backend: ServerThread, fake: FakeBackend
) -> None:
    fake.tokens = ["Here:\n\n", "```python\n", "def add(a, b):\n", "    return a + b\n", "```\n"]
    fake.token_delay = 0.0
    settings = settings_for(backend.url, auth_mode="password")
    accounts = Accounts(open_store(settings))
    accounts.signup("alice", "correct horse")
    accounts.signup("bob", "battery staple")
    with ServerThread(create_app(settings)) as server:
        alice = sign_in(browser, server.url, "alice", "correct horse")
        expect(alice.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
        alice.get_by_text("Share", exact=True).click()
        alice.locator("#share").click()
        expect(alice.get_by_text("This conversation is empty; send a first")).to_be_visible()
        alice.locator("#message textarea").fill("Write add.")
        alice.locator("#message textarea").press("Enter")
        expect(alice.locator("#chat .message.bot")).to_contain_text("finished")
        alice.locator("#share").click()
        link_box = alice.locator("#share-link textarea, #share-link input").first
        expect(link_box).to_have_value(re.compile(rf"^{server.url}/share/[A-Za-z0-9_-]{{43}}$"))
        link = link_box.input_value()
        expect(alice.locator("#shares label")).to_have_count(1)

        signed_out = browser.new_context(viewport={"width": 900, "height": 700})
        reader = signed_out.new_page()
        opened = reader.goto(link)
        assert opened is not None
        assert opened.status == 200
        expect(reader.locator("h1")).to_have_text("Write add.")
        keyword = reader.locator("pre code .k").first
        expect(keyword).to_have_text("def")
        plain = reader.locator("pre code").first.evaluate("e => getComputedStyle(e).color")
        assert keyword.evaluate("e => getComputedStyle(e).color") != plain, "highlighted"
        expect(reader.locator("body")).not_to_contain_text("alice")
        expect(reader.locator("input, textarea, button, script")).to_have_count(0)
        OUTPUT.mkdir(exist_ok=True)
        reader.screenshot(path=str(OUTPUT / "browser-shared.png"), full_page=True)

        bob = sign_in(browser, server.url, "bob", "battery staple")
        expect(bob.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
        bob.get_by_text("Export and import").click()
        bob.locator("#import-link textarea, #import-link input").first.fill(link)
        bob.locator("#import-share").click()
        expect(bob.locator("#conversations label")).to_have_count(1)
        bob.locator("#conversations").get_by_text("Write add.").click()
        expect(bob.locator("#chat .message.user")).to_have_text(["Write add."])
        expect(bob.locator("#chat .message.bot pre code").first).to_contain_text("return a + b")

        alice.locator("#shares label").first.click()
        alice.locator("#revoke-share").click()
        expect(alice.locator("#shares label")).to_have_count(0)
        expect(link_box).to_have_value("")
        gone = reader.goto(link)
        assert gone is not None
        assert gone.status == 404
        expect(reader.locator("body")).to_contain_text("its owner has revoked it")
        signed_out.close()


def test_run_a_python_block_of_a_reply_in_place(page: Page, fake: FakeBackend) -> None:
    fake.tokens, fake.token_delay = [*FIRST_VERSION, "\nThen:\n\n", "```sql\nselect 1;\n```\n"], 0.0
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    page.locator("#message textarea").fill("Write an add function in Python.")
    page.locator("#message textarea").press("Enter")
    bot = page.locator("#chat .message.bot").last
    expect(bot).to_contain_text("finished")
    expect(bot.get_by_role("link", name="▶ Run")).to_have_count(1)  # none for the SQL
    bot.get_by_role("link", name="▶ Run").click()
    expect(bot).to_contain_text("Run of block 1 (Python): exit code 0")
    output = bot.locator("pre code").nth(1)
    expect(output).to_have_text("5")
    # In place: between the Python block and the SQL one.
    assert bot.locator("pre code").nth(2).inner_text().startswith("select 1;")
    assert page.evaluate("location.hash") == "", "the Run link does not navigate"
    page.reload()
    expect(page.locator("#chat .message.bot").last.locator("pre code").nth(1)).to_have_text("5")


CHECKED = ["Here:\n\n", "```python\n", "def add(a, b):\n", "    return a - b\n", "\n",
           "assert add(1, 0) == 1\n", "assert add(2, 2) == 4\n", "```\n"]
REPAIRED = ["The sign was wrong", *[f" (word {i})" for i in range(30)], ":\n\n", "```python\n",
            "def add(a, b):\n", "    return a + b\n", "```\n"]


def test_check_a_reply_watch_it_repaired_and_find_its_badge_after_a_reload(
    browser: Browser, backend: ServerThread, fake: FakeBackend
) -> None:
    """A reply whose code fails one of its own tests: Check shows the failing test with the
    values it compared, the model's repair as it comes, then the repaired version (a new
    version of the reply) passing, with the diff and the end of the loop; the trace and the
    badge are there again after a reload, on a phone too."""
    fake.tokens, fake.token_delay = CHECKED, 0.0
    fake.answers = {"What failed:": REPAIRED}
    settings = settings_for(backend.url, stream_interval=0.05, stream_render_interval=0.2)
    with ServerThread(create_app(settings)) as server:
        context = browser.new_context(viewport={"width": 1280, "height": 1100})
        page = context.new_page()
        page.goto(server.url)
        page.locator("#message textarea").fill("Write add(a, b) with tests.")
        page.locator("#message textarea").press("Enter")
        bot = page.locator("#chat .message.bot").last
        expect(bot).to_contain_text("finished")
        fake.token_delay = 0.05
        bot.get_by_role("link", name="✓ Check").click()
        trace = bot.locator(".check-trace")
        expect(trace).to_contain_text("the model is answering", timeout=15_000)
        expect(trace).to_contain_text("assert add(2, 2) == 4 → add(2, 2) is 0, expected 4")
        expect(trace.locator(".check-badge")).to_have_text(["1 of 2 fails"])
        expect(trace).to_contain_text("Ended: passed after 1 repair.", timeout=15_000)
        expect(bot).to_contain_text("The sign was wrong")
        expect(bot).to_contain_text(f"{EARLIER} 2/2 {LATER}")
        expect(trace.locator(".check-badge")).to_have_text(["1 of 2 fails", "2/2 tests pass"])
        expect(trace).to_contain_text("against the tests the reply holds")
        expect(trace.locator("details[open] pre")).to_contain_text(
            "-    return a - b\n+    return a + b")
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "browser-check-1280.png"), full_page=True)
        page.reload()
        badge = page.locator("#chat .message.bot").last.locator(".check-badge").first
        expect(badge).to_have_text("2/2 tests pass", timeout=15_000)
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        expect(badge).to_have_text("2/2 tests pass", timeout=15_000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.locator("#chat .message.bot").last.locator(".check-trace").scroll_into_view_if_needed()
        page.screenshot(path=str(OUTPUT / "browser-check-390.png"))
        context.close()


def test_edit_an_earlier_message_switch_branches_then_export_and_import_them(
    page: Page, fake: FakeBackend, tmp_path: Path
) -> None:
    fake.tokens, fake.token_delay = ["answer"], 0.0
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    for count, text in enumerate(("first question", "second question", "third question"), 1):
        page.locator("#message textarea").fill(text)
        page.locator("#message textarea").press("Enter")
        expect(page.locator("#chat .message.bot")).to_have_count(count)
        expect(page.locator("#chat .message.bot").last).to_contain_text("finished")
    users = page.locator("#chat .message.user")

    page.get_by_role("button", name="Edit").nth(1).click()
    page.locator("#chat textarea").fill("second question, <edited>")
    page.get_by_role("button", name="Submit").click()
    expect(users).to_have_count(2)
    expect(users.last).to_contain_text("second question, <edited>")
    expect(users.last).to_contain_text("2/2")
    expect(page.locator("#chat .message.bot").last).to_contain_text("finished")
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == [
        "first question", "answer", "second question, <edited>"], "only what is above it"

    users.last.get_by_role("link", name=EARLIER).click()
    expect(users).to_have_count(3)
    expect(users.nth(1)).to_contain_text("1/2")
    expect(users.last).to_contain_text("third question")
    users.nth(1).get_by_role("link", name=LATER).click()
    expect(users).to_have_count(2)
    expect(users.last).to_contain_text("second question, <edited>")
    users.last.get_by_role("link", name=EARLIER).click()
    expect(users).to_have_count(3)
    assert page.evaluate("location.hash") == "", "the switch links do not navigate"

    page.get_by_text("Export and import").click()
    page.locator("#export-json").click()
    with page.expect_download() as download:
        page.locator("#exported a").first.click()
    exported = tmp_path / "conversation.json"
    download.value.save_as(exported)
    page.locator("#delete").click()
    page.locator("#confirm").click()
    expect(page.locator("#conversations label")).to_have_count(0)
    with page.expect_file_chooser() as chooser:
        page.locator("#import").click()
    chooser.value.set_files(str(exported))
    expect(page.locator("#conversations label")).to_have_count(1)
    page.locator("#conversations").get_by_text("first question").click()
    expect(users).to_have_text([
        re.compile("^first question"), re.compile(f"^second question\\s+{EARLIER} 1/2 {LATER}"),
        re.compile("^third question")])
    users.nth(1).get_by_role("link", name=LATER).click()
    expect(users).to_have_count(2)
    expect(users.last).to_contain_text("second question, <edited>")
    expect(page.locator("#chat .message.bot").last).to_contain_text("answer")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-branches.png"), full_page=True)


def test_each_keyboard_shortcut_works_and_leaves_typing_alone(
    page: Page, fake: FakeBackend
) -> None:
    fake.token_delay = 0.03
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    box = page.locator("#message textarea")
    page.locator("#header").click()
    page.keyboard.press("Alt+Shift+M")
    expect(box).to_be_focused()
    page.keyboard.type("one line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("and ? another")
    expect(box).to_have_value("one line\nand ? another")
    expect(page.locator("#shortcuts-overlay")).to_be_hidden()
    page.keyboard.press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("word3 ", timeout=15_000)
    page.keyboard.press("Escape")
    expect(page.locator("#chat .message.bot")).to_contain_text("stopped by you")
    wait_for(lambda: fake.cancelled == 1, 5, what="Esc to stop the reply")

    fake.token_delay = 0.0
    page.keyboard.press("Alt+Shift+R")
    expect(page.locator("#chat .message.bot").last).to_contain_text("finished", timeout=15_000)
    assert len(fake.requests) == 2, "retried"

    page.locator("#header").click()
    page.keyboard.press("?")
    overlay = page.locator("#shortcuts-overlay")
    expect(overlay).to_be_visible()
    expect(overlay.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_contain_text("Alt+Shift+N")
    expect(page.locator("#shortcuts-close")).to_be_focused()
    page.keyboard.press("Escape")
    expect(overlay).to_be_hidden()
    page.locator("#shortcuts").click()
    expect(overlay).to_be_visible()
    page.locator("#shortcuts-close").click()
    expect(overlay).to_be_hidden()

    page.keyboard.press("Alt+Shift+N")
    expect(page.locator("#chat .message")).to_have_count(0)


def test_every_control_has_an_accessible_name(page: Page) -> None:
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    tree = page.locator("body").aria_snapshot()
    assert '- button "Send"' in tree
    unnamed = [line.strip() for line in tree.splitlines() if re.fullmatch(
        r"\s*- (button|textbox|combobox|checkbox|slider|spinbutton|radio|link)( \[.*\])?:?",
        line,
    )]
    assert unnamed == [], tree


def assert_typing_in_view(page: Page, height: int) -> None:
    """The message box and Send are on the screen, not below the fold."""
    for part in ("#message textarea", "#send"):
        box = page.locator(part).bounding_box()
        assert box is not None
        assert box["y"] >= 0, part
        assert box["y"] + box["height"] <= height, f"{part} below the fold: {box}"


def test_a_phone_sized_page_shows_the_chat_with_the_sidebar_folded(
    browser: Browser, backend: ServerThread, fake: FakeBackend
) -> None:
    fake.tokens = ["Here:\n\n", "```python\n", "print('" + "x" * 300 + "')\n", "```\n"]
    with ServerThread(create_app(settings_for(backend.url))) as server:
        for width, height in ((1280, 900), (390, 844)):
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.goto(server.url)
            expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
            assert_typing_in_view(page, height)
            page.locator("#message textarea").fill("Print a long line.")
            page.locator("#send").click()
            expect(page.locator("#chat .message.bot")).to_contain_text("finished")
            OUTPUT.mkdir(exist_ok=True)
            page.screenshot(path=str(OUTPUT / f"page-{width}.png"))
            if width < 768:
                expect(page.locator(".sidebar")).not_to_have_class(re.compile(r"\bopen\b"))
                for part in ("#message textarea", "#send", "#stop", "#chat"):
                    box = page.locator(part).bounding_box()
                    assert box is not None
                    assert box["x"] >= 0, part
                    assert box["x"] + box["width"] <= width, part
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                code = page.locator("#chat .message.bot pre").first
                assert code.evaluate("pre => pre.scrollWidth > pre.clientWidth"), "it scrolls"
                assert_typing_in_view(page, height)
                page.get_by_role("button", name="Toggle Sidebar").click()
                expect(page.locator(".sidebar")).to_have_class(re.compile(r"\bopen\b"))
                page.locator("#new-chat").click()
                expect(page.locator(".sidebar")).not_to_have_class(re.compile(r"\bopen\b"))
            context.close()


def test_a_message_sent_while_a_reply_is_written_goes_once_it_ends(
    page: Page, fake: FakeBackend
) -> None:
    """It was dropped, also in the moment after the reply showed as finished."""
    fake.tokens = [f"w{i} " for i in range(60)]
    fake.token_delay = 0.02
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    box = page.locator("#message textarea")
    box.fill("first")
    box.press("Enter")
    expect(page.locator("#chat .message.bot")).to_contain_text("w3 ")
    box.fill("second")
    box.press("Enter")
    expect(page.locator("#chat .message.user")).to_have_text(["first", "second"], timeout=15_000)
    expect(page.locator("#chat .message.bot").last).to_contain_text("finished", timeout=15_000)
    assert [m["content"] for m in fake.requests[-1]["messages"][1:]] == [
        "first", "".join(fake.tokens), "second"]


def picked(name: str, data: bytes) -> list[FilePayload]:
    """A file as the picker hands it to the page."""
    return [{"name": name, "mimeType": "application/octet-stream", "buffer": data}]


def test_attach_two_files_open_one_from_its_chip_and_a_binary_or_big_one_is_refused(
    page: Page, fake: FakeBackend
) -> None:
    fake.tokens, fake.token_delay = ["Looks fine."], 0.0
    expect(page.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    attach = page.locator("#attach")
    for refused, payload in [("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
                             ("huge.log", b"line\n" * 60_000)]:
        with page.expect_file_chooser() as chooser:
            attach.get_by_text("Drop File Here").click()
        chooser.value.set_files(picked(refused, payload))
        expect(attach.get_by_role("cell", name=refused)).to_be_visible()
        page.locator("#message textarea").fill("Look at this.")
        page.locator("#send").click()
        expect(page.get_by_text(f"{refused} is ")).to_be_visible()
        expect(page.locator("#message textarea")).to_have_value("Look at this.")
        attach.get_by_role("button", name="Clear").last.click()
        expect(attach.get_by_role("cell")).to_have_count(0)
    expect(page.locator("#chat .message")).to_have_count(0)
    expect(page.locator("#conversations label")).to_have_count(0)
    assert fake.requests == [], "nothing was sent"

    with page.expect_file_chooser() as chooser:
        attach.get_by_text("Drop File Here").click()
    chooser.value.set_files(
        [*picked("fizz.py", b"print('fizz')\n"), *picked("notes.md", b"Run ```make```.\n")]
    )
    expect(attach.get_by_role("cell", name="notes.md")).to_be_visible()
    page.locator("#message textarea").fill("Review these.")
    page.locator("#send").click()
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    assert fake.requests[-1]["messages"][-1]["content"] == (
        "Review these.\n\nFile: fizz.py\n```python\nprint('fizz')\n```"
        "\n\nFile: notes.md\n````md\nRun ```make```.\n````"
    )
    expect(attach.get_by_role("cell")).to_have_count(0)
    user = page.locator("#chat .message.user")
    expect(user).to_contain_text("Attached: fizz.py (14 B) · notes.md (16 B)")
    user.get_by_role("link", name="notes.md (16 B)").click()
    expect(page.locator("#attachment-viewer")).to_contain_text("Run ```make```.")
    assert page.evaluate("location.hash") == "", "the chips do not navigate"
    expect(page.locator("#conversations label")).to_have_count(1)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-attachments.png"), full_page=True)
