"""``python -m app.users add``: accounts made by an operator, the password never shown, with
nothing of the web server imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.settings import load_settings
from app.store import Accounts, Store
from tests.conftest import REPO

WEB_SERVER = frozenset({"gradio", "fastapi", "uvicorn", "starlette"})


def add(
    name: str, password: str, cwd: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command with the interpreter's ``options``, in ``cwd`` and ``env`` only."""
    return subprocess.run(
        [sys.executable, *options, "-m", "app.users", "add", name], input=password + "\n",
        cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )


def imported(stderr: str) -> set[str]:
    """The top-level packages that ``python -X importtime`` reports as imported."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines() if line.startswith("import time:")
    }


def test_an_operator_creates_an_account_that_can_sign_in(tmp_path: Path) -> None:
    created = add("carol", "long enough secret", tmp_path)
    assert created.returncode == 0, created.stderr
    assert "Created account 'carol'" in created.stdout
    accounts = Accounts(Store(load_settings().database_url.get_secret_value()))
    assert accounts.check_password("carol", "long enough secret") is not None
    again = add("carol", "another long secret", tmp_path)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ")
    weak = add("dave", "x7Qz", tmp_path)
    assert weak.returncode == 1
    for result in (created, again, weak):
        assert "secret" not in result.stdout + result.stderr
        assert "x7Qz" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_the_command_opens_the_store_at_database_url_without_the_web_server(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'accounts.db'}"
    created = add("erin", "long enough secret", tmp_path, "-X", "importtime",
                  env={"DATABASE_URL": url})
    assert created.returncode == 0, created.stderr
    assert "Created account 'erin'" in created.stdout
    modules = imported(created.stderr)
    assert {"app", "sqlalchemy", "argon2"} <= modules  # the report covers the command's own
    assert modules & WEB_SERVER == set()
    store = Store(url)
    assert Accounts(store).check_password("erin", "long enough secret") is not None
    store.engine.dispose()
