from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pytest

from app.backends import BackendClient
from app.chat import ChatService
from app.settings import Settings, load_settings
from app.store import Store
from tests.docker_engine import DockerEngine, read_env_file
from tests.fake_backend import FakeBackend
from tests.postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.servers import ServerThread, free_port

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"
MODEL = REPO / "volumes/models/SmolLM2-135M-Instruct.Q4_1.gguf"
# The engine scripts/test built (it sets ENGINE_SERVER), read before ``isolated_env`` clears the
# settings from the environment.
ENGINE_SERVER = os.environ.get("ENGINE_SERVER", "llama-server")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the shell or a ./.env file; each test starts from defaults."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    for name in list(os.environ):
        if name.startswith(("HF_", "GRADIO_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def backend(fake: FakeBackend) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as server:
        yield server


@dataclass
class RunningApp:
    process: subprocess.Popen[bytes]
    url: str
    engine_url: str
    log: Path

    def output(self) -> str:
        """What the app (and the engine's supervisor in it) printed so far."""
        return self.log.read_text(errors="replace")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., RunningApp]]:
    """``python -m app --engine`` with the real llama-server and the default model, with more
    settings (``ENGINE_PARALLEL="2"``, say); started once its page answers, killed after the
    test. Its output goes to the test folder's ``app.log``, the engine's to
    ``volumes/data/engine.log`` there."""
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing: scripts/test fetches it with python -m app.downloader")
    started: list[subprocess.Popen[bytes]] = []

    def start(**settings: str) -> RunningApp:
        app_port, engine_port = free_port(), free_port()
        env = {
            **os.environ, "PYTHONPATH": str(REPO), "APP_PORT": str(app_port),
            "ENGINE_PORT": str(engine_port), "ENGINE_MODEL_PATH": str(MODEL),
            "ENGINE_SERVER": ENGINE_SERVER, **settings,
        }
        with (tmp_path / "app.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "app", "--engine"], cwd=tmp_path,
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        running = RunningApp(process, f"http://127.0.0.1:{app_port}",
                             f"http://127.0.0.1:{engine_port}", tmp_path / "app.log")
        deadline = time.monotonic() + 120
        while not answers(f"{running.url}/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                pytest.fail(f"the app did not start:\n{running.output()}")
            time.sleep(0.2)
        return running

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def running_app(start_app: Callable[..., RunningApp]) -> RunningApp:
    return start_app()


def settings_for(url: str, **overrides: Any) -> Settings:
    return load_settings(**{"backend_url": url, "stream_interval": 0, **overrides})


# The store's tests run on both databases: SQLite (a file in the test's folder) and the real
# PostgreSQL server of tests/postgres.py.


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'store.db'}"
    database_url: str = request.getfixturevalue("postgres_url")
    return database_url


@pytest.fixture
def open_store(url: str) -> Iterator[Callable[[], Store]]:
    """Open (and later close) stores on the test's database, not migrated."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(Store(url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.engine.dispose()


@pytest.fixture
def store(open_store: Callable[[], Store]) -> Store:
    store = open_store()
    store.migrate()
    return store


ClientFor = Callable[..., BackendClient]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFor]:
    """Makes backend clients, and closes them after the test as the app closes its own."""
    made: list[BackendClient] = []

    def make(url: str, **options: Any) -> BackendClient:
        made.append(BackendClient(url, **options))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture(autouse=True)
async def close_services(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Every ``ChatService`` a test makes is closed after it (its backends' HTTP sessions), as
    the app's lifespan closes its own."""
    made: list[ChatService] = []
    original = ChatService.__init__

    def init(self: ChatService, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ChatService, "__init__", init)
    yield
    for service in made:
        await service.aclose()


OAUTH_SECRET = "oauth-client-secret-of-the-test-space"


@pytest.fixture
def oauth_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process, the OAuth app a Space with ``hf_oauth: true`` has (Gradio reads these
    variables when it is imported); outside a Space Gradio would mock the login with the
    machine's own Hub account, which needs the Hub."""
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/playground")
    for name, value in [("OAUTH_CLIENT_ID", "test-client-id"),
                        ("OAUTH_CLIENT_SECRET", OAUTH_SECRET), ("OAUTH_SCOPES", "openid profile"),
                        ("OPENID_PROVIDER_URL", "http://127.0.0.1:1")]:
        monkeypatch.setattr(gr.oauth, name, value)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The docker tier's private engine (tests/docker_engine.py), with the stand-ins of
    ``python:3.11-slim``, TGI's and vLLM's images, and llama.cpp's server image holding the
    engine's llama-server; one for all the tier's modules."""
    missing = [tool for tool in ("dockerd", "debootstrap") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.fail(f"the docker tier needs root and {', '.join(missing) or 'dockerd'}: "
                    "scripts/test installs Debian's docker.io and debootstrap")
    server = shutil.which(ENGINE_SERVER)
    if server is None:
        pytest.fail(f"no llama-server at {ENGINE_SERVER!r}: scripts/test builds it and sets "
                    "ENGINE_SERVER")
    versions = read_env_file()
    with DockerEngine() as started:
        started.build_base()
        started.build_tgi(versions["TGI_VERSION"])
        started.build_vllm(versions["VLLM_VERSION"])
        started.build_llamacpp(versions["LLAMACPP_VERSION"], Path(server))
        yield started
