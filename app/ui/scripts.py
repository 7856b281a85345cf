"""The page's scripts. Each lives in a file of its own next to this one (``app/ui/*.js``, linted
by ESLint in scripts/test), holding one function; an event runs it through ``call``, with its
parameters given from Python as JSON."""

from __future__ import annotations

import json
from pathlib import Path


def source(name: str) -> str:
    """The function in ``app/ui/<name>``, as an expression."""
    return Path(__file__).with_name(name).read_text().strip().removesuffix(";")


def call(name: str, *args: object) -> str:
    """An event's script (``js=``) that calls the function in ``app/ui/<name>`` with ``args``."""
    arguments = ", ".join(json.dumps(arg) for arg in args)
    return f"() => ({source(name)})({arguments})"
