"""Sizes in bytes as people read them, in binary units: the one formatter of the app's messages."""

from __future__ import annotations

UNITS = ("KiB", "MiB", "GiB", "TiB")


def size_text(size: int) -> str:
    """``size`` bytes in the largest unit that keeps the number below 1024, with one decimal
    unless it is zero: 900 B, 12.5 KiB, 256 KiB, 1.2 MiB, 3 GiB. The unit is picked after
    rounding, so 1023.97 KiB reads 1 MiB, never 1024 KiB."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in UNITS[:-1]:
        if round(value, 1) < 1024:
            return _number(value, unit)
        value /= 1024
    return _number(value, UNITS[-1])


def _number(value: float, unit: str) -> str:
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"
