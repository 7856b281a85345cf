"""The Hugging Face Space's entry point: the README's configuration block names this file as
``app_file``, and the Space runs ``python space.py``.

It starts the playground as ``python -m app`` does. Space mode comes from the Space's own
environment (SPACE_ID): Hugging Face login, all interfaces on port 7860, the database on the
persistent storage (/data) when the Space has one, snippet runs off. See docs/spaces.md.
"""

import sys

from app.__main__ import main

if __name__ == "__main__":
    sys.exit(main([]))
