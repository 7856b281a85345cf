"""The allocator setting that keeps a long run's memory flat (app/memory.py); its effect is
measured by the soak benchmark (bench/results/soak-allocator.md), not here."""

from __future__ import annotations

import platform

import pytest

from app.memory import limit_arenas


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_arenas() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_glibc_is_kept_to_two_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is True
