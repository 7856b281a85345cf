"""The page's controls as each kind of server is sent them (app/backends/sampling.py), the
values refused before sending, and those a turn keeps (app/chat/turns.py). What TGI then does
with them is checked against the TGI fake in tests/test_backend_client.py and
tests/test_raw.py."""

from __future__ import annotations

from typing import Any

import pytest

from app.backends import BackendInfo, GenerationParams, InvalidSetting
from app.backends.sampling import BackendKind, check, openai_fields, tgi_parameters
from app.chat.turns import TurnRequest, generation_params

PAGE = GenerationParams(
    max_new_tokens=64, temperature=0.2, top_p=0.95, top_k=40, repetition_penalty=1.0,
    frequency_penalty=0.0, presence_penalty=0.0,
)


@pytest.mark.parametrize(
    ("kind", "params", "sent"),
    [
        ("tgi", PAGE, {"max_tokens": 64, "temperature": 0.2, "top_p": 0.95,
                       "frequency_penalty": 0.0}),
        ("tgi", GenerationParams(max_new_tokens=8, repetition_penalty=1.2, top_p=1.0),
         {"max_tokens": 8, "presence_penalty": pytest.approx(-0.8)}),
        ("tgi", GenerationParams(max_new_tokens=8, temperature=0.0, top_p=0.5, seed=3),
         {"max_tokens": 8, "temperature": 0.0, "seed": 3}),
        ("llama.cpp", PAGE, {"max_tokens": 64, "temperature": 0.2, "top_p": 0.95, "top_k": 40,
                             "repeat_penalty": 1.0, "frequency_penalty": 0.0,
                             "presence_penalty": 0.0}),
        ("openai", GenerationParams(max_new_tokens=8, top_p=1.0, top_k=40, stop=("x",)),
         {"max_tokens": 8, "top_p": 1.0, "stop": ["x"]}),
        ("hf", PAGE, {"max_tokens": 64, "temperature": 0.2, "top_p": 0.95,
                      "frequency_penalty": 0.0, "presence_penalty": 0.0}),
    ],
    ids=["tgi-page-defaults", "tgi-penalty", "tgi-greedy", "llama.cpp", "openai", "hf"],
)
def test_each_kind_is_sent_what_makes_it_do_what_the_page_says(
    kind: BackendKind, params: GenerationParams, sent: dict[str, Any]
) -> None:
    assert openai_fields(kind, params) == sent


def test_tgi_raw_greedy_sends_do_sample_false_and_no_sampling_knob() -> None:
    greedy = GenerationParams(max_new_tokens=8, temperature=0.0, top_p=0.9, top_k=40,
                              repetition_penalty=1.1)
    assert tgi_parameters(greedy) == {"max_new_tokens": 8, "do_sample": False, "stop": [],
                                      "repetition_penalty": 1.1}
    assert tgi_parameters(PAGE) == {"max_new_tokens": 64, "do_sample": True, "stop": [],
                                    "temperature": 0.2, "top_p": 0.95, "frequency_penalty": 0.0}


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("tgi", GenerationParams(max_new_tokens=8, top_p=0.0),
         "Top-p takes values above 0 to 1; you gave 0."),
        ("tgi", GenerationParams(max_new_tokens=8, repetition_penalty=0.0),
         "Repetition penalty takes values above 0; you gave 0."),
        ("openai", GenerationParams(max_new_tokens=8, temperature=2.5),
         "Temperature takes values from 0 to 2; you gave 2.5."),
        ("llama.cpp", GenerationParams(max_new_tokens=8, presence_penalty=-3.0),
         "Presence penalty takes values from -2 to 2; you gave -3."),
    ],
)
def test_a_value_the_server_would_refuse_is_refused_naming_the_control(
    kind: BackendKind, params: GenerationParams, message: str
) -> None:
    with pytest.raises(InvalidSetting) as refused:
        check(kind, params)
    assert str(refused.value) == message


def test_a_control_the_kind_does_not_take_is_not_checked() -> None:
    check("tgi", GenerationParams(max_new_tokens=8, presence_penalty=-3.0, top_k=-1))


def test_the_api_refuses_a_stored_setting_the_backend_would_refuse() -> None:
    """An imported conversation may carry any value: the REST API answers 422 with this line
    rather than sending it (app/api/dialogue.py)."""
    info = BackendInfo(kind="tgi", url="http://h", model_id="m", max_input_tokens=10,
                       max_total_tokens=20)
    with pytest.raises(InvalidSetting, match=r"Top-p takes values above 0 to 1; you gave 1\.5"):
        generation_params({"top_p": 1.5}, 64, info)
    assert generation_params({"top_p": 1.0, "presence_penalty": 5}, 64, info).top_p == 1.0


def test_a_turn_cleans_the_settings_it_is_given_once() -> None:
    """The page's controls and the API's fields, as a turn asks with them and stores them
    (``kept_settings``): a whole number sent as a float is kept whole, a float setting given
    a whole number is kept as a float, and what no control takes is left out, for the page to
    keep its own value."""
    asked = TurnRequest("hi", "", {
        "max_new_tokens": 512.0, "temperature": 1, "top_p": "0.9", "top_k": float("nan"),
        "seed": None, "stop": "END", "repetition_penalty": True, "model": "smol", "theme": 1,
    })
    assert asked.settings == {"max_new_tokens": 512, "temperature": 1.0, "stop": "END",
                              "model": "smol"}
    assert [type(asked.settings[name]) for name in ("max_new_tokens", "temperature")] == [
        int, float]
