"""The REST API's runs and checks (``/api/v1/messages/{id}/run`` and ``/check``) against the
real app in a thread, the fake TGI and the real sandbox: a reply's code block run and kept,
a reply checked against tests and repaired, whole or streamed, and every refusal's status."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.chat.checks import RUNS_OFF
from app.chat.export import export_markdown
from app.snippets.bwrap import languages
from app.store import Store
from app.store.transfer import export_json
from tests import test_api
from tests.fake_backend import FakeBackend
from tests.test_api import SSE, Api, assert_error_shape, events, long_reply
from tests.waiting import wait_for

# The fixtures of tests/test_api.py: the whole app in a thread, and a client of its API.
start_api = test_api.start_api
api = test_api.api

DOUBLE = ("Here it is:\n\n```python\ndef double(x):\n    return x + 2\n\n"
          "assert double(3) == 6\n```\n")
FIXED = "Fixed:\n```python\ndef double(x):\n    return x * 2\n```\n"
# The user message of every repair round holds it (app.checks.repair.repair_messages).
REPAIR_PROMPT = "What failed:"


@pytest.fixture(autouse=True)
def sandbox() -> None:
    if "python" not in languages():
        pytest.fail("the sandbox cannot run Python here: scripts/test installs bubblewrap")


def reply_with(api: Api, fake: FakeBackend, user: dict[str, str], text: str) -> tuple[str, int]:
    """A new dialogue whose reply is ``text``: its id and the reply's."""
    fake.tokens = [text]
    said = api.say(user, "Write double(x).")
    assert said.status_code == 200, said.text
    body = said.json()
    return body["dialogue_id"], body["message_id"]


def run(api: Api, user: dict[str, str], reply_id: int, block: Any) -> httpx.Response:
    return api.http.post(f"/messages/{reply_id}/run", headers=user, json={"block": block})


def check(api: Api, user: dict[str, str], reply_id: int, **fields: Any) -> httpx.Response:
    return api.http.post(f"/messages/{reply_id}/check", headers=user, json=fields)


@pytest.fixture
def runs_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The folder the sandbox's runs are made in, this test's own: a run is under way while
    its folder is there. Not under the test's folder, which the sandbox's user (nobody, as
    the tests run as root) may not enter."""
    folder = Path(tempfile.mkdtemp(prefix="api-check-runs-"))
    folder.chmod(0o711)
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# -- the whole story ------------------------------------------------------------------------


def test_a_reply_failing_its_own_test_is_run_checked_repaired_and_exported(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    dialogue_id, reply_id = reply_with(api, fake, alice, DOUBLE)

    ran = run(api, alice, reply_id, 0)
    assert ran.status_code == 200, ran.text
    result = ran.json()
    assert set(result) == {"block", "language", "stdout", "stderr", "exit_code", "seconds",
                           "stopped", "truncated"}
    assert (result["block"], result["language"], result["exit_code"]) == (0, "python", 1)
    assert "AssertionError" in result["stderr"]

    fake.answers = {REPAIR_PROMPT: [FIXED]}
    checked = check(api, alice, reply_id, repair=True, rounds=2)
    assert checked.status_code == 200, checked.text
    trace = checked.json()
    assert (trace["reply_id"], trace["rounds"], trace["outcome"]) == (reply_id, 2, "passed")
    assert trace["tests"] == {"origin": "reply", "source": "assert double(3) == 6"}
    first, fixed = trace["versions"]
    assert (first["number"], first["reply_id"], first["badge"], first["ok"]) == (
        0, reply_id, "1 of 1 fails", False)
    [failing] = first["results"]
    assert failing["status"] == "failed"
    assert failing["error"] == "assert double(3) == 6 → double(3) is 5, expected 6"
    assert (fixed["number"], fixed["badge"], fixed["ok"], fixed["changed"]) == (
        1, "1/1 test passes", True, "code")
    assert "-    return x + 2" in fixed["diff"]
    assert "+    return x * 2" in fixed["diff"]
    repair = fake.requests[-1]["messages"][-1]["content"]
    assert "Write double(x)." in repair
    assert "double(3) is 5, expected 6" in repair

    tree = api.messages(alice, dialogue_id, view="tree").json()
    asked, original, version = tree["messages"]
    assert (original["id"], version["id"]) == (reply_id, fixed["reply_id"])
    assert original["parent_id"] == version["parent_id"] == asked["id"]
    assert tree["leaf_id"] == version["id"], "the repaired version is on screen"
    assert "return x * 2" in version["content"]
    assert original["check"] == version["check"] == trace
    assert [r["block"] for r in original["runs"]] == [0]
    assert original["runs"][0] == result
    assert (version["runs"], asked["runs"], asked["check"]) == ([], [], None)
    [exchange] = api.messages(alice, dialogue_id).json()["exchanges"]
    assert exchange["reply"]["id"] == version["id"]
    assert exchange["reply"]["check"] == trace
    assert api.http.get(f"/messages/{reply_id}/check", headers=alice).json() == trace

    store = Store(api.database_url)
    user_id = store.user_id("alice")
    exported = json.loads(export_json(store, user_id, dialogue_id))["conversations"][0]
    kept = exported["messages"][2]["check"]
    assert [v["reply_id"] for v in kept["versions"]] == [2, 3], "ids local to the file"
    assert kept["versions"][0]["results"][0]["error"] == failing["error"]
    assert exported["messages"][1]["runs"]["0"]["exit_code"] == 1
    shown = export_markdown(store, user_id, dialogue_id)
    store.engine.dispose()
    assert "**Check**: passed" in shown
    assert "Version 0 · 1 of 1 fails" in shown
    assert "- failed: assert double(3) == 6 → double(3) is 5, expected 6" in shown
    assert "Version 1 · 1/1 test passes · the repair changed the code" in shown
    assert "+    return x * 2" in shown


def test_a_check_streams_its_trace_and_the_models_answer_as_events(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    _, reply_id = reply_with(api, fake, alice, DOUBLE)
    fake.answers = {REPAIR_PROMPT: ["Fixed:\n", "```python\ndef double(x):\n",
                                    "    return x * 2\n```\n"]}
    with api.http.stream("POST", f"/messages/{reply_id}/check", headers=alice,
                         json={"stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith(SSE)
        received = list(events(response))
    tried, *answer, fixed, done = received
    assert [v["badge"] for v in tried["check"]["versions"]] == ["1 of 1 fails"]
    assert all(set(piece) == {"answer", "round"} and piece["round"] == 1 for piece in answer)
    assert "".join(piece["answer"] for piece in answer) == FIXED
    assert [v["badge"] for v in fixed["check"]["versions"]] == ["1 of 1 fails",
                                                                "1/1 test passes"]
    assert (done["done"], done["error"], done["check"]["outcome"]) == (True, None, "passed")
    assert api.http.get(f"/messages/{reply_id}/check", headers=alice).json() == done["check"]

    headers = {**alice, "Accept": SSE}
    _, other = reply_with(api, fake, alice, DOUBLE)
    with api.http.stream("POST", f"/messages/{other}/check", headers=headers,
                         json={"repair": False}) as response:
        received = list(events(response))
    assert [set(e) for e in received] == [{"check"}, {"done", "check", "error"}]
    assert received[-1]["check"]["outcome"] == "not repaired"


def test_your_own_tests_and_one_that_hangs_reported_as_a_timeout(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    _, reply_id = reply_with(api, fake, alice, DOUBLE)
    tests = ("import itertools\n\ndef test_hangs():\n    for _ in itertools.count():\n"
             "        pass\n\nassert double(0) == 0\n")
    trace = check(api, alice, reply_id, tests=tests, repair=False).json()
    assert trace["tests"]["origin"] == "user"
    [version] = trace["versions"]
    assert [(r["name"], r["status"]) for r in version["results"]] == [
        ("test_hangs", "timeout"), ("assert double(0) == 0", "failed")]
    assert "ran over" in version["results"][0]["error"]
    assert (trace["rounds"], trace["outcome"]) == (0, "not repaired")
    assert fake.requests[-1]["messages"][-1]["content"] == "Write double(x).", "no model call"


def test_a_model_that_keeps_failing_stops_at_the_round_limit(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    dialogue_id, reply_id = reply_with(api, fake, alice, DOUBLE)
    fake.answers = {f"return x + {n}": [f"```python\ndef double(x):\n    return x + {n + 2}\n```"]
                    for n in (2, 4)}
    trace = check(api, alice, reply_id, rounds=2).json()
    assert trace["outcome"] == "round limit"
    assert [v["badge"] for v in trace["versions"]] == ["1 of 1 fails"] * 3
    assert "+    return x + 6" in trace["versions"][-1]["diff"]
    tree = api.messages(alice, dialogue_id, view="tree").json()
    assert len(tree["messages"]) == 4, "the message and three versions of its reply"


# -- limits and bad input -------------------------------------------------------------------


def test_where_runs_are_off_run_and_check_say_so(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    api = start_api(snippet_runs="off")
    alice = api.user("alice")
    dialogue_id, reply_id = reply_with(api, fake, alice, DOUBLE)
    for refused in (run(api, alice, reply_id, 0), check(api, alice, reply_id)):
        assert assert_error_shape(refused, 403)["error"] == RUNS_OFF
    [exchange] = api.messages(alice, dialogue_id).json()["exchanges"]
    assert (exchange["reply"]["runs"], exchange["reply"]["check"]) == ([], None)


def test_a_run_refused_says_why(api: Api, fake: FakeBackend) -> None:
    alice, bob = api.user("alice"), api.user("bob")
    _, reply_id = reply_with(api, fake, alice, "```rust\nfn main() {}\n```\n\n```python\n"
                                               "print(1)\n```\n")
    rust = assert_error_shape(run(api, alice, reply_id, 0), 422)["error"]
    assert rust.startswith("The sandbox runs ")
    assert rust.endswith("; a rust block cannot run.")
    past = assert_error_shape(run(api, alice, reply_id, 2), 404)["error"]
    assert past == "The reply has 2 code blocks, numbered from 0; there is no block 2."
    assert "block" in json.dumps(assert_error_shape(run(api, alice, reply_id, -1), 422))
    assert run(api, alice, reply_id, 1).json()["stdout"] == "1\n"

    missing = reply_id + 1000
    for target in (reply_id, missing):
        for answer in (run(api, bob, target, 1), check(api, bob, target),
                       api.http.get(f"/messages/{target}/check", headers=bob)):
            assert assert_error_shape(answer, 404)["error"] == f"No reply {target} among yours."
    asked = reply_id - 1
    assert assert_error_shape(run(api, alice, asked, 0), 404)["error"] == (
        f"No reply {asked} among yours."), "a user message is no reply"
    assert_error_shape(run(api, alice, 2**31, 0), 422)


def test_a_check_refused_says_why(api: Api, fake: FakeBackend) -> None:
    alice = api.user("alice")
    _, bash = reply_with(api, fake, alice, "```bash\necho hi\n```\n")
    assert assert_error_shape(check(api, alice, bash), 422)["error"] == (
        "Check runs Python code; this reply's code is bash. Its blocks can still be run, "
        "where the sandbox runs their language.")
    _, prose = reply_with(api, fake, alice, "No code here.")
    assert assert_error_shape(check(api, alice, prose), 422)["error"] == (
        "The reply has no code block to check.")
    dialogue_id, reply_id = reply_with(api, fake, alice, DOUBLE)
    no_test = assert_error_shape(check(api, alice, reply_id, tests="x = 1\n"), 422)
    assert no_test["error"].startswith("The tests given hold no test")
    rounds = assert_error_shape(check(api, alice, reply_id, rounds=4), 422)
    assert rounds["error"] == "A check may repair at most 3 times on this server (CHECK_ROUNDS)."
    nul = assert_error_shape(check(api, alice, reply_id, tests="assert 1\x00"), 422)
    assert "NUL" in nul["error"]
    unchecked = assert_error_shape(api.http.get(f"/messages/{reply_id}/check", headers=alice),
                                   404)
    assert unchecked["error"] == f"Reply {reply_id} has not been checked."
    [exchange] = api.messages(alice, dialogue_id).json()["exchanges"]
    assert exchange["reply"]["check"] is None, "nothing kept"


def test_a_checks_model_calls_count_against_the_message_rate(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    api = start_api(rate_limit_per_minute=2)
    alice = api.user("alice")
    _, reply_id = reply_with(api, fake, alice, DOUBLE)
    fake.answers = {REPAIR_PROMPT: [FIXED]}
    assert check(api, alice, reply_id).json()["outcome"] == "passed", "its one round counts"
    assert_error_shape(api.say(alice, "one more"), 429)

    refused = check(api, alice, reply_id)
    assert "2 messages in the last minute" in assert_error_shape(refused, 429)["error"]
    assert 0 < int(refused.headers["Retry-After"]) <= 60


def test_a_repair_round_over_the_rate_ends_the_check_with_its_refusal(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    api = start_api(rate_limit_per_minute=1)
    alice = api.user("alice")
    _, reply_id = reply_with(api, fake, alice, DOUBLE)
    sent = len(fake.requests)
    refused = check(api, alice, reply_id)
    assert_error_shape(refused, 429)
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    kept = api.http.get(f"/messages/{reply_id}/check", headers=alice).json()
    assert ([v["badge"] for v in kept["versions"]], kept["outcome"]) == (["1 of 1 fails"], None)
    with api.http.stream("POST", f"/messages/{reply_id}/check", headers=alice,
                         json={"stream": True}) as response:
        tried, done = events(response)
    assert [v["badge"] for v in tried["check"]["versions"]] == ["1 of 1 fails"]
    assert done["done"] is True
    assert "in the last minute" in done["error"]
    assert len(fake.requests) == sent, "no repair reached the backend"


def test_a_backend_failing_in_a_repair_round_ends_the_check_with_its_sentence(
    api: Api, fake: FakeBackend
) -> None:
    alice = api.user("alice")
    _, reply_id = reply_with(api, fake, alice, DOUBLE)
    fake.tokens, fake.mode = ["Let", " me", " fix", " it."], "generation_error"
    failed = assert_error_shape(check(api, alice, reply_id), 503)
    assert "CUDA out of memory" in failed["error"]
    kept = api.http.get(f"/messages/{reply_id}/check", headers=alice).json()
    assert ([v["badge"] for v in kept["versions"]], kept["outcome"]) == (["1 of 1 fails"], None)


def test_a_checks_model_calls_count_among_the_running_replies(
    start_api: Callable[..., Api], fake: FakeBackend
) -> None:
    api = start_api(max_running_replies_per_user=1, max_running_replies=2)
    alice, bob, carol = api.user("alice"), api.user("bob"), api.user("carol")
    _, alices = reply_with(api, fake, alice, DOUBLE)
    _, carols = reply_with(api, fake, carol, DOUBLE)
    with long_reply(api, fake, alice, 300):
        mine = check(api, alice, alices)
        assert "stop one or wait" in assert_error_shape(mine, 429)["error"]
        with long_reply(api, fake, bob, 300):
            full = check(api, carol, carols)
            assert_error_shape(full, 503)
            assert full.headers["Retry-After"] == "5"


def test_a_run_past_the_sandboxs_places_is_refused_until_one_is_free(
    start_api: Callable[..., Api], fake: FakeBackend, runs_folder: Path
) -> None:
    api = start_api(snippet_runs_at_once=1)
    alice = api.user("alice")
    _, reply_id = reply_with(api, fake, alice, "```python\nimport time\ntime.sleep(3)\n```\n"
                                               "```bash\necho quick\n```\n")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(run, api, alice, reply_id, 0)
        wait_for(lambda: any(runs_folder.glob("sandbox-run-*")), what="the first run under way")
        busy = run(api, alice, reply_id, 1)
        first = slow.result()
    assert first.status_code == 200, first.text
    assert first.json()["exit_code"] == 0
    refusal = assert_error_shape(busy, 503)["error"]
    assert refusal.startswith("The sandbox is busy: it runs 1 at once on this server")
    assert busy.headers["Retry-After"] == "5"
    assert run(api, alice, reply_id, 1).json()["stdout"] == "quick\n"


def test_two_blocks_of_a_reply_run_at_once_are_both_kept(
    api: Api, fake: FakeBackend, runs_folder: Path
) -> None:
    """The run that ended last kept the runs as they were when it began: the other was
    lost."""
    alice = api.user("alice")
    dialogue_id, reply_id = reply_with(
        api, fake, alice, "```python\nimport time\ntime.sleep(2)\nprint('slow')\n```\n"
                          "```python\nprint('quick')\n```\n")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(run, api, alice, reply_id, 0)
        wait_for(lambda: any(runs_folder.glob("sandbox-run-*")), what="the first run under way")
        assert run(api, alice, reply_id, 1).json()["stdout"] == "quick\n"
        assert slow.result().json()["stdout"] == "slow\n"
    kept = api.messages(alice, dialogue_id).json()["exchanges"][0]["reply"]["runs"]
    assert [(r["block"], r["stdout"]) for r in kept] == [(0, "slow\n"), (1, "quick\n")]
