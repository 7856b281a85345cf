"""The ``docker build`` arguments that build one target of docker-bake.hcl, for machines
without Buildx (scripts/build). Standard library only: it runs before any virtualenv exists.

    python3 scripts/bake_plan.py docker-bake.hcl app    # one argument a line

It reads what a plain ``docker build`` can do of a target: ``context``, ``dockerfile``,
``target``, ``tags``, ``args`` and ``labels``, with the file's ``variable`` defaults and, as bake
does, the environment's value for a variable set there. The rest (cache import and export,
platforms) needs Buildx and is left out. The reader knows the shapes the project's bake file
uses (one ``key = value`` a line, maps one entry a line); tests/test_containers.py checks it
against a full HCL parser.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

BLOCK = re.compile(r'^(variable|target|group|function)\s+"([^"]+)"\s*\{\s*$')
ASSIGN = re.compile(r'^"?([\w.-]+)"?\s*=\s*(.*?)\s*$')
INTERPOLATION = re.compile(r"\$\{(\w+)\}")
KEPT = ("context", "dockerfile", "target", "tags", "args", "labels")


def read(path: Path) -> tuple[dict[str, str], dict[str, dict[str, object]]]:
    """The variables (their values) and each target's kept fields, unevaluated."""
    variables: dict[str, str] = {}
    targets: dict[str, dict[str, object]] = {}
    block: tuple[str, str] | None = None
    mapping: dict[str, str] | None = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith('"') else raw.strip()
        if not line:
            continue
        if mapping is not None:
            if line == "}":
                mapping = None
            elif found := ASSIGN.match(line):
                mapping[found[1]] = found[2]
            continue
        if block is None:
            if opened := BLOCK.match(line):
                block = (opened[1], opened[2])
                if block[0] == "target":
                    targets[block[1]] = {}
            continue
        if line == "}":
            block = None
            continue
        assigned = ASSIGN.match(line)
        if assigned is None:
            continue
        key, value = assigned[1], assigned[2]
        if block[0] == "variable" and key == "default":
            variables[block[1]] = os.environ.get(block[1], _string(value, {}))
        elif block[0] == "target" and key in KEPT:
            if value == "{":
                mapping = {}
                targets[block[1]][key] = mapping
            else:
                targets[block[1]][key] = value
    return variables, targets


def _string(value: str, variables: dict[str, str]) -> str:
    """A quoted string with its ``${VAR}`` filled in, or a bare variable's value."""
    if value.startswith('"') and value.endswith('"'):
        return INTERPOLATION.sub(lambda found: variables[found[1]], value[1:-1])
    return variables[value]


def _strings(value: str, variables: dict[str, str]) -> list[str]:
    items = [item.strip() for item in value.strip("[]").split(",") if item.strip()]
    return [_string(item, variables) for item in items]


def plan(path: Path, name: str) -> list[str]:
    """``docker build`` arguments for target ``name``, the context last."""
    variables, targets = read(path)
    if name not in targets:
        raise SystemExit(f"error: {path} has no target {name!r}")
    target = targets[name]
    if "dockerfile" not in target:
        raise SystemExit(f"error: the target {name!r} of {path} inherits another; it needs Buildx")
    args: list[str] = ["--file", _string(str(target["dockerfile"]), variables)]
    if "target" in target:
        args += ["--target", _string(str(target["target"]), variables)]
    for tag in _strings(str(target.get("tags", "[]")), variables):
        args += ["--tag", tag]
    for option, key in (("--build-arg", "args"), ("--label", "labels")):
        entries = target.get(key, {})
        assert isinstance(entries, dict)
        for entry, value in entries.items():
            args += [option, f"{entry}={_string(value, variables)}"]
    return [*args, _string(str(target["context"]), variables)]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python3 scripts/bake_plan.py BAKE_FILE TARGET")
    print("\n".join(plan(Path(sys.argv[1]), sys.argv[2])))
