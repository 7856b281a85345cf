"""The embedded engine: llama-cpp-python's OpenAI-compatible server as a child process.

It is started with ``--interrupt_requests False`` so that a second user's request waits for the
first instead of cutting its stream off, and it dies with the app (``PR_SET_PDEATHSIG``), so an
app killed hard leaves no engine behind.
"""

from __future__ import annotations

import ctypes
import importlib.util
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.settings import Settings

PR_SET_PDEATHSIG = 1


class EngineError(Exception):
    """The embedded engine cannot start; the message says what to do."""


def engine_command(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(settings.engine_model_path),
        "--host", settings.engine_host,
        "--port", str(settings.engine_port),
        "--n_ctx", str(settings.context_tokens),
        "--model_alias", settings.engine_model_path.stem,
        "--interrupt_requests", "False",
    ]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _check_can_start(settings: Settings) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise EngineError(
            "The embedded engine is not installed. Install it with `pip install "
            "--require-hashes -r requirements.txt -r requirements-engine.txt` (scripts/run "
            "does this for you)."
        )
    if not settings.engine_model_path.is_file():
        raise EngineError(
            f"No model at {settings.engine_model_path} (ENGINE_MODEL_PATH). Fetch the default "
            "model with `python -m app.downloader`, or point ENGINE_MODEL_PATH at a GGUF file."
        )
    try:
        httpx.get(f"{settings.engine_url}/v1/models", timeout=1.0)
    except httpx.TransportError:
        return
    raise EngineError(
        f"Something already answers at {settings.engine_url}. Stop it, or set ENGINE_PORT to a "
        "free port."
    )


def _wait_healthy(settings: Settings, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + settings.engine_start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise EngineError(
                f"The engine exited with code {process.returncode} while starting. "
                f"Last lines of {log}:\n{tail}"
            )
        try:
            if httpx.get(f"{settings.engine_url}/v1/models", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise EngineError(
        f"The engine did not answer at {settings.engine_url} within "
        f"{settings.engine_start_timeout:g} s (ENGINE_START_TIMEOUT); see {log}."
    )


@contextmanager
def embedded_engine(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start the engine, wait until it answers, and stop it on exit."""
    _check_can_start(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            engine_command(settings), stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        _wait_healthy(settings, process, log)
        print(
            f"Engine ready at {settings.engine_url} in {time.monotonic() - started:.1f} s "
            f"(log: {log})",
            flush=True,
        )
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
