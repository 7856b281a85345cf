"""The real thing: ``python -m app --engine`` with llama.cpp and the default model, driven
through the app's own Gradio API as a browser would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from tests.conftest import REPO
from tests.servers import free_port

pytestmark = pytest.mark.engine

MODEL = REPO / "volumes/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# max_new_tokens, temperature, top_p, top_k, repeat_penalty, frequency, presence, stop, seed
CONTROLS: tuple[Any, ...] = (160, 0.0, 0.95, 40, 1.1, 0.0, 0.0, "", 1)


@dataclass
class RunningApp:
    process: subprocess.Popen[str]
    url: str
    engine_url: str


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def running_app(tmp_path: Path) -> Iterator[RunningApp]:
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing: scripts/test fetches it with python -m app.downloader")
    app_port, engine_port = free_port(), free_port()
    env = {
        **os.environ, "PYTHONPATH": str(REPO), "APP_PORT": str(app_port),
        "ENGINE_PORT": str(engine_port), "ENGINE_MODEL_PATH": str(MODEL),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--engine"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    running = RunningApp(process, f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{engine_port}")
    deadline = time.monotonic() + 120
    while not answers(f"{running.url}/healthz"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the app did not start:\n{process.communicate()[0]}")
        time.sleep(0.2)
    yield running
    if process.poll() is None:
        process.kill()
        process.wait()


def chat(url: str, prompt: str) -> list[str]:
    """Send one message through the app's Gradio API; return the reply after each update."""
    job = Client(url, verbose=False).submit(prompt, "", *CONTROLS, api_name="/chat")
    replies = [out[0][-1]["content"][0]["text"] for out in job if len(out[0]) > 1]
    final = job.result()[0][-1]["content"][0]["text"]
    return [*replies, final]


def test_a_coding_prompt_streams_a_real_answer(running_app: RunningApp) -> None:
    replies = chat(running_app.url, "Write a Python function that reverses a string.")
    final = replies[-1]
    assert len({r for r in replies}) > 2, "the reply arrived in more than one update"
    assert "def " in final
    assert "[::-1]" in final
    stats = final.rsplit("\n\n", 1)[-1]
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
