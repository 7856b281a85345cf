"""Every use of Gradio's internals, in one module (written against Gradio 6.31).

The rest of the app uses Gradio's public API only: components, events, ``gr.Request``,
``gr.Error``, ``gr.skip()``, ``gr.mount_gradio_app``. What it needs beyond that is here, and
each piece has a test in ``tests/test_gradio_compat.py`` that fails on a Gradio upgrade that
changes what the piece relies on:

- ``SkippingBlocks`` overrides ``Blocks.postprocess_data(block_fn, predictions, state)``, an
  undocumented method Gradio calls for every update an event sends. It relies on that
  signature, on ``block_fn.outputs``, on Gradio sending a skipped output as
  ``{"__type__": "update"}``, and on ``gradio.blocks.convert_component_dict_to_list``, which
  puts the outputs a handler returns by component in the order of the event's.
- ``configure_queue`` sets ``Blocks.max_threads`` and ``Blocks.state_session_capacity``, which
  ``launch()`` takes as arguments but ``mount_gradio_app`` does not, as attributes, before
  ``queue()`` reads the first and the app Gradio builds reads the second. It also turns off
  the queue's record of events (``Queue.event_analytics``, for Gradio's monitoring dashboard),
  through the two attributes its ``GRADIO_ANALYTICS_*`` environment variables set.
- ``oauth_profile`` / ``oauth_username``: the Hugging Face user signed in with Gradio's OAuth.
- ``page_root_url``: the page's public URL as Gradio works it out for the links it writes
  itself, with ``gradio.route_utils.get_root_url`` and ``get_api_call_path`` on the queued
  request (``gr.Request.request``).

The OAuth choice. Gradio's documented way is a handler parameter typed
``gr.OAuthProfile | None``: it fills it from the session cookie of its ``/login/callback``,
treating an expired login as none. Our handlers reach the user through
``PageUsers.conversations(request)`` (``app/ui/users.py``), about 25 of them in the page's
modules; a new parameter on each would be invasive. So ``oauth_profile`` asks
the very function that fills such parameters, ``gradio.helpers.special_args``, to fill one for
a one-parameter function from the request. The session lookup (the request's scope, or a
queued request's own ``.session``), the expiry rule and the building of ``gr.OAuthProfile``
stay Gradio's, not a copy of them that an upgrade would leave behind. It relies on
``special_args``' name and its ``(fn, inputs, request)`` parameters, unchanged since Gradio 3,
where reading the cookie ourselves relied on the session's key, the token response's shape and
the expiry rule, and ``gradio.oauth._get_valid_oauth_info_from_session`` is private. If an
upgrade breaks it, ``oauth_profile`` raises rather than treat everyone as signed out, and the
way out is the parameter on each handler.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import gradio as gr
from gradio import route_utils
from gradio.blocks import Block, convert_component_dict_to_list
from gradio.helpers import special_args

SKIP = gr.skip()

# A handler's answer: the components it changes, each with its value; ``SkippingBlocks`` sends
# the others as skipped.
Outputs = dict[Any, Any]


class SkippingBlocks(gr.Blocks):
    """``gr.Blocks`` that passes ``gr.skip()`` outputs through as they are.

    Gradio 6.31 rebuilds the whole component (and its config) for every ``gr.skip()`` output of
    every update a generator yields; for the skipped outputs of a streaming reply that was
    about half the app's CPU under load. What it sends for them is ``{"__type__": "update"}``
    either way, which is what this sends. A skipped ``gr.State`` costs Gradio nothing and is
    sent as ``None``, so it is left to Gradio.

    Handlers answer with a dict of the components they change (``Outputs``, Gradio's own form):
    those left out are skipped, and an empty dict changes nothing.
    """

    async def postprocess_data(self, block_fn: Any, predictions: Any, state: Any) -> list[Any]:
        outputs = block_fn.outputs
        if isinstance(predictions, dict) and all(isinstance(k, Block) for k in predictions):
            if len(outputs) == 1:  # nothing beside it to skip; Gradio's answer is the value
                value = (convert_component_dict_to_list(outputs, predictions)
                         if predictions else SKIP)
                return await super().postprocess_data(block_fn, value, state)
            predictions = (convert_component_dict_to_list(outputs, predictions) if predictions
                           else [SKIP for _ in outputs])
        if not isinstance(predictions, list | tuple) or len(predictions) != len(outputs):
            return await super().postprocess_data(block_fn, predictions, state)
        kept = [
            i for i, value in enumerate(predictions) if value != SKIP or outputs[i].stateful
        ]
        if len(kept) in (0, len(predictions)):
            return await super().postprocess_data(block_fn, list(predictions), state)
        partial = copy.copy(block_fn)
        partial.outputs = [outputs[i] for i in kept]
        values = [predictions[i] for i in kept]
        done = await super().postprocess_data(
            partial, values if len(kept) > 1 else values[0], state
        )
        result: list[Any] = [dict(SKIP) for _ in predictions]
        for i, value in zip(kept, done, strict=True):
            result[i] = value
        return result


def configure_queue(
    demo: gr.Blocks, *, concurrency: int, max_size: int | None, session_capacity: int
) -> None:
    """Enable the queue with ``concurrency`` events at once, for all events together and for
    each event, and keep the state of ``session_capacity`` pages.

    Gradio caps concurrent events at ``max_threads`` (40) even for async handlers; the cap is
    raised together with the per-event limit so that users do not wait for one another. Gradio
    keeps each opened page's state (0.38 MiB, bench/results/sessions.json) until this many
    newer pages push it out, also after its tab is closed. Call before ``mount_gradio_app``.

    Gradio's queue also keeps a record of each of the last 10,000 events, and after every
    event builds a pandas table of them all, for its monitoring dashboard, which the app does
    not serve (``enable_monitoring=False``; ``/metrics`` has its own figures). The records,
    about half a kilobyte each, made the soak's memory climb through its ten minutes
    (``bench/results/soak-allocator.md``); the table costs 2.5 ms of CPU an event with ten
    records, 8 ms with 10,000. The queue keeps one record instead, and never builds the table.
    """
    demo.max_threads = concurrency  # read by queue() and, at startup, by create_limiter()
    demo.state_session_capacity = session_capacity  # read by the app queue() builds
    demo.queue(default_concurrency_limit=concurrency, max_size=max_size)
    queue = demo._queue
    queue.ANALYTICS_MAX_EVENTS = 1  # GRADIO_ANALYTICS_MAX_EVENTS
    # GRADIO_ANALYTICS_CACHE_FREQUENCY: events between two builds of the table.
    queue.ANAYLTICS_CACHE_FREQUENCY = sys.maxsize  # (sic: Gradio spells it so)


def _wants_profile(profile: gr.OAuthProfile | None) -> None:
    """A handler's signature, for ``special_args`` to fill."""


def oauth_profile(request: gr.Request | None) -> gr.OAuthProfile | None:
    """The profile Gradio would give a handler parameter typed ``gr.OAuthProfile | None``
    for this request: the signed-in Hugging Face user, or None (signed out, expired, or no
    request)."""
    filled, *_ = special_args(_wants_profile, [], request)
    if len(filled) != 1:
        raise RuntimeError(
            "gradio.helpers.special_args no longer fills a gr.OAuthProfile | None parameter; "
            "see app/ui/gradio_compat.py"
        )
    profile: gr.OAuthProfile | None = filled[0]
    return profile


def oauth_username(request: gr.Request | None) -> str | None:
    """The Hugging Face user name signed in with OAuth, or None."""
    profile = oauth_profile(request)
    name = profile.username if profile is not None else None
    return name if isinstance(name, str) and name else None


def page_root_url(request: gr.Request) -> str:
    """The public root URL of the page an event came from, without a trailing slash: behind a
    proxy, its ``X-Forwarded-Host`` and ``X-Forwarded-Proto``; under a root path (uvicorn's
    ``--root-path``), with it."""
    raw = request.request
    if raw is None:
        raise RuntimeError("an event called without its HTTP request has no page URL")
    root: str = route_utils.get_root_url(
        raw, route_utils.get_api_call_path(raw), raw.scope.get("root_path") or None
    )
    return root
