"""The Compare tab in a real browser (Debian's chromium driven by Playwright), against two
stand-in backends of different speeds: a TGI serving one model and a vLLM serving another."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from app.server import create_app
from app.store import Accounts, Store
from app.store.comparisons import Comparisons, StoredComparison
from app.store.store import LOCAL_USER
from app.ui.compare import CHECK_OFF, NO_TESTS
from app.ui.page import NARROW_PX
from tests.conftest import OUTPUT, settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread
from tests.test_api_compare import FAST, SLOW
from tests.test_browser import browser  # noqa: F401  (a fixture)
from tests.waiting import wait_for

pytestmark = pytest.mark.browser

TOKENS = [f"w{i} " for i in range(40)]
SPEED = re.compile(r"([\d.]+) tokens/s")


@pytest.fixture
def slow() -> FakeBackend:
    return FakeBackend(kind="openai", model_id=SLOW, tokens=list(TOKENS), token_delay=0.06)


@pytest.fixture
def start_arena(
    backend: ServerThread, fake: FakeBackend, slow: FakeBackend, tmp_path: Path
) -> Iterator[Callable[..., tuple[str, str]]]:
    """Start the app with both backends (the fast one is the ``backend`` fixture's TGI) and
    the settings given: its URL and its database's."""
    fake.tokens, fake.token_delay = list(TOKENS), 0.01
    database_url = f"sqlite:///{tmp_path / 'arena.db'}"
    with ExitStack() as started:
        def start(**overrides: Any) -> tuple[str, str]:
            second = started.enter_context(ServerThread(slow.app()))
            settings = settings_for(backend.url, **{
                "backends": [{"name": "gpu", "kind": "tgi", "url": backend.url},
                             {"name": "vllm", "kind": "openai", "url": second.url}],
                "database_url": database_url, "stream_render_interval": 0.3, **overrides,
            })
            server = started.enter_context(ServerThread(create_app(settings)))
            return server.url, database_url

        yield start


@pytest.fixture
def arena(start_arena: Callable[..., tuple[str, str]]) -> tuple[str, str]:
    return start_arena()


def stored(database_url: str) -> list[StoredComparison]:
    """The local user's comparisons, newest first, as the store has them."""
    store = Store(database_url)
    try:
        return Comparisons(store).list(store.user_id(LOCAL_USER))
    finally:
        store.engine.dispose()


def open_compare(
    browser: Browser, url: str, width: int, height: int,  # noqa: F811
    account: tuple[str, str] | None = None,
) -> Page:
    """The Compare tab, signed in with ``account`` (name, password) where given."""
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.goto(url)
    if account is not None:
        page.get_by_label("username").fill(account[0])
        page.get_by_label("password").fill(account[1])
        page.get_by_role("button", name="Login").click()
    expect(page.locator("#header")).to_contain_text(FAST)
    if width < NARROW_PX:  # the tabs that do not fit are in Gradio's "More tabs" menu
        page.get_by_role("button", name="More tabs").click()
        page.get_by_role("button", name="Compare", exact=True).click()
    else:
        page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-left-model input")).to_have_value(re.compile(f"^{FAST} "))
    expect(page.locator("#compare-right-model input")).to_have_value(re.compile(f"^{SLOW} "))
    return page


def send(page: Page, text: str) -> None:
    page.locator("#compare-message textarea").fill(text)
    page.locator("#compare-send").click()


def speed(column: Locator) -> float:
    found = SPEED.search(column.inner_text())
    assert found, column.inner_text()
    return float(found[1])


def in_view(page: Page, selector: str, width: int, height: int) -> None:
    """The element is inside the screen, and on top there (not under the sticky row)."""
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    assert box["x"] >= 0, (selector, box)
    assert box["x"] + box["width"] <= width, (selector, box)
    assert box["y"] >= 0, (selector, box)
    assert box["y"] + box["height"] <= height, (selector, box)
    middle = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    assert page.evaluate(
        "([x, y, s]) => document.querySelector(s).contains(document.elementFromPoint(x, y))",
        [*middle, selector],
    ), f"{selector} is covered"


def test_two_models_stream_side_by_side_a_vote_is_stored_and_the_board_shows_both(
    browser: Browser, arena: tuple[str, str]  # noqa: F811
) -> None:
    url, database_url = arena
    page = open_compare(browser, url, 1280, 1000)
    left, right = page.locator("#compare-left"), page.locator("#compare-right")
    send(page, "Reverse a string.")
    # The slow side streams, its speed live, after the fast one has ended.
    expect(left).to_contain_text("finished", timeout=15_000)
    expect(right).to_contain_text("tokens/s")
    expect(right).not_to_contain_text("finished")
    expect(right).to_contain_text("w39", timeout=15_000)
    expect(right).to_contain_text("finished")
    assert speed(left) > speed(right) > 0
    for column, model in ((left, FAST), (right, SLOW)):
        expect(column).to_contain_text(model)
        expect(column).to_contain_text("first token")
    expect(page.locator("#compare-votes")).to_be_visible()
    page.locator("#vote-left").click()
    expect(page.locator("#compare-notice")).to_contain_text("Your vote: Left better")
    [voted] = stored(database_url)
    assert (voted.outcome, voted.left.model, voted.right.model) == ("left", FAST, SLOW)
    assert voted.left.tokens_per_second is not None
    assert voted.right.tokens_per_second is not None
    assert voted.left.tokens_per_second > voted.right.tokens_per_second
    page.locator("#compare-board-panel").get_by_text("Board").click()
    board = page.locator("#compare-board")
    expect(board).to_contain_text(FAST)
    expect(board).to_contain_text(SLOW)
    rows = board.locator("tbody tr")
    expect(rows.first).to_contain_text(FAST)  # rated best first
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-compare.png"), full_page=True)

    # Going on with the left reply shows it in the Chat tab.
    page.locator("#compare-keep-left").click()
    expect(page.locator("#chat .message.bot").last).to_contain_text("1/2")
    expect(page.locator("#chat .message.bot").last).to_contain_text("w39")

    # The same model twice is refused in the notice, nothing sent.
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-right-model input").click()
    page.get_by_role("option", name=f"{FAST} (gpu)").click()
    send(page, "Once more.")
    expect(page.locator("#compare-notice")).to_contain_text(
        f"Both sides are {FAST}: pick two different models to compare."
    )
    assert len(stored(database_url)) == 1, "nothing sent"


def test_blind_hides_the_names_until_the_vote(
    browser: Browser, arena: tuple[str, str]  # noqa: F811
) -> None:
    url, _ = arena
    page = open_compare(browser, url, 1280, 1000)
    page.locator("#compare-blind input").check()
    send(page, "Reverse a string.")
    columns = page.locator("#compare-columns")
    expect(page.locator("#compare-votes")).to_be_visible(timeout=15_000)
    expect(columns).to_contain_text("hidden until your vote")
    for model in (FAST, SLOW):
        expect(columns).not_to_contain_text(model)
    page.locator("#vote-tie").click()
    expect(page.locator("#compare-notice")).to_contain_text("Your vote: Tie")
    for model in (FAST, SLOW):
        expect(columns).to_contain_text(model)
    expect(page.locator("#compare-votes")).to_be_hidden()


def test_on_a_phone_the_columns_stack_and_the_votes_and_message_box_are_reachable(
    browser: Browser, arena: tuple[str, str]  # noqa: F811
) -> None:
    url, _ = arena
    width, height = 390, 844
    page = open_compare(browser, url, width, height)
    for part in ("#compare-message textarea", "#compare-send"):
        in_view(page, part, width, height)
    send(page, "Reverse a string.")
    expect(page.locator("#compare-votes")).to_be_visible(timeout=15_000)
    left, right = (page.locator(f"#compare-{side}").bounding_box() for side in ("left", "right"))
    assert left is not None
    assert right is not None
    assert right["y"] >= left["y"] + left["height"], "stacked, the right side under the left"
    for column in (left, right):
        assert column["x"] >= 0
        assert column["x"] + column["width"] <= width
    for side in ("left", "right"):
        expect(page.locator(f"#compare-{side}")).to_contain_text("tokens/s")
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    for part in ("#compare-message textarea", "#compare-send"):
        in_view(page, part, width, height)
    page.locator("#vote-both-bad").scroll_into_view_if_needed()
    for outcome in ("left", "right", "tie", "both-bad"):
        in_view(page, f"#vote-{outcome}", width, height)
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-compare-390.png"))
    page.locator("#vote-both-bad").click()
    expect(page.locator("#compare-notice")).to_contain_text("Your vote: Both bad")


def test_stop_stops_both_replies(
    browser: Browser, arena: tuple[str, str], fake: FakeBackend, slow: FakeBackend  # noqa: F811
) -> None:
    fake.tokens = slow.tokens = [f"w{i} " for i in range(400)]
    fake.token_delay = 0.05
    url, _ = arena
    page = open_compare(browser, url, 1280, 1000)
    left, right = page.locator("#compare-left"), page.locator("#compare-right")
    send(page, "Write a long one.")
    expect(left).to_contain_text("w3", timeout=15_000)
    expect(right).to_contain_text("w3", timeout=15_000)
    page.locator("#compare-stop").click()
    expect(left).to_contain_text("stopped", timeout=15_000)
    expect(right).to_contain_text("stopped", timeout=15_000)
    wait_for(lambda: (fake.cancelled, slow.cancelled) == (1, 1))


def test_one_side_failing_mid_stream_leaves_the_other_whole_and_says_which_failed(
    browser: Browser, arena: tuple[str, str], slow: FakeBackend  # noqa: F811
) -> None:
    slow.mode = "die_mid_stream"  # the right side's backend drops its stream at its third token
    url, database_url = arena
    page = open_compare(browser, url, 1280, 1000)
    left, right = page.locator("#compare-left"), page.locator("#compare-right")
    send(page, "Reverse a string.")
    expect(right).to_contain_text(
        "Failed: The stream from 'vllm' at http://127.0.0.1:", timeout=15_000)
    expect(right).to_contain_text("broke before the reply was finished")
    expect(right).to_contain_text("2 tokens")
    expect(right).to_contain_text("interrupted")
    expect(right).to_contain_text("w0 w1")
    expect(right).not_to_contain_text("w2")
    expect(left).to_contain_text("w39", timeout=15_000)
    expect(left).to_contain_text("finished")
    expect(left).not_to_contain_text("Failed")
    # The vote follows: the comparison is stored, the fast side whole.
    expect(page.locator("#compare-votes")).to_be_visible(timeout=15_000)
    [compared] = stored(database_url)
    assert compared.outcome is None
    page.locator("#vote-left").click()
    expect(page.locator("#compare-notice")).to_contain_text("Your vote: Left better")
    assert stored(database_url)[0].outcome == "left"
    page.locator("#compare-keep-left").click()
    expect(page.locator("#chat .message.bot").last).to_contain_text("w0 w1 w2 w3")
    expect(page.locator("#chat .message.bot").last).to_contain_text("w39")


def board_votes(page: Page, model: str) -> Locator:
    """The Votes cell of ``model``'s row of the board."""
    row = page.locator("#compare-board tbody tr").filter(has_text=model)
    return row.locator("td").nth(2)


def test_the_board_of_all_users_where_the_operator_allows_it(
    browser: Browser, start_arena: Callable[..., tuple[str, str]]  # noqa: F811
) -> None:
    url, database_url = start_arena(auth_mode="password", allow_shared_board=True)
    store = Store(database_url)
    try:
        accounts = Accounts(store)
        accounts.signup("alice", "correct horse")
        accounts.signup("bob", "battery staple")
    finally:
        store.engine.dispose()
    pages = {}
    for name, password, vote in (("alice", "correct horse", "left"),
                                 ("bob", "battery staple", "right")):
        page = pages[name] = open_compare(browser, url, 1280, 1000, (name, password))
        send(page, "Reverse a string.")
        expect(page.locator("#compare-votes")).to_be_visible(timeout=15_000)
        page.locator(f"#vote-{vote}").click()
        expect(page.locator("#compare-notice")).to_contain_text("Your vote:")
    # Each sees their own vote alone, and both with "All users' votes".
    for name, best in (("alice", FAST), ("bob", SLOW)):
        page = pages[name]
        page.locator("#compare-board-panel").get_by_text("Board").click()
        rows = page.locator("#compare-board tbody tr")
        expect(rows.first).to_contain_text(best)
        for model in (FAST, SLOW):
            expect(board_votes(page, model)).to_have_text("1")
        page.locator("#compare-everyone input").check()
        for model in (FAST, SLOW):
            expect(board_votes(page, model)).to_have_text("2")
        page.locator("#compare-everyone input").uncheck()
        expect(rows.first).to_contain_text(best)
        expect(board_votes(page, FAST)).to_have_text("1")


def test_without_the_shared_board_there_is_no_toggle(
    browser: Browser, arena: tuple[str, str]  # noqa: F811
) -> None:
    url, _ = arena
    page = open_compare(browser, url, 1280, 1000)
    page.locator("#compare-board-panel").get_by_text("Board").click()
    expect(page.locator("#compare-board")).to_contain_text("No comparisons yet")
    expect(page.locator("#compare-everyone")).to_have_count(0)
    expect(page.get_by_text("All users' votes")).to_have_count(0)


def code_reply(body: str) -> list[str]:
    """A reply, in tokens, whose Python code is ``add`` returning ``body``."""
    return ["Here:\n\n", "```python\n", "def add(a, b):\n", f"    return {body}\n", "```\n"]


def test_check_both_runs_the_same_tests_on_both_answers_and_shows_each_result(
    browser: Browser, start_arena: Callable[..., tuple[str, str]],  # noqa: F811
    fake: FakeBackend, slow: FakeBackend,
) -> None:
    """The fast model's code passes the user's tests, the slow one's fails one: each column
    shows its badge and the failing test's values; the notice says which passed; the vote
    follows."""
    url, database_url = start_arena(snippet_runs="on")
    fake.tokens, slow.tokens = code_reply("a + b"), code_reply("a - b")
    page = open_compare(browser, url, 1280, 1100)
    send(page, "Write add(a, b).")
    check = page.locator("#compare-check")
    expect(check).to_be_visible(timeout=15_000)
    check.click()
    expect(page.locator("#compare-notice")).to_contain_text(NO_TESTS)
    page.locator("#compare-check-fold").get_by_text("Tests for Check both").click()
    page.locator("#compare-tests textarea").fill("assert add(2, 2) == 4\nassert add(1, 0) == 1")
    check.click()
    left, right = (page.locator(f"#compare-check-{side}") for side in ("left", "right"))
    expect(left.locator(".check-badge")).to_have_text("2/2 tests pass", timeout=15_000)
    expect(left.locator(".check-pass").first).to_be_visible()
    expect(right.locator(".check-badge")).to_have_text("1 of 2 fails")
    expect(right).to_contain_text("assert add(2, 2) == 4 → add(2, 2) is 0, expected 4")
    for column in (left, right):
        expect(column).to_contain_text("against your tests")
    expect(page.locator("#compare-notice")).to_contain_text(
        "Tests: left 2/2 tests pass; right 1 of 2 fails. Only the left answer passes the tests.")
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "browser-compare-check.png"), full_page=True)
    page.locator("#vote-left").click()
    expect(page.locator("#compare-notice")).to_contain_text("Your vote: Left better")
    assert stored(database_url)[0].outcome == "left"
    # Each check is kept with its reply: the chat shows the badge once it goes on with it.
    page.locator("#compare-keep-right").click()
    expect(page.locator("#chat .message.bot").last.locator(".check-badge").first).to_have_text(
        "1 of 2 fails")


def test_without_runs_there_is_no_check_both_and_the_tab_says_why(
    browser: Browser, start_arena: Callable[..., tuple[str, str]]  # noqa: F811
) -> None:
    url, _ = start_arena(snippet_runs="off")
    page = open_compare(browser, url, 1280, 1000)
    expect(page.locator("#compare-check-off")).to_have_text(CHECK_OFF)
    assert "SNIPPET_RUNS" in CHECK_OFF
    send(page, "Write add(a, b).")
    expect(page.locator("#compare-votes")).to_be_visible(timeout=15_000)
    expect(page.locator("#compare-check")).to_have_count(0)
    expect(page.locator("#compare-tests")).to_have_count(0)
