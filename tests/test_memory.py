"""The allocator settings that keep a long run's memory flat (app/memory.py); their effect is
measured by the soak benchmark (bench/results/soak-allocator.md), not here."""

from __future__ import annotations

import platform

import pytest

from app.memory import OPERATORS, tune_allocator


@pytest.mark.parametrize("name", OPERATORS)
def test_an_operators_allocator_setting_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "8")
    assert tune_allocator() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_glibc_takes_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OPERATORS:
        monkeypatch.delenv(name, raising=False)
    assert tune_allocator() is True
