"""The snippet library through its public API, on SQLite (a file) and on a real PostgreSQL;
migration 0003; download file names."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.snippets import (
    LANGUAGES,
    InvalidSnippet,
    SnippetLibrary,
    SnippetRecord,
    SnippetSummary,
    filename,
)
from app.store import NotFound, Store, StoreError
from app.store.models import Base
from app.store.store import MIGRATIONS
from tests.stored import exchange

SNIPPET_TABLES = {"snippets", "snippet_versions"}


@pytest.fixture
def library(store: Store) -> SnippetLibrary:
    return SnippetLibrary(store)


def upgrade(store: Store, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(store: Store, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def column(store: Store, sql: str, **params: Any) -> list[Any]:
    with store.engine.connect() as connection:
        return list(connection.execute(text(sql), params).scalars())


# -- saving, listing, versions ---------------------------------------------------------------


def test_save_then_get_with_its_first_version(library: SnippetLibrary, store: Store) -> None:
    user = store.user_id()
    before = datetime.now().astimezone()
    snippet = library.save(
        user, "  Fizz buzz  ", "python", "for i in range(1, 16):\n    print(i)\n",
        tags=[" kata ", "loops", "kata", ""],
    )

    record = library.get(user, snippet)
    assert isinstance(record, SnippetRecord)
    assert (record.id, record.title, record.language, record.tags) == (
        snippet, "Fizz buzz", "python", ("kata", "loops"),
    )
    assert (record.conversation_id, record.message_id) == (None, None)
    assert [(v.number, v.code, v.instruction) for v in record.versions] == [
        (1, "for i in range(1, 16):\n    print(i)\n", None),
    ]
    assert record.code == "for i in range(1, 16):\n    print(i)\n"
    assert record.created_at.tzinfo is not None
    assert record.created_at >= before
    assert record.updated_at >= record.created_at


def test_add_version_numbers_them_and_get_lists_them_oldest_first(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    snippet = library.save(user, "Reverse", "python", "def rev(s): return s[::-1]")
    other = library.save(user, "Other", "go", "package main")

    assert library.add_version(user, snippet, "def rev(s: str) -> str:\n    return s[::-1]",
                               "add type hints") == 2
    assert library.add_version(user, snippet, "rev = lambda s: s[::-1]", "make it shorter") == 3
    assert library.add_version(user, other, "package other", "rename the package") == 2

    record = library.get(user, snippet)
    assert [(v.number, v.code, v.instruction) for v in record.versions] == [
        (1, "def rev(s): return s[::-1]", None),
        (2, "def rev(s: str) -> str:\n    return s[::-1]", "add type hints"),
        (3, "rev = lambda s: s[::-1]", "make it shorter"),
    ]
    assert record.code == "rev = lambda s: s[::-1]"
    created = [v.created_at for v in record.versions]
    assert created == sorted(created)
    assert [v.number for v in library.get(user, other).versions] == [1, 2]


def test_versions_added_at_the_same_time_get_different_numbers(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    snippet = library.save(user, "Busy", "python", "v = 1")
    barrier = threading.Barrier(8)

    def refine(n: int) -> int:
        barrier.wait()
        return library.add_version(user, snippet, f"v = {n}", f"make it {n}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        numbers = list(pool.map(refine, range(2, 10)))

    assert sorted(numbers) == list(range(2, 10))
    versions = library.get(user, snippet).versions
    assert [v.number for v in versions] == list(range(1, 10))
    assert {v.code for v in versions[1:]} == {f"v = {n}" for n in range(2, 10)}


def test_list_is_newest_first_and_a_change_moves_a_snippet_to_the_top(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    first = library.save(user, "First", "sql", "SELECT 1;")
    second = library.save(user, "Second", "bash", "echo hi")
    third = library.save(user, "Third", "rust", "fn main() {}")

    listed = library.list(user)
    assert all(isinstance(s, SnippetSummary) for s in listed)
    assert [(s.id, s.title, s.language, s.latest_version) for s in listed] == [
        (third, "Third", "rust", 1), (second, "Second", "bash", 1), (first, "First", "sql", 1),
    ]

    library.add_version(user, first, "SELECT 2;", "select two")
    assert [(s.id, s.latest_version) for s in library.list(user)] == [
        (first, 2), (third, 1), (second, 1),
    ]
    library.rename(user, second, "Second, renamed")
    assert [s.id for s in library.list(user)] == [second, first, third]
    library.set_tags(user, third, ["systems"])
    assert [s.id for s in library.list(user)] == [third, second, first]


def test_rename_and_set_tags(library: SnippetLibrary, store: Store) -> None:
    user = store.user_id()
    snippet = library.save(user, "Old title", "javascript", "x()", tags=["a", "b"])

    library.rename(user, snippet, "  New title ")
    library.set_tags(user, snippet, ["web", " node ", "web"])
    record = library.get(user, snippet)
    assert (record.title, record.tags) == ("New title", ("web", "node"))
    assert [s.tags for s in library.list(user)] == [("web", "node")]

    library.set_tags(user, snippet, [])
    assert library.get(user, snippet).tags == ()
    assert [v.number for v in library.get(user, snippet).versions] == [1]


def test_delete_removes_the_snippet_and_its_versions(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    doomed = library.save(user, "Doomed", "c", "int main(void) { return 0; }")
    library.add_version(user, doomed, "int main(void) { return 1; }", "fail")
    kept = library.save(user, "Kept", "c", "int x;")

    library.delete(user, doomed)

    assert [s.id for s in library.list(user)] == [kept]
    with pytest.raises(NotFound):
        library.get(user, doomed)
    with pytest.raises(NotFound):
        library.delete(user, doomed)
    assert column(store, "SELECT snippet_id FROM snippet_versions") == [kept]


def test_unicode_and_the_largest_code_round_trip(library: SnippetLibrary, store: Store) -> None:
    user = store.user_id()
    chunk = "print('héllo, 世界 🐍')\r\n\t# ∑\n"
    largest = (chunk * (1_000_000 // len(chunk) + 1))[:1_000_000]
    snippet = library.save(user, "Ünïcödé — 日本語 🦀", "python", largest, tags=["日本語", "ü"])
    record = library.get(user, snippet)
    assert (record.title, record.tags, record.code) == (
        "Ünïcödé — 日本語 🦀", ("日本語", "ü"), largest,
    )


# -- search ------------------------------------------------------------------------------------


def test_search_matches_title_tags_and_the_latest_code_ignoring_case(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    by_title = library.save(user, "Quicksort in Python", "python", "def qs(xs): ...")
    by_tag = library.save(user, "Sorting", "go", "package sort", tags=["Algorithms", "go"])
    by_code = library.save(user, "Helper", "javascript", "const x = JSON.parse(text);")
    replaced = library.save(user, "Changed", "python", "import requests")
    library.add_version(user, replaced, "import httpx", "use httpx")
    unicode_tag = library.save(user, "Unicode", "text", "", tags=["日本語"])

    def found(search: str) -> set[int]:
        return {s.id for s in library.list(user, search=search)}

    assert found("quicksort") == {by_title}
    assert found("  QUICKSORT in ") == {by_title}
    assert found("algorithm") == {by_tag}
    assert found("json.PARSE") == {by_code}
    assert found("HTTPX") == {replaced}
    assert found("requests") == set(), "only the latest version's code is searched"
    assert found("日本") == {unicode_tag}
    assert found("sort") == {by_title, by_tag}  # a title and a tag/code
    assert found("nothing like this") == set()
    assert found('"') == found(",") == found("[") == set(), "tags' JSON never matches"
    assert found("") == found("   ") == {by_title, by_tag, by_code, replaced, unicode_tag}


def test_percent_and_underscore_in_a_search_are_literal(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    percent = library.save(user, "Make it 100% faster", "text", "")
    no_percent = library.save(user, "Make it 1000 times faster", "text", "")
    underscore = library.save(user, "Naming", "python", "snake_case = 1")
    no_underscore = library.save(user, "Snakes", "python", "snakeXcase = 1")
    backslash_tag = library.save(user, "Paths", "text", "", tags=["C:\\temp"])

    def found(search: str) -> set[int]:
        return {s.id for s in library.list(user, search=search)}

    assert found("100%") == {percent}
    assert found("%") == {percent}
    assert found("e_c") == {underscore}
    assert found("_") == {underscore}
    assert found("C:\\t") == {backslash_tag}
    assert no_percent not in found("1%0") | found("10_0")
    assert no_underscore not in found("e_c")


# -- users see only their own snippets ---------------------------------------------------------


def test_another_user_gets_not_found_on_every_method(
    library: SnippetLibrary, store: Store,
) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    snippet = library.save(alice, "Alice's secret", "python", "SECRET = 42", tags=["private"])

    with pytest.raises(NotFound):
        library.get(bob, snippet)
    with pytest.raises(NotFound):
        library.add_version(bob, snippet, "SECRET = 0", "steal it")
    with pytest.raises(NotFound):
        library.rename(bob, snippet, "mine now")
    with pytest.raises(NotFound):
        library.set_tags(bob, snippet, ["mine"])
    with pytest.raises(NotFound):
        library.delete(bob, snippet)
    assert library.list(bob) == []
    assert library.list(bob, search="secret") == []

    record = library.get(alice, snippet)
    assert (record.title, record.tags, record.code) == (
        "Alice's secret", ("private",), "SECRET = 42",
    )
    assert [v.number for v in record.versions] == [1]


def test_an_unknown_snippet_is_not_found(library: SnippetLibrary, store: Store) -> None:
    user = store.user_id()
    for missing in (12345, 0, -1, 2**40):  # 2**40 is past PostgreSQL's integer
        with pytest.raises(NotFound):
            library.get(user, missing)
        with pytest.raises(NotFound):
            library.add_version(user, missing, "x", "y")
        with pytest.raises(NotFound):
            library.rename(user, missing, "t")
        with pytest.raises(NotFound):
            library.set_tags(user, missing, [])
        with pytest.raises(NotFound):
            library.delete(user, missing)
        with pytest.raises(NotFound):
            library.save(user, "Linked", "python", "x", message_id=missing)
    assert library.list(user) == []


def test_a_snippet_links_only_the_users_own_conversation_and_message(
    library: SnippetLibrary, store: Store,
) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    begun = exchange(store, alice, None, "write it", "x = 1", title="Alice's chat")
    conversation, reply = begun.conversation_id, begun.reply_id
    other = exchange(store, alice, title="Another chat").conversation_id

    linked = library.save(alice, "From a reply", "python", "x = 1", message_id=reply)
    record = library.get(alice, linked)
    assert (record.conversation_id, record.message_id) == (conversation, reply)
    assert [s.conversation_id for s in library.list(alice)] == [conversation]

    with pytest.raises(NotFound):
        library.save(bob, "Stolen link", "python", "x", conversation_id=conversation)
    with pytest.raises(NotFound):
        library.save(bob, "Stolen link", "python", "x", message_id=reply)
    with pytest.raises(NotFound):
        library.save(alice, "Wrong pair", "python", "x", conversation_id=other, message_id=reply)
    with pytest.raises(NotFound):
        library.save(alice, "Missing", "python", "x", conversation_id="0" * 32)
    with pytest.raises(NotFound):
        library.save(alice, "Missing", "python", "x", message_id=987654)
    assert library.list(bob) == []
    assert [s.id for s in library.list(alice)] == [linked]


def test_a_snippet_outlives_its_conversation_and_message(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    short_lived = exchange(store, user, None, "sort a list", "```python\nsorted(xs)\n```",
                           title="Short-lived")
    conversation = short_lived.conversation_id
    snippet = library.save(user, "Sorted", "python", "sorted(xs)", conversation_id=conversation,
                           message_id=short_lived.reply_id)
    undone = exchange(store, user, None, "and in Go?", None, title="Undone")
    from_undone = library.save(user, "Go sort", "go", "sort.Ints(xs)",
                               message_id=undone.reply_id)

    store.delete(user, conversation)
    store.delete_exchange(user, undone.conversation_id, undone.user_message_id)

    record = library.get(user, snippet)
    assert (record.conversation_id, record.message_id, record.code) == (None, None, "sorted(xs)")
    kept = library.get(user, from_undone)
    assert (kept.conversation_id, kept.message_id) == (undone.conversation_id, None)
    assert {s.id for s in library.list(user)} == {snippet, from_undone}


def test_deleting_a_user_deletes_their_snippets(library: SnippetLibrary, store: Store) -> None:
    gone, stays = store.user_id("gone"), store.user_id("stays")
    library.save(gone, "Bye", "text", "bye")
    library.add_version(gone, library.list(gone)[0].id, "bye bye", "longer")
    kept = library.save(stays, "Hi", "text", "hi")
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM users WHERE id = :id"), {"id": gone})
    assert column(store, "SELECT id FROM snippets") == [kept]
    assert column(store, "SELECT snippet_id FROM snippet_versions") == [kept]


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"title": ""}, "needs a title"),
        ({"title": "   \t "}, "needs a title"),
        ({"title": "x" * 201}, "at most 200 characters; this one has 201"),
        ({"language": "klingon"}, "Unknown language 'klingon'; use one of: python,"),
        ({"language": "py"}, "Unknown language 'py'"),
        ({"language": "Python"}, "Unknown language 'Python'"),
        ({"tags": [f"t{n}" for n in range(21)]}, "at most 20 tags; these are 21"),
        ({"tags": ["x" * 41]}, "A tag is at most 40 characters"),
        ({"tags": "python"}, "a list of words, not one string"),
        ({"code": "x" * 1_000_001}, "at most 1,000,000 characters; this has 1,000,001"),
    ],
)
def test_save_refuses_what_breaks_the_rules_with_a_clear_error(
    library: SnippetLibrary, store: Store, fields: dict[str, Any], message: str,
) -> None:
    user = store.user_id()
    arguments: dict[str, Any] = {"title": "Fine", "language": "python", "code": "x = 1",
                                 **fields}
    with pytest.raises(InvalidSnippet, match=message.replace("(", r"\(")) as raised:
        library.save(user, **arguments)
    assert isinstance(raised.value, StoreError)
    assert library.list(user) == []


def test_the_limits_themselves_are_accepted(library: SnippetLibrary, store: Store) -> None:
    user = store.user_id()
    tags = [f"{n:02d}" + "t" * 38 for n in range(20)]
    snippet = library.save(user, "x" * 200, "text", "y" * 1_000_000, tags=tags)
    assert library.get(user, snippet).tags == tuple(tags)
    for language in LANGUAGES:
        library.save(user, language, language, "")
    assert len(library.list(user)) == 1 + len(LANGUAGES)


def test_later_changes_are_checked_too(library: SnippetLibrary, store: Store) -> None:
    user = store.user_id()
    snippet = library.save(user, "Fine", "python", "x = 1", tags=["ok"])
    with pytest.raises(InvalidSnippet, match="needs a title"):
        library.rename(user, snippet, " ")
    with pytest.raises(InvalidSnippet, match="at most 200"):
        library.rename(user, snippet, "t" * 201)
    with pytest.raises(InvalidSnippet, match="at most 20 tags"):
        library.set_tags(user, snippet, [str(n) for n in range(21)])
    with pytest.raises(InvalidSnippet, match="at most 1,000,000"):
        library.add_version(user, snippet, "x" * 1_000_001, "make it huge")
    record = library.get(user, snippet)
    assert (record.title, record.tags, [v.number for v in record.versions]) == (
        "Fine", ("ok",), [1],
    )


# -- the migration ------------------------------------------------------------------------------


def test_migration_0003_adds_the_tables_to_a_database_with_data(
    open_store: Callable[[], Store],
) -> None:
    store = open_store()
    upgrade(store, "0002")
    assert not SNIPPET_TABLES & set(inspect(store.engine).get_table_names())
    user = store.user_id()
    with store.engine.begin() as connection:  # the schema of 0002, not the models' own
        connection.execute(text(
            "INSERT INTO conversations (id, user_id, title, system_prompt, settings, created_at, "
            "updated_at) VALUES ('c', :user, 'From before the upgrade', '', '{}', :t, :t)"
        ), {"user": user, "t": datetime.now(UTC)})
        connection.execute(text(
            "INSERT INTO messages (id, conversation_id, role, content, status, created_at, "
            "updated_at) VALUES (1, 'c', 'user', 'hello', 'complete', :t, :t)"
        ), {"t": datetime.now(UTC)})

    upgrade(store, "0003")
    assert set(inspect(store.engine).get_table_names()) >= SNIPPET_TABLES
    assert column(store, "SELECT version_num FROM alembic_version") == ["0003"]
    store.migrate()
    assert store.get_conversation(user, "c").exchanges[0].user == "hello"
    library = SnippetLibrary(store)
    snippet = library.save(user, "After", "python", "x = 1", message_id=1)
    assert library.get(user, snippet).conversation_id == "c"

    downgrade(store, "0002")
    assert not SNIPPET_TABLES & set(inspect(store.engine).get_table_names())
    assert column(store, "SELECT title FROM conversations") == ["From before the upgrade"]


def test_the_migrations_match_the_snippet_models(store: Store) -> None:
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    about_snippets = [d for d in differences if any(t in repr(d) for t in SNIPPET_TABLES)]
    assert about_snippets == []


# -- file names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "language", "expected"),
    [
        ("Fizz buzz", "python", "Fizz-buzz.py"),
        ("fizzbuzz.py", "python", "fizzbuzz.py"),
        ("FIZZBUZZ.PY", "python", "FIZZBUZZ.py"),
        ("../../etc/passwd", "bash", "etc-passwd.sh"),
        ("a/b\\c:d*e?f\"g<h>i|j", "c", "a-b-c-d-e-f-g-h-i-j.c"),
        ("...hidden", "go", "hidden.go"),
        (".bashrc", "bash", "bashrc.sh"),
        ("a..b", "rust", "a.b.rs"),
        ("Zoë's café — naïve", "java", "Zoe-s-cafe-naive.java"),
        ("日本語", "typescript", "snippet.ts"),
        ("🐍 Snake", "python", "Snake.py"),
        ("", "sql", "snippet.sql"),
        ("line\nbreak\ttab\x00nul", "cpp", "line-break-tab-nul.cpp"),
        ("CON", "text", "CON_.txt"),
        ("nul.backup", "text", "nul.backup_.txt"),
        ("x" * 300, "javascript", "x" * 77 + ".js"),
        ("word " * 40, "java", ("word-" * 15).rstrip("-") + ".java"),
        ("notes", "klingon", "notes.txt"),
    ],
)
def test_filename_is_safe(title: str, language: str, expected: str) -> None:
    name = filename(title, language)
    assert name == expected
    assert len(name) <= 80
    assert name.isascii()
    assert not {"/", "\\", "\0"} & set(name)
    assert not name.startswith(".")


def test_filename_takes_the_record_and_its_language(
    library: SnippetLibrary, store: Store,
) -> None:
    user = store.user_id()
    snippet = library.save(user, "My query", "sql", "SELECT 1;")
    record = library.get(user, snippet)
    assert filename(record) == "My-query.sql"
    assert filename(record, "python") == "My-query.py"
    assert filename(library.list(user)[0]) == "My-query.sql"
