"""Code blocks out of a reply: CommonMark's fenced code blocks, and the guess at an untagged
block's language. Each test states the exact blocks expected."""

from __future__ import annotations

from textwrap import dedent

import pytest

from app.snippets import LANGUAGES, CodeBlock, extract_blocks, guess_language
from app.snippets.extract import language_of


def md(text: str) -> str:
    return dedent(text).lstrip("\n")


def test_tagged_and_untagged_blocks_in_document_order() -> None:
    reply = md("""
        Here is the function:

        ```python
        def add(a, b):
            return a + b
        ```

        Run it with:

        ```
        $ python add.py
        ```
        That's all.
    """)
    assert extract_blocks(reply) == [
        CodeBlock(0, "python", "def add(a, b):\n    return a + b", tagged=True),
        CodeBlock(1, "bash", "$ python add.py", tagged=False),
    ]


def test_no_fences_no_blocks() -> None:
    assert extract_blocks("") == []
    assert extract_blocks("Just prose.\nOn two lines.\n") == []


# -- fences inside fences ---------------------------------------------------------------------


def test_a_four_backtick_fence_holds_a_three_backtick_block_as_content() -> None:
    reply = md("""
        Write it in your README like this:

        ````markdown
        # Usage

        ```python
        import add
        ```
        ````

        ```python
        print(add.add(1, 2))
        ```
    """)
    assert extract_blocks(reply) == [
        CodeBlock(0, "text", "# Usage\n\n```python\nimport add\n```", tagged=True),
        CodeBlock(1, "python", "print(add.add(1, 2))", tagged=True),
    ]


def test_a_closing_fence_is_the_same_character_at_least_as_long_with_nothing_after() -> None:
    reply = md("""
        `````js
        ````
        ~~~~~~~
        ````` still inside
        ```````
        after
    """)
    assert extract_blocks(reply) == [
        CodeBlock(0, "javascript", "````\n~~~~~~~\n````` still inside", tagged=True),
    ]


def test_tilde_fences_and_backticks_inside_them() -> None:
    reply = md("""
        ~~~
        ```python
        x = 1
        ```
        ~~~

        ~~~~ sql `with backticks` in the info string
        SELECT 1;
        ~~~~
    """)
    assert extract_blocks(reply) == [
        CodeBlock(0, "text", "```python\nx = 1\n```", tagged=False),
        CodeBlock(1, "sql", "SELECT 1;", tagged=True),
    ]


# -- indentation and containers ---------------------------------------------------------------


def test_fences_in_a_numbered_list_lose_the_item_indentation() -> None:
    reply = md("""
        1. Install it:
           ```bash
           pip install requests
           ```
        2. Use it:

           ```python
           import requests

           def fetch(url):
               return requests.get(url).text
           ```
        3. Done.
    """)
    assert extract_blocks(reply) == [
        CodeBlock(0, "bash", "pip install requests", tagged=True),
        CodeBlock(
            1, "python",
            "import requests\n\ndef fetch(url):\n    return requests.get(url).text",
            tagged=True,
        ),
    ]


def test_fences_in_bulleted_and_nested_lists_and_block_quotes() -> None:
    reply = md("""
        - A shell one-liner:

          ```sh
          ls -la
          ```
        * Nested:
          - ```go
            fmt.Println("hi")
            ```
        > ```rust
        > let x = 1;
        > ```
    """)
    assert extract_blocks(reply) == [
        CodeBlock(0, "bash", "ls -la", tagged=True),
        CodeBlock(1, "go", 'fmt.Println("hi")', tagged=True),
        CodeBlock(2, "rust", "let x = 1;", tagged=True),
    ]


def test_a_fence_in_a_list_item_ends_with_the_item() -> None:
    reply = md("""
        - ```python
          x = 1
        y = 2
    """)
    assert extract_blocks(reply) == [CodeBlock(0, "python", "x = 1", tagged=True)]


def test_an_indented_fence_removes_that_much_indentation_from_its_lines() -> None:
    reply = "   ```c\n   int a;\n  int b;\nint c;\n      int d;\n ```"
    assert extract_blocks(reply) == [
        CodeBlock(0, "c", "int a;\nint b;\nint c;\n   int d;", tagged=True),
    ]


def test_a_fence_inside_html_counts_as_html_is_shown_as_text() -> None:
    reply = "<pre>\n```python\nx = 1\n```\n</pre>"
    assert extract_blocks(reply) == [CodeBlock(0, "python", "x = 1", tagged=True)]


def test_indented_code_blocks_are_not_extracted_nor_fences_inside_them() -> None:
    reply = md("""
        An indented block:

            ```python
            x = 1
            ```

        and a fence indented four spaces after a paragraph is just text:
            ```js
            y = 2
    """)
    assert extract_blocks(reply) == []


def test_tabs_count_as_tab_stops_of_four_columns() -> None:
    tab_indented = "\t```python\n\tx = 1\n\t```"  # a tab is 4 columns: indented code
    assert extract_blocks(tab_indented) == []
    # in a list item (content at column 2) a tab at column 0 leaves 2 columns as spaces
    in_a_list = "- ```go\n\tfunc main() {\n\t\tfmt.Println(1)\n\t}\n  ```"
    assert extract_blocks(in_a_list) == [
        CodeBlock(0, "go", "  func main() {\n  \tfmt.Println(1)\n  }", tagged=True),
    ]


# -- what is not a fence, and how blocks end ---------------------------------------------------


def test_inline_code_with_backticks_is_not_a_fence() -> None:
    reply = md("""
        Use ```print()``` or `len(x)` inline, and ``a ` b`` too.
        ```js `x`
        not code
    """)
    assert extract_blocks(reply) == []


def test_an_unterminated_fence_runs_to_the_end_of_the_reply() -> None:
    cut_off = "Here you go:\n\n```python\ndef fib(n):\n    if n < 2:\n        return n\n"
    assert extract_blocks(cut_off) == [
        CodeBlock(0, "python", "def fib(n):\n    if n < 2:\n        return n", tagged=True),
    ]
    assert extract_blocks("```js\nconst a = 1;\n\n") == [
        CodeBlock(0, "javascript", "const a = 1;\n", tagged=True),
    ]
    assert extract_blocks("text\n~~~") == [CodeBlock(0, "text", "", tagged=False)]


def test_empty_blocks() -> None:
    reply = "```python\n```\n\n```\n\n```\n````\n````"
    assert extract_blocks(reply) == [
        CodeBlock(0, "python", "", tagged=True),
        CodeBlock(1, "text", "", tagged=False),
        CodeBlock(2, "text", "", tagged=False),
    ]


def test_crlf_and_cr_line_endings() -> None:
    crlf = "Code:\r\n```python\r\nx = 1\r\n\r\nprint(x)\r\n```\r\nDone.\r\n"
    assert extract_blocks(crlf) == [CodeBlock(0, "python", "x = 1\n\nprint(x)", tagged=True)]
    assert extract_blocks("```sql\rSELECT 1;\r```") == [
        CodeBlock(0, "sql", "SELECT 1;", tagged=True),
    ]


def test_lines_keep_their_own_spaces_tabs_and_odd_characters() -> None:
    code = "x = 'a\\tb'  \n\tindented\u2028same line\x0c\n  "
    assert extract_blocks(f"```python\n{code}\n```") == [
        CodeBlock(0, "python", code, tagged=True),
    ]


# -- info strings and languages ---------------------------------------------------------------


def test_the_first_word_of_the_info_string_is_the_language() -> None:
    reply = md("""
        ```python title="x.py" {linenos=true}
        x = 1
        ```
        ```  Python3
        y = 2
        ```
        ```{.python .numberLines}
        z = 3
        ```
        ```ts{1,3}
        let a: number = 1;
        ```
    """)
    assert [(b.language, b.tagged) for b in extract_blocks(reply)] == [
        ("python", True), ("python", True), ("python", True), ("typescript", True),
    ]


@pytest.mark.parametrize(
    ("word", "language"),
    [
        ("python", "python"), ("py", "python"), ("python3", "python"),
        ("javascript", "javascript"), ("js", "javascript"), ("node", "javascript"),
        ("typescript", "typescript"), ("ts", "typescript"),
        ("bash", "bash"), ("sh", "bash"), ("shell", "bash"), ("zsh", "bash"),
        ("sql", "sql"), ("go", "go"), ("golang", "go"), ("rust", "rust"), ("rs", "rust"),
        ("c", "c"), ("h", "c"), ("cpp", "cpp"), ("c++", "cpp"), ("cc", "cpp"),
        ("cxx", "cpp"), ("hpp", "cpp"), ("java", "java"), ("JAVA", "java"),
        ("text", "text"), ("txt", "text"),
        ("console", "text"), ("markdown", "text"), ("kotlin", "text"), ("pycon", "text"),
        ("HTML", "html"), ("htm", "html"), ("svg", "svg"), ("mermaid", "mermaid"),
        ("mmd", "mermaid"),
    ],
)
def test_aliases_name_their_canonical_language(word: str, language: str) -> None:
    assert language_of(word) == language
    assert extract_blocks(f"```{word}\n$ ls\n```") == [
        CodeBlock(0, language, "$ ls", tagged=True),
    ]


def test_the_languages_and_their_extensions() -> None:
    assert {name: language.extension for name, language in LANGUAGES.items()} == {
        "python": ".py", "javascript": ".js", "typescript": ".ts", "bash": ".sh",
        "sql": ".sql", "go": ".go", "rust": ".rs", "c": ".c", "cpp": ".cpp", "java": ".java",
        "html": ".html", "svg": ".svg", "mermaid": ".mmd", "text": ".txt",
    }
    assert "console" not in {alias for language in LANGUAGES.values() for alias in
                             language.aliases}


# -- guessing the language of untagged blocks -------------------------------------------------


@pytest.mark.parametrize(
    ("code", "language"),
    [
        ("#!/usr/bin/env python3\nprint('hi')", "python"),
        ("#!/bin/bash\nset -e", "bash"),
        ("#!/usr/bin/env -S node --no-warnings\nx()", "javascript"),
        ("import os\n\ndef main():\n    print(os.getcwd())", "python"),
        ("from dataclasses import dataclass\n\n@dataclass\nclass P:\n    x: int", "python"),
        ("for i in range(3):\n    print(i)", "python"),
        ("const add = (a, b) => a + b;\nconsole.log(add(1, 2));", "javascript"),
        ("function greet(name) {\n  return `Hi ${name}`;\n}", "javascript"),
        ("import React from 'react';\nexport default function App() {}", "javascript"),
        ("interface User {\n  name: string;\n}\nconst u: User = { name: 'a' };", "typescript"),
        ("function len(s: string): number {\n  return s.length;\n}", "typescript"),
        ("#include <stdio.h>\n\nint main(void) {\n    printf(\"hi\\n\");\n}", "c"),
        ("#include <iostream>\n\nint main() {\n    std::cout << 1;\n}", "cpp"),
        ("std::vector<int> v{1, 2, 3};", "cpp"),
        ("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(1)\n}", "go"),
        ("x := 1\nfmt.Printf(\"%d\", x)", "go"),
        ("fn main() {\n    let mut v = Vec::new();\n    println!(\"{:?}\", v);\n}", "rust"),
        (
            "public class Hello {\n    public static void main(String[] args) {\n"
            "        System.out.println(\"hi\");\n    }\n}",
            "java",
        ),
        ("SELECT name, count(*)\nFROM users\nGROUP BY name;", "sql"),
        ("CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL);", "sql"),
        ("insert into users (name) values ('a');", "sql"),
        ("$ pip install requests", "bash"),
        ("echo \"$HOME\"", "bash"),
        ("for f in *.txt; do\n  wc -l \"$f\"\ndone", "bash"),
        ("if [ -f x ]; then\n  rm x\nfi", "bash"),
        ("Expected output:\n3 items found", "text"),
        ("", "text"),
    ],
)
def test_guess_language(code: str, language: str) -> None:
    assert guess_language(code) == language


def test_untagged_blocks_get_the_guess_and_tagged_ones_keep_their_tag() -> None:
    reply = "```\ndef f():\n    pass\n```\n```text\ndef f():\n    pass\n```"
    assert extract_blocks(reply) == [
        CodeBlock(0, "python", "def f():\n    pass", tagged=False),
        CodeBlock(1, "text", "def f():\n    pass", tagged=True),
    ]
