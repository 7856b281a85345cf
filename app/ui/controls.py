"""The generation controls of the page, shared by the chat and the raw-prompt tab."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.backends import BackendInfo, BackendKind
from app.settings import Settings

# Controls in the order the handlers receive them; each is shown only where the backend
# honours it (see ``app.backends.CONTROLS``).
CONTROL_NAMES = (
    "max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty",
    "frequency_penalty", "presence_penalty", "stop", "seed",
)
# The repetition penalty the page starts at: none (1), except on llama.cpp, where it starts at
# the 1.1 that llama-cpp-python's server (the embedded engine before llama-server) applies when
# none is sent, so the default model answers as it did before the page sent one.
REPETITION_PENALTY: dict[BackendKind, float] = {"llama.cpp": 1.1}


def control_updates(info: BackendInfo | None) -> list[Any]:
    """The controls as the backend's kind has them: those it does not honour hidden, the
    repetition penalty at the kind's starting value; left as they are when no backend
    answers."""
    if info is None:
        return [gr.update() for _ in CONTROL_NAMES]
    updates = []
    for name in CONTROL_NAMES:
        if name == "max_new_tokens":
            updates.append(gr.update(maximum=info.max_total_tokens - 1, visible=True))
        elif name == "repetition_penalty":
            updates.append(gr.update(visible=name in info.controls,
                                     value=REPETITION_PENALTY.get(info.kind, 1.0)))
        else:
            updates.append(gr.update(visible=name in info.controls))
    return updates


def generation_controls(settings: Settings) -> list[Any]:
    """The controls, in ``CONTROL_NAMES`` order, at the settings' starting values; those the
    first backend's kind ignores are shown or hidden once it answers (``control_updates``)."""
    s = settings
    return [
        gr.Slider(1, s.context_tokens - 1, value=s.max_new_tokens, step=1,
                  label="Max new tokens"),
        gr.Slider(0.0, 2.0, value=0.2, step=0.05, label="Temperature",
                  info="0 picks the likeliest token every time",
                  elem_id="temperature"),
        gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p",
                  info="1 turns it off"),
        gr.Slider(0, 200, value=40, step=1, label="Top-k", visible=False,
                  info="0 turns it off"),
        gr.Slider(1.0, 2.0, value=1.0, step=0.05,
                  label="Repetition penalty", visible=False,
                  info="1 turns it off", elem_id="repetition-penalty"),
        gr.Slider(-2.0, 2.0, value=0.0, step=0.1, label="Frequency penalty"),
        gr.Slider(-2.0, 2.0, value=0.0, step=0.1, label="Presence penalty",
                  elem_id="presence-penalty"),
        gr.Textbox("", label="Stop sequences", lines=2, info="One per line"),
        gr.Number(
            -1, label="Seed", precision=0, minimum=-1,
            info="-1 for a random seed",
        ),
    ]
