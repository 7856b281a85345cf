"""An opt-in cache of finished replies, for shared deployments where the same deterministic
question comes back (a team's standard prompts, tests in CI).

Only deterministic requests are cached (temperature 0 or a fixed seed): the same model,
messages and settings must give the same reply. The key is a hash of all of them and of the
user who asked, so a change in any setting is a miss, and one user's hit tells nothing of
another's questions. Bounded to ``max_entries``, least recently used out first.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

from app.backends import GenerationParams

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class CachedReply:
    text: str
    tokens: int
    finish_reason: str


def is_deterministic(params: GenerationParams) -> bool:
    return params.temperature == 0 or params.seed is not None


def cache_key(
    owner: int, model: str, messages: Sequence[Mapping[str, str]], params: GenerationParams
) -> str:
    """One user's question: a cache hit never tells one user what another sent."""
    document = {"owner": owner, "model": model, "messages": [dict(m) for m in messages],
                "params": asdict(params)}
    encoded = json.dumps(document, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


class Lru(Generic[K, V]):
    """At most ``max_entries`` values, the least recently used out first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


ResponseCache = Lru[str, CachedReply]
