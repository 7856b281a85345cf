"""Previews of HTML, SVG and Mermaid code in a real browser (Debian's chromium through
Playwright): from a code block of a reply, and from a snippet's versions. The previewed code
runs in its sandboxed frame and tells, in its own page, what each attempt to reach the app or
the network gave; the test reads that page through Playwright's frame locator."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import FrameLocator, Page, expect

from app.downloader.npm import MERMAID
from tests.conftest import OUTPUT
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread
from tests.test_browser import browser, grows_live, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

# Each attempt writes what it gave into the previewed page: "read ..." or "answered ..." had
# it worked, "blocked: <error>" when the sandbox or the policy stopped it.
PROBE = """<!doctype html>
<html><head><title>probe</title></head><body>
<h1 id="ran">not run</h1>
<p id="parent">?</p><p id="cookie">?</p><p id="storage">?</p><p id="api">?</p><p id="net">?</p>
<p id="nonce">NONCE</p>
<script>
const out = (id, text) => { document.getElementById(id).textContent = id + " " + text; };
document.getElementById("ran").textContent = "script ran";
document.getElementById("nonce").textContent = String(Math.random());
const attempt = (id, read) => {
  try { out(id, "read: " + read()); } catch (e) { out(id, "blocked: " + e.name); }
};
attempt("parent", () => parent.document.title);
attempt("cookie", () => document.cookie);
attempt("storage", () => localStorage.length);
fetch("/api/v1/dialogues", {mode: "no-cors", credentials: "include"})
  .then(r => out("api", "answered " + r.status), e => out("api", "blocked: " + e.name));
fetch("NETWORK", {mode: "no-cors"})
  .then(r => out("net", "answered " + r.status), e => out("net", "blocked: " + e.name));
</script>
</body></html>"""


def reply_with(fake: FakeBackend, *blocks: tuple[str, str], tail: int = 0) -> None:
    """The fake's next reply: the fenced ``blocks`` (language, code), then ``tail`` words."""
    fake.tokens = ["Here:\n\n"]
    for language, code in blocks:
        fake.tokens += [f"```{language}\n", *code.splitlines(keepends=True), "\n```\n\n"]
    fake.tokens += [f"word{i} " for i in range(tail)]


def ask(tab: Page, text: str) -> None:
    expect(tab.locator("#header")).to_contain_text("bigcode/starcoder2-3b")
    tab.locator("#message textarea").fill(text)
    tab.locator("#send").click()


def preview_frame(tab: Page, panel: str = "chat-preview") -> FrameLocator:
    return tab.frame_locator(f"#{panel}-frame iframe")


def test_an_html_reply_runs_in_a_sandbox_that_reaches_nothing(
    page: Page, fake: FakeBackend, backend: ServerThread  # noqa: F811
) -> None:
    page.evaluate("document.cookie = 'app-secret=s3cret; path=/'")
    reply_with(fake, ("html", PROBE.replace("NETWORK", f"{backend.url}/info")), tail=1000)
    ask(page, "Write a page.")
    # The button comes while the reply still streams, and the reply goes on streaming.
    page.locator("#chat .preview-code").first.click()
    frame = preview_frame(page)
    expect(frame.locator("#ran")).to_have_text("script ran")
    expect(frame.locator("#parent")).to_have_text(re.compile(r"^parent blocked: SecurityError"))
    expect(frame.locator("#cookie")).to_have_text("cookie blocked: SecurityError")
    expect(frame.locator("#storage")).to_have_text("storage blocked: SecurityError")
    expect(frame.locator("#api")).to_have_text("api blocked: TypeError")
    expect(frame.locator("#net")).to_have_text("net blocked: TypeError")
    grows_live(page)
    assert page.evaluate("document.cookie") == "app-secret=s3cret"

    first = frame.locator("#nonce").inner_text()
    page.locator("#chat-preview-reload").click()
    expect(frame.locator("#nonce")).not_to_have_text(first)
    expect(frame.locator("#ran")).to_have_text("script ran")

    # Opened alone in a tab it is just as sandboxed (the policy's own sandbox).
    with page.context.expect_page() as opened:
        page.locator("#chat-preview-frame a.preview-open").click()
    tab = opened.value
    expect(tab.locator("#ran")).to_have_text("script ran")
    expect(tab.locator("#cookie")).to_have_text("cookie blocked: SecurityError")
    expect(tab.locator("#api")).to_have_text("api blocked: TypeError")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-preview-html.png"), full_page=True)
    tab.close()

    page.locator("#chat-preview-close").click()
    expect(page.locator("#chat-preview")).to_be_hidden()


SVG = ('<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40">'
       '<rect width="120" height="40" fill="teal"/><text x="8" y="25">drawn svg</text></svg>')
MERMAID_DIAGRAM = "graph TD\n  A[Start here] --> B[Ship it]"


def test_svg_and_mermaid_blocks_render(page: Page, fake: FakeBackend) -> None:  # noqa: F811
    assert MERMAID.path.is_file(), "scripts/test fetches it: python -m app.downloader mermaid"
    reply_with(fake, ("svg", SVG), ("xml", SVG.replace("drawn", "xml")),
               ("mermaid", MERMAID_DIAGRAM))
    ask(page, "Draw things.")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    buttons = page.locator("#chat .preview-code")
    expect(buttons).to_have_count(3)
    frame = preview_frame(page)
    buttons.nth(0).click()
    expect(frame.locator("svg text")).to_have_text("drawn svg")
    buttons.nth(1).click()
    expect(frame.locator("svg text")).to_have_text("xml svg")
    buttons.nth(2).click()
    # Drawn by the app's own copy of Mermaid (5.5 MB of script to parse: a while, on 2 cores;
    # once, in a whole run of the suite, more than 20 s).
    expect(frame.locator("svg").get_by_text("Start here")).to_be_visible(timeout=60_000)
    expect(frame.locator("svg").get_by_text("Ship it")).to_be_visible()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-preview-mermaid.png"), full_page=True)


def test_a_snippet_previews_the_version_on_screen(
    page: Page, fake: FakeBackend  # noqa: F811
) -> None:
    reply_with(fake, ("html", "<h1 id='v'>first version</h1>"))
    ask(page, "Write a heading.")
    expect(page.locator("#chat .message.bot")).to_contain_text("finished")
    page.get_by_text("Save code from this conversation").click()
    page.locator("#find-code").click()
    expect(page.locator("#code-blocks input")).to_have_value(re.compile("html"))
    page.locator("#snippet-title textarea").fill("heading")
    page.locator("#save-code").click()
    page.get_by_role("tab", name="Snippets").click()
    page.locator("#snippets").get_by_text("heading (html, v1)").click()
    reply_with(fake, ("html", "<h1 id='v'>second version</h1>"))
    page.locator("#instruction textarea").fill("Change the words.")
    page.locator("#refine").click()
    expect(page.locator("#snippets")).to_contain_text("heading (html, v2)")

    frame = preview_frame(page, "snippet-preview")
    page.locator("#preview-snippet").click()
    expect(frame.locator("#v")).to_have_text("second version")
    page.locator("#version input").click()
    page.get_by_role("option", name=re.compile("^v1")).click()
    expect(page.locator("#code")).to_contain_text("first version")
    page.locator("#preview-snippet").click()
    expect(frame.locator("#v")).to_have_text("first version")
