"""The real thing: ``python -m app --engine`` with llama.cpp's own server (``llama-server``, as
scripts/test builds it) and the default model, driven through the app's Gradio API as a browser
would and through its REST API as a client would.

Where llama-server's wire is not what another server sends, the app follows its source at the
pinned commit (the llama-cpp-python 0.3.36 sdist's ``vendor/llama.cpp``, 0c1e570); these tests
see it for real: ``GET /props`` for a slot's context and the slots
(``tools/server/server-context.cpp``, the ``props`` handler), ``/health`` answering 503 while
the model loads (``tools/server/server-http.cpp``), a request past a slot's context refused
with HTTP 400 ``exceed_context_size_error`` (``tools/server/server-common.cpp``), the
completions' log-probabilities as ``logprobs.content`` (``tools/server/server-task.cpp``), a
client that goes away freeing its slot (``tools/server/server-context.cpp``, the stream's
``is_connection_closed``), and ``owned_by: "llamacpp"`` in ``/v1/models``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from tests.conftest import RunningApp, answers

pytestmark = pytest.mark.engine

# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (160, 0.0, 0.95, 40, 1.1, 0.0, 0.0, "", 1)
LONG = "Write a long, detailed tutorial on Python's asyncio, with many code examples."


def chat(url: str, prompt: str) -> list[str]:
    """Send one message through the app's Gradio API; return the reply after each update."""
    job = Client(url, verbose=False).submit(prompt, None, "", "", "", *CONTROLS, api_name="/chat")
    replies = [out[0][-1]["content"][0]["text"] for out in job if len(out[0]) > 1]
    final = job.result()[0][-1]["content"][0]["text"]
    return [*replies, final]


def dialogue(url: str, message: str, max_new_tokens: int = 48,
             started: threading.Event | None = None) -> list[tuple[float, dict[str, Any]]]:
    """One message through the REST API, streamed: each event with the time it came.
    ``started`` is set at the first piece of text."""
    events = []
    body = {"message": message, "stream": True, "max_new_tokens": max_new_tokens,
            "temperature": 0.0}
    with httpx.stream("POST", f"{url}/api/v1/dialogue", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                sent = json.loads(line.removeprefix("data: "))
                events.append((time.monotonic(), sent))
                if "delta" in sent and started is not None:
                    started.set()
    return events


def first_text_at(events: list[tuple[float, dict[str, Any]]]) -> float:
    return next(at for at, sent in events if sent.get("delta"))


def done(events: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    last = events[-1][1]
    assert last.get("done"), last
    return last


def engine_pid(app: RunningApp) -> int:
    port = app.engine_url.rsplit(":", 1)[1]
    found = subprocess.run(["pgrep", "-f", f"llama-server.*--port {port}"], capture_output=True,
                           text=True, check=False).stdout.split()
    assert len(found) == 1, found
    return int(found[0])


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_coding_prompt_streams_a_real_answer(running_app: RunningApp) -> None:
    replies = chat(running_app.url, "Write a Python function that reverses a string.")
    final = replies[-1]
    assert len({r for r in replies}) > 2, "the reply arrived in more than one update"
    assert "def " in final
    assert "[::-1]" in final
    _, stats, actions = final.rsplit("\n\n", 2)
    assert "Check" in actions, "a reply with Python code ends with its Check link"
    assert "tokens/s" in stats
    assert "first token" in stats
    assert "finished" in stats or "cut at the token limit" in stats


def test_the_app_takes_the_engines_own_limits(start_app: Callable[..., RunningApp]) -> None:
    """The slots and the context of one slot come from llama-server (GET /props), not from
    CONTEXT_TOKENS."""
    app = start_app(ENGINE_PARALLEL="3", ENGINE_CONTEXT_TOKENS="1024")
    models = httpx.get(f"{app.url}/api/v1/models", timeout=10).json()
    assert (models["backend"], models["max_total_tokens"], models["max_input_tokens"]) == (
        "llama.cpp", 1024, 1023)
    assert models["version"] == httpx.get(f"{app.engine_url}/props", timeout=5).json()[
        "build_info"]
    props = httpx.get(f"{app.engine_url}/props", timeout=5).json()
    assert props["total_slots"] == 3


def test_four_users_at_once_are_answered_together(running_app: RunningApp) -> None:
    """Four people asking at once each see their reply begin before anyone's has ended: the
    engine's four slots (ENGINE_PARALLEL's default on 2 cores) serve them together, where the
    old engine answered one after the other; nobody is told to wait."""
    prompts = ["Write a Bash loop that prints 1 to 5.", "Write a SQL query counting rows in t.",
               "Write a Python class for a stack.", "Write a Go function adding two ints."]
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda p: dialogue(running_app.url, p, 96), prompts))
    first_end = min(events[-1][0] for events in runs)
    assert all(first_text_at(events) < first_end for events in runs)
    assert not any("waiting" in sent for events in runs for _, sent in events)
    for events in runs:
        end = done(events)
        assert end["error"] is None
        assert end["stats"]["finish"] in ("stop", "length")


def test_a_request_beyond_the_slots_is_told_it_waits(
    start_app: Callable[..., RunningApp],
) -> None:
    """With 2 slots and 3 people, the third is told before its first token that it waits for
    a slot, how many before it; then it is answered in full."""
    app = start_app(ENGINE_PARALLEL="2")
    started = [threading.Event(), threading.Event()]
    with ThreadPoolExecutor(3) as pool:
        busy = [pool.submit(dialogue, app.url, LONG, 200, started[i]) for i in range(2)]
        for event in started:
            assert event.wait(60)
        third = dialogue(app.url, "Write hello world in C.", 32)
        for run in busy:
            assert done(run.result())["error"] is None
    kinds = [next(iter(sent)) for _, sent in third]
    assert kinds[:2] == ["dialogue_id", "waiting"], kinds
    waiting = third[1][1]
    assert waiting["waiting"] == 0
    assert "Queued" in waiting["notice"]
    assert done(third)["error"] is None
    assert "".join(sent.get("delta", "") for _, sent in third)


def test_stop_frees_the_slot_for_the_next_person(start_app: Callable[..., RunningApp]) -> None:
    """With one slot: a reply stopped through the API frees it in the engine (its /slots shows
    none busy), and the next message starts at once, not queued behind the stopped one."""
    app = start_app(ENGINE_PARALLEL="1")
    started = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        long_run = pool.submit(dialogue, app.url, LONG, 2000, started)
        assert started.wait(60)
        dialogue_id = long_run_id(app)
        assert httpx.post(f"{app.url}/api/v1/dialogues/{dialogue_id}/stop",
                          timeout=30).status_code == 204
        assert done(long_run.result())["stats"]["finish"] == "stopped"
    wait_for(lambda: not any(slot["is_processing"] for slot in
                             httpx.get(f"{app.engine_url}/slots", timeout=5).json()),
             10, "the engine freed the stopped reply's slot")
    after = dialogue(app.url, "Write hello world in C.", 16)
    assert not any("waiting" in sent for _, sent in after)
    assert done(after)["error"] is None


def long_run_id(app: RunningApp) -> str:
    dialogues = httpx.get(f"{app.url}/api/v1/dialogues", timeout=10).json()
    return str(dialogues[0]["id"])


def test_a_killed_engine_is_started_again(start_app: Callable[..., RunningApp]) -> None:
    """The engine killed in the middle of a reply: that reply ends with a sentence saying the
    engine stopped and is being started again, the text so far kept; the app starts it again,
    and the next message is answered."""
    app = start_app()
    started = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        cut = pool.submit(dialogue, app.url, LONG, 2000, started)
        assert started.wait(60)
        killed = engine_pid(app)
        os.kill(killed, signal.SIGKILL)
        end = done(cut.result())
    # "(killed by signal 9)" follows "stopped" once the engine's watcher has heard of it.
    assert "The embedded engine stopped" in end["error"], end
    assert "is being started again: send your message again in a moment." in end["error"]
    assert end["stats"]["finish"] == "interrupted"
    wait_for(lambda: answers(f"{app.engine_url}/health"), 60, "the engine was started again")
    assert engine_pid(app) != killed
    assert "starting it again" in app.output()
    after = dialogue(app.url, "Write hello world in C.", 16)
    assert done(after)["error"] is None
    assert "".join(sent.get("delta", "") for _, sent in after)


def test_the_engine_dies_with_the_app_whatever_signals_it_was_started_with(
    start_app: Callable[..., RunningApp],
) -> None:
    """An app started by a thread that blocks SIGTERM (a thread's mask is inherited through
    fork and exec) and then killed outright leaves no engine behind: one run left such an
    engine running, its SIGTERM blocked, for the rest of the session."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        app = start_app()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    engine = engine_pid(app)
    app.process.kill()
    app.process.wait()
    wait_for(lambda: not Path(f"/proc/{engine}").exists()
             or "\nState:\tZ" in Path(f"/proc/{engine}/status").read_text(),
             10, "the engine ended with the app")


def test_a_message_past_the_context_is_refused_with_a_sentence(
    start_app: Callable[..., RunningApp],
) -> None:
    """A message longer than one slot's context (as the engine reports it) is refused before
    it reaches the engine, saying what to do; nothing is stored of it."""
    app = start_app(ENGINE_CONTEXT_TOKENS="512")
    message = "Explain this code:\n" + "x = compute(a, b, c) + other(d, e)\n" * 120
    refused = httpx.post(f"{app.url}/api/v1/dialogue",
                         json={"message": message, "max_new_tokens": 128}, timeout=60)
    assert refused.status_code in (400, 413, 422), refused.text
    said = refused.json()["error"]
    assert "more than the 384 this model has room for. Shorten the message" in said, said
    assert httpx.get(f"{app.url}/api/v1/dialogues", timeout=10).json() == []


def test_two_users_at_once_both_get_whole_replies(running_app: RunningApp) -> None:
    prompts = ["Write a Bash loop that prints 1 to 5.", "Write a SQL query counting rows in t."]
    with ThreadPoolExecutor(2) as pool:
        finals = [r[-1] for r in pool.map(lambda p: chat(running_app.url, p), prompts)]
    for final in finals:
        assert "interrupted" not in final
        assert "finished" in final or "cut at the token limit" in final


def test_ctrl_c_stops_the_app_and_the_engine(running_app: RunningApp) -> None:
    assert answers(f"{running_app.engine_url}/health")
    running_app.process.send_signal(signal.SIGINT)
    assert running_app.process.wait(timeout=30) == 0
    assert not answers(f"{running_app.engine_url}/health")
    leftover = subprocess.run(
        ["pgrep", "-f", f"--port {running_app.engine_url.rsplit(':', 1)[1]}"],
        capture_output=True, check=False,
    )
    assert leftover.stdout == b"", "no engine process is left behind"
