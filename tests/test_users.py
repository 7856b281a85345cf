"""``python -m app.users add``: accounts made by an operator, the password never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from app.server import open_store
from app.settings import load_settings
from app.store import Accounts
from tests.conftest import REPO


def add(name: str, password: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.users", "add", name], input=password + "\n", cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=60, check=False,
    )


def test_an_operator_creates_an_account_that_can_sign_in(tmp_path: Path) -> None:
    created = add("carol", "long enough secret", tmp_path)
    assert created.returncode == 0, created.stderr
    assert "Created account 'carol'" in created.stdout
    accounts = Accounts(open_store(load_settings()))
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
