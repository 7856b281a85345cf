"""Export and import of conversations: exact JSON round trips, Markdown, hostile files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from app import markdown
from app.chat.export import export_markdown
from app.store import BegunTurn, NotFound, Store, transfer
from app.store.models import Conversation, Message
from app.store.transfer import (
    DEFAULT_MAX_BYTES,
    MAX_CONVERSATIONS,
    MAX_MESSAGES,
    AttachmentLimits,
    TransferError,
    export_json,
    import_json,
)
from tests.stored import exchange, imported_conversation, retry

CODE_QUESTION = "Why does this fail? ¿Qué pasa? 日本語 🚀\n```python\nprint('héllo')\n```\n"
FIRST_ANSWER = "Use `repr`:\n\n```python\nprint(repr('héllo'))\n```\n"
SECOND_ANSWER = "Try this instead:\n\n````markdown\n```python\nx = 1\n```\n````\n\n```python\ny ="
SCRIPT = 'Is <script>alert("x")</script> safe? <img src=x onerror=alert(1)> & &amp;'


def new_store(tmp_path: Path, name: str = "db") -> Store:
    store = Store(f"sqlite:///{tmp_path}/{name}.sqlite")
    store.migrate()
    return store


def fill(store: Store, user_id: int) -> list[str]:
    """Two conversations: one with a retried reply (the retry interrupted), and one imported
    with a message never answered."""
    first = exchange(
        store, user_id, None, CODE_QUESTION, None, title="Ünïcode & code 🐍",
        system_prompt="You are terse.\n```\nfenced rules\n```", language="python",
        settings={"temperature": 0.2, "stop": "END\nSTOP", "seed": 7, "max_new_tokens": 512},
        model="smollm2",
    )
    store.save_reply(user_id, first.reply_id, FIRST_ANSWER, status="stop", tokens=17,
                     time_to_first_token=0.1234, tokens_per_second=41.5)
    again = retry(store, user_id, first.conversation_id, first.user_message_id, None,
                  model="qwen-coder", backend="tgi")
    store.save_reply(user_id, again.reply_id, SECOND_ANSWER, status="interrupted",
                     error="The server went away.", tokens=9, time_to_first_token=0.5,
                     tokens_per_second=12.25)
    answer = exchange(store, user_id, first.conversation_id, SCRIPT, None, model="qwen-coder",
                      backend="tgi")
    store.save_reply(user_id, answer.reply_id, f"It is text: {SCRIPT}", status="length",
                     tokens=3)
    second = imported_conversation(store, user_id, "no reply yet", title="Empty-ish")
    return [first.conversation_id, second]


def fill_branches(store: Store, user_id: int) -> str:
    """A conversation with an edit of its first message, an edit and a retry further down,
    the branch on screen not the newest one."""
    def turn(text: str, parent: int | None, conversation: str | None) -> BegunTurn:
        begun = store.begin_turn(user_id, conversation, "", {}, None, message=text,
                                 parent=parent, title="Branches")
        store.save_reply(user_id, begun.reply_id, f"re: {text}", status="stop")
        return begun

    first = turn("q1", None, None)
    conversation = first.conversation_id
    second = turn("q2", first.reply_id, conversation)
    turn("q3", second.reply_id, conversation)
    turn("q2, edited", first.reply_id, conversation)
    retry = store.begin_turn(user_id, conversation, "", {}, None,
                             reply_to=second.user_message_id)
    store.save_reply(user_id, retry.reply_id, "re: q2, again", status="stop")
    turn("q1, edited", None, conversation)
    store.switch_branch(user_id, conversation, second.reply_id)
    return conversation


def tree_shape(store: Store, user_id: int, conversation: str) -> tuple[Any, ...]:
    """The tree with ids as positions: each message's role, text and parent, and the leaf."""
    tree = store.get_tree(user_id, conversation)
    position = {m.id: n for n, m in enumerate(tree.messages)}
    return (
        [(m.role, m.content, None if m.parent_id is None else position[m.parent_id])
         for m in tree.messages],
        None if tree.leaf_id is None else position[tree.leaf_id],
    )


def comparable(document: str) -> dict[str, Any]:
    """The export without what an import changes: its time and the conversation ids."""
    parsed: dict[str, Any] = json.loads(document)
    del parsed["exported_at"]
    for conversation in parsed["conversations"]:
        del conversation["id"]
    return parsed


def snapshot(store: Store) -> list[list[tuple[Any, ...]]]:
    with store.engine.connect() as connection:
        return [
            [tuple(row) for row in connection.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in ("users", "conversations", "messages")
        ]


def document(*conversations: dict[str, Any]) -> dict[str, Any]:
    return {"format": transfer.FORMAT, "version": 1, "exported_at": "2026-01-02T03:04:05Z",
            "conversations": list(conversations)}


def conversation(*messages: dict[str, Any], title: str = "ok") -> dict[str, Any]:
    return {"title": title, "created_at": "2026-01-01T00:00:00+00:00",
            "updated_at": "2026-01-01T00:00:00+00:00", "messages": list(messages)}


def message(
    local_id: int, role: str = "user", reply_to: int | None = None, **fields: Any
) -> dict[str, Any]:
    status = "complete" if role == "user" else "stop"
    return {"id": local_id, "role": role, "content": f"message {local_id}", "reply_to": reply_to,
            "status": status, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", **fields}


def good() -> dict[str, Any]:
    return document(conversation(message(1), message(2, "assistant", reply_to=1)))


def good_2(leaf: int | None = 2, user_reply_to: int | None = None) -> dict[str, Any]:
    """A version 2 document: a message, its reply, a message after it, and its leaf."""
    return {**document(conversation(
        message(1), message(2, "assistant", reply_to=1), message(3, reply_to=user_reply_to),
    ) | {"leaf": leaf}), "version": 2}


RUN = {"language": "python", "stdout": "", "stderr": "AssertionError\n", "exit_code": 1,
       "seconds": 0.05, "stopped": None, "truncated": False}
DOUBLE = "```python\ndef double(x):\n    return x + 2\n\nassert double(3) == 6\n```\n"
FIXED = "```python\ndef double(x):\n    return x * 2\n```\n"


def trace(*reply_ids: int | None, outcome: str | None = "passed") -> dict[str, Any]:
    """A check (``app.chat.checks``) of the reply ``reply_ids[0]`` with a version in each
    of ``reply_ids``: the first fails, the others pass."""
    failed = {"name": "assert double(3) == 6", "origin": "reply", "status": "failed",
              "error": "assert double(3) == 6 → double(3) is 5, expected 6", "output": ""}
    versions = [
        {"number": number, "reply_id": reply_id, "badge": "1/1 test passes" if number else
         "1 of 1 fails", "ok": bool(number), "code_error": None,
         "changed": "code" if number else "", "diff": "-    return x + 2\n+    return x * 2"
         if number else "", "results": [{**failed, "status": "passed", "error": None}
                                        if number else failed]}
        for number, reply_id in enumerate(reply_ids)
    ]
    return {"reply_id": reply_ids[0], "rounds": 2, "outcome": outcome,
            "tests": {"origin": "reply", "source": "assert double(3) == 6"},
            "versions": versions}


def checked(store: Store, user_id: int) -> str:
    """A conversation whose reply was run (its block's output long) and checked, its repaired
    version on screen, as ``app.chat.checks`` keeps them."""
    first = exchange(store, user_id, None, "Write double(x).", DOUBLE, title="Checked")
    store.save_notes(user_id, first.reply_id, runs={
        "0": RUN, "1": {**RUN, "language": "bash", "stdout": "x" * 2500, "exit_code": None,
                        "stopped": "time limit (10 s)", "truncated": True}})
    fixed = store.add_version(user_id, first.conversation_id, first.user_message_id, FIXED,
                              "smol", "llama.cpp", trace(first.reply_id, outcome=None))
    for reply_id in (first.reply_id, fixed):
        store.save_notes(user_id, reply_id, check=trace(first.reply_id, fixed))
    return first.conversation_id


# -- JSON round trip ----------------------------------------------------------------------------


def test_export_import_export_gives_the_same_document(tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    alice = source.user_id("alice")
    ids = fill(source, alice)
    exported = export_json(source, alice)

    target = new_store(tmp_path, "target")
    new_ids = import_json(target, target.user_id(), exported)
    assert len(new_ids) == 2
    assert not set(new_ids) & set(ids)
    assert comparable(export_json(target, target.user_id())) == comparable(exported)

    bob = source.user_id("bob")  # the same store, another user
    assert comparable(export_json(source, bob)) == {**comparable(exported), "conversations": []}
    import_json(source, bob, exported.encode())
    assert comparable(export_json(source, bob)) == comparable(exported)
    assert export_json(source, alice) != export_json(source, bob)
    assert comparable(export_json(source, alice)) == comparable(exported)


def test_the_json_holds_every_reply_version_with_local_links(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    first, _ = fill(store, user)
    exported = json.loads(export_json(store, user, first))

    assert exported["format"] == "coding-playground.conversations"
    assert exported["version"] == 5
    [only] = exported["conversations"]
    assert only["id"] == first
    assert only["title"] == "Ünïcode & code 🐍"
    assert only["settings"]["stop"] == "END\nSTOP"
    assert only["language"] == "python"
    messages = only["messages"]
    assert [(m["id"], m["role"], m["reply_to"]) for m in messages] == [
        (1, "user", None), (2, "assistant", 1), (3, "assistant", 1), (4, "user", 3),
        (5, "assistant", 4),
    ]
    assert only["leaf"] == 5
    assert [m["content"] for m in messages[:3]] == [CODE_QUESTION, FIRST_ANSWER, SECOND_ANSWER]
    assert messages[2]["status"] == "interrupted"
    assert messages[2]["error"] == "The server went away."
    assert (messages[1]["model"], messages[2]["model"]) == ("smollm2", "qwen-coder")
    assert messages[1]["time_to_first_token"] == 0.1234
    assert messages[0]["created_at"].endswith("+00:00")


def test_every_branch_and_the_branch_on_screen_round_trip(tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    user = source.user_id()
    conversation = fill_branches(source, user)
    exported = export_json(source, user, conversation)
    target = new_store(tmp_path, "target")
    [copy] = import_json(target, target.user_id(), exported)

    assert tree_shape(target, target.user_id(), copy) == tree_shape(source, user, conversation)
    assert len(target.get_tree(target.user_id(), copy).messages) == 11
    on_screen = [("q1", "re: q1"), ("q2", "re: q2"), ("q3", "re: q3")]
    assert [(e.user, e.reply and e.reply.content)
            for e in target.get_conversation(target.user_id(), copy).exchanges] == on_screen
    assert comparable(export_json(target, target.user_id())) == comparable(exported)


def test_a_version_1_file_imports_as_one_branch_with_the_latest_replies(
    tmp_path: Path,
) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    [new_id] = import_json(store, user, json.dumps(document(conversation(
        message(1), message(2, "assistant", reply_to=1), message(3, "assistant", reply_to=1),
        message(4), message(5), message(6, "assistant", reply_to=5),
    ))))
    assert [(e.user, e.reply and e.reply.content)
            for e in store.get_conversation(user, new_id).exchanges] == [
        ("message 1", "message 3"), ("message 4", None), ("message 5", "message 6")]
    assert tree_shape(store, user, new_id)[0] == [
        ("user", "message 1", None), ("assistant", "message 2", 0),
        ("assistant", "message 3", 0), ("user", "message 4", 2), ("user", "message 5", 3),
        ("assistant", "message 6", 4)]


def test_an_imported_retry_keeps_the_latest_reply_on_top(tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    user = source.user_id()
    first, _ = fill(source, user)
    target = new_store(tmp_path, "target")
    [new_id] = import_json(target, target.user_id(), export_json(source, user, first))

    record = target.get_conversation(target.user_id(), new_id)
    assert [e.user for e in record.exchanges] == [CODE_QUESTION, SCRIPT]
    reply = record.exchanges[0].reply
    assert reply is not None
    assert reply.content == SECOND_ANSWER
    assert reply.status == "interrupted"
    assert reply.tokens_per_second == 12.25


def test_script_tags_are_stored_and_exported_verbatim(tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    user = source.user_id()
    fill(source, user)
    target = new_store(tmp_path, "target")
    import_json(target, target.user_id(), export_json(source, user))

    with target.engine.connect() as connection:
        stored = set(connection.scalars(select(Message.content)))
    assert SCRIPT in stored
    assert f"It is text: {SCRIPT}" in stored
    assert SCRIPT in json.loads(export_json(target, target.user_id()))["conversations"][0][
        "messages"][3]["content"]


def test_export_is_scoped_to_the_user(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    alice, bob = store.user_id("alice"), store.user_id("bob")
    first, _ = fill(store, alice)
    with pytest.raises(NotFound):
        export_json(store, bob, first)
    with pytest.raises(NotFound):
        export_markdown(store, bob, first)
    assert json.loads(export_json(store, bob))["conversations"] == []


def test_a_reply_still_streaming_is_imported_as_interrupted(tmp_path: Path) -> None:
    streaming = message(2, "assistant", reply_to=1, status="streaming", content="half")
    store = new_store(tmp_path)
    [new_id] = import_json(store, store.user_id(), json.dumps(document(
        conversation(message(1), streaming))))
    reply = store.get_conversation(store.user_id(), new_id).exchanges[0].reply
    assert reply is not None
    assert (reply.status, reply.content) == ("interrupted", "half")
    assert reply.error == transfer.STREAMING_AT_EXPORT


def test_an_import_keeps_only_the_settings_a_conversation_keeps(tmp_path: Path) -> None:
    """A file may carry any settings: unknown names and values the page cannot use are left
    out as they are written (``kept_settings``), whole numbers kept as the type of their
    setting; what is exported again is what was kept."""
    settings = {
        "temperature": 1, "top_p": "0.9", "top_k": 40.0, "max_new_tokens": 1.5, "seed": None,
        "stop": ["END"], "repetition_penalty": True, "frequency_penalty": 0.5, "model": "smol",
        "theme": {"dark": True},
    }
    store = new_store(tmp_path)
    user = store.user_id()
    [new_id] = import_json(store, user, json.dumps(document(
        conversation(message(1)) | {"settings": settings})))

    kept = store.get_conversation(user, new_id).settings
    assert kept == {"temperature": 1.0, "top_k": 40, "frequency_penalty": 0.5, "model": "smol"}
    assert (type(kept["temperature"]), type(kept["top_k"])) == (float, int)
    assert json.loads(export_json(store, user, new_id))["conversations"][0]["settings"] == kept


# -- Markdown -----------------------------------------------------------------------------------


def test_markdown_shows_each_message_with_its_latest_reply(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    first, _ = fill(store, user)
    markdown = export_markdown(store, user, first)

    assert markdown.startswith("# Ünïcode & code 🐍\n")
    assert "**System prompt**\n\n````text\nYou are terse.\n```\nfenced rules\n```\n````" in markdown
    # the longer outer fence: the question's own ``` cannot close it
    assert f"## You\n\n````text\n{CODE_QUESTION.rstrip()}\n````" in markdown
    assert FIRST_ANSWER not in markdown  # only the latest version of a reply
    assert f"## Assistant\n\n{SECOND_ANSWER}\n```\n\n⚠️ The server went away." in markdown
    assert "_9 tokens · first token 0.50 s · 12.2 tokens/s · interrupted · qwen-coder_" in markdown
    assert f"```text\n{SCRIPT}\n```" in markdown
    assert "_3 tokens · cut at the token limit · qwen-coder_" in markdown


def test_markdown_writes_the_branch_on_screen(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    conversation = fill_branches(store, user)
    markdown = export_markdown(store, user, conversation)
    assert [line for line in markdown.splitlines() if line.startswith(("q", "re: "))] == [
        "q1", "re: q1", "q2", "re: q2", "q3", "re: q3"]


def test_markdown_of_all_conversations(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    fill(store, user)
    markdown = export_markdown(store, user)
    assert markdown.index("# Ünïcode & code 🐍") < markdown.index("\n---\n") < markdown.index(
        "# Empty-ish")
    assert markdown.endswith("## You\n\n```text\nno reply yet\n```\n")


@pytest.mark.parametrize(
    ("reply", "closed"),
    [
        ("done\n```py\nx\n```", "done\n```py\nx\n```"),
        ("open\n```py\nx = 1\n", "open\n```py\nx = 1\n```"),
        ("long\n````\n```\nstill inside", "long\n````\n```\nstill inside\n````"),
        ("tilde\n~~~\n```\n", "tilde\n~~~\n```\n~~~"),
        ("inline ``` code ``` is no fence", "inline ``` code ``` is no fence"),
    ],
)
def test_close_open_fence(reply: str, closed: str) -> None:
    assert markdown.close_open_fence(reply) == closed


def test_fenced_outlasts_any_backtick_run() -> None:
    assert markdown.fenced("plain") == "```text\nplain\n```"
    assert markdown.fenced("a `````b") == "``````text\na `````b\n``````"


# -- hostile and malformed files ----------------------------------------------------------------


def with_message(**fields: Any) -> dict[str, Any]:
    bad = good()
    bad["conversations"][0]["messages"][1].update(fields)
    return bad


def deeply_nested() -> dict[str, Any]:
    junk = good()
    junk["conversations"][0]["settings"] = {"a": [[[[["deep"]]]]]}
    return junk


def with_notes(role: str = "assistant", **fields: Any) -> dict[str, Any]:
    """A version 4 document whose reply (or, for ``role`` user, whose message) has ``fields``:
    a run and a check unless they are given."""
    bad = {**good(), "version": 4}
    index = 1 if role == "assistant" else 0
    bad["conversations"][0]["messages"][index].update({"runs": {"0": RUN}, "check": trace(2),
                                                       **fields})
    return bad


BAD_DOCUMENTS: list[tuple[str, str | bytes | dict[str, Any], str]] = [
    ("not json", "this is not JSON", "document: Invalid JSON"),
    ("not utf-8", b'{"format": "\xff"}', "document: Invalid JSON"),
    ("not an object", "[1, 2]", "document: Input should be an object"),
    ("another format", {**good(), "format": "chatgpt"}, "format: Value error, not a conv"),
    ("another version", {**good(), "version": 6}, "version: Value error, version 6 is not sup"),
    ("no version", {k: v for k, v in good().items() if k != "version"}, "version: Field req"),
    ("unknown field", {**good(), "extra": 1}, "extra: Extra inputs are not permitted"),
    ("system role", with_message(role="system"), "conversations[0].messages[1].role: Input sh"),
    ("unknown status", with_message(status="done"), "conversations[0].messages[1].status: In"),
    ("user status on a reply", with_message(status="complete"), "messages[1].status: a reply has"),
    ("link to a missing message", with_message(reply_to=7), "messages[1].reply_to: no earlier"),
    ("link to itself", with_message(reply_to=2), "messages[1].reply_to: no earlier message"),
    ("reply without link", with_message(reply_to=None), "messages[1].reply_to: a reply must"),
    ("duplicate id", with_message(id=1), "conversations[0].messages[1].id: 1 is used"),
    ("leaf in version 1", document(conversation(message(1)) | {"leaf": 1}),
     "conversations[0].leaf: version 1 has no leaf"),
    ("user link in version 1", document(conversation(message(1), message(2, reply_to=1))),
     "messages[1].reply_to: a user message answers no other message"),
    ("missing leaf", good_2(leaf=9), "conversations[0].leaf: no message has id 9"),
    ("user link to a later message", good_2(user_reply_to=4),
     "conversations[0].messages[2].reply_to: no earlier message has id 4"),
    ("negative tokens", with_message(tokens=-1), "messages[1].tokens: Input should be greater"),
    ("string tokens", with_message(tokens="12"), "messages[1].tokens: Input should be a valid"),
    ("NaN speed", json.dumps(with_message(tokens_per_second=1.5)).replace("1.5", "NaN"),
     "messages[1].tokens_per_second: Input should be a finite number"),
    ("infinite speed", json.dumps(with_message(tokens_per_second=1.5)).replace("1.5", "1e999"),
     "messages[1].tokens_per_second: Input should be a finite number"),
    ("naive time", with_message(created_at="2026-01-01T00:00:00"), "messages[1].created_at: In"),
    ("NUL in content", with_message(content="a\x00b"), "messages[1].content: Value error, NUL"),
    ("long title", document(conversation(title="t" * 201)), "conversations[0].title: String sh"),
    ("long content", with_message(content="x" * (transfer.MAX_TEXT_CHARS + 1)), "content: Str"),
    ("too many messages", document(conversation(*(message(n) for n in range(
        1, MAX_MESSAGES + 2)))), "conversations[0].messages: List should have at most"),
    ("too many conversations", document(*[conversation()] * (MAX_CONVERSATIONS + 1)),
     "conversations: List should have at most 1000 items"),
    ("NaN setting", json.dumps(document(conversation() | {"settings": {"t": 1.5}})).replace(
        "1.5", "NaN"),
     "conversations[0].settings: Value error, numbers must be finite"),
    ("deep settings", deeply_nested(), "conversations[0].settings: Value error, nested deeper"),
    ("deeply nested junk", "[" * 100_000 + "]" * 100_000, "document: Invalid JSON: recursion"),
    ("nested junk in a field", json.dumps(good()).replace('"message 1"', "[" * 5000 + "]" * 5000),
     "document: Invalid JSON: recursion"),
    ("a user message's runs", with_notes("user", check=None),
     "conversations[0].messages[0]: only a reply has runs and a check"),
    ("a check naming a user message", with_notes(check=trace(1)),
     "conversations[0].messages[1].check.reply_id: no reply has id 1"),
    ("a check naming a missing version", with_notes(check=trace(2, 9)),
     "conversations[0].messages[1].check.versions[1].reply_id: no reply has id 9"),
    ("a block that is no index", with_notes(runs={"first": RUN}), "messages[1].runs.first.[key]"),
    ("a run without its output", with_notes(runs={"0": {**RUN, "stdout": None}}),
     "messages[1].runs.0.stdout: Input should be a valid string"),
    ("a check of another shape", with_notes(check={**trace(2), "versions": [{"ok": True}]}),
     "messages[1].check.versions[0].number: Field required"),
    ("a check too big", with_notes(check={**trace(2), "tests": {
        "origin": "user", "source": "#" * (transfer.MAX_TEXT_CHARS - 1)}, "versions": [
            {**trace(2)["versions"][0], "diff": "-" * (transfer.MAX_TEXT_CHARS - 1)},
            {**trace(2)["versions"][0], "diff": "+" * 200_000}]}),
     "messages[1].check: Value error, 2200"),
]


@pytest.mark.parametrize(
    ("data", "problem"), [case[1:] for case in BAD_DOCUMENTS], ids=[c[0] for c in BAD_DOCUMENTS]
)
def test_a_bad_file_is_refused_with_its_place_and_nothing_is_written(
    tmp_path: Path, data: str | bytes | dict[str, Any], problem: str
) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    fill(store, user)
    before = snapshot(store)
    raw = json.dumps(data) if isinstance(data, dict) else data
    with pytest.raises(TransferError) as refused:
        import_json(store, user, raw)
    assert problem in str(refused.value)
    assert snapshot(store) == before


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    raw = json.dumps(good())
    with pytest.raises(TransferError, match=f"the limit is {len(raw) - 1}"):
        import_json(store, store.user_id(), raw.encode(), max_bytes=len(raw) - 1)
    with pytest.raises(TransferError, match="over the limit of 10 bytes"):
        import_json(store, store.user_id(), raw, max_bytes=10)
    with pytest.raises(TransferError, match="limit is"):  # characters under, bytes over
        import_json(store, store.user_id(), raw.replace("message 1", "é" * 9), max_bytes=len(raw))
    assert DEFAULT_MAX_BYTES == 20 * 1024 * 1024
    assert import_json(store, store.user_id(), raw, max_bytes=len(raw))


def test_many_problems_are_summed_up(tmp_path: Path) -> None:
    bad = document(*[conversation(message(1, role="robot"))] * 5)
    with pytest.raises(TransferError) as refused:
        import_json(new_store(tmp_path), 1, json.dumps(bad))
    assert str(refused.value).endswith("; and 2 more problems")
    assert str(refused.value).startswith("conversations[0].messages[0].role: Input should be")


def test_a_bad_third_conversation_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    fill(store, user)
    before = snapshot(store)
    fine = conversation(message(1), message(2, "assistant", reply_to=1))
    bad = conversation(message(1), message(2), message(3, "assistant", reply_to=9))
    with pytest.raises(TransferError, match=r"^conversations\[2\]\.messages\[2\]\.reply_to: no"):
        import_json(store, user, json.dumps(document(fine, fine, bad, fine)))
    assert snapshot(store) == before


def test_a_database_failure_midway_rolls_back_every_conversation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first two conversations are flushed when the third breaks a constraint."""
    store = new_store(tmp_path)
    user = store.user_id()
    fill(store, user)
    before = snapshot(store)
    build = transfer._rows
    built: list[Conversation] = []

    def failing_third(doc: transfer.ConversationDoc, version: int) -> Any:
        rows = build(doc, version)
        built.append(rows[0])
        if len(built) == 3:
            rows[0].title = None  # type: ignore[assignment]  # NOT NULL
        return rows

    monkeypatch.setattr(transfer, "_rows", failing_third)
    fine = conversation(message(1), message(2, "assistant", reply_to=1))
    with pytest.raises(IntegrityError):
        import_json(store, user, json.dumps(document(fine, fine, fine, fine)))
    assert len(built) == 3
    assert built[0].id
    assert snapshot(store) == before


@pytest.mark.postgres
def test_round_trip_through_postgresql(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Times (timestamptz), floats, settings, runs and checks (json) and branches come back
    exactly from PostgreSQL too."""
    source = new_store(tmp_path)
    user = source.user_id()
    fill(source, user)
    checked(source, user)
    branched = fill_branches(source, user)
    exported = export_json(source, user)
    target = Store(postgres_url)
    target.migrate()
    *_, copy = import_json(target, target.user_id(), exported)
    assert comparable(export_json(target, target.user_id())) == comparable(exported)
    assert tree_shape(target, target.user_id(), copy) == tree_shape(source, user, branched)

    before = snapshot(target)
    build = transfer._rows
    calls = iter(range(10))

    def failing_second(doc: transfer.ConversationDoc, version: int) -> Any:
        rows = build(doc, version)
        if next(calls) == 1:
            rows[1][0][0].role = None  # type: ignore[assignment]  # NOT NULL
        return rows

    monkeypatch.setattr(transfer, "_rows", failing_second)
    with pytest.raises(IntegrityError):
        import_json(target, target.user_id(), exported)
    assert snapshot(target) == before


# -- attached files -------------------------------------------------------------------------

FILES = [{"name": "fizz.py", "language": "python", "text": "print('fizz')\n"},
         {"name": "README.md", "language": "md", "text": "```bash\nmake\n```\n"}]


def attached(store: Store, user_id: int) -> str:
    begun = store.begin_turn(user_id, None, "", {}, None, message="Review these.",
                             title="Files", attachments=FILES)
    store.save_reply(user_id, begun.reply_id, "Fine.", status="stop")
    return begun.conversation_id


def test_attached_files_are_exported_and_imported_with_their_message(tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    user = source.user_id()
    first = attached(source, user)
    exported = export_json(source, user, first)
    assert json.loads(exported)["conversations"][0]["messages"][0]["attachments"] == FILES
    target = new_store(tmp_path, "target")
    [copy] = import_json(target, target.user_id(), exported)
    [exchange] = target.get_conversation(target.user_id(), copy).exchanges
    assert exchange.attachments == tuple(FILES)


def test_the_markdown_export_shows_attached_files_as_fenced_blocks(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    shown = export_markdown(store, user, attached(store, user))
    assert ("## You\n\n```text\nReview these.\n```\n\n"
            "Attached **fizz.py**\n\n```python\nprint('fizz')\n```\n\n"
            "Attached **README.md**\n\n````md\n```bash\nmake\n```\n````\n\n## Assistant") in shown


@pytest.mark.parametrize(("files", "role", "problem"), [
    ([FILES[0]] * 3, "user", "messages[0].attachments: 3 files; a message takes at most 2"),
    ([{**FILES[0], "text": "x" * 101}], "user",
     "messages[0].attachments[0].text: 101 bytes; the limit is 100"),
    ([{**FILES[0], "text": "bin\u0000ary"}], "user", "NUL characters cannot be stored"),
    ([FILES[0]], "assistant", "only a user message has attached files"),
])
def test_an_import_holds_attached_files_to_the_limits_of_the_page(
    tmp_path: Path, files: list[dict[str, str]], role: str, problem: str
) -> None:
    store = new_store(tmp_path)
    messages = [message(1, attachments=files)] if role == "user" else [
        message(1), message(2, "assistant", reply_to=1, attachments=files)]
    raw = json.dumps({**document(conversation(*messages)), "version": 3})
    user = store.user_id()
    before = snapshot(store)
    with pytest.raises(TransferError, match=re.escape(problem)):
        import_json(store, user, raw, limits=AttachmentLimits(100, 2))
    assert snapshot(store) == before


# -- runs and checks ------------------------------------------------------------------------


def test_runs_and_checks_round_trip_with_their_replies_renamed(tmp_path: Path) -> None:
    source = new_store(tmp_path, "source")
    user = source.user_id()
    conversation = checked(source, user)
    exported = export_json(source, user, conversation)
    messages = json.loads(exported)["conversations"][0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"]
    assert messages[1]["runs"]["0"] == RUN
    assert (messages[0]["runs"], messages[0]["check"], messages[2]["runs"]) == (None, None, None)
    assert messages[1]["check"] == messages[2]["check"] == trace(2, 3), "ids local to the file"

    target = new_store(tmp_path, "target")
    bystander = exchange(target, target.user_id("other"), None)  # the new ids are not 1, 2, 3
    [copy] = import_json(target, target.user_id(), exported)
    assert comparable(export_json(target, target.user_id())) == comparable(exported)
    original, version = target.get_tree(target.user_id(), copy).messages[1:]
    assert original.id > bystander.reply_id
    assert original.check == version.check == trace(original.id, version.id)
    assert original.runs == source.get_tree(user, conversation).messages[1].runs


def test_a_file_of_version_3_still_imports(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    old = {**good_2(), "version": 3}
    [new_id] = import_json(store, store.user_id(), json.dumps(old))
    assert [(m.runs, m.check) for m in store.get_tree(store.user_id(), new_id).messages] == [
        (None, None)] * 3


def test_the_markdown_export_shows_a_replys_runs_and_its_check(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    user = store.user_id()
    conversation = checked(store, user)
    shown = export_markdown(store, user, conversation)
    assert FIXED in shown, "the version on screen"
    after = shown[shown.index(FIXED):]
    assert after.index("**Check**: passed") < after.index(
        "Checked against the tests the reply holds:") < after.index(
        "Version 0 · 1 of 1 fails") < after.index(
        "- failed: assert double(3) == 6 → double(3) is 5, expected 6") < after.index(
        "Version 1 · 1/1 test passes · the repair changed the code") < after.index(
        "```diff\n-    return x + 2\n+    return x * 2\n```")
    assert "Ran code block" not in after, "the runs were of the first version"

    store.switch_branch(user, conversation, store.get_tree(user, conversation).messages[1].id)
    shown = export_markdown(store, user, conversation)
    assert "**Ran code block 1** (python) · exit code 1 · 0.05 s\n\nstderr:\n\n```text\n" \
           "AssertionError\n```" in shown
    second = shown[shown.index("**Ran code block 2**"):]
    assert second.startswith("**Ran code block 2** (bash) · stopped: time limit (10 s) · 0.05 s"
                             "\n\nstdout:\n\n```text\n" + "x" * 2000 + "\n… (500 more characters)")
