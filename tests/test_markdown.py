"""HTML in messages shows as text; code keeps its characters."""

from __future__ import annotations

import pytest

from app.markdown import escape_html


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
    ],
)
def test_html_outside_code_is_escaped(text: str, shown: str) -> None:
    assert escape_html(text) == shown
