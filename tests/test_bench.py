"""The benchmarks' harness: the paced stand-in, the load client's pieces, and the ``--quick``
modes of the streaming comparison, the fault runs and the soak, which must run with no errors.
Timings are never checked here (the stand-in's pacing only as a lower bound: it cannot be
faster than its schedule)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import gradio.utils
import pytest

from bench import traced
from bench.client import apply_diff, direct_stream, get_json, reply_text, request
from bench.standin import PacedStandIn
from tests.conftest import ENGINE_SERVER, REPO
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port


@pytest.fixture
async def standin() -> AsyncIterator[str]:
    """The stand-in's URL: 10 tokens a stream at 200 tokens/s, faults after 3 tokens."""
    paced = PacedStandIn(rate=200.0, tokens=10, fault_after=3)
    port = free_port()
    server = await paced.serve("127.0.0.1", port)
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_the_standin_paces_every_stream_whatever_their_number(standin: str) -> None:
    url = standin
    begin = time.perf_counter()
    results = await asyncio.gather(*(direct_stream(url) for _ in range(5)))
    assert [r.error for r in results] == [None] * 5
    assert [r.tokens for r in results] == [10] * 5
    assert results[0].text == "".join(f" tok{i}" for i in range(10))
    # Token i leaves at start + i / rate: ten tokens take at least 9 / 200 s.
    assert time.perf_counter() - begin >= 9 / 200
    stats = await get_json(url, "/stats")
    assert stats["completed"] == 5
    assert stats["peak_active"] == 5


async def test_the_standin_speaks_tgi(standin: str) -> None:
    url = standin
    info = await get_json(url, "/info")
    assert {"model_id", "max_input_tokens", "max_total_tokens", "validation_workers",
            "max_client_batch_size", "router", "sha", "docker_label"} <= set(info)
    assert info["version"] == "3.3.6-dev0"
    models = await get_json(url, "/v1/models")
    assert models["data"][0]["owned_by"] == models["data"][0]["id"] == info["model_id"]
    response = await request(url, "POST", "/generate_stream",
                             {"inputs": "hi", "parameters": {"max_new_tokens": 4,
                                                             "details": True}})
    events = [json.loads(line) async for line in response.events()]
    response.close()
    assert [e["index"] for e in events] == [1, 2, 3, 4]
    assert [e["token"]["text"] for e in events] == [" tok0", " tok1", " tok2", " tok3"]
    assert [e["generated_text"] for e in events[:-1]] == [None] * 3
    assert events[-1]["details"] == {"finish_reason": "length", "generated_tokens": 4,
                                     "seed": None, "input_length": 1}
    assert events[-1]["generated_text"] == " tok0 tok1 tok2 tok3"
    # Without a limit the reply ends with the EOS token, special and not in the text.
    response = await request(url, "POST", "/generate_stream", {"inputs": "hi"})
    events = [json.loads(line) async for line in response.events()]
    response.close()
    assert len(events) == 11
    assert events[-1]["token"] | {"id": 0} == {"id": 0, "text": "</s>", "logprob": -0.1,
                                               "special": True}
    assert events[-1]["generated_text"] == "".join(f" tok{i}" for i in range(10))
    assert events[-1]["details"] is None  # not asked for


async def sse_body(url: str, payload: dict[str, Any]) -> bytes:
    response = await request(url, "POST", "/v1/chat/completions", payload)
    try:
        assert response.headers["content-type"] == "text/event-stream"
        return await response.body()
    finally:
        response.close()


async def test_the_standins_chat_stream_is_tgis(standin: str) -> None:
    """``data: {json}`` events, the EOS chunk, the usage chunk, ``data: [DONE]``."""
    body = await sse_body(standin, {"messages": [{"role": "user", "content": "say hi"}],
                                    "stream": True, "stream_options": {"include_usage": True}})
    *events, done, end = body.split(b"\n\n")
    assert (done, end) == (b"data: [DONE]", b"")
    assert all(event.startswith(b"data: {") for event in events)
    chunks = [json.loads(event[6:]) for event in events]
    assert chunks[0] == {
        "object": "chat.completion.chunk", "id": "", "created": chunks[0]["created"],
        "model": "bench/paced-stand-in", "system_fingerprint": "3.3.6-dev0-native",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": " tok0"},
                     "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 10 + ["stop"]
    assert chunks[-2]["choices"][0]["delta"]["content"] == ""
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 11,
                                   "total_tokens": 13}
    # Cut by max_tokens: the last token's chunk says "length"; no usage unless asked.
    body = await sse_body(standin, {"messages": [{"role": "user", "content": "hi"}],
                                    "stream": True, "max_tokens": 2})
    chunks = [json.loads(event[6:]) for event in body.split(b"\n\n")[:-2]]
    assert [(c["choices"][0]["delta"]["content"], c["choices"][0]["finish_reason"], c["usage"])
            for c in chunks] == [(" tok0", None, None), (" tok1", "length", None)]


@pytest.mark.parametrize("fault", ["cut", "error"])
async def test_a_faulty_stream_fails_after_its_first_tokens(standin: str, fault: str) -> None:
    result = await direct_stream(standin, f"hello [{fault}]")
    assert result.error is not None
    assert result.tokens == 3


async def test_an_error_event_is_tgis_and_the_chat_stream_still_ends_with_done(
    standin: str,
) -> None:
    body = await sse_body(standin, {"messages": [{"role": "user", "content": "[error]"}],
                                    "stream": True})
    *_, error, done, _ = body.split(b"\n\n")
    assert json.loads(error[6:]) == {"error": {
        "message": "Request failed during generation: Server error: CUDA out of memory",
        "http_status_code": 422}}
    assert done == b"data: [DONE]"


async def test_a_stalled_stream_sends_only_keepalives_until_the_client_leaves() -> None:
    paced = PacedStandIn(rate=200.0, tokens=10, fault_after=3, keepalive=0.1)
    port = free_port()
    async with await paced.serve("127.0.0.1", port):
        url = f"http://127.0.0.1:{port}"
        payload = {"messages": [{"role": "user", "content": "[stall]"}], "stream": True}
        response = await request(url, "POST", "/v1/chat/completions", payload)
        received: list[bytes] = []

        async def receive() -> None:
            async for chunk in response.chunks():
                received.append(chunk)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(receive(), 0.55)
        response.close()
        assert [chunk[:6] for chunk in received[:3]] == [b"data: "] * 3
        assert set(received[3:]) == {b":\n\n"}
        assert 3 <= len(received[3:]) <= 6
        for _ in range(100):  # the stalled stream ends once the client has left
            await asyncio.sleep(0.05)
            if not paced.counters.active:
                break
        assert (paced.counters.active, paced.counters.cancelled) == (0, 1)


def test_gradio_diffs_are_applied_as_gradio_makes_them() -> None:
    diff = cast(Callable[[Any, Any], list[list[Any]]], gradio.utils.diff)

    old = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " tok0"}]
    new = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " tok0 tok1"},
           {"role": "user", "content": "more"}]
    assert apply_diff(json.loads(json.dumps(old)), diff(old, new)) == new
    assert apply_diff("ab", diff("ab", "abc")) == "abc"
    assert apply_diff(new, diff(new, old)) == old


def test_the_reply_is_the_last_text_with_tokens_after_the_message() -> None:
    chatbot = [{"role": "user", "content": [{"text": "first", "type": "text"}]},
               {"role": "assistant", "content": [{"text": " tok0 tok1", "type": "text"}]},
               {"role": "user", "content": [{"text": "second", "type": "text"}]}]
    assert reply_text([chatbot, None, "header tok9"], "second") == ""
    chatbot.append({"role": "assistant", "content": [{"text": " tok0", "type": "text"}]})
    assert reply_text([chatbot, None, "header tok9"], "second") == " tok0"


def run_bench(name: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # ENGINE_SERVER: the llama-server of the benchmarks that start the embedded engine, which
    # isolated_env took out of the environment.
    env = {**os.environ, "PYTHONPATH": str(REPO), "ENGINE_SERVER": ENGINE_SERVER}
    return subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--output", str(folder), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.mark.bench
def test_the_streaming_comparison_runs_without_errors(tmp_path: Path) -> None:
    done = run_bench("streaming", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "latest.json").read_text())
    rows = report["results"]
    assert {(r["mode"], r["target"], r["streams"]) for r in rows} == {
        (mode, target, n) for mode in ("steady", "burst")
        for target in ("direct", "floor", "app", "gr.load_chat") for n in (1, 4)
    }
    assert [(r["target"], r["first_errors"]) for r in rows if r["errors"]] == []
    assert all(r["tokens"] > 0 for r in rows)
    # The app's CPU a token as a multiple of the floor's, the floor's own being 1; none where
    # the floor's CPU was too small to sample (a few of its clock ticks in these short rows).
    floor = {(r["mode"], r["streams"]): r["server_cpu_ms_per_token"] for r in rows
             if r["target"] == "floor"}
    for row in rows:
        least = floor[row["mode"], row["streams"]]
        if row["target"] in ("app", "floor") and least:
            expected = row["server_cpu_ms_per_token"] / least
            assert row["cpu_vs_floor"] == pytest.approx(expected, abs=0.01)
        elif row["target"] in ("app", "floor"):
            assert row["cpu_vs_floor"] is None
    assert report["machine"]["cpu_count"] >= 1
    assert (tmp_path / "streaming.png").stat().st_size > 0
    assert "| 4 | app |" in (tmp_path / "streaming.md").read_text()


@pytest.mark.bench
def test_the_fault_runs_pass(tmp_path: Path) -> None:
    done = run_bench("faults", tmp_path)
    report = json.loads((tmp_path / "faults.json").read_text())
    failed = [(r["scenario"], r["problems"]) for r in report["results"] if not r["passed"]]
    assert failed == []
    assert done.returncode == 0, done.stderr[-3000:]
    assert {r["scenario"] for r in report["results"]} == {
        "cut", "stall", "kill", "kill: second wave", "db-lock"}


@pytest.mark.bench
def test_the_soak_runs_without_errors(tmp_path: Path) -> None:
    done = run_bench("soak", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["results"]["errors"] == 0
    assert report["results"]["messages"] > 0
    assert report["rss_mib_series"]


def grow_by(kept: list[bytes], size: int) -> None:
    kept.append(bytes(size))


def test_the_soaks_comparison_of_snapshots_names_what_grew_even_beside_what_shrank(
    tmp_path: Path,
) -> None:
    kept: list[bytes] = []
    tracemalloc.start(traced.FRAMES)
    try:
        kept.append(bytes(300_000))
        tracemalloc.take_snapshot().dump(str(tmp_path / "1.snapshot"))
        kept.pop()  # shrinks by 300 KB, more than what grows
        grow_by(kept, 50_000)
        tracemalloc.take_snapshot().dump(str(tmp_path / "2.snapshot"))
    finally:
        tracemalloc.stop()
    found = traced.compare(tmp_path / "1.snapshot", tmp_path / "2.snapshot", top=1)
    assert len(found) == 1, "the site that grew is left out behind the one that shrank"
    size, _, traceback = found[0]
    assert 50_000 <= size < 60_000
    assert traceback[-1].strip() == "kept.append(bytes(size))"


@pytest.mark.bench
@pytest.mark.postgres
def test_the_scale_out_stack_streams_through_nginx_with_sticky_sessions(tmp_path: Path) -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("needs Debian's nginx: apt-get install nginx-light")
    done = run_bench("scaleout", tmp_path)
    report = json.loads((tmp_path / "scaleout.json").read_text())["results"]
    assert report["errors"] == 0, report["first_errors"]
    assert all(report["replies_per_app_replica"]), "each app replica serves pages"
    assert all(report["streams_per_tgi_replica"]), "each TGI replica serves streams"
    assert report["messages_stored"] == report["users"]
    assert report["without_the_route_cookie"]["failed"] > 0, "stickiness is what makes it work"
    # The load waves: one replica alone and both behind nginx, each replica's CPU a token.
    assert [(wave["way"], wave["errors"]) for wave in report["load"]] == [
        ("one replica", 0), ("two replicas", 0)]
    one, two = report["load"]
    assert one["replica_cpu_ms_per_token"][0] > 0
    assert all(cost > 0 for cost in two["replica_cpu_ms_per_token"]), "both replicas streamed"
    assert 0 < two["of_the_pace"] <= 1.05
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.bench
def test_the_page_memory_run_works(tmp_path: Path) -> None:
    done = run_bench("sessions", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "sessions.json").read_text())["results"]
    assert report["errors"] == 0
    assert [pages for pages, _ in report["rss_mib_by_pages"]] == [0, 20, 40]


# A model that answers HumanEval/0 right, and every other problem with that same function.
CLOSE_ELEMENTS = [
    "Here it is:\n", "```python\n", "def has_close_elements(numbers, threshold):\n",
    "    return any(abs(a - b) < threshold\n",
    "               for i, a in enumerate(numbers) for b in numbers[i + 1:])\n", "```\n",
]


@pytest.mark.bench
def test_humaneval_judges_the_three_ways_with_the_problems_own_tests(tmp_path: Path) -> None:
    fake = FakeBackend(tokens=CLOSE_ELEMENTS)
    with ServerThread(fake.app()) as server:
        done = run_bench("humaneval", tmp_path, "--backend", server.url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[3/3] HumanEval/2" in done.stderr
    report = json.loads((tmp_path / "humaneval.json").read_text())
    results = {r["task_id"]: r for r in report["results"]}
    assert list(results) == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    ways = ("plain", "naive", "repair")
    assert [results["HumanEval/0"][way]["passed"] for way in ways] == [True] * 3
    assert [results["HumanEval/0"][way]["rounds"] for way in ways] == [0, 0, 0]
    # Elsewhere the answer lacks the problem's function: the prompt's stub stays, the docstring's
    # examples fail, and each loop asks again and again gets the same answer (the app's loop
    # stops at the second answer that changes nothing).
    for task in ("HumanEval/1", "HumanEval/2"):
        assert [results[task][way]["passed"] for way in ways] == [False] * 3
        assert results[task]["naive"]["rounds"] == 2
        assert results[task]["repair"]["rounds"] == 3
        assert results[task]["repair"]["trace"][-1] == "done: no change, v3 kept"
        assert "def has_close_elements" in results[task]["repair"]["code"]
    assert len(fake.requests) == 1 + 2 * (1 + 2 + 3)
    assert {r["temperature"] for r in fake.requests} == {0}
    assert [s["passed"] for s in report["summary"]] == [1, 1, 1]
    assert report["parameters"]["plain_prompt"].startswith("Complete the following")
    assert "| plain answer | 1/3 (33.3%) |" in (tmp_path / "humaneval.md").read_text()


@pytest.mark.bench
@pytest.mark.engine
def test_humaneval_runs_on_the_embedded_engine(tmp_path: Path) -> None:
    done = run_bench("humaneval", tmp_path, "--problems", "HumanEval/2")
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads((tmp_path / "humaneval.json").read_text())["results"]
    assert [result[way]["error"] for way in ("plain", "naive", "repair")] == [None] * 3
    assert result["plain"]["tokens"] > 0
    assert "def truncate_number" in result["plain"]["code"]


@pytest.mark.bench
@pytest.mark.engine
def test_the_engines_benchmark_runs_the_old_and_the_new_engine_side_by_side(
    tmp_path: Path,
) -> None:
    """llama-cpp-python's server and llama-server (ENGINE_SERVER, which scripts/test sets),
    each behind the app: every user of every row gets a whole reply, and below the new
    engine's slots nobody is told to wait."""
    done = run_bench("engines", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "engines.json").read_text())
    rows = report["results"]
    assert [(r["target"], r["users"]) for r in rows] == [
        ("old", 1), ("old", 2), ("new", 1), ("new", 2)]
    assert [(r["target"], r["first_errors"]) for r in rows if r["errors"]] == []
    for row in rows:
        assert len(row["replies"]) == row["users"]
        assert all(reply["tokens"] > 0 and reply["ttft_ms"] is not None
                   for reply in row["replies"]), row
        assert row["measures"]["told_to_wait"] == 0
        assert row["measures"]["engine_cpu_seconds"] > 0
    assert [(s["target"], s["users"]) for s in report["summary"]] == [
        ("old", 1), ("new", 1), ("old", 2), ("new", 2)]
    assert [r["users"] for r in report["ratios"]] == [1, 2]
    assert (tmp_path / "engines.png").stat().st_size > 0
    assert "| 2 | new |" in (tmp_path / "engines.md").read_text()
