"""The real thing: ``python -m app --engine`` with llama.cpp and the default model, driven
through the app's own Gradio API as a browser would."""

from __future__ import annotations

import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from gradio_client import Client

from tests.conftest import RunningApp, answers

pytestmark = pytest.mark.engine

# max_new_tokens, temperature, top_p, top_k, repetition_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (160, 0.0, 0.95, 40, 1.1, 0.0, 0.0, "", 1)


def chat(url: str, prompt: str) -> list[str]:
    """Send one message through the app's Gradio API; return the reply after each update."""
    job = Client(url, verbose=False).submit(prompt, None, "", "", "", *CONTROLS, api_name="/chat")
    replies = [out[0][-1]["content"][0]["text"] for out in job if len(out[0]) > 1]
    final = job.result()[0][-1]["content"][0]["text"]
    return [*replies, final]


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


def test_two_users_at_once_both_get_whole_replies(running_app: RunningApp) -> None:
    prompts = ["Write a Bash loop that prints 1 to 5.", "Write a SQL query counting rows in t."]
    with ThreadPoolExecutor(2) as pool:
        finals = [r[-1] for r in pool.map(lambda p: chat(running_app.url, p), prompts)]
    for final in finals:
        assert "interrupted" not in final
        assert "finished" in final or "cut at the token limit" in final


def test_ctrl_c_stops_the_app_and_the_engine(running_app: RunningApp) -> None:
    assert answers(f"{running_app.engine_url}/v1/models")
    running_app.process.send_signal(signal.SIGINT)
    assert running_app.process.wait(timeout=30) == 0
    assert not answers(f"{running_app.engine_url}/v1/models")
    leftover = subprocess.run(
        ["pgrep", "-f", f"--port {running_app.engine_url.rsplit(':', 1)[1]}"],
        capture_output=True, check=False,
    )
    assert leftover.stdout == b"", "no engine process is left behind"
