"""The embedded engine: llama.cpp's own server, ``llama-server``, as a child process.

It serves ``ENGINE_PARALLEL`` requests at once (its slots, ``-np``, batched together), each with
a context of ``ENGINE_CONTEXT_TOKENS`` (``-c`` is the whole KV cache, which llama.cpp shares out
evenly among the slots: ``src/llama-context.cpp``); a request beyond the slots waits in the
server's own queue, which the app tells the person waiting (``app.backends.router``). It dies
with the app (``PR_SET_PDEATHSIG``, SIGKILL), so an app killed hard leaves no engine behind,
and it is started again when it dies while the app runs, a few times a minute at most.
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from app.settings import Settings

PR_SET_PDEATHSIG = 1
# An engine that dies this many times within RESTART_WINDOW seconds is not started again.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
# Seconds between an engine's death and its next start.
RESTART_DELAY = 1.0

log = logging.getLogger(__name__)


class EngineError(Exception):
    """The embedded engine cannot start; the message says what to do."""


def engine_command(settings: Settings, binary: str) -> list[str]:
    slots = settings.engine_slots
    return [
        binary,
        "--model", str(settings.engine_model_path),
        "--host", settings.engine_host,
        "--port", str(settings.engine_port),
        "--parallel", str(slots),
        "--ctx-size", str(slots * settings.engine_slot_context),
        "--alias", settings.engine_model_path.stem,
        "--metrics",
        "--no-webui",
        *(["--threads", str(settings.engine_threads)] if settings.engine_threads else []),
    ]


def _die_with_parent() -> None:
    """In the child, before it runs the engine: no signal blocked (the mask of the thread that
    forks is inherited; with SIGTERM blocked the engine heeds no request to stop), and killed
    outright when that thread ends, however the app ended (it has nothing to save)."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _binary(settings: Settings) -> str:
    """The llama-server to run; raises ``EngineError`` when there is none."""
    found = shutil.which(settings.engine_server)
    if found is None:
        raise EngineError(
            f"No llama-server at {settings.engine_server!r} (ENGINE_SERVER). scripts/run builds "
            "it and sets ENGINE_SERVER for you; or point ENGINE_SERVER at a llama-server binary."
        )
    return found


def _check_can_start(settings: Settings) -> str:
    binary = _binary(settings)
    if not settings.engine_model_path.is_file():
        raise EngineError(
            f"No model at {settings.engine_model_path} (ENGINE_MODEL_PATH). Fetch the default "
            "model with `python -m app.downloader`, or point ENGINE_MODEL_PATH at a GGUF file."
        )
    try:
        httpx.get(f"{settings.engine_url}/health", timeout=1.0)
    except httpx.TransportError:
        return binary
    raise EngineError(
        f"Something already answers at {settings.engine_url}. Stop it, or set ENGINE_PORT to a "
        "free port."
    )


def _tail(log_path: Path) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])


class Engine:
    """One llama-server, started again each time it dies until ``stop()``."""

    def __init__(self, settings: Settings, binary: str, log_path: Path) -> None:
        self.settings = settings
        self.command = engine_command(settings, binary)
        self.log_path = log_path
        self._deaths: deque[float] = deque(maxlen=MAX_RESTARTS)
        self._last_code: int | None = None
        self._gave_up = False
        self._stopping = threading.Event()
        self.process = self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="engine-watcher", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as out:
            return subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )

    def wait_healthy(self) -> None:
        """Wait until the engine has loaded its model (``/health`` answers 200, 503 while it
        loads: ``tools/server/server-http.cpp``); then watch it."""
        settings = self.settings
        deadline = time.monotonic() + settings.engine_start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(
                    f"The engine exited with code {self.process.returncode} while starting. "
                    f"Last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                if httpx.get(f"{settings.engine_url}/health", timeout=1.0).status_code == 200:
                    self._watcher.start()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise EngineError(
            f"The engine did not answer at {settings.engine_url} within "
            f"{settings.engine_start_timeout:g} s (ENGINE_START_TIMEOUT); see {self.log_path}."
        )

    def _watch(self) -> None:
        while True:
            code = self.process.wait()
            if self._stopping.is_set():
                return
            self._deaths.append(time.monotonic())
            self._last_code = code
            if (len(self._deaths) == MAX_RESTARTS
                    and self._deaths[-1] - self._deaths[0] < RESTART_WINDOW):
                self._gave_up = True
                log.error(
                    "The embedded engine died %d times within %g s (last exit code %s); it is "
                    "not started again. Its log, %s, says why; restart the app when it is "
                    "fixed.", MAX_RESTARTS, RESTART_WINDOW, code, self.log_path,
                )
                return
            log.warning("The embedded engine exited with code %s; starting it again (see %s)",
                        code, self.log_path)
            if self._stopping.wait(RESTART_DELAY):
                return
            self.process = self._spawn()

    def explain(self) -> str | None:
        """What a request to the engine that failed should add, when the engine has died
        lately (or is dying now): that it is being started again, or that it is not."""
        if self._gave_up:
            return (f"The embedded engine died {MAX_RESTARTS} times within a minute and is not "
                    f"started again; its log, {self.log_path}, says why. Restart the app once "
                    "that is fixed.")
        died = self._deaths[-1] if self._deaths else None
        if (died is None or time.monotonic() - died > RESTART_WINDOW) and not _gone(
                self.process.pid):
            return None
        code = self._last_code
        how = "" if code is None else f" (killed by signal {-code})" if code < 0 else (
            f" (exit code {code})")
        return (f"The embedded engine stopped{how} and is being started again: send your "
                "message again in a moment.")

    def stop(self) -> None:
        self._stopping.set()
        _end(self.process)
        if self._watcher.is_alive():
            self._watcher.join()
        _end(self.process)  # one the watcher started as it was told to stop


def _gone(pid: int) -> bool:
    """Whether the process has ended (a zombie not reaped yet included): the watcher may not
    have heard of it yet when a request to it fails."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def embedded_engine(settings: Settings, log_path: Path) -> Iterator[Engine]:
    """Start the engine, wait until it has loaded its model, and stop it on exit."""
    binary = _check_can_start(settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"")
    started = time.monotonic()
    engine = Engine(settings, binary, log_path)
    try:
        engine.wait_healthy()
        print(
            f"Engine ready at {settings.engine_url} in {time.monotonic() - started:.1f} s, "
            f"{settings.engine_slots} requests at once (ENGINE_PARALLEL), "
            f"{settings.engine_slot_context} tokens each (log: {log_path})",
            flush=True,
        )
        yield engine
    finally:
        engine.stop()
