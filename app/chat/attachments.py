"""Files attached to a message: text and code, sent to the model with the message as fenced
blocks named by their file name and language.

``read_attachments`` is the one gate for files from the page and the REST API alike: a file
that is binary (not UTF-8, or holding a NUL byte) or over the size limit, or more files than a
message takes, raises ``AttachmentRefused`` naming the file and the limit. ``drop_advice`` says
which files to drop when a message with its attachments is too long.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from app.markdown import fenced
from app.sizes import size_text
from app.snippets.extract import LANGUAGES, TEXT, language_of

# A file's name as the model and the page show it.
MAX_NAME_CHARS = 255
# An extension the snippets' languages do not know is used as the fence's language when it
# looks like one (json, yaml, toml); any other is plain text.
_EXTENSION_WORD = re.compile(r"[a-z0-9+#-]{1,15}")


class AttachmentRefused(ValueError):
    """A file cannot be attached; ``str(err)`` says which and why. Nothing was stored."""


@dataclass(frozen=True)
class Attachment:
    """A text file attached to a message: its name, the language of its fence, its text."""

    name: str
    language: str
    text: str

    @property
    def size(self) -> int:
        """Its size in bytes, as UTF-8."""
        return len(self.text.encode())

    def block(self) -> str:
        """The file as the model is sent it: a line naming it, then its text in a fence that
        no line inside it can close."""
        return f"File: {self.name}\n{fenced(self.text, self.language)}"


def language_for(name: str) -> str:
    """The fence language of a file named ``name``, from its extension."""
    extension = PurePath(name).suffix.lower().removeprefix(".")
    language = language_of(extension) if extension else TEXT
    plain = extension in LANGUAGES[TEXT].aliases
    if language == TEXT and not plain and _EXTENSION_WORD.fullmatch(extension):
        return extension
    return language


def read_attachments(
    files: Sequence[tuple[str, bytes]], max_bytes: int, max_files: int
) -> tuple[Attachment, ...]:
    """The files (each a name and its bytes, of which at most ``max_bytes + 1`` need be read)
    as attachments.

    Raises ``AttachmentRefused`` for more than ``max_files`` files, a file over ``max_bytes``,
    a binary file (not UTF-8 text, or holding a NUL byte) or one without a name.
    """
    if len(files) > max_files:
        raise AttachmentRefused(
            f"You attached {len(files)} files; a message takes at most {max_files}. "
            "Remove some; nothing was sent."
        )
    attachments = []
    for raw_name, data in files:
        name = PurePath(raw_name.replace("\\", "/")).name.strip()[:MAX_NAME_CHARS]
        if not name or "\x00" in name:
            raise AttachmentRefused("An attached file has no usable name; nothing was sent.")
        if len(data) > max_bytes:
            raise AttachmentRefused(
                f"{name} is larger than {size_text(max_bytes)}, the most a file may have. "
                "Attach a part of it; nothing was sent."
            )
        try:
            text = data.decode()
        except UnicodeDecodeError:
            text = "\x00"
        if "\x00" in text:
            raise AttachmentRefused(
                f"{name} is not a text file (only UTF-8 text and code can be attached); "
                "nothing was sent."
            )
        attachments.append(Attachment(name, language_for(name), text))
    return tuple(attachments)


def with_attachments(text: str, attachments: Sequence[Attachment]) -> str:
    """A message as the model is sent it: its text, then each attached file's block."""
    return "\n\n".join([text, *(attachment.block() for attachment in attachments)])


def drop_advice(
    attachments: Sequence[Attachment], excess: int, cost: Callable[[str], int]
) -> str:
    """The attached files by size, largest first, and which of them to drop so that the
    message sheds ``excess`` (as ``cost`` counts a file's block: characters or tokens)."""
    largest = sorted(attachments, key=lambda a: a.size, reverse=True)
    listed = ", ".join(f"{a.name} ({size_text(a.size)})" for a in largest)
    dropped: list[str] = []
    shed = 0
    for attachment in largest:
        if shed >= excess:
            break
        dropped.append(attachment.name)
        shed += cost(f"\n\n{attachment.block()}")
    if shed < excess:
        return f"Attached: {listed}; even without them it is too long: shorten the message."
    return f"Attached: {listed}; drop {' and '.join(dropped)} to make it fit."
