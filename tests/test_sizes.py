"""The one formatter of sizes in the app's messages, at the edges of its units."""

from __future__ import annotations

import pytest

from app.sizes import size_text

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"),
    (1023, "1023 B"),
    (KIB, "1 KiB"),
    (KIB + 51, "1 KiB"),  # 1.0498 KiB rounds down
    (KIB + 52, "1.1 KiB"),
    (12_800, "12.5 KiB"),
    (256 * KIB, "256 KiB"),
    (MIB - 52, "1023.9 KiB"),
    (MIB - 51, "1 MiB"),  # 1023.95 KiB would read 1024.0 KiB: the next unit instead
    (MIB, "1 MiB"),
    (1_258_291, "1.2 MiB"),
    (20 * MIB, "20 MiB"),
    (GIB - 1, "1 GiB"),
    (3 * GIB + GIB // 2, "3.5 GiB"),
    (TIB, "1 TiB"),
    (2048 * TIB, "2048 TiB"),  # the largest unit goes on counting
])
def test_binary_units_with_one_decimal_at_most(size: int, text: str) -> None:
    assert size_text(size) == text
