"""HTML in messages shows as text; code keeps its characters; a fence left open is closed. The
page is played by markdown-it with HTML on (as a browser's Markdown renderer reads it)."""

from __future__ import annotations

import re
from textwrap import dedent

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from app.chat import Exchange, ReplyLog
from app.markdown import close_open_fence, escape_html, fence_ends, to_html, unescape_html
from app.snippets import extract_blocks
from app.ui.render import assistant_markdown

PAGE = MarkdownIt("commonmark").enable("table")
# What the page should show: the text read as Markdown with no HTML, and entities as text.
AS_TEXT = MarkdownIt("commonmark", {"html": False}).enable("table").disable(["autolink", "entity"])


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("<script>alert(1)</script>", "&lt;script>alert(1)&lt;/script>"),
        ("a <img src=x onerror=alert(1)> b", "a &lt;img src=x onerror=alert(1)> b"),
        ("Tom & Jerry &lt;", "Tom &amp; Jerry &amp;lt;"),
        ("> a quote stays a quote", "> a quote stays a quote"),
        ("inline `<b>` code", "inline `<b>` code"),
        ("``a ` <i> b`` and <i>", "``a ` <i> b`` and &lt;i>"),
        ("```html\n<b>x</b>\n```\n<b>y</b>", "```html\n<b>x</b>\n```\n&lt;b>y&lt;/b>"),
        ("~~~\n```\n<p>\n~~~\n<p>", "~~~\n```\n<p>\n~~~\n&lt;p>"),
        ("```\n<unterminated>", "```\n<unterminated>"),
        # code in containers, indented code, and what only looks like code
        ("- ```c\n  a < b && c\n  ```\n- <b>", "- ```c\n  a < b && c\n  ```\n- &lt;b>"),
        ("> 1. ```\n>    <i>\n<i>", "> 1. ```\n>    <i>\n&lt;i>"),
        ("Indented:\n\n    if a < b:\n\n<b>", "Indented:\n\n    if a < b:\n\n&lt;b>"),
        ("<pre>\n```\n<b>\n```\n</pre>", "&lt;pre>\n```\n<b>\n```\n&lt;/pre>"),
        ("`a` <b> `c<d` ``e`", "`a` &lt;b> `c<d` ``e`"),
        ("\\`<b> `<i>`", "\\`&lt;b> `<i>`"),
        ("\\<b> \\& \\\\<i>", "\\<b> \\& \\\\&lt;i>"),
        ("| `<b>` | a & b |\n|---|---|\n| `x|y` <i> |",
         "| `<b>` | a &amp; b |\n|---|---|\n| `x|y` &lt;i> |"),
        # a line of a code span that starts with < would start an HTML block where HTML is on
        ("`a\n<pre> b`", "`a\n&lt;pre> b`"),
        ("a\r\n`<b>` &\r\n", "a\r\n`<b>` &amp;\r\n"),
    ],
)
def test_html_outside_code_is_escaped(text: str, shown: str) -> None:
    assert escape_html(text) == shown
    if not re.search(r"`[^`]*\n[ \t>]*<", text):  # a < starting a line in a code span
        assert unescape_html(shown) == text, "a message edited on the page is the text typed"


@pytest.mark.parametrize(
    ("reply", "closed"),
    [
        ("```py\nx = 1\n\n", "```py\nx = 1\n```"),
        ("```python\ndef f():\n    ", "```python\ndef f():\n    \n```"),  # a line just begun
        ("- ```py\n  x\n\n", "- ```py\n  x\n  ```"),
        ("> 1. ~~~~\n>    x", "> 1. ~~~~\n>    x\n>    ~~~~"),
        ("- ```py\n  x\nafter", "- ```py\n  x\nafter"),  # the list item, and the fence, ended
        ("```py\nx\n```\n\n", "```py\nx\n```\n\n"),
    ],
)
def test_close_open_fence_in_containers(reply: str, closed: str) -> None:
    assert close_open_fence(reply) == closed
    assert escape_html(reply, close_fence=True) == closed


def test_a_code_block_in_a_list_item_shows_its_code_while_the_reply_streams() -> None:
    reply = dedent("""
        Two steps:

        1. Install it:

           ```bash
           pip install x
           ```
        2. Compare:
           - in Python:
             ```python
             if a < b and c & d:
    """).lstrip("\n")
    exchange = Exchange(user="compare?", log=ReplyLog(reply), error="The server went away.")
    shown = PAGE.render(assistant_markdown(exchange))
    assert '<code class="language-python">if a &lt; b and c &amp; d:\n</code>' in shown
    assert "&amp;lt;" not in shown
    assert "&amp;amp;" not in shown
    assert shown.endswith("<p>⚠️ The server went away.</p>\n")  # not inside the code block


@pytest.mark.parametrize(
    ("reply", "at", "in_code"),
    [
        ("Hi 🦀\n\n", 6, 0),  # prose: all of it, its line breaks too
        ("```py\nx = '🇫", 12, 1),  # a line of code begun
        ("```py\nx = 1\n\n", 11, 1),  # the line breaks after the code: left to the live text
        ("```py\n", 5, 1),  # a block still empty: the script leaves the fence's line break out
    ],
)
def test_a_render_of_a_reply_being_written_marks_the_offset_its_live_text_goes_on_from(
    reply: str, at: int, in_code: int
) -> None:
    """In code points; inside a code block, before the line breaks the reply's text ends with,
    which the page's script shows before the one Markdown ends the block's text with
    (``app/ui/live.js``)."""
    shown = assistant_markdown(Exchange(user="?", log=ReplyLog(reply), live="key"))
    assert shown.endswith(f'<span class="live-tail live-key-key live-at-{at} '
                          f'live-code-{in_code}"></span>')


# -- random texts, read by the page ----------------------------------------------------------

PIECES = [
    "```", "````", "~~~", "```py", "- ", "1. ", "   ", "    ", "> ", "\t", "\n", "\n", "\n",
    "# ", "---", "| a | b |", "|---|---|", "a < b", "&", "&lt;", "<b>", "<pre>", "</pre>",
    "<http://x>", "`x<y`", "`", "``", "\\`", "\\", "*", "[a", "]", "](", ")", "[l](u)", "\"",
]
# A < that starts a line inside a code span is left an entity (see escape_html): not generated.
texts = st.lists(st.sampled_from(PIECES), max_size=30).map(
    lambda pieces: re.sub(r"(\n[ \t>]*)<", r"\1x<", "".join(pieces))
)
EXAMPLES = settings(max_examples=400, deadline=None, database=None, derandomize=True)


def _links_blanked(html: str) -> str:
    """``html`` with link targets left out: ``<`` in a target is an entity there, and so a
    target in angle brackets reads as a plain one."""
    return re.sub(r'(href|src|title)="[^"]*"', r'\1=""', html)


@EXAMPLES
@given(texts)
def test_the_page_shows_escaped_text_as_markdown_without_html(text: str) -> None:
    shown = PAGE.render(escape_html(text))
    assert _links_blanked(shown) == _links_blanked(AS_TEXT.render(text))


@EXAMPLES
@given(texts)
def test_an_escaped_text_unescapes_to_itself(text: str) -> None:
    assert unescape_html(escape_html(text)) == text


@EXAMPLES
@given(texts)
def test_a_closed_fence_keeps_its_code_and_lets_what_follows_out(text: str) -> None:
    closed = close_open_fence(text)
    assert escape_html(text, close_fence=True) == escape_html(closed)
    assert AS_TEXT.render(closed) == AS_TEXT.render(text.rstrip("\r\n") + "\n")
    assert AS_TEXT.render(closed + "\n\nafter").endswith("<p>after</p>\n")


@EXAMPLES
@given(texts)
def test_the_snippets_are_the_code_blocks_the_page_shows(text: str) -> None:
    shown = PAGE.parse(escape_html(text, close_fence=True))
    blocks = [token.content.rstrip() for token in shown if token.type == "fence"]
    assert [block.code.rstrip() for block in extract_blocks(text)] == blocks


@EXAMPLES
@given(texts)
def test_a_paragraph_put_where_each_fence_ends_leaves_every_code_block_as_it_was(
    text: str,
) -> None:
    """What the page puts after a code block (its Run link and its last run, app/ui/render.py)
    goes where ``fence_ends`` says: in the block's containers, outside every block."""
    lines = re.split(r"\r\n|\r|\n", text)
    for end in reversed(fence_ends(text)):
        if end.line is not None:
            lines[end.line:end.line] = [f"{end.containers}Run here", end.containers.rstrip()]
    marked = "\n".join(lines)
    assert [b.code for b in extract_blocks(marked)] == [b.code for b in extract_blocks(text)]
    shown = AS_TEXT.render(marked)
    assert shown.count("Run here") == sum(end.line is not None for end in fence_ends(text))


def test_to_html_shows_html_as_text_and_highlights_known_languages_only() -> None:
    html = to_html(
        "<b>bold?</b> &amp; [x](javascript:alert(1))\n\n"
        "```python\nprint('<i>')\n```\n\n```no-such-language\n<i>kept</i>\n```\n"
    )
    assert "<p>&lt;b&gt;bold?&lt;/b&gt; &amp;amp; [x](javascript:alert(1))</p>" in html
    assert '<span class="nb">print</span>' in html
    assert """<span class="s1">'&lt;i&gt;'</span>""" in html
    assert '<code class="language-no-such-language">&lt;i&gt;kept&lt;/i&gt;\n</code>' in html
