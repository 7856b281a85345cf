"""The rules for files attached to a message: what the model is sent, what is refused, and
how the limits count them."""

from __future__ import annotations

import pytest

from app.chat import Exchange, ReplyLog, fit_messages
from app.chat.attachments import (
    Attachment,
    AttachmentRefused,
    drop_advice,
    language_for,
    read_attachments,
    with_attachments,
)
from app.chat.guard import Guard, MessageRefused
from app.markdown import code_fences
from app.settings import load_settings
from app.store import Store

KIB = 1024


def test_a_file_goes_to_the_model_as_a_fenced_block_named_by_its_file() -> None:
    [code] = read_attachments([("src/fizz.py", b"print('fizz')\n")], KIB, 5)
    assert code == Attachment("fizz.py", "python", "print('fizz')\n")
    assert with_attachments("Fix it.", [code]) == (
        "Fix it.\n\nFile: fizz.py\n```python\nprint('fizz')\n```"
    )


@pytest.mark.parametrize(("name", "language"), [
    ("main.rs", "rust"), ("lib.H", "c"), ("app.ts", "typescript"), ("run.sh", "bash"),
    ("data.json", "json"), ("notes", "text"), ("notes.TXT", "text"), ("weird.ext!", "text"),
    ("a.tar.gz", "gz"),
])
def test_the_fence_language_comes_from_the_extension(name: str, language: str) -> None:
    assert language_for(name) == language


def test_a_file_holding_a_fence_keeps_its_text_inside_one_longer_fence() -> None:
    readme = "Run:\n```bash\nmake\n```\nthen ````four````."
    [attached] = read_attachments([("README.md", readme.encode())], KIB, 5)
    sent = with_attachments("Summarize.", [attached])
    [block] = code_fences(sent)
    assert (block.info, block.code) == ("md", readme)


@pytest.mark.parametrize(("files", "refusal"), [
    ([("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00")], "logo.png is not a text file"),
    ([("latin1.txt", "café".encode("latin-1"))], "latin1.txt is not a text file"),
    ([("nul.txt", b"text\x00more")], "nul.txt is not a text file"),
    ([("big.log", b"x" * (KIB + 1))], "big.log is larger than 1 KiB"),
    ([(f"f{n}.py", b"pass") for n in range(6)], "You attached 6 files; a message takes at most 5"),
    ([("", b"pass")], "no usable name"),
])
def test_binary_oversized_and_too_many_files_are_refused(
    files: list[tuple[str, bytes]], refusal: str
) -> None:
    with pytest.raises(AttachmentRefused, match=refusal) as refused:
        read_attachments(files, KIB, 5)
    assert "nothing was sent" in str(refused.value)


def test_a_file_of_exactly_the_limit_is_taken() -> None:
    [attached] = read_attachments([("edge.txt", "é".encode() * (KIB // 2))], KIB, 5)
    assert attached.size == KIB


def test_the_advice_drops_the_largest_files_first_and_no_more_than_needed() -> None:
    small = Attachment("small.py", "python", "s" * 100)
    big = Attachment("big.py", "python", "b" * 3000)
    middle = Attachment("middle.py", "python", "m" * 1500)
    advice = drop_advice([small, big, middle], 2000, len)
    assert advice == ("Attached: big.py (2.9 KiB), middle.py (1.5 KiB), small.py (100 B); "
                      "drop big.py to make it fit.")
    assert "drop big.py and middle.py" in drop_advice([small, big, middle], 3500, len)
    assert "shorten the message" in drop_advice([small], 1000, len)


async def test_the_message_limits_count_the_attached_files_and_say_what_to_drop(
    store: Store,
) -> None:
    guard = Guard(load_settings(max_message_chars=2000, max_message_tokens=10_000), store)
    short = Attachment("short.py", "python", "pass\n")
    long = Attachment("long.py", "python", "x = 1\n" * 400)
    await guard.check(1, "Review these.", [short])
    with pytest.raises(MessageRefused) as refused:
        await guard.check(1, "Review these.", [short, long])
    assert str(refused.value) == (
        "Your message with its attachments has 2477 characters; the limit is 2000. "
        "Attached: long.py (2.3 KiB), short.py (5 B); drop long.py to make it fit. "
        "Nothing was sent."
    )
    tokens = Guard(load_settings(max_message_tokens=500), store)
    with pytest.raises(MessageRefused, match=r"is about \d+ tokens; the limit is 500\. "
                       r"Attached: long\.py"):
        await tokens.check(1, "Review these.", [long])


def test_earlier_messages_are_sent_and_counted_with_their_files() -> None:
    attached = Attachment("a.py", "python", "a = 1\n")
    earlier = Exchange("Look.", ReplyLog("Looks fine."), done=True, attachments=(attached,))
    fitted = fit_messages("", [earlier], "And now?", 1000)
    assert fitted.messages[0] == {"role": "user", "content": earlier.sent}
    assert "File: a.py\n```python\na = 1\n```" in earlier.sent
    budget = fitted.estimated_tokens - 1
    assert fit_messages("", [earlier], "And now?", budget).dropped_exchanges == 1
