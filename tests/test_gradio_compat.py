"""What app/ui/gradio_compat.py relies on in Gradio: each test fails on an upgrade that changes
it, and says which piece of the module to look at.

- ``SkippingBlocks``: Gradio calls ``Blocks.postprocess_data(block_fn, predictions, state)``
  for an event's outputs; a skipped output is sent as ``{"__type__": "update"}``, a skipped
  ``gr.State`` as None; Gradio still rebuilds the component of a skipped output (the cost the
  class avoids).
- ``configure_queue``: the attributes it sets are the ones the queue, the thread limiter and
  the page-state holder read (checked by what they do, once the app has started), and the
  queue's record of events stays at one, without its summary, however many events run.
- ``oauth_profile``: a request whose session holds a current ``oauth_info`` gives the user, an
  expired or missing one gives None, and that is what a handler parameter typed
  ``gr.OAuthProfile | None`` gets from Gradio for the same request.
- ``page_root_url``: a queued event's request gives the page's URL, behind a proxy the one its
  ``X-Forwarded-*`` headers name, under a root path with it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import gradio as gr
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from gradio.state_holder import SessionState
from gradio_client import Client
from starlette.requests import Request

from app.ui.gradio_compat import (
    SkippingBlocks,
    configure_queue,
    oauth_profile,
    oauth_username,
    page_root_url,
)
from tests.servers import ServerThread

SKIPPED = {"__type__": "update"}


# -- SkippingBlocks ----------------------------------------------------------------------------


def test_postprocess_data_keeps_the_signature_skipping_blocks_overrides() -> None:
    method = gr.Blocks.postprocess_data
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == [
        "self", "block_fn", "predictions", "state"
    ], "Blocks.postprocess_data changed: SkippingBlocks in app/ui/gradio_compat.py overrides it"


def test_a_skipped_output_is_sent_as_a_bare_update() -> None:
    assert gr.skip() == SKIPPED, "SkippingBlocks sends dict(gr.skip()) for a skipped output"


def outputs_demo(blocks: type[gr.Blocks]) -> tuple[gr.Blocks, list[gr.components.Component]]:
    """A page whose one event has the kinds of outputs the app's reply handlers have."""
    with blocks() as demo:
        outputs = [
            gr.Chatbot(), gr.State(), gr.Textbox(), gr.Markdown(), gr.Radio(["a", "b"]),
        ]
        gr.Button().click(lambda: None, None, outputs)
    return demo, outputs


UPDATES: list[list[Any]] = [
    [gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()],
    [[{"role": "user", "content": "hi"}], None, "", "**b**", gr.update(choices=["a"])],
    [gr.skip(), gr.skip(), gr.skip(), "**only**", gr.skip()],
    [[{"role": "assistant", "content": "x"}], gr.skip(), gr.skip(), gr.skip(), gr.skip()],
    [gr.skip(), "kept", "text", gr.skip(), gr.update(value="a")],
    [gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.update(choices=["b"], value="b")],
]


@pytest.mark.parametrize("update", UPDATES)
async def test_skipping_blocks_sends_what_gradio_sends(update: list[Any]) -> None:
    demo, _ = outputs_demo(SkippingBlocks)
    block_fn = demo.fns[0]
    # Gradio changes the update dicts it is given: each call gets its own.
    ours = await demo.postprocess_data(block_fn, deepcopy(update), SessionState(demo))
    gradios = await gr.Blocks.postprocess_data(demo, block_fn, deepcopy(update), SessionState(demo))
    assert ours == gradios


async def test_gradio_still_rebuilds_a_skipped_output() -> None:
    """The cost SkippingBlocks avoids. If this fails, Gradio no longer rebuilds skipped
    outputs and SkippingBlocks may go."""
    demo, outputs = outputs_demo(gr.Blocks)
    textbox = outputs[2]
    state = SessionState(demo)
    update = [gr.skip(), gr.skip(), gr.skip(), "**shown**", gr.skip()]
    sent = await demo.postprocess_data(demo.fns[0], update, state)
    assert sent[2] == SKIPPED
    assert state[textbox._id] is not textbox, "a new Textbox for the session"

    demo, outputs = outputs_demo(SkippingBlocks)
    textbox = outputs[2]
    state = SessionState(demo)
    await demo.postprocess_data(demo.fns[0], update, state)
    assert state[textbox._id] is textbox, "SkippingBlocks rebuilt a skipped output"


@pytest.mark.parametrize("update", UPDATES)
async def test_an_answer_by_component_is_sent_as_the_same_answer_in_order(
    update: list[Any],
) -> None:
    """Handlers answer with a dict of the components they change (app/ui/chat.py): it is sent
    as the list of every output would be, the ones left out skipped (Gradio's
    convert_component_dict_to_list), without rebuilding them; an empty dict skips all."""
    demo, outputs = outputs_demo(SkippingBlocks)
    by_component = {out: deepcopy(value) for out, value in zip(outputs, update, strict=True)
                    if value != gr.skip()}
    state = SessionState(demo)
    as_dict = await demo.postprocess_data(demo.fns[0], by_component, state)
    as_list = await demo.postprocess_data(demo.fns[0], deepcopy(update), SessionState(demo))
    assert as_dict == as_list
    if outputs[2] not in by_component:
        assert state[outputs[2]._id] is outputs[2], "a skipped output was rebuilt"


@pytest.mark.parametrize("value", [
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    [{"role": "user", "content": "a"}],
    gr.update(placeholder="p"),
])
async def test_an_answer_by_component_of_an_event_with_one_output_is_its_value(
    value: Any,
) -> None:
    """With one output Gradio's convert_component_dict_to_list answers the value itself, not
    a list of one: a chat's messages (a list) are the value, whatever their number."""
    with SkippingBlocks() as demo:
        chatbot = gr.Chatbot()
        gr.Button().click(lambda: None, None, [chatbot])
    as_dict = await demo.postprocess_data(demo.fns[0], {chatbot: deepcopy(value)},
                                          SessionState(demo))
    as_value = await demo.postprocess_data(demo.fns[0], deepcopy(value), SessionState(demo))
    assert as_dict == as_value
    assert await demo.postprocess_data(demo.fns[0], {}, SessionState(demo)) == [SKIPPED]


async def test_an_event_goes_through_skipping_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio's own event path (process_api) calls the override."""
    calls: list[int] = []
    original = SkippingBlocks.postprocess_data

    async def counted(self: SkippingBlocks, block_fn: Any, predictions: Any, state: Any) -> Any:
        calls.append(1)
        return await original(self, block_fn, predictions, state)

    monkeypatch.setattr(SkippingBlocks, "postprocess_data", counted)
    with SkippingBlocks() as demo:
        outputs = [gr.Textbox(), gr.Markdown(), gr.State()]
        gr.Button().click(lambda: (gr.skip(), "x", gr.skip()), None, outputs)
    result = await demo.process_api(block_fn=0, inputs=[], state=SessionState(demo))
    assert calls == [1]
    assert result["data"] == [SKIPPED, "x", None]


# -- configure_queue ---------------------------------------------------------------------------


def test_the_queue_settings_reach_what_gradio_reads() -> None:
    with gr.Blocks() as demo:
        gr.Button().click(lambda: None)
    configure_queue(demo, concurrency=7, max_size=11, session_capacity=13)
    app = gr.mount_gradio_app(FastAPI(), demo, path="/")
    with TestClient(app):  # runs Gradio's startup: the queue's workers, the thread limiter
        queue = demo._queue
        assert len(queue.active_jobs) == 7, "events run at once, all events together"
        assert queue.default_concurrency_limit == 7, "events run at once, for each event"
        assert queue.max_size == 11
        assert demo.limiter is not None
        assert demo.limiter.total_tokens == 7, "threads at once"
        assert demo.state_holder.capacity == 13, "pages whose state is kept"


def test_the_queue_keeps_no_record_of_the_events_it_ran() -> None:
    """Gradio's default keeps the last 10,000 events (half a kilobyte each) and rebuilds a
    pandas table of them after each one; configure_queue turns both off."""
    with gr.Blocks() as demo:
        box = gr.Textbox()
        gr.Button().click(lambda text: f"{text}!", box, box, api_name="shout")
    configure_queue(demo, concurrency=2, max_size=None, session_capacity=5)
    app = gr.mount_gradio_app(FastAPI(), demo, path="/", enable_monitoring=False)
    with ServerThread(app) as server:
        client = Client(server.url, verbose=False)
        shouted = [client.predict(str(n), api_name="/shout") for n in range(6)]
        client.close()
    queue = demo._queue
    assert shouted == [f"{n}!" for n in range(6)]
    assert queue.events_recorded == 6, "the events went through the queue"
    assert len(queue.event_analytics) <= 1, "Gradio kept a record of every event"
    assert queue.cached_event_analytics_summary == {"functions": {}}, "the summary was built"


# -- oauth_profile -----------------------------------------------------------------------------


def oauth_info(username: str, expires_at: float) -> dict[str, Any]:
    """What Gradio's /login/callback stores in the session (gradio/oauth.py)."""
    return {
        "access_token": f"hf_oauth_{username}", "token_type": "bearer", "expires_in": 28800,
        "scope": "openid profile", "expires_at": int(expires_at),
        "userinfo": {
            "sub": f"id-{username}", "name": username.title(), "preferred_username": username,
            "profile": f"https://huggingface.co/{username}", "picture": "", "website": "",
        },
    }


def request_with(session: dict[str, Any] | None) -> gr.Request:
    """A request as the session middleware leaves it: the session in its scope."""
    scope: dict[str, Any] = {"type": "http", "headers": []}
    if session is not None:
        scope["session"] = session
    return gr.Request(Request(scope))


# Each a fresh session (Gradio drops an expired login from the session it reads) and who it is.
SESSIONS: dict[str, tuple[Callable[[], dict[str, Any] | None], str | None]] = {
    "signed in": (lambda: {"oauth_info": oauth_info("alice", time.time() + 3600)}, "alice"),
    "expired": (lambda: {"oauth_info": oauth_info("alice", time.time() - 1)}, None),
    "signed out": (lambda: {}, None),
    "no session middleware": (lambda: None, None),
}


@pytest.mark.parametrize("case", SESSIONS)
def test_the_oauth_user_comes_from_a_current_login(case: str) -> None:
    session, expected = SESSIONS[case]
    assert oauth_username(request_with(session())) == expected
    profile = oauth_profile(request_with(session()))
    assert (profile.username if profile else None) == expected


def test_no_request_is_no_user() -> None:
    assert oauth_profile(None) is None
    assert oauth_username(None) is None


@pytest.mark.parametrize("case", SESSIONS)
async def test_the_oauth_profile_is_what_a_gradio_handler_gets(case: str) -> None:
    session, _ = SESSIONS[case]
    given: list[gr.OAuthProfile | None] = []

    def handler(profile: gr.OAuthProfile | None) -> str:
        given.append(profile)
        return ""

    with gr.Blocks() as demo:
        gr.Button().click(handler, None, gr.Textbox())
    await demo.process_api(
        block_fn=0, inputs=[], state=SessionState(demo), request=request_with(session())
    )
    assert given == [oauth_profile(request_with(session()))]


# -- page_root_url -----------------------------------------------------------------------------


def queued_request(headers: dict[str, str], root_path: str = "") -> gr.Request:
    """A gr.Request as a queued event gets it: the page's POST to the queue's join route."""
    scope = {
        "type": "http", "method": "POST", "scheme": "http", "server": ("10.0.0.5", 7860),
        "root_path": root_path, "path": f"{root_path}/gradio_api/queue/join",
        "query_string": b"", "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    return gr.Request(request=Request(scope))


@pytest.mark.parametrize(("headers", "root_path", "expected"), [
    ({"host": "10.0.0.5:7860"}, "", "http://10.0.0.5:7860"),
    ({"host": "10.0.0.5:7860"}, "/playground", "http://10.0.0.5:7860/playground"),
    ({"host": "10.0.0.5:7860", "x-forwarded-host": "code.example",
      "x-forwarded-proto": "https"}, "", "https://code.example"),
])
def test_the_page_url_comes_from_the_queued_request(
    headers: dict[str, str], root_path: str, expected: str
) -> None:
    assert page_root_url(queued_request(headers, root_path)) == expected
