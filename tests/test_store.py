"""The store's behaviour through its public API, on SQLite (a file) and on a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.store import BegunTurn, NotFound, Store
from app.store.leases import INTERRUPTED_BY_RESTART, ProcessLease
from app.store.models import Base
from app.store.store import MIGRATIONS
from tests.postgres import PostgresMissing, find_bin_dir
from tests.stored import exchange, retry
from tests.test_snippets import downgrade, upgrade

REPO = Path(__file__).resolve().parent.parent


# -- schema and users ------------------------------------------------------------------------


def test_migrate_creates_the_schema_and_running_it_again_changes_nothing(
    open_store: Callable[[], Store],
) -> None:
    store = open_store()
    store.migrate()
    user = store.user_id()
    conversation = exchange(store, user, None, "hello", "hi",
                            title="Before the second migration").conversation_id

    store.migrate()
    again = open_store()
    again.migrate()

    assert [c.id for c in again.list_conversations(user)] == [conversation]
    record = again.get_conversation(user, conversation)
    assert [(e.user, e.reply and e.reply.content) for e in record.exchanges] == [("hello", "hi")]


def test_the_local_user_is_created_once(store: Store, open_store: Callable[[], Store]) -> None:
    local = store.user_id()
    assert store.user_id() == local
    assert store.user_id("local") == local
    assert open_store().user_id() == local
    other = store.user_id("someone-else")
    assert other != local
    assert store.user_id("someone-else") == other


# -- conversations ---------------------------------------------------------------------------


def test_create_list_get_rename_and_delete_a_conversation(store: Store) -> None:
    user = store.user_id()
    first = exchange(
        store, user, None, "write fizzbuzz", "done", title="First",
        system_prompt="You are terse.", settings={"temperature": 0.2, "stop": "```"},
        language="python", model="smol", backend="tgi",
    ).conversation_id
    second = exchange(store, user, title="Second", model=None, backend=None).conversation_id

    assert [(c.id, c.title) for c in store.list_conversations(user)] == [
        (second, "Second"), (first, "First"),
    ]
    record = store.get_conversation(user, first)
    assert (record.id, record.title, record.system_prompt) == (first, "First", "You are terse.")
    assert (record.model, record.backend, record.language) == ("smol", "tgi", "python")
    assert record.settings == {"temperature": 0.2, "stop": "```"}
    assert [(e.user, e.reply and e.reply.content) for e in record.exchanges] == [
        ("write fizzbuzz", "done"),
    ]
    plain = store.get_conversation(user, second)
    assert (plain.system_prompt, plain.model, plain.language, plain.settings) == (
        "", None, None, {})

    exchange(store, user, first, "a new message moves it to the top")
    assert [c.id for c in store.list_conversations(user)] == [first, second]

    store.rename(user, first, "Renamed")
    assert store.get_conversation(user, first).title == "Renamed"
    assert {c.title for c in store.list_conversations(user)} == {"Renamed", "Second"}

    store.delete(user, first)
    with pytest.raises(NotFound):
        store.get_conversation(user, first)
    assert [c.id for c in store.list_conversations(user)] == [second]


def test_an_unknown_conversation_is_not_found(store: Store) -> None:
    user = store.user_id()
    with pytest.raises(NotFound):
        store.get_conversation(user, "0" * 32)
    with pytest.raises(NotFound):
        store.delete(user, "no-such-id")


def test_search_matches_titles_and_message_text_ignoring_case(store: Store) -> None:
    """Each conversation holds "hello" and "hi" but for the text it is searched by."""
    user = store.user_id()
    by_title = exchange(store, user, title="Quicksort in Python").conversation_id
    by_message = exchange(store, user, None, "How do I REVERSE a string?",
                          title="Strings").conversation_id
    by_reply = exchange(store, user, None, "match digits", "Use \\d+ with re.findall",
                        title="Regex").conversation_id
    unrelated = exchange(store, user, title="Unrelated").conversation_id

    def found(search: str) -> set[str]:
        return {c.id for c in store.list_conversations(user, search=search)}

    assert found("quicksort") == {by_title}
    assert found("QUICKSORT in") == {by_title}
    assert found("reverse a STRING") == {by_message}
    assert found("RE.FINDALL") == {by_reply}
    assert found("\\d+") == {by_reply}
    assert found("  python  ") == {by_title}
    assert found("nothing like this") == set()
    assert found("") == found("   ") == {by_title, by_message, by_reply, unrelated}


def test_percent_and_underscore_in_a_search_are_literal(store: Store) -> None:
    user = store.user_id()
    percent = exchange(store, user, title="Make it 100% faster").conversation_id
    no_percent = exchange(store, user, title="Make it 1000 times faster").conversation_id
    underscore = exchange(store, user, None, "snake_case or camelCase?",
                          title="Naming").conversation_id
    exchange(store, user, None, "a snakeXcase of mistaken identity", title="Snakes")
    backslash = exchange(store, user, title="Paths like C:\\temp").conversation_id

    def found(search: str) -> set[str]:
        return {c.id for c in store.list_conversations(user, search=search)}

    assert found("%") == {percent}
    assert found("100%") == {percent}
    assert found("100% faster") == {percent}
    assert found("_") == {underscore}
    assert found("e_c") == {underscore}
    assert found("C:\\t") == {backslash}
    assert no_percent not in found("1%0") | found("10_0")


# -- users see only their own conversations ----------------------------------------------


def test_another_user_cannot_see_or_touch_a_conversation(store: Store) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    begun = exchange(store, alice, None, "the plan", "ok", title="Alice's secret plan",
                     system_prompt="Tell no one.")
    conversation, message, reply = begun.conversation_id, begun.user_message_id, begun.reply_id

    with pytest.raises(NotFound):
        store.get_conversation(bob, conversation)
    with pytest.raises(NotFound):
        store.rename(bob, conversation, "mine now")
    with pytest.raises(NotFound):
        store.delete(bob, conversation)
    with pytest.raises(NotFound):
        store.begin_turn(bob, conversation, "", {}, None, message="hello?", parent=reply)
    with pytest.raises(NotFound):
        store.begin_turn(bob, conversation, "", {}, None, reply_to=message)
    with pytest.raises(NotFound):
        store.delete_exchange(bob, conversation, message)
    with pytest.raises(NotFound):
        store.save_reply(bob, reply, "overwritten", status="stop")
    assert store.list_conversations(bob) == []
    assert store.list_conversations(bob, search="plan") == []
    assert store.count_messages(bob) == 0

    record = store.get_conversation(alice, conversation)
    assert (record.title, record.system_prompt) == ("Alice's secret plan", "Tell no one.")
    assert [(e.user, e.reply and e.reply.content) for e in record.exchanges] == [
        ("the plan", "ok"),
    ]
    assert store.count_messages(alice) == 2


# -- messages and replies --------------------------------------------------------------------


def test_a_retry_keeps_both_versions_and_shows_the_latest(store: Store) -> None:
    user = store.user_id()
    first = exchange(store, user, None, "write fizzbuzz", "first try", title="Retry")
    conversation = first.conversation_id
    second = retry(store, user, conversation, first.user_message_id, "second try",
                   model="bigger", backend="tgi")

    assert second.reply_id != first.reply_id
    record = store.get_conversation(user, conversation)
    assert len(record.exchanges) == 1
    reply = record.exchanges[0].reply
    assert reply is not None
    assert (reply.id, reply.content, reply.model, reply.backend) == (
        second.reply_id, "second try", "bigger", "tgi",
    )
    assert (record.model, record.backend) == ("bigger", "tgi")
    assert store.count_messages(user) == 3  # the question and both versions of the answer


def test_conversation_records_are_the_users_oldest_first_as_get_conversation_gives_them(
    store: Store,
) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    begun = exchange(store, alice, None, "write fizzbuzz", "first try", title="First",
                     system_prompt="You are terse.")
    first = begun.conversation_id
    retry(store, alice, first, begun.user_message_id, "second try", status="length",
          model="bigger", backend="tgi")
    second = exchange(store, alice, None, "a reply still streaming", None,
                      title="Second").conversation_id
    exchange(store, bob, title="Bob's")

    records = store.conversation_records(alice)
    assert records == [store.get_conversation(alice, first), store.get_conversation(alice, second)]
    assert store.conversation_records(alice, second) == records[1:]
    assert records[0].created_at.tzinfo is not None  # aware, as SQLite would not give it
    assert records[0].created_at <= records[1].created_at
    with pytest.raises(NotFound):
        store.conversation_records(bob, first)


def test_a_reply_is_saved_partial_then_final_with_its_stats(store: Store) -> None:
    user = store.user_id()
    begun = exchange(store, user, None, "count to three", None, title="Stream")
    conversation, reply_id = begun.conversation_id, begun.reply_id

    def reply() -> tuple[object, ...]:
        stored = store.get_conversation(user, conversation).exchanges[0].reply
        assert stored is not None
        return (
            stored.id, stored.content, stored.status, stored.error, stored.tokens,
            stored.time_to_first_token, stored.tokens_per_second, stored.model, stored.backend,
        )

    assert reply() == (reply_id, "", "streaming", None, None, None, None, "smol", "llama.cpp")
    store.save_reply(user, reply_id, "one, ")
    assert reply() == (
        reply_id, "one, ", "streaming", None, None, None, None, "smol", "llama.cpp",
    )
    store.save_reply(
        user, reply_id, "one, two, three", status="stop", tokens=6, time_to_first_token=0.25,
        tokens_per_second=12.5,
    )
    assert reply() == (reply_id, "one, two, three", "stop", None, 6, 0.25, 12.5, "smol",
                       "llama.cpp")

    failed = retry(store, user, conversation, begun.user_message_id, None).reply_id
    store.save_reply(user, failed, "one, t", status="interrupted", error="The backend went away.")
    assert reply()[:4] == (failed, "one, t", "interrupted", "The backend went away.")


EXPIRY = timedelta(seconds=10)


def died(store: Store, lease: ProcessLease) -> None:
    """``lease``'s process stops beating: its last heartbeat a minute ago."""
    with store.engine.begin() as db:
        db.execute(text("UPDATE leases SET heartbeat_at = :t WHERE id = :id"),
                   {"t": datetime.now(UTC) - timedelta(minutes=1), "id": lease.id})


def leases(store: Store) -> list[str]:
    with store.engine.begin() as db:
        return list(db.execute(text("SELECT id FROM leases")).scalars())


def test_a_live_process_marks_the_replies_of_one_whose_lease_expired_and_no_other(
    store: Store, open_store: Callable[[], Store],
) -> None:
    """Two processes on one database. While both beat, neither touches the other's replies;
    once one stops beating for LEASE_EXPIRY, the other's next heartbeat marks its replies still
    streaming interrupted, their text and tokens as last saved, and drops its lease."""
    doomed_store, live_store = open_store(), open_store()
    doomed, live = ProcessLease(doomed_store, EXPIRY), ProcessLease(live_store, EXPIRY)
    assert (doomed.beat(), live.beat()) == (0, 0)
    alice, bob = store.user_id("alice"), store.user_id("bob")
    first = exchange(doomed_store, alice, None, "long answer please", None, title="Cut off")
    mine, cut = first.conversation_id, first.reply_id
    doomed_store.save_reply(alice, cut, "half of", tokens=2, time_to_first_token=0.1,
                            tokens_per_second=20.0)
    finished = exchange(doomed_store, alice, mine, "short one", "done").reply_id
    stopped = exchange(doomed_store, alice, mine, "another", "sto", status="stopped").reply_id
    streaming = exchange(live_store, bob, None, "hi", None, title="Still going")

    assert (live.beat(), doomed.beat()) == (0, 0), "both live: nothing to mark"
    died(store, doomed)
    assert live.beat() == 1
    replies = {
        e.reply.id: e.reply for e in store.get_conversation(alice, mine).exchanges if e.reply
    }
    assert (replies[cut].status, replies[cut].error) == ("interrupted", INTERRUPTED_BY_RESTART)
    assert (replies[cut].content, replies[cut].tokens, replies[cut].tokens_per_second) == (
        "half of", 2, 20.0)
    assert (replies[finished].status, replies[finished].error) == ("stop", None)
    assert (replies[stopped].status, replies[stopped].error) == ("stopped", None)
    bobs = store.get_conversation(bob, streaming.conversation_id).exchanges[0].reply
    assert bobs is not None
    assert (bobs.status, bobs.error) == ("streaming", None)
    assert leases(store) == [live.id]
    assert live.beat() == 0


def test_a_released_lease_leaves_no_reply_streaming_and_one_taken_for_dead_comes_back(
    store: Store, open_store: Callable[[], Store],
) -> None:
    """A process that stops cleanly releases its lease; a reply it could not end (its last
    save failed) is marked at the next heartbeat of another. A process taken for dead (it
    stalled past the expiry) takes its lease again at its next heartbeat, and the replies it
    begins then are its own again."""
    user = store.user_id()
    stopping_store, other_store = open_store(), open_store()
    stopping, other = ProcessLease(stopping_store, EXPIRY), ProcessLease(other_store, EXPIRY)
    stopping.beat()
    other.beat()
    unsaved = exchange(stopping_store, user, None, "hi", None).reply_id
    stopping.release()
    assert leases(store) == [other.id]
    assert other.beat() == 1
    assert store.exchange_of(user, unsaved)[2].status == "interrupted"

    stalled = ProcessLease(stopping_store, EXPIRY)
    stalled.beat()
    died(store, stalled)
    assert other.beat() == 0
    assert stalled.beat() == 0
    assert sorted(leases(store)) == sorted([other.id, stalled.id])
    later = exchange(stopping_store, user, None, "again", None).reply_id
    assert other.beat() == 0
    assert store.exchange_of(user, later)[2].status == "streaming"


def test_a_reply_left_streaming_before_the_leases_migration_is_marked_at_the_first_heartbeat(
    open_store: Callable[[], Store],
) -> None:
    store = open_store()
    upgrade(store, "0008")
    user = store.user_id()
    with store.engine.begin() as db:  # the schema of 0008, not the models' own
        moment = {"t": datetime.now(UTC)}
        db.execute(text(
            "INSERT INTO conversations (id, user_id, title, system_prompt, settings, created_at, "
            "updated_at) VALUES ('c', :user, 'From before the upgrade', '', '{}', :t, :t)"
        ), {"user": user, **moment})
        db.execute(text(
            "INSERT INTO messages (id, conversation_id, role, content, status, created_at, "
            "updated_at) VALUES (1, 'c', 'user', 'count', 'complete', :t, :t)"), moment)
        db.execute(text(
            "INSERT INTO messages (id, conversation_id, role, content, status, reply_to_id, "
            "created_at, updated_at) VALUES (2, 'c', 'assistant', 'one two', 'streaming', 1, "
            ":t, :t)"), moment)
    store.migrate()
    assert ProcessLease(store, EXPIRY).beat() == 1
    reply = store.exchange_of(user, 2)[2]
    assert (reply.status, reply.content, reply.error) == (
        "interrupted", "one two", INTERRUPTED_BY_RESTART)


def test_deleting_a_conversation_deletes_its_messages(store: Store) -> None:
    user = store.user_id()
    doomed = exchange(store, user, None, "q1", "a1", title="Doomed")
    retry(store, user, doomed.conversation_id, doomed.user_message_id, None)
    exchange(store, user, doomed.conversation_id, "q2", "a2")
    kept = exchange(store, user, None, "q", "a", title="Kept").conversation_id
    assert store.count_messages(user) == 7

    store.delete(user, doomed.conversation_id)

    assert store.count_messages(user) == 2
    assert [e.user for e in store.get_conversation(user, kept).exchanges] == ["q"]


def test_delete_exchange_removes_the_message_and_every_version_of_its_reply(
    store: Store,
) -> None:
    user = store.user_id()
    conversation = exchange(store, user, None, "keep me", "kept", title="Undo").conversation_id
    taken = exchange(store, user, conversation, "take me back", "v1")
    retry(store, user, conversation, taken.user_message_id, "v2")
    assert store.count_messages(user) == 5

    store.delete_exchange(user, conversation, taken.user_message_id)

    record = store.get_conversation(user, conversation)
    assert [(e.user, e.reply and e.reply.content) for e in record.exchanges] == [
        ("keep me", "kept"),
    ]
    assert store.count_messages(user) == 2
    with pytest.raises(NotFound):
        store.delete_exchange(user, conversation, taken.user_message_id)


def test_delete_exchange_refuses_a_message_of_another_conversation(store: Store) -> None:
    user = store.user_id()
    here = exchange(store, user, title="Here").conversation_id
    there = exchange(store, user, None, "not here", "right", title="There")

    with pytest.raises(NotFound):
        store.delete_exchange(user, here, there.user_message_id)
    assert [e.user for e in store.get_conversation(user, there.conversation_id).exchanges] == [
        "not here"]


def test_unicode_and_a_one_megabyte_message_round_trip_exactly(store: Store) -> None:
    user = store.user_id("Zoë 🦀")
    title = "Ünïcödé — 日本語 · עברית · 🐍🦀 e\u0301"
    text = "print('héllo, 世界')\r\n\tλ x: x ** 2  # ∑ 🧮 \U0001f9ea\u200d\n  trailing  "
    reply = "".join(chr(code) for code in range(0x20, 0x3000) if not 0xD800 <= code < 0xE000)
    chunk = "def f(x):\n    return 'ÿ€😀'  # 1 MB\n"
    huge = chunk * (1024 * 1024 // len(chunk.encode()) + 1)
    assert len(huge.encode()) >= 1024 * 1024

    conversation = exchange(store, user, None, text, reply, title=title,
                            system_prompt="Réponds en français. 🇫🇷").conversation_id
    exchange(store, user, conversation, huge, huge)

    record = store.get_conversation(user, conversation)
    assert (record.title, record.system_prompt) == (title, "Réponds en français. 🇫🇷")
    assert [(e.user, e.reply and e.reply.content) for e in record.exchanges] == [
        (text, reply), (huge, huge),
    ]
    assert [c.title for c in store.list_conversations(user, search="日本語")] == [title]
    assert store.user_id("Zoë 🦀") == user


# -- the PostgreSQL fixture and the benchmark harness -----------------------------------------


def test_missing_postgres_binaries_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / "15" / "bin").mkdir(parents=True)
    (tmp_path / "15" / "bin" / "psql").touch()  # a client alone is not enough
    with pytest.raises(PostgresMissing, match="scripts/test installs them"):
        find_bin_dir(tmp_path)
    for name in ("initdb", "pg_ctl", "postgres"):
        for version in ("9.6", "15", "16"):
            (tmp_path / version / "bin").mkdir(parents=True, exist_ok=True)
            (tmp_path / version / "bin" / name).touch()
    assert find_bin_dir(tmp_path) == tmp_path / "16" / "bin"



@pytest.mark.postgres
def test_the_store_benchmark_runs_in_quick_mode(tmp_path: Path) -> None:
    output = tmp_path / "store.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.store", "--quick", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| database |" in result.stdout
    report = json.loads(output.read_text())
    assert report["mode"] == "quick"
    machine = report["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["memory_gib"] > 0
    assert machine["sqlite_version"]
    assert "PostgreSQL" in machine["postgres_version"]
    databases = [row["database"] for row in report["results"]]
    assert databases[0].startswith("sqlite")
    assert any(name.startswith("postgresql") for name in databases)
    for row in report["results"]:
        assert row["writes"] > 0
        assert row["writes_per_second"] > 0
        assert row["load_messages"] == report["parameters"]["load_messages"]
        assert row["load_ms_median"] > 0


def test_a_turn_begins_in_one_transaction(store: Store) -> None:
    user = store.user_id()
    first = store.begin_turn(user, None, "be terse", {"temperature": 0.2}, "python",
                             message="write fizzbuzz", title="Fizzbuzz", model="smol",
                             backend="llama.cpp")
    record = store.get_conversation(user, first.conversation_id)
    assert (record.title, record.system_prompt, record.language) == (
        "Fizzbuzz", "be terse", "python")
    assert [(e.user_message_id, e.user, e.reply and e.reply.status) for e in record.exchanges] \
        == [(first.user_message_id, "write fizzbuzz", "streaming")]

    retry = store.begin_turn(user, first.conversation_id, "be thorough", {"temperature": 0.9},
                             "", reply_to=first.user_message_id, model="big", backend="tgi")
    assert retry.user_message_id == first.user_message_id
    record = store.get_conversation(user, first.conversation_id)
    assert (record.system_prompt, record.settings, record.language) == (
        "be thorough", {"temperature": 0.9}, None)
    assert record.exchanges[0].reply is not None
    assert (record.exchanges[0].reply.id, record.model) == (retry.reply_id, "big")
    assert store.count_messages(user) == 3


def test_a_message_keeps_its_attached_files_and_a_retry_or_an_edit_without_any_adds_none(
    store: Store,
) -> None:
    user = store.user_id()
    files = [{"name": "fizz.py", "language": "python", "text": "print('é')\n"},
             {"name": "notes.md", "language": "md", "text": "```\nquoted\n```\n"}]
    first = store.begin_turn(user, None, "", {}, None, message="review", title="Review",
                             attachments=files)
    store.begin_turn(user, first.conversation_id, "", {}, None,
                     reply_to=first.user_message_id)
    [exchange] = store.get_conversation(user, first.conversation_id).exchanges
    assert exchange.attachments == tuple(files)
    second = store.begin_turn(user, first.conversation_id, "", {}, None, message="plain",
                              parent=exchange.reply.id if exchange.reply else None)
    tree = store.get_tree(user, first.conversation_id)
    assert [(m.content, m.attachments) for m in tree.messages if m.role == "user"] == [
        ("review", tuple(files)), ("plain", ()),
    ]
    assert second.user_message_id == tree.messages[-2].id


def test_the_migration_of_attachments_adds_their_column_and_takes_it_away(
    open_store: Callable[[], Store],
) -> None:
    store = open_store()
    store.migrate()
    user = store.user_id()
    files = [{"name": "a.py", "language": "python", "text": "pass\n"}]
    begun = store.begin_turn(user, None, "", {}, None, message="with files", title="Files",
                             attachments=files)
    downgrade(store, "0005")
    assert "attachments" not in {c["name"] for c in inspect(store.engine).get_columns("messages")}
    store.migrate()
    [exchange] = store.get_conversation(user, begun.conversation_id).exchanges
    assert (exchange.user, exchange.attachments) == ("with files", ())


def test_a_turn_that_cannot_begin_stores_nothing(store: Store) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    theirs = store.begin_turn(bob, None, "", {}, None, message="mine", title="Bob's")
    with pytest.raises(NotFound):
        store.begin_turn(alice, None, "", {}, None, reply_to=theirs.user_message_id)
    with pytest.raises(NotFound):
        store.begin_turn(alice, theirs.conversation_id, "", {}, None, message="hello?")
    assert store.list_conversations(alice) == []
    assert store.count_messages(bob) == 2


# -- branches: edits and retries form a tree; the branch on screen is what is read -------------


def turn(store: Store, user: int, conversation: str | None, text: str, parent: int | None,
         reply: str = "") -> BegunTurn:
    """A message after ``parent`` with its reply, finished, as the page stores them."""
    begun = store.begin_turn(user, conversation, "", {}, None, message=text, parent=parent,
                             title=text, model="smol", backend="llama.cpp")
    store.save_reply(user, begun.reply_id, reply or f"re: {text}", status="stop")
    return begun


def shown(store: Store, user: int, conversation: str) -> list[tuple[str, str | None]]:
    return [(e.user, e.reply.content if e.reply else None)
            for e in store.get_conversation(user, conversation).exchanges]


def test_an_edit_forks_the_conversation_and_keeps_the_old_branch(
    store: Store, open_store: Callable[[], Store],
) -> None:
    user = store.user_id()
    first = turn(store, user, None, "q1", None)
    conversation = first.conversation_id
    second = turn(store, user, conversation, "q2", first.reply_id)
    turn(store, user, conversation, "q3", second.reply_id)

    edit = turn(store, user, conversation, "q2, edited", first.reply_id)

    assert shown(store, user, conversation) == [("q1", "re: q1"), ("q2, edited", "re: q2, edited")]
    assert (edit.user_alternatives, edit.reply_alternatives) == (
        (second.user_message_id, edit.user_message_id), (edit.reply_id,))
    exchanges = store.get_conversation(user, conversation).exchanges
    assert [(e.user_alternatives, e.reply_alternatives) for e in exchanges] == [
        ((first.user_message_id,), (first.reply_id,)),
        ((second.user_message_id, edit.user_message_id), (edit.reply_id,)),
    ]

    store.switch_branch(user, conversation, second.user_message_id)
    assert shown(open_store(), user, conversation) == [
        ("q1", "re: q1"), ("q2", "re: q2"), ("q3", "re: q3")]
    store.switch_branch(user, conversation, edit.user_message_id)
    assert shown(store, user, conversation) == [("q1", "re: q1"), ("q2, edited", "re: q2, edited")]
    assert store.count_messages(user) == 8


def test_an_edit_of_the_first_message_starts_a_second_root(store: Store) -> None:
    user = store.user_id()
    first = turn(store, user, None, "q1", None)
    conversation = first.conversation_id
    turn(store, user, conversation, "q2", first.reply_id)
    edit = turn(store, user, conversation, "q1, edited", None)

    assert shown(store, user, conversation) == [("q1, edited", "re: q1, edited")]
    assert edit.user_alternatives == (first.user_message_id, edit.user_message_id)
    store.switch_branch(user, conversation, first.user_message_id)
    assert shown(store, user, conversation) == [("q1", "re: q1"), ("q2", "re: q2")]


def test_a_retry_is_an_alternative_reply_and_the_branch_follows_the_one_picked(
    store: Store,
) -> None:
    user = store.user_id()
    first = turn(store, user, None, "q1", None, "first answer")
    conversation = first.conversation_id
    turn(store, user, conversation, "q2", first.reply_id)
    retry = store.begin_turn(user, conversation, "", {}, None, reply_to=first.user_message_id)
    store.save_reply(user, retry.reply_id, "second answer", status="stop")

    assert retry.reply_alternatives == (first.reply_id, retry.reply_id)
    assert shown(store, user, conversation) == [("q1", "second answer")]
    store.switch_branch(user, conversation, first.reply_id)
    assert shown(store, user, conversation) == [("q1", "first answer"), ("q2", "re: q2")]
    [exchange, _] = store.get_conversation(user, conversation).exchanges
    assert exchange.reply_alternatives == (first.reply_id, retry.reply_id)


def test_the_tree_has_every_message_with_its_parent_and_the_leaf(store: Store) -> None:
    user = store.user_id()
    first = turn(store, user, None, "q1", None)
    conversation = first.conversation_id
    second = turn(store, user, conversation, "q2", first.reply_id)
    edit = turn(store, user, conversation, "q2, edited", first.reply_id)
    store.switch_branch(user, conversation, second.user_message_id)

    tree = store.get_tree(user, conversation)
    assert [(m.id, m.role, m.parent_id, m.content) for m in tree.messages] == [
        (first.user_message_id, "user", None, "q1"),
        (first.reply_id, "assistant", first.user_message_id, "re: q1"),
        (second.user_message_id, "user", first.reply_id, "q2"),
        (second.reply_id, "assistant", second.user_message_id, "re: q2"),
        (edit.user_message_id, "user", first.reply_id, "q2, edited"),
        (edit.reply_id, "assistant", edit.user_message_id, "re: q2, edited"),
    ]
    assert tree.leaf_id == second.reply_id


def test_undo_takes_the_message_with_everything_below_it(store: Store) -> None:
    user = store.user_id()
    first = turn(store, user, None, "q1", None)
    conversation = first.conversation_id
    second = turn(store, user, conversation, "q2", first.reply_id)
    turn(store, user, conversation, "q3", second.reply_id)
    edit = turn(store, user, conversation, "q2, edited", first.reply_id)
    store.switch_branch(user, conversation, second.user_message_id)

    store.delete_exchange(user, conversation, second.user_message_id)

    assert shown(store, user, conversation) == [("q1", "re: q1")], (
        "the branch on screen ends where it was cut"
    )
    assert store.count_messages(user) == 4
    store.switch_branch(user, conversation, first.user_message_id)
    assert shown(store, user, conversation) == [("q1", "re: q1"), ("q2, edited", "re: q2, edited")]
    assert store.get_conversation(user, conversation).exchanges[1].user_alternatives == (
        edit.user_message_id,)


def test_a_missing_leaf_reads_as_the_newest_child_at_each_step(store: Store) -> None:
    user = store.user_id()
    first = turn(store, user, None, "q1", None)
    conversation = first.conversation_id
    second = turn(store, user, conversation, "q2", first.reply_id)
    turn(store, user, conversation, "q2, edited", first.reply_id)
    store.switch_branch(user, conversation, second.user_message_id)
    with store.engine.begin() as db:
        db.execute(text("UPDATE conversations SET leaf_id = 999999"))

    assert shown(store, user, conversation) == [("q1", "re: q1"), ("q2, edited", "re: q2, edited")]
    exchange(store, user, conversation, "q3")  # after the last message shown
    assert [e.user for e in store.get_conversation(user, conversation).exchanges] == [
        "q1", "q2, edited", "q3"]


def test_branches_of_another_user_or_conversation_are_not_found(store: Store) -> None:
    alice, bob = store.user_id("alice"), store.user_id("bob")
    mine = turn(store, alice, None, "q1", None)
    elsewhere = turn(store, alice, None, "other", None)
    theirs = turn(store, bob, None, "bob's", None)
    before = store.count_messages(alice), store.count_messages(bob)

    with pytest.raises(NotFound):
        store.switch_branch(bob, mine.conversation_id, mine.user_message_id)
    with pytest.raises(NotFound):
        store.switch_branch(alice, mine.conversation_id, elsewhere.user_message_id)
    with pytest.raises(NotFound):
        store.get_tree(bob, mine.conversation_id)
    with pytest.raises(NotFound):
        turn(store, alice, mine.conversation_id, "after bob's", theirs.reply_id)
    with pytest.raises(NotFound):
        turn(store, alice, mine.conversation_id, "after another", elsewhere.reply_id)
    with pytest.raises(NotFound):
        store.begin_turn(alice, mine.conversation_id, "", {}, None, reply_to=mine.reply_id)

    assert (store.count_messages(alice), store.count_messages(bob)) == before
    assert shown(store, alice, mine.conversation_id) == [("q1", "re: q1")]


def test_the_migration_to_branches_links_each_message_to_the_reply_it_followed(
    open_store: Callable[[], Store],
) -> None:
    """A database of before branches: a retried reply, a message left unanswered."""
    old = open_store()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as db:
        config.attributes["connection"] = db
        command.upgrade(config, "0003")
        db.execute(text("INSERT INTO users (id, name, created_at) VALUES (1, 'local', :t)"),
                   {"t": datetime.now(UTC)})
        for conversation in ("a", "b"):
            db.execute(text(
                "INSERT INTO conversations (id, user_id, title, system_prompt, settings, "
                "created_at, updated_at) VALUES (:id, 1, :id, '', '{}', :t, :t)"
            ), {"id": conversation, "t": datetime.now(UTC)})
        rows = [(1, "a", "user", "q1", None), (2, "a", "assistant", "r1", 1),
                (3, "b", "user", "other", None), (4, "a", "assistant", "r1, again", 1),
                (5, "a", "user", "q2", None), (6, "a", "user", "q3", None),
                (7, "a", "assistant", "r3", 6)]
        for row in rows:
            db.execute(text(
                "INSERT INTO messages (id, conversation_id, role, content, reply_to_id, status, "
                "created_at, updated_at) VALUES (:id, :c, :role, :content, :to, 'stop', :t, :t)"
            ), dict(zip(("id", "c", "role", "content", "to"), row, strict=True),
                    t=datetime.now(UTC)))

    store = open_store()
    store.migrate()

    assert shown(store, 1, "a") == [("q1", "r1, again"), ("q2", None), ("q3", "r3")]
    assert [(m.id, m.parent_id) for m in store.get_tree(1, "a").messages] == [
        (1, None), (2, 1), (4, 1), (5, 4), (6, 5), (7, 6)]
    assert shown(store, 1, "b") == [("other", None)]
    assert store.get_conversation(1, "a").exchanges[0].reply_alternatives == (2, 4)


def test_the_migration_of_kept_settings_cleans_the_settings_stored_before_it(
    open_store: Callable[[], Store],
) -> None:
    """Before 0007 settings were stored as sent (an import's as the file had them) and
    cleaned at every read; 0007 keeps of each what is kept now (``kept_settings``)."""
    store = open_store()
    upgrade(store, "0006")
    user = store.user_id()
    messy, clean, odd = "messy", "clean", "odd"
    stored_before = {
        messy: {"temperature": 1, "top_p": "0.9", "top_k": 40.0, "max_new_tokens": 1.5,
                "seed": None, "stop": ["END"], "repetition_penalty": True, "model": "smol",
                "theme": {"dark": True}},
        clean: {"max_new_tokens": 512, "temperature": 0.2, "stop": "END\nSTOP", "seed": -1},
        odd: ["temperature", 0.2],
    }
    # Written as 0006's schema has them (the models are the newest schema's).
    with store.engine.begin() as db:
        for conversation, settings in stored_before.items():
            db.execute(text(
                "INSERT INTO conversations (id, user_id, title, system_prompt, settings, "
                "created_at, updated_at) VALUES (:id, :user, :id, '', :settings, :now, :now)"
            ), {"id": conversation, "user": user, "settings": json.dumps(settings),
                "now": datetime.now(UTC)})

    store.migrate()

    kept = {c: store.get_conversation(user, c).settings for c in stored_before}
    assert kept == {
        messy: {"temperature": 1.0, "top_k": 40, "model": "smol"},
        clean: stored_before[clean],
        odd: {},
    }
    assert (type(kept[messy]["temperature"]), type(kept[messy]["top_k"])) == (float, int)


def test_the_migrations_match_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
