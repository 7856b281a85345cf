"""The raw-prompt mode (app/backends/raw.py, the page's Raw prompt tab) against the fake TGI
and the fake OpenAI-compatible server (tests/fake_backend.py), and the real llama.cpp
engine's /v1/completions."""

from __future__ import annotations

import re
from contextlib import aclosing
from typing import Any

import pytest

from app.backends import BackendClient, BackendError, GenerationParams
from app.backends.raw import RawToken, render_prompt, stream_raw
from app.chat import Chat, ChatService, Exchange, ReplyLog
from app.chat.guard import Guard
from app.chat.turns import Turns
from app.server import open_store
from app.ui.raw import RawRun, RawUI
from app.ui.render import token_html
from app.ui.users import PageUsers
from tests.conftest import ClientFor, RunningApp, settings_for
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread

PARAMS = GenerationParams(max_new_tokens=8, temperature=0.0)
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (8, 0.0, 0.95, 40, 1.1, 0.0, 0.0, "", -1)




async def raw_tokens(client: BackendClient, prompt: str) -> list[RawToken]:
    info = await client.probe()
    async with aclosing(stream_raw(client, info, prompt, PARAMS)) as stream:
        return [token async for token in stream]


async def test_tgi_renders_with_the_models_template(
    backend: ServerThread, client_for: ClientFor
) -> None:
    client = client_for(backend.url)
    rendered = await render_prompt(client, await client.probe(), MESSAGES)
    assert rendered.from_model
    assert rendered.text.startswith("<s><fake>system: be brief</fake>\n<fake>user: hi</fake>")


async def test_a_model_without_a_chat_template_falls_back_to_chatml_and_says_so(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    """TGI answers /chat_tokenize with 422 template_error (router/src/infer/mod.rs)."""
    fake.chat_template = False
    client = client_for(backend.url)
    rendered = await render_prompt(client, await client.probe(), MESSAGES)
    assert not rendered.from_model
    assert rendered.text.startswith("<|im_start|>system\nbe brief<|im_end|>")
    assert rendered.problem is not None
    assert "Template error: template not found" in rendered.problem


async def test_a_server_without_the_route_says_which_route_is_missing(
    backend: ServerThread, client_for: ClientFor
) -> None:
    """It read "answered HTTP 404: HTTP 404"."""
    info = await client_for(backend.url).probe()
    elsewhere = client_for(f"{backend.url}/elsewhere")
    with pytest.raises(BackendError) as raised:
        await render_prompt(elsewhere, info, MESSAGES)
    assert str(raised.value).endswith(
        "answered HTTP 404: it has no POST /elsewhere/chat_tokenize; check the backend's kind "
        "and URL"
    )


async def test_a_rendered_prompt_reaches_the_model_with_one_bos(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    """TGI adds the BOS to every /generate_stream input (router/src/lib.rs); the template
    wrote one already."""
    client = client_for(backend.url)
    rendered = await render_prompt(client, await client.probe(), MESSAGES)
    assert rendered.text.startswith("<s>")
    await raw_tokens(client, rendered.text)
    assert fake.inputs[-1].count(1) == 1, "one BOS (id 1) in what the model reads"
    await raw_tokens(client, "no BOS here")
    assert fake.requests[-1]["inputs"] == "no BOS here"


async def test_other_servers_get_generic_chatml(fake: FakeBackend, client_for: ClientFor) -> None:
    fake.kind = "openai"
    with ServerThread(fake.app()) as server:
        client = client_for(server.url)
        rendered = await render_prompt(client, await client.probe(), MESSAGES)
    assert not rendered.from_model
    assert rendered.text == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi"
                             "<|im_end|>\n<|im_start|>assistant\n")


async def test_tgi_streams_each_token_with_its_logprob(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    tokens = await raw_tokens(client_for(backend.url), "<fake>user: hi</fake>")
    assert [t.text for t in tokens] == ["Hello", ",", " world", "!", "</s>"]
    assert [t.logprob for t in tokens][:4] == [-0.1, -1.6, -3.1, -4.6]
    assert [t.special for t in tokens] == [False] * 4 + [True]
    assert tokens[-1].finish_reason == "eos_token"
    sent = fake.requests[-1]
    assert sent["inputs"] == "<fake>user: hi</fake>"
    assert sent["parameters"]["details"] is True


async def test_greedy_raw_generation_sends_no_sampling_knob(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    """A top_p or top_k turns TGI's sampling back on (utils/tokens.py); the page's hidden
    top-k slider was sent to TGI all the same."""
    client = client_for(backend.url)
    params = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=0.95, top_k=40)
    async with aclosing(stream_raw(client, await client.probe(), "x", params)) as stream:
        [token async for token in stream]
    assert fake.generated[-1]["do_sample"] is False
    assert fake.generated[-1]["top_k"] is None


async def test_openai_servers_stream_completions_with_logprobs(
    fake: FakeBackend, client_for: ClientFor
) -> None:
    fake.kind = "openai"
    with ServerThread(fake.app()) as server:
        tokens = await raw_tokens(client_for(server.url), "def f():")
    assert [(t.text, t.logprob) for t in tokens] == [
        ("Hello", -0.1), (",", -1.6), (" world", -3.1), ("!", -4.6)
    ], "vLLM's chunks carry two tokens each here: each keeps its own log-probability"
    assert tokens[-1].finish_reason == "stop"
    assert fake.requests[-1]["prompt"] == "def f():"
    assert fake.requests[-1]["logprobs"] == 1


async def test_an_error_event_in_the_raw_stream_has_its_message(
    fake: FakeBackend, backend: ServerThread, client_for: ClientFor
) -> None:
    fake.mode = "generation_error"
    with pytest.raises(BackendError, match="The model failed while generating"):
        await raw_tokens(client_for(backend.url), "x")


def test_tokens_are_coloured_by_probability_and_shown_as_text() -> None:
    html = token_html([RawToken("<b>", -0.01), RawToken("x", -5.0), RawToken("</s>", None,
                                                                          special=True)])
    hues = [int(h) for h in re.findall(r"hsl\((\d+),", html)]
    assert hues[0] > 110, "likely: green"
    assert hues[1] < 5, "unlikely: red"
    assert "&lt;b&gt;" in html
    assert "<b>" not in html
    assert 'title="logprob -5.000 · p 0.01"' in html
    assert "font-style:italic" in html


async def test_the_raw_tab_renders_the_conversation_then_streams_coloured_tokens(
    backend: ServerThread,
) -> None:
    settings = settings_for(backend.url)
    service = ChatService(settings)
    store = open_store(settings)
    users = PageUsers(settings, store)
    raw = RawUI(service, Turns(service, Guard(settings, store)), users)
    chat = Chat(exchanges=[Exchange(user="first", log=ReplyLog("ok"), done=True)])
    prompt, note = await raw.render(None, None, chat, "sys", "python", "second")
    assert "<fake>user: first</fake>\n<fake>assistant: ok</fake>\n<fake>user: second" in prompt
    assert "own chat template" in note
    updates = [u async for u in raw.generate(None, None, prompt, RawRun(), *CONTROLS)]
    html, stats = updates[-1]
    assert html.count('class="tok"') == 5
    assert "5 tokens" in stats
    assert "finished" in stats
    await service.aclose()


@pytest.mark.engine
async def test_the_real_engine_streams_completions_with_logprobs(
    running_app: RunningApp, client_for: ClientFor
) -> None:
    tokens = await raw_tokens(
        client_for(running_app.engine_url),
        "<|im_start|>user\nWrite hello world in Python.<|im_end|>\n<|im_start|>assistant\n",
    )
    texts = [t for t in tokens if t.text]
    assert len(texts) >= 2
    assert all(t.logprob is not None and t.logprob <= 0 for t in texts)
    assert tokens[-1].finish_reason in ("length", "stop")
