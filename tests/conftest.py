from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings, load_settings
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"


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


def settings_for(url: str, **overrides: Any) -> Settings:
    return load_settings(**{"backend_url": url, "stream_interval": 0, **overrides})
