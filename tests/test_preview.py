"""The previews of code (app/preview.py, app/ui/preview.py): the documents /preview/{id} answers
and their policy, unknown ids, the bounds, and who may make one, on the real app served on a
loopback port. What the browser does with the policy is in tests/test_preview_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest

from app.chat import ChatService
from app.chat.guard import Guard
from app.downloader.npm import MERMAID
from app.preview import NO_MERMAID, Previews, install_preview, preview_kind
from app.server import create_app, open_store
from app.store import Accounts
from app.ui import PlaygroundUI
from tests.conftest import settings_for
from tests.servers import ServerThread

PAGE = "<!doctype html><title>t</title><p id=x>hi</p><script>x.textContent='ran'</script>"
SVG = '<svg xmlns="http://www.w3.org/2000/svg"><text>drawn</text></svg>'


@contextmanager
def serving(
    backend: ServerThread, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Iterator[tuple[str, Previews]]:
    """The app's URL and the previews it serves."""
    made: list[Previews] = []

    def kept(app: Any, previews: Previews) -> None:
        made.append(previews)
        install_preview(app, previews)

    monkeypatch.setattr("app.server.install_preview", kept)
    with ServerThread(create_app(settings_for(backend.url, **overrides))) as server:
        yield server.url, made[0]


@pytest.fixture
def served(
    backend: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Previews]]:
    with serving(backend, monkeypatch) as running:
        yield running


def policy_of(response: httpx.Response) -> dict[str, str]:
    directives = (part.strip().split(" ", 1) for part in
                  response.headers["content-security-policy"].split(";"))
    return {name: value for name, value in directives}


def test_html_is_served_as_it_is_sandboxed_and_cut_off_from_the_network(
    served: tuple[str, Previews],
) -> None:
    url, previews = served
    preview = previews.add(1, "html", PAGE)
    page = httpx.get(f"{url}/preview/{preview.id}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text == PAGE
    policy = policy_of(page)
    assert policy["sandbox"] == "allow-scripts", "an opaque origin, even opened alone in a tab"
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'none'"
    assert policy["script-src"] == "'unsafe-inline'", "its own scripts, nothing fetched"
    assert policy["img-src"] == "data: blob:"
    assert policy["form-action"] == "'none'"
    assert policy["frame-ancestors"] == "'self'", "framed by the app alone"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"


def test_svg_is_wrapped_in_an_html_document(served: tuple[str, Previews]) -> None:
    url, previews = served
    page = httpx.get(f"{url}/preview/{previews.add(1, 'svg', SVG).id}")
    assert page.headers["content-type"].startswith("text/html"), "never image/svg+xml"
    assert page.text.startswith("<!doctype html>")
    assert SVG in page.text
    assert policy_of(page)["sandbox"] == "allow-scripts"


def test_mermaid_runs_only_the_apps_own_library(served: tuple[str, Previews]) -> None:
    if not MERMAID.path.is_file():
        pytest.fail("scripts/test fetches the library: python -m app.downloader mermaid")
    url, previews = served
    page = httpx.get(f"{url}/preview/{previews.add(1, 'mermaid', 'graph TD; A-->B<b>').id}")
    assert page.status_code == 200
    assert "A--&gt;B&lt;b&gt;" in page.text, "the diagram's text, escaped"
    nonces = set(re.findall(r'<script nonce="([^"]+)"', page.text))
    [nonce] = nonces
    assert policy_of(page)["script-src"] == f"'nonce-{nonce}'", "no inline script of the code"
    assert f'src="{MERMAID.filename}"' in page.text
    library = httpx.get(f"{url}/preview/{MERMAID.filename}")
    assert library.status_code == 200
    assert library.headers["content-type"].startswith("text/javascript")
    assert "immutable" in library.headers["cache-control"]
    assert len(library.content) == MERMAID.path.stat().st_size


def test_without_the_library_mermaid_says_how_to_install_it(
    served: tuple[str, Previews], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("app.downloader.npm.VENDOR", tmp_path / "empty")
    url, previews = served
    page = httpx.get(f"{url}/preview/{previews.add(1, 'mermaid', 'graph TD; A-->B').id}")
    assert page.status_code == 503
    assert "python -m app.downloader mermaid" in page.text
    assert NO_MERMAID.split(":")[0] in page.text
    assert httpx.get(f"{url}/preview/{MERMAID.filename}").status_code == 404


def test_an_unknown_id_is_404_and_ids_are_unguessable(served: tuple[str, Previews]) -> None:
    url, previews = served
    ids = {previews.add(1, "html", PAGE).id for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{43}", i) for i in ids), "256 random bits each"
    gone = httpx.get(f"{url}/preview/{'A' * 43}")
    assert gone.status_code == 404
    assert "Press Preview again" in gone.text
    assert policy_of(gone)["script-src"] == "'none'"


def test_with_accounts_the_frame_needs_no_cookie_the_id_is_the_key(
    backend: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serving(backend, monkeypatch, auth_mode="password") as (url, previews):
        signed_out = httpx.get(f"{url}/config")
        page = httpx.get(f"{url}/preview/{previews.add(1, 'html', PAGE).id}")
    assert signed_out.status_code == 401, "the page itself asks for a sign-in"
    assert page.status_code == 200
    assert page.text == PAGE


def test_each_user_keeps_the_latest_previews_and_all_of_them_a_total() -> None:
    previews = Previews(max_bytes=100, per_user=3, total_bytes=250)
    alice = [previews.add(1, "html", "a" * 50) for _ in range(4)]
    bob = previews.add(2, "html", "b" * 50)
    assert previews.get(alice[0].id) is None, "Alice's oldest, past her 3"
    assert all(previews.get(p.id) for p in [*alice[1:], bob]), "Bob's is not hers to push out"
    carol = [previews.add(3, "html", "c" * 50) for _ in range(2)]
    assert previews.get(alice[1].id) is None, "past 250 bytes in all: the oldest went"
    assert all(previews.get(p.id) for p in [*alice[2:], bob, *carol])


@pytest.mark.parametrize(
    ("language", "code", "kind"),
    [
        ("html", "<p>", "html"), ("HTM", "<p>", "html"), ("svg", "<svg/>", "svg"),
        ("xml", '<?xml version="1.0"?>\n<svg/>', "svg"), ("xml", "<note/>", None),
        ("text", "  <svg viewBox='0 0 1 1'/>", "svg"), ("mermaid", "graph TD", "mermaid"),
        ("mmd", "graph TD", "mermaid"), ("python", "<svg/>", None), ("javascript", "", None),
    ],
)
def test_what_can_be_previewed(language: str, code: str, kind: str | None) -> None:
    assert preview_kind(language, code) == kind


def ui_for(url: str, **overrides: Any) -> PlaygroundUI:
    settings = settings_for(url, **overrides)
    store = open_store(settings)
    return PlaygroundUI(ChatService(settings), store, Guard(settings, store))


async def test_the_panel_shows_the_preview_in_a_sandboxed_frame(backend: ServerThread) -> None:
    ui = ui_for(backend.url)
    column, frame = await ui.preview.show(None, "svg", SVG)
    assert column["visible"] is True
    [preview_id] = re.findall(r'<iframe sandbox="allow-scripts" src="preview/([^"]+)"', frame)
    assert ui.previews.get(preview_id) is not None
    assert f'href="preview/{preview_id}" target="_blank" rel="noopener noreferrer"' in frame


async def test_too_long_or_not_previewable_code_is_refused_with_what_to_do(
    backend: ServerThread,
) -> None:
    ui = ui_for(backend.url, preview_max_bytes=2048)
    with pytest.raises(gr.Error, match=r"at most 2 KiB \(PREVIEW_MAX_BYTES\)"):
        await ui.preview.show(None, "html", "é" * 1100)
    with pytest.raises(gr.Error, match="Only HTML, SVG and Mermaid code"):
        await ui.preview.show(None, "python", "print(1)")


async def test_only_a_signed_in_user_makes_previews(backend: ServerThread) -> None:
    ui = ui_for(backend.url, auth_mode="password")
    with pytest.raises(gr.Error, match="Sign in first"):
        await ui.preview.show(None, "html", PAGE)
    accounts = Accounts(ui.store)
    alice = accounts.signup("alice", "correct horse")
    request = gr.Request(username="alice")
    _, frame = await ui.preview.show(request, "html", PAGE)
    [preview_id] = re.findall(r'src="preview/([^"]+)"', frame)
    preview = ui.previews.get(preview_id)
    assert preview is not None
    assert preview.owner == alice
