"""The files the page hands out (conversation exports, snippet files): one folder of the
process holds them, at most ``keep``, the oldest removed as new ones come, and the folder
itself at exit. Gradio copies each file it serves into its own cache, which the page's
``delete_cache`` prunes."""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from pathlib import Path


class Downloads:
    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self.folder = Path(tempfile.mkdtemp(prefix="playground-downloads-"))
        self._numbers = itertools.count(1)
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)

    def write(self, name: str, text: str) -> Path:
        """A new file ``name`` holding ``text``; older files beyond ``keep`` go."""
        folder = self.folder / str(next(self._numbers))
        folder.mkdir()
        path = folder / name
        path.write_text(text, encoding="utf-8")
        kept = sorted(self.folder.iterdir(), key=lambda entry: int(entry.name))
        for old in kept[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return path
