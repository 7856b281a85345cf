"""The generation controls of the page, shared by the chat and the raw-prompt tab."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.backends import BackendInfo, GenerationParams

# Controls in the order the handlers receive them; each is shown only where the backend
# honours it (see ``app.backends.CONTROLS``).
CONTROL_NAMES = (
    "max_new_tokens", "temperature", "top_p", "top_k", "repeat_penalty",
    "frequency_penalty", "presence_penalty", "stop", "seed",
)


def params_from(info: BackendInfo, values: Sequence[Any]) -> GenerationParams:
    """The controls' values as generation parameters; ValueError says what to fix."""
    given = dict(zip(CONTROL_NAMES, values, strict=True))
    stops = tuple(line for line in str(given.pop("stop") or "").splitlines() if line)
    if info.max_stop_sequences is not None and len(stops) > info.max_stop_sequences:
        raise ValueError(
            f"This backend takes at most {info.max_stop_sequences} stop sequences; "
            f"you gave {len(stops)}. Remove some (one per line)."
        )
    seed = given.pop("seed")
    top_k = given.pop("top_k")
    return GenerationParams(
        stop=stops,
        seed=None if seed is None or int(seed) < 0 else int(seed),
        top_k=int(top_k) if top_k else None,
        max_new_tokens=int(given.pop("max_new_tokens")),
        **{name: float(value) for name, value in given.items()},
    )
