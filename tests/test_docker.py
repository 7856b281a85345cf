"""The Docker stack run for real (the ``docker`` tier): a private Docker engine
(tests/docker_engine.py), the app image built by ``scripts/build``, and the real scripts
(``up``, ``status``, ``logs``, ``down``) on containers/compose.yaml, unchanged but for
tests/docker/compose.test.yaml (host networking, loopback ports, the Hub's address).

Only what cannot be pulled here stands in: ``python:3.11-slim`` (a debootstrap root), TGI's
images (tests/docker/tgi.Dockerfile: the TGI fake of tests/fake_backend.py behind a launcher
that takes TGI's arguments and refuses to start without the model in its cache) and the Hub
(tests/fake_hub.py on a loopback port, the downloader pointed at it with ``HF_ENDPOINT``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL as GGUF
from tests.conftest import OUTPUT, answers
from tests.docker_engine import DockerEngine, read_env_file
from tests.fake_hub import FakeHub, FakeRepo
from tests.servers import free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
OVERRIDE = REPO / "tests/docker/compose.test.yaml"


DEFAULTS = read_env_file()
PROFILES = ("cpu", "cuda", "vllm", "llamacpp", "llamacpp-cuda")
MODEL = DEFAULTS["CPU_MODEL_ID"]
GATED = "acme/gated-coder"
FILES = {
    "config.json": b'{"model_type": "qwen2", "hidden_size": 64}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
    "model.safetensors": random.Random(0).randbytes(2_000_000),
}


def build(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """scripts/build, and how long it took."""
    started = time.monotonic()
    result = subprocess.run([SCRIPTS / "build"], env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, time.monotonic() - started


def image_labels(engine: DockerEngine) -> dict[str, str]:
    image = engine.docker("image", "inspect", f"coding-playground:{DEFAULTS['TAG']}").stdout
    labels: dict[str, str] = json.loads(image)[0]["Config"]["Labels"]
    return labels


@pytest.fixture(scope="module")
def built(docker_engine: DockerEngine) -> DockerEngine:
    """The app image, built by scripts/build as the docs say: with Buildx, ``buildx bake`` on
    the bake file as it ships (its docker driver, without the cache export that driver
    refuses), twice: the second takes the first's layers. The first is cold: the wheels that
    an earlier run fetched into .image/ are dropped first. The times go to test-output/."""
    shutil.rmtree(REPO / ".image", ignore_errors=True)
    engine = docker_engine
    (cold, cold_seconds), (warm, warm_seconds) = build(engine.env), build(engine.env)
    for result in (cold, warm):
        assert "Buildx is not installed" not in result.stdout
        assert "Buildx's docker driver keeps the build cache in the engine" in result.stdout
        assert 'building with "default" instance using docker driver' in result.stderr
    assert "Fetching the wheels of requirements.txt" in cold.stdout
    assert "Fetching the wheels" not in warm.stdout, "the lock's wheels are fetched once"
    assert re.search(r"^#(\d+) \[build \d/\d+\] RUN pip install --no-index --find-links"
                     r".*\n#\1 CACHED$", warm.stderr, flags=re.MULTILINE), (
        "the second bake installs the lock from the first's layer")
    labels = image_labels(engine)
    assert labels["org.opencontainers.image.version"] == DEFAULTS["TAG"], "bake's labels"
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "docker-build-times.txt").write_text(
        f"scripts/build with buildx bake: cold {cold_seconds:.1f} s, warm {warm_seconds:.1f} s\n")
    return engine


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(repos={MODEL: FakeRepo(FILES), GATED: FakeRepo(FILES, gated=True)})
    with fake.serving():
        yield fake


@dataclass
class Stack:
    engine: DockerEngine
    env: dict[str, str]
    folder: Path

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.env['APP_PORT']}"

    def run(self, script: str, *args: str, timeout: float = 600,
            **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SCRIPTS / script, *args], env={**self.env, **env}, capture_output=True,
            text=True, timeout=timeout, check=False,
        )

    def compose(self, *args: str, profiles: tuple[str, ...] = PROFILES
                ) -> subprocess.CompletedProcess[str]:
        """``docker compose`` on the stack's files, as the scripts call it, with ``profiles``
        (all of them, to see or stop whatever runs)."""
        options = [option for name in profiles for option in ("--profile", name)]
        return subprocess.run(
            ["docker", "compose", "--project-directory", str(REPO / "containers"),
             "-f", str(REPO / "containers/compose.yaml"), "-f", str(OVERRIDE),
             "--env-file", str(REPO / "containers/service.env"), *options, *args],
            env=self.env, capture_output=True, text=True, timeout=600, check=False,
        )

    def container(self, service: str) -> dict[str, object]:
        found = self.compose("ps", "--all", "--format", "json", service)
        rows = [json.loads(line) for line in found.stdout.splitlines() if line.strip()]
        return rows[0] if rows else {}

    def logs(self, service: str, *wanted: str) -> str:
        """What ``scripts/logs SERVICE`` prints (it follows) until it has printed one of
        ``wanted``, or for 30 s; then Ctrl-C stops it."""
        process = subprocess.Popen(
            [SCRIPTS / "logs", service], env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        lines: list[str] = []

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            wait_for(lambda: any(text in "".join(lines) for text in wanted), 30,
                     what=f"any of {wanted} in the logs of {service}")
        finally:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, to the script and its docker
            process.wait(timeout=30)
            reader.join(timeout=30)
        return "".join(lines)


@pytest.fixture
def stack(built: DockerEngine, hub: FakeHub, tmp_path: Path) -> Iterator[Stack]:
    env = {
        **os.environ, **built.env, "APP_PORT": str(free_port()), "SERVER_PORT": str(free_port()),
        "MODEL_CACHE": str(tmp_path / "models"), "APP_DATA": str(tmp_path / "data"),
        "HF_ENDPOINT": hub.url, "COMPOSE_OVERRIDE": str(OVERRIDE),
        "TGI_STANDIN_LOADING_SECONDS": "2",
    }
    running = Stack(built, env, tmp_path)
    yield running
    running.run("down")


def say(stack: Stack, message: str) -> list[dict[str, object]]:
    """A dialogue through the app's REST API, streamed: its events."""
    events = []
    with httpx.stream("POST", f"{stack.app_url}/api/v1/dialogue", timeout=60,
                      json={"message": message, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_up_chat_status_logs_down_and_up_again(stack: Stack, hub: FakeHub) -> None:
    up = stack.run("up", "cpu")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert f"The playground is at {stack.app_url}" in up.stdout
    snapshot = stack.folder / f"models/models--{MODEL.replace('/', '--')}/snapshots"
    assert {p.name for p in next(snapshot.iterdir()).iterdir()} == set(FILES)
    assert stack.container("downloader-cpu")["ExitCode"] == 0
    assert stack.container("tgi-cpu")["Health"] == "healthy"
    downloaded = stack.logs("downloader-cpu", f"Fetching {len(FILES)} files: 100%")
    assert f"Fetching {MODEL} (main) from {stack.env['HF_ENDPOINT']}" in downloaded
    assert f"Fetching {len(FILES)} files: 100%" in downloaded, "with its progress"

    events = say(stack, "Reverse a string in Python.")
    text = "".join(str(event.get("delta", "")) for event in events)
    assert "return s[::-1]" in text, "streamed from the TGI stand-in through the app"
    assert events[-1]["done"] is True
    assert events[-1]["error"] is None
    assert (stack.folder / "data/playground.db").is_file()

    status = stack.run("status")
    assert status.returncode == 0
    for service in ("app", "tgi-cpu", "downloader-cpu"):
        assert service in status.stdout
    assert "(healthy)" in status.stdout
    assert f"app: up (http://127.0.0.1:{stack.env['APP_PORT']}/healthz)" in status.stdout
    assert f"server: up (http://127.0.0.1:{stack.env['SERVER_PORT']}/health)" in status.stdout
    logged = stack.logs("app", "Uvicorn running", "GET /healthz")
    assert "Uvicorn running" in logged or "GET /healthz" in logged

    assert stack.run("down").returncode == 0
    asked = len(hub.requests)
    again = stack.run("up", "cpu")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert len(hub.requests) == asked, "the cache had the model: the Hub was not asked"
    listed = httpx.get(f"{stack.app_url}/api/v1/dialogues", timeout=10).json()
    assert [d["title"] for d in listed] == ["Reverse a string in Python."]
    for path in (stack.folder / "data", stack.folder / "models"):
        for item in [path, *path.rglob("*")]:
            assert item.lstat().st_uid == os.getuid(), f"{item} belongs to the user"


def test_a_killed_tgi_is_restarted_and_the_next_message_works(stack: Stack) -> None:
    """The app's router sees TGI go (GET /models answers 503 with the page's reason, as the
    page's Backends panel shows it), Docker restarts TGI, and the app needs no restart."""
    stack.env["TGI_STANDIN_LOADING_SECONDS"] = "6"
    assert stack.run("up", "cpu").returncode == 0
    pid = stack.engine.docker("inspect", "--format", "{{.State.Pid}}",
                              str(stack.container("tgi-cpu")["ID"])).stdout.strip()
    os.kill(int(pid), signal.SIGKILL)

    def backend_down() -> bool:
        models = httpx.get(f"{stack.app_url}/api/v1/models", timeout=10)
        return models.status_code == 503 and "No backend can answer" in models.text

    wait_for(backend_down, 30, step=0.2, what="the app to see TGI gone")
    wait_for(lambda: stack.container("tgi-cpu").get("Health") == "healthy", 120, step=1,
             what="Docker to restart TGI")
    # Docker's check and the app's own (each every second here) see TGI back up to a second
    # apart; a message in between is refused by design (down backends are not hammered).
    wait_for(lambda: httpx.get(f"{stack.app_url}/api/v1/models", timeout=10).is_success, 10,
             step=1, what="the app to see TGI back")
    events = say(stack, "again?")
    assert events[-1]["error"] is None
    assert "return s[::-1]" in "".join(str(e.get("delta", "")) for e in events)


def test_a_gated_model_stops_up_with_the_downloaders_message_and_code(stack: Stack) -> None:
    result = stack.run("up", "cpu", CPU_MODEL_ID=GATED)
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "gated" in result.stderr
    assert "HF_TOKEN" in result.stderr
    assert stack.container("tgi-cpu").get("State", "created") == "created", "never started"


def test_doctor_stops_up_before_compose_when_memory_is_short(stack: Stack) -> None:
    result = stack.run("up", "cpu", CPU_MEMORY_GIB="100000")
    assert result.returncode == 1
    assert "the server would be killed for lack of memory" in result.stderr
    assert stack.compose("ps", "--all", "-q").stdout.strip() == ""


def test_the_llamacpp_profile_serves_the_real_model_from_the_cache(
    stack: Stack, hub: FakeHub
) -> None:
    """llama.cpp's own server for real (the engine's llama-server in llama.cpp's image
    layout) on the real model, which the downloader fetches from the Hub's stand-in: one GGUF
    file of a repository that holds others too."""
    repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
    hub.repos[repo] = FakeRepo({GGUF.name: GGUF.read_bytes(), "other.Q8_0.gguf": b"GGUF" * 64,
                                "README.md": b"# SmolLM2\n"})
    stack.env.update(LLAMACPP_MODEL_ID=repo, LLAMACPP_MODEL_FILE=GGUF.name,
                     LLAMACPP_PARALLEL="2", LLAMACPP_CONTEXT_TOKENS="4096")
    sized = f"from its {GGUF.stat().st_size // 1024 // 1024} MiB of weights"  # by doctor
    up = stack.run("up", "llamacpp")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert sized not in up.stdout, "not downloaded yet: doctor goes by service.env"
    snapshot = next((stack.folder / f"models/models--{repo.replace('/', '--')}/snapshots")
                    .iterdir())
    assert [p.name for p in snapshot.iterdir()] == [GGUF.name], "only the file it serves"
    assert stack.container("llamacpp")["Health"] == "healthy"

    models = httpx.get(f"{stack.app_url}/api/v1/models", timeout=10).json()
    assert (models["backend"], models["model"]) == ("llama.cpp", repo)
    assert models["max_total_tokens"] == 2048, "one slot's share of the context, from /props"
    events = say(stack, "Write a Python function that adds two numbers.")
    assert events[-1]["error"] is None
    assert events[-1]["done"] is True
    reply = "".join(str(event.get("delta", "")) for event in events)
    assert len(reply.split()) >= 5, reply
    logged = stack.logs("llamacpp", "Serving /data/models--")
    assert f"/snapshots/{snapshot.name}/{GGUF.name}" in logged

    # A second time the model is in the cache, and doctor sizes it from its weights.
    assert stack.run("down").returncode == 0
    asked = len(hub.requests)
    again = stack.run("up", "llamacpp")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert len(hub.requests) == asked
    assert sized in again.stdout


def test_a_mistyped_gguf_file_stops_up_with_the_files_there_are(stack: Stack) -> None:
    result = stack.run("up", "llamacpp", LLAMACPP_MODEL_ID=MODEL,
                       LLAMACPP_MODEL_FILE="model-q4_k_m.gguf")
    assert result.returncode == 4, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"No file of {MODEL} (revision main) matches model-q4_k_m.gguf: it has config.json, "\
        "model.safetensors, tokenizer.json." in result.stderr
    assert stack.container("llamacpp").get("State", "created") == "created", "never started"


def test_the_vllm_profile_on_its_stand_in(stack: Stack, hub: FakeHub) -> None:
    """vLLM's image cannot run here (a registry, a GPU): its stand-in (tests/docker/
    vllm_launcher.py) takes the profile's command and finds the model in the cache as vLLM
    does. Compose is called directly: scripts/up's doctor stops without a GPU, rightly."""
    stack.env.update(HOST_UID=str(os.getuid()), HOST_GID=str(os.getgid()),
                     VLLM_MODEL_ID=MODEL)
    for folder in ("models", "data"):
        (stack.folder / folder).mkdir()
    up = stack.compose("up", "--detach", profiles=("vllm",))
    assert up.returncode == 0, up.stderr[-3000:]
    assert stack.container("downloader-vllm")["ExitCode"] == 0
    assert stack.container("vllm")["Health"] == "healthy"
    wait_for(lambda: answers(f"{stack.app_url}/healthz"), 60, what="the app to start")
    models = httpx.get(f"{stack.app_url}/api/v1/models", timeout=10).json()
    assert (models["backend"], models["model"]) == ("openai", MODEL)
    assert models["max_total_tokens"] == int(DEFAULTS["VLLM_MAX_MODEL_LEN"]), "vLLM's own"
    events = say(stack, "Reverse a string in Python.")
    assert events[-1]["error"] is None
    assert "return s[::-1]" in "".join(str(e.get("delta", "")) for e in events)
    status = stack.run("status")
    assert f"server: up (http://127.0.0.1:{stack.env['SERVER_PORT']}/health)" in status.stdout
    assert stack.run("down").returncode == 0
    assert stack.compose("ps", "--all", "-q").stdout.strip() == "", "down stops every profile"


def test_doctor_refuses_a_gpu_profile_without_a_gpu(stack: Stack) -> None:
    for profile in ("vllm", "llamacpp-cuda"):
        result = stack.run("doctor", profile)
        assert result.returncode == 1
        assert "nvidia-smi is missing: install the NVIDIA driver" in result.stderr
        assert f"problem(s) found for profile {profile}" in result.stderr


def test_doctor_says_how_to_get_buildx(stack: Stack) -> None:
    with_buildx = stack.run("doctor", "llamacpp")
    assert "ok    buildx: github.com/docker/buildx" in with_buildx.stdout
    stack.env.update(stack.engine.classic_env)
    without = stack.run("doctor", "llamacpp")
    assert "buildx: missing, so scripts/build falls back to docker build" in without.stdout
    assert "docker-buildx-plugin" in without.stdout
    assert without.returncode == 0, "Buildx is not needed to run the stack"


def test_the_gpu_profiles_are_configured_for_a_gpu(stack: Stack) -> None:
    """They cannot run here (no GPU): their configuration is what compose would run, the
    production file alone."""
    config = stack.engine.docker(
        "compose", "--project-directory", str(REPO / "containers"),
        "-f", str(REPO / "containers/compose.yaml"), "--env-file",
        str(REPO / "containers/service.env"), "--profile", "cuda", "--profile", "vllm",
        "--profile", "llamacpp-cuda", "config", "--format", "json",
    )
    services = json.loads(config.stdout)["services"]
    images = {
        "tgi-cuda": f"ghcr.io/huggingface/text-generation-inference:{DEFAULTS['TGI_VERSION']}",
        "vllm": f"vllm/vllm-openai:{DEFAULTS['VLLM_VERSION']}",
        "llamacpp-cuda": f"ghcr.io/ggml-org/llama.cpp:server-cuda-{DEFAULTS['LLAMACPP_VERSION']}",
    }
    for name, image in images.items():
        assert services[name]["image"] == image
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert (device["driver"], device["capabilities"]) == ("nvidia", ["gpu"]), name
    tgi = services["tgi-cuda"]
    assert tgi["command"][:2] == ["--model-id", DEFAULTS["CUDA_MODEL_ID"]]
    assert "--max-total-tokens" in tgi["command"]
    # TGI's CUDA image sets HF_HOME=/data, whose hub cache would be /data/hub: not where the
    # downloader puts the model.
    assert tgi["environment"]["HUGGINGFACE_HUB_CACHE"] == "/data"
    assert services["downloader-cuda"]["environment"]["MODEL_ID"] == DEFAULTS["CUDA_MODEL_ID"]
    assert services["llamacpp-cuda"]["environment"]["LLAMA_ARG_N_GPU_LAYERS"] == "999"


def test_without_buildx_the_same_target_is_built_with_docker_build(built: DockerEngine) -> None:
    """The fallback, run last: it builds the image the stack runs again, the same way."""
    result, seconds = build(built.classic_env)
    assert ("Buildx is not installed: building the app target of docker-bake.hcl with docker "
            "build") in result.stdout
    assert image_labels(built)["org.opencontainers.image.version"] == DEFAULTS["TAG"]
    with (OUTPUT / "docker-build-times.txt").open("a") as times:
        times.write(f"scripts/build with docker build (no Buildx): {seconds:.1f} s\n")
