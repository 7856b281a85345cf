"""The page's generation controls, and what each kind of server is sent for them.

The page speaks one language (``GenerationParams``: temperature 0 is greedy, top-p 1 and a
repetition penalty of 1 are off); each kind of server is sent what makes it do that, read
from its source rather than its docs (``docs/backends.md`` has the table):

- **TGI** (``router/src/lib.rs``, ``try_into_generate``): its ``presence_penalty`` is not a
  presence penalty but ``repetition_penalty = presence_penalty + 2.0``, so the page's
  repetition penalty is sent as ``presence_penalty = value - 2.0`` and nothing when it is
  off (sending OpenAI's 0.0 would mean a penalty of 2.0). Temperature 0 is greedy only while
  no ``top_p`` below 1 and no ``top_k`` are sent (``server/.../utils/tokens.py`` samples at
  temperature 1.0 otherwise), so a greedy request sends neither. ``top_p`` must be below 1
  (``router/src/validation.rs``): 1 is sent as nothing. ``/generate_stream`` takes the same
  in its own words (``do_sample``, ``repetition_penalty``).
- **llama.cpp** (llama-cpp-python's server and ``llama-server``): OpenAI's fields plus
  ``top_k`` and ``repeat_penalty`` (1 = off), temperature 0 greedy.
- **OpenAI-compatible** (vLLM, others) and **Inference Providers**: OpenAI's fields only.

A value the server would refuse is refused here, before sending, with one line naming the
control and its range (``check``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

BackendKind = Literal["tgi", "llama.cpp", "openai", "hf"]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one reply; ``None`` leaves the server's default. Temperature 0
    means greedy; ``top_p`` 1 and ``repetition_penalty`` 1 mean off."""

    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Range:
    """The values a control may take; ``open`` ends are excluded."""

    label: str
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def describe(self) -> str:
        low = f"above {self.low:g}" if self.low_open else f"from {self.low:g}"
        if math.isinf(self.high):
            return f"{self.label} takes values {low}"
        high = f"below {self.high:g}" if self.high_open else f"to {self.high:g}"
        return f"{self.label} takes values {low} {high}"


# The controls each kind honours and the values it takes; a control missing for a kind is
# hidden in the page rather than sent and silently ignored (or misread).
_TEMPERATURE = Range("Temperature", 0, 2)
_TOP_P = Range("Top-p", 0, 1, low_open=True)
_REPETITION = Range("Repetition penalty", 0, math.inf, low_open=True)
_FREQUENCY = Range("Frequency penalty", -2, 2)
_PRESENCE = Range("Presence penalty", -2, 2)
RANGES: Mapping[BackendKind, Mapping[str, Range]] = {
    # router/src/validation.rs: temperature and repetition_penalty > 0 (0 is mapped to
    # greedy first), 0 < top_p < 1 (1 is sent as nothing), frequency_penalty in [-2, 2].
    "tgi": {"temperature": _TEMPERATURE, "top_p": _TOP_P, "frequency_penalty": _FREQUENCY,
            "repetition_penalty": _REPETITION},
    # llama-cpp-python's server/types.py: top_k >= 0, repeat_penalty >= 0, penalties in
    # [-2, 2]; llama-server clamps rather than refuses.
    "llama.cpp": {"temperature": _TEMPERATURE, "top_p": _TOP_P,
                  "top_k": Range("Top-k", 0, math.inf), "repetition_penalty": _REPETITION,
                  "frequency_penalty": _FREQUENCY, "presence_penalty": _PRESENCE},
    "openai": {"temperature": _TEMPERATURE, "top_p": _TOP_P, "frequency_penalty": _FREQUENCY,
               "presence_penalty": _PRESENCE},
    "hf": {"temperature": _TEMPERATURE, "top_p": _TOP_P, "frequency_penalty": _FREQUENCY,
           "presence_penalty": _PRESENCE},
}
ALWAYS = frozenset({"max_new_tokens", "stop", "seed"})
CONTROLS: Mapping[BackendKind, frozenset[str]] = {
    kind: ALWAYS | ranges.keys() for kind, ranges in RANGES.items()
}


class InvalidSetting(ValueError):
    """Raised when a control's value is one the backend would refuse."""


def check(kind: BackendKind, params: GenerationParams) -> None:
    """Raise ``InvalidSetting`` for the first value the server of ``kind`` would refuse."""
    for name, allowed in RANGES[kind].items():
        value = getattr(params, name)
        if value is not None and not allowed.admits(value):
            raise InvalidSetting(f"{allowed.describe()}; you gave {value:g}.")


def _honoured(kind: BackendKind, params: GenerationParams) -> dict[str, Any]:
    """The sampling controls of ``kind`` that have a value; for TGI less those that would
    change nothing (and that TGI refuses) or turn greedy decoding back into sampling."""
    fields = {name: getattr(params, name) for name in RANGES[kind]
              if getattr(params, name) is not None}
    if kind == "tgi":
        if params.greedy or fields.get("top_p") == 1:
            fields.pop("top_p", None)
        if fields.get("repetition_penalty") == 1:
            del fields["repetition_penalty"]
    return fields


def openai_fields(kind: BackendKind, params: GenerationParams) -> dict[str, Any]:
    """The sampling fields of a ``/v1/chat/completions`` or ``/v1/completions`` request to a
    server of ``kind``."""
    fields = _honoured(kind, params)
    penalty = fields.pop("repetition_penalty", None)
    if kind == "tgi" and penalty is not None:
        fields["presence_penalty"] = round(penalty - 2.0, 6)
    elif penalty is not None:
        fields["repeat_penalty"] = penalty
    return {"max_tokens": params.max_new_tokens, **_stop_and_seed(params), **fields}


def tgi_parameters(params: GenerationParams) -> dict[str, Any]:
    """``parameters`` of a TGI ``/generate_stream`` request: greedy is ``do_sample: false``
    with no temperature (TGI refuses 0 here)."""
    fields = _honoured("tgi", params)
    if params.greedy:
        del fields["temperature"]
    return {"max_new_tokens": params.max_new_tokens, "do_sample": not params.greedy,
            "stop": list(params.stop), **_stop_and_seed(params), **fields}


def _stop_and_seed(params: GenerationParams) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if params.stop:
        fields["stop"] = list(params.stop)
    if params.seed is not None:
        fields["seed"] = params.seed
    return fields
