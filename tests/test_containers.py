"""The Docker stack, checked without a Docker engine (none runs here or in CI): the Compose
file, the env file, the Dockerfile and the bake file are read and linted; the scripts run
against a stand-in for the docker CLI that records what it is asked and answers as told; the
shipped nginx.conf runs with Debian's nginx in front of ``python -m app``."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import hcl2
import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.settings import Settings
from bench import procs
from bench.scaleout import Nginx, nginx_binary, render_conf
from tests.conftest import REPO
from tests.docker_engine import read_env_file
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port

CONTAINERS = REPO / "containers"
SCRIPTS = REPO / "scripts"
DOCKER_SCRIPTS = ["build", "up", "down", "logs", "download", "status", "doctor"]
GIB = 1024**3

FAKE_DOCKER = r"""#!/usr/bin/env bash
# Stand-in for the docker CLI: records each call (one line each), answers as the FAKE_*
# variables say.
call="$*"
echo "${call//$'\n'/ }" >>"$FAKE_DOCKER_LOG"
case "$1" in
    --version) echo "Docker version 28.2.2, build e6534b4" ;;
    info)
        [ -z "${FAKE_NO_ENGINE:-}" ] || { echo "Cannot connect to the Docker daemon" >&2; exit 1; }
        [ -z "${FAKE_NVIDIA_RUNTIME:-}" ] || echo '{"nvidia":{"path":"nvidia-container-runtime"}}'
        ;;
    compose)
        [ -z "${FAKE_NO_COMPOSE:-}" ] || { echo "unknown command: docker compose" >&2; exit 1; }
        [ "$2" != version ] || echo "2.40.3"
        ;;
    version) echo "${FAKE_ARCH:-amd64}" ;;
    buildx)
        [ -z "${FAKE_NO_BUILDX:-}" ] || { echo "unknown command: docker buildx" >&2; exit 1; }
        [ "$2" != version ] || echo "github.com/docker/buildx v0.29.1"
        [ "$2" != inspect ] || printf 'Name:   default\nDriver: %s\n' "$FAKE_BUILDX_DRIVER"
        [ "$2" != bake ] || echo "BUILD_CACHE=${BUILD_CACHE:-}" >>"$FAKE_DOCKER_LOG"
        ;;
    image) [ -z "${FAKE_NO_IMAGE:-}" ] || { echo "No such image" >&2; exit 1; } ;;
esac
"""

FAKE_NVIDIA_SMI = r"""#!/usr/bin/env bash
# Stand-in for nvidia-smi: one GPU with FAKE_GPU_MIB of memory.
case "$*" in
    *memory.total*) echo "${FAKE_GPU_MIB}" ;;
    *) echo "NVIDIA L4, 570.86.15" ;;
esac
"""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONTAINERS / "compose.yaml").read_text())
    return loaded


@pytest.mark.parametrize("name", ["compose.yaml", "compose.scale.yaml"])
def test_the_compose_file_follows_the_compose_spec(name: str) -> None:
    check = subprocess.run(
        [REPO / ".venv/bin/check-jsonschema", "--builtin-schema", "vendor.compose-spec",
         CONTAINERS / name],
        capture_output=True, text=True, check=False,
    )
    assert check.returncode == 0, check.stdout


def test_the_stack_sets_only_settings_the_app_reads(compose: dict[str, Any]) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    hub = {"HF_HOME"}  # huggingface_hub's own: where the downloader keeps its small state
    for name in ("app", "downloader-cpu", "downloader-cuda"):
        assert set(compose["services"][name]["environment"]) <= settings | hub, name


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    profiles = {name: service.get("profiles") for name, service in services.items()}
    assert profiles == {
        "downloader-cpu": ["cpu"], "downloader-cuda": ["cuda"], "downloader-vllm": ["vllm"],
        "downloader-llamacpp": ["llamacpp"], "downloader-llamacpp-cuda": ["llamacpp-cuda"],
        "tgi-cpu": ["cpu"], "tgi-cuda": ["cuda"], "vllm": ["vllm"], "llamacpp": ["llamacpp"],
        "llamacpp-cuda": ["llamacpp-cuda"], "app": None,
    }


@pytest.mark.parametrize("profile", ["cpu", "cuda"])
def test_tgi_starts_after_the_downloader_offline_from_the_shared_cache(
    compose: dict[str, Any], profile: str
) -> None:
    services = compose["services"]
    tgi, downloader = services[f"tgi-{profile}"], services[f"downloader-{profile}"]
    assert tgi["depends_on"] == {
        f"downloader-{profile}": {"condition": "service_completed_successfully"}
    }
    assert tgi["environment"]["HF_HUB_OFFLINE"] == "1"
    assert tgi["volumes"] == ["${MODEL_CACHE}:/data"] == downloader["volumes"]
    assert downloader["environment"]["MODEL_CACHE_DIR"] == "/data"
    assert downloader["command"] == ["python", "-m", "app.downloader", "hub"]
    prefix = profile.upper()
    assert downloader["environment"]["MODEL_ID"] == f"${{{prefix}_MODEL_ID}}"
    assert f"--model-id ${{{prefix}_MODEL_ID}}" in tgi["command"]
    assert f"--revision ${{{prefix}_MODEL_REVISION}}" in tgi["command"]
    assert "/health" in " ".join(tgi["healthcheck"]["test"])
    assert tgi["shm_size"] == "1g"
    assert tgi["networks"]["default"]["aliases"] == ["backend"]


def test_tgi_images_are_pinned_release_tags(compose: dict[str, Any]) -> None:
    image = "ghcr.io/huggingface/text-generation-inference:${TGI_VERSION}"
    assert compose["services"]["tgi-cuda"]["image"] == image
    assert compose["services"]["tgi-cpu"]["image"] == image + "-intel-cpu"
    assert re.fullmatch(r"\d+\.\d+\.\d+", read_env_file()["TGI_VERSION"])


def test_cuda_reserves_nvidia_gpus(compose: dict[str, Any]) -> None:
    devices = compose["services"]["tgi-cuda"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "${CUDA_QUANTIZE:+--quantize ${CUDA_QUANTIZE}}" in compose["services"]["tgi-cuda"][
        "command"
    ]


def test_the_app_waits_for_a_healthy_server_and_talks_to_it(compose: dict[str, Any]) -> None:
    app = compose["services"]["app"]
    assert app["depends_on"] == {
        name: {"condition": "service_healthy", "required": False}
        for name in ("tgi-cpu", "tgi-cuda", "vllm", "llamacpp", "llamacpp-cuda")
    }
    assert app["environment"]["BACKEND_URL"] == "http://backend:80"
    assert app["environment"]["DATABASE_URL"] == "sqlite:////data/playground.db"
    assert app["volumes"] == ["${APP_DATA}:/data"], "the database outlives the container"
    assert app["ports"] == ["${PUBLISH_ADDRESS}:${APP_PORT}:7860"]
    assert app["image"] == "${REGISTRY}coding-playground:${TAG}"


def compose_text(name: str) -> str:
    lines = (CONTAINERS / name).read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("name", ["compose.yaml", "compose.scale.yaml"])
def test_every_compose_variable_has_a_default(name: str) -> None:
    text = compose_text(name)
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    inline_defaults = set(re.findall(r"\$\{([A-Z_]+):-", text))
    assert used - inline_defaults <= set(read_env_file())


def test_every_default_is_used() -> None:
    elsewhere = "".join(path.read_text() for path in SCRIPTS.iterdir()) + compose_text(
        "compose.yaml") + compose_text("compose.scale.yaml")
    assert [name for name in read_env_file() if name not in elsewhere] == []


def test_the_dockerfile_is_lint_clean_slim_and_non_root() -> None:
    dockerfile = CONTAINERS / "Dockerfile"
    lint = subprocess.run(
        [REPO / ".venv/bin/hadolint", dockerfile], capture_output=True, text=True, check=False
    )
    assert lint.returncode == 0, lint.stdout
    text = dockerfile.read_text()
    assert len(re.findall(r"^FROM .*-slim AS ", text, flags=re.MULTILINE)) == 2
    user = re.findall(r"^USER (.+)$", text, flags=re.MULTILINE)
    assert user
    assert user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, flags=re.MULTILINE)
    declared = re.findall(r"^(?:ARG|ENV)\s+(.*)$", text, flags=re.MULTILINE)
    assert not [d for d in declared if re.search(r"TOKEN|PASSWORD|SECRET", d, re.IGNORECASE)]
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*", "the build context admits only what the image needs"


def test_the_bake_file_builds_the_image_compose_runs() -> None:
    bake = hcl2.loads((REPO / "docker-bake.hcl").read_text())

    def unquote(value: str) -> str:
        return value.strip('"')

    variables = {unquote(name) for block in bake["variable"] for name in block}
    assert {"REGISTRY", "TAG", "PYTHON_VERSION"} <= variables
    targets = {unquote(name): body for block in bake["target"] for name, body in block.items()}
    groups = {unquote(name): body for block in bake["group"] for name, body in block.items()}
    assert [unquote(t) for t in groups["default"]["targets"]] == ["app"]
    app = targets["app"]
    assert (REPO / unquote(app["dockerfile"])).is_file()
    assert (REPO / unquote(app["context"]) / "requirements.txt").is_file()
    assert unquote(app["tags"][0]) == "${REGISTRY}coding-playground:${TAG}"
    labels = {unquote(k) for k in app["labels"]}
    assert {"org.opencontainers.image.title", "org.opencontainers.image.version"} <= labels
    # Imported and exported, locally or in the registry, unless BUILD_CACHE says not (Buildx's
    # docker driver exports none: scripts/build says false for it).
    assert "BUILD_CACHE" in variables
    for way in ("cache-from", "cache-to"):
        assert app[way].startswith('${BUILD_CACHE == "true" ? ['), app[way]
        assert "type=local" in app[way]
        assert "type=registry" in app[way]
    release = targets["release"]
    assert [unquote(t) for t in release["inherits"]] == ["app"]
    assert [unquote(p) for p in release["platforms"]] == ["linux/amd64", "linux/arm64"]


def test_the_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(path) for path in SCRIPTS.iterdir() if path.suffix != ".py")
    lint = subprocess.run(
        [REPO / ".venv/bin/shellcheck", "--source-path=SCRIPTDIR", "-x", *scripts,
         str(REPO / ".ci/run")],
        capture_output=True, text=True, check=False,
    )
    assert lint.returncode == 0, lint.stdout


# -- the scripts, against the stand-in docker CLI -------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A folder of stand-ins, first on PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("nvidia-smi", FAKE_NVIDIA_SMI)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def run(
    script: str, *args: str, path: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), **(env or {})}
    return subprocess.run(
        [str(SCRIPTS / script), *args], capture_output=True, text=True, env=environment,
        timeout=120, check=False,
    )


def with_fake(fake_bin: Path) -> str:
    return f"{fake_bin}:/usr/bin:/bin"


def without_docker(tmp_path: Path) -> str:
    """A PATH that has everything /usr/bin and /bin have, except docker and nvidia-smi."""
    folder = tmp_path / "nodocker"
    folder.mkdir()
    for source in (Path("/usr/bin"), Path("/bin")):
        for tool in source.iterdir():
            target = folder / tool.name
            if tool.name not in ("docker", "nvidia-smi") and not target.exists():
                target.symlink_to(tool)
    return str(folder)


@pytest.mark.parametrize("script", [*DOCKER_SCRIPTS, "run", "test", "lock"])
def test_every_script_explains_itself(script: str) -> None:
    result = run(script, "--help", path="/usr/bin:/bin")
    assert result.returncode == 0
    assert result.stdout.startswith(f"Usage: scripts/{script}")


@pytest.mark.parametrize("script", ["build", "up", "down", "logs", "download", "status"])
def test_without_docker_each_script_says_so(script: str, tmp_path: Path) -> None:
    result = run(script, path=without_docker(tmp_path))
    assert result.returncode == 1
    assert "docker is not installed" in result.stderr
    assert "line " not in result.stderr, "a clear message, not a bash error"


@pytest.mark.parametrize(
    ("script", "missing", "message"),
    [
        ("down", "FAKE_NO_ENGINE", "the Docker engine is not running"),
        ("down", "FAKE_NO_COMPOSE", "Docker Compose v2 is missing"),
        ("download", "FAKE_NO_COMPOSE", "Docker Compose v2 is missing"),
    ],
)
def test_a_missing_plugin_or_engine_is_named(
    fake_bin: Path, tmp_path: Path, script: str, missing: str, message: str
) -> None:
    log = tmp_path / "docker.log"
    result = run(script, path=with_fake(fake_bin), env={"FAKE_DOCKER_LOG": str(log), missing: "1"})
    assert result.returncode == 1
    assert message in result.stderr


def bake_target(name: str, env: dict[str, str]) -> dict[str, Any]:
    """A target of docker-bake.hcl as a full HCL parser reads it, its variables filled in
    (the environment's value first, as bake does)."""
    bake = hcl2.loads((REPO / "docker-bake.hcl").read_text())
    values: dict[str, str] = {
        name.strip('"'): env.get(name.strip('"'), body["default"].strip('"'))
        for block in bake["variable"] for name, body in block.items()
    }

    def evaluated(value: str) -> str:
        """A quoted string with its ${NAME} filled in, or a bare variable's value."""
        if not value.startswith('"'):
            return values[value]
        return re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], value.strip('"'))

    body = next(b for block in bake["target"] for n, b in block.items() if n.strip('"') == name)
    return {
        "file": evaluated(body["dockerfile"]), "target": evaluated(body["target"]),
        "tags": [evaluated(tag) for tag in body["tags"]],
        "args": {k.strip('"'): evaluated(v) for k, v in body["args"].items()},
        "labels": {k.strip('"'): evaluated(v) for k, v in body["labels"].items()},
        "context": evaluated(body["context"]),
    }


@pytest.mark.parametrize("tag", [None, "2.0.0"])
def test_without_buildx_build_runs_docker_build_on_the_bake_files_target(
    fake_bin: Path, tmp_path: Path, tag: str | None
) -> None:
    log = tmp_path / "docker.log"
    env = {"FAKE_DOCKER_LOG": str(log), "FAKE_NO_BUILDX": "1", **({"TAG": tag} if tag else {})}
    result = run("build", "--network", "host", path=with_fake(fake_bin), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Buildx is not installed: building the app target")
    assert [call.split()[0] for call in log.read_text().splitlines()[-3:]] == [
        "run", "buildx", "build"], "the inputs are fetched first"
    build, *options, context = log.read_text().splitlines()[-1].split(" ")
    pairs = list(zip(options[::2], options[1::2], strict=True))

    def given(flag: str) -> list[str]:
        return [value for name, value in pairs if name == flag]

    want = bake_target("app", read_env_file() | ({"TAG": tag} if tag else {}))
    assert (build, given("--file"), given("--target"), context) == (
        "build", [want["file"]], [want["target"]], want["context"])
    assert given("--tag") == want["tags"]
    assert dict(value.split("=", 1) for value in given("--build-arg")) == want["args"]
    assert dict(value.split("=", 1) for value in given("--label")) == want["labels"]
    assert given("--network") == ["host"], "extra arguments go to docker build"


@pytest.mark.parametrize("driver", ["docker", "docker-container"])
def test_with_buildx_build_fetches_the_inputs_then_runs_bake(
    fake_bin: Path, tmp_path: Path, driver: str
) -> None:
    """First the container that fetches the image's inputs (with the host's network, as the
    user, for this machine's platform first and, for the release, the other); then bake, with
    the cache import and export left out for the docker driver, which refuses them."""
    log = tmp_path / "docker.log"
    env = {"FAKE_DOCKER_LOG": str(log), "FAKE_ARCH": "arm64", "FAKE_BUILDX_DRIVER": driver}
    result = run("build", "release", path=with_fake(fake_bin), env=env)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    [fetch] = [call for call in calls if call.startswith("run ")]
    assert fetch.startswith(f"run --rm --network host --user {os.getuid()}:{os.getgid()} ")
    assert f"--volume {REPO}:/src --workdir /src python:3.11-slim sh -euc" in fetch
    assert fetch.endswith("sh arm64 amd64")
    assert calls[-2:] == ["buildx bake --file docker-bake.hcl release",
                          f"BUILD_CACHE={'false' if driver == 'docker' else ''}"]
    said = "Buildx's docker driver keeps the build cache in the engine and exports none"
    assert (said in result.stdout) == (driver == "docker")


def test_an_unknown_profile_is_refused(fake_bin: Path, tmp_path: Path) -> None:
    result = run("up", "tpu", path=with_fake(fake_bin), env={"FAKE_DOCKER_LOG": "/dev/null"})
    assert result.returncode == 1
    assert "unknown profile 'tpu': use one of cpu cuda" in result.stderr


@pytest.fixture
def healthy_app() -> Iterator[ServerThread]:
    """Stands for the app container answering on its published port."""

    async def healthz(request: object) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    with ServerThread(Starlette(routes=[Route("/healthz", healthz)])) as server:
        yield server


def compose_calls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("compose --project")]


def test_up_checks_the_machine_then_starts_the_profile(
    fake_bin: Path, tmp_path: Path, healthy_app: ServerThread
) -> None:
    log = tmp_path / "docker.log"
    env = {
        "FAKE_DOCKER_LOG": str(log), "APP_PORT": str(healthy_app.port),
        "MODEL_CACHE": str(tmp_path / "cache"), "APP_DATA": str(tmp_path / "data"),
    }
    result = run("up", "cpu", path=with_fake(fake_bin), env=env)
    assert result.returncode == 0, result.stderr
    assert "Ready for profile cpu." in result.stdout
    assert f"The playground is at http://127.0.0.1:{healthy_app.port}" in result.stdout
    project = f"--project-directory {CONTAINERS} -f {CONTAINERS / 'compose.yaml'}"
    assert compose_calls(log) == [
        f"compose {project} --env-file {CONTAINERS / 'service.env'} --profile cpu up --detach"
    ]
    assert (tmp_path / "cache").is_dir()
    assert (tmp_path / "data").is_dir()


def test_up_without_the_image_says_to_build_it(fake_bin: Path, tmp_path: Path) -> None:
    log = tmp_path / "docker.log"
    env = {"FAKE_DOCKER_LOG": str(log), "FAKE_NO_IMAGE": "1", "TAG": "9.9"}
    result = run("up", path=with_fake(fake_bin), env=env)
    assert result.returncode == 1
    assert "coding-playground:9.9 is not built yet: run scripts/build first" in result.stderr
    assert compose_calls(log) == []


def test_download_runs_the_profiles_downloader(fake_bin: Path, tmp_path: Path) -> None:
    log = tmp_path / "docker.log"
    env = {"FAKE_DOCKER_LOG": str(log), "MODEL_CACHE": str(tmp_path / "cache")}
    result = run("download", "cuda", path=with_fake(fake_bin), env=env)
    assert result.returncode == 0, result.stderr
    assert compose_calls(log)[0].endswith("--profile cuda run --rm downloader-cuda")


def make_cached_model(cache: Path, model_id: str, weight_bytes: int) -> None:
    """A model in the Hugging Face cache layout whose weights are a sparse file of that size."""
    snapshot = cache / f"models--{model_id.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    with (snapshot / "model.safetensors").open("wb") as weights:
        weights.truncate(weight_bytes)


def test_doctor_stops_a_model_too_big_for_the_ram(fake_bin: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make_cached_model(cache, "big/coder-70b", 140 * GIB)
    log = tmp_path / "docker.log"
    env = {"FAKE_DOCKER_LOG": str(log), "MODEL_CACHE": str(cache), "CPU_MODEL_ID": "big/coder-70b"}
    doctor = run("doctor", "cpu", path=with_fake(fake_bin), env=env)
    assert doctor.returncode == 1
    assert "big/coder-70b needs about 170 GiB (from its 143360 MiB of weights)" in doctor.stderr
    assert "the server would be killed for lack of memory" in doctor.stderr
    up = run("up", "cpu", path=with_fake(fake_bin), env=env)
    assert up.returncode == 1
    assert compose_calls(log) == [], "nothing is started"


def test_doctor_uses_the_env_file_figure_until_the_model_is_cached(
    fake_bin: Path, tmp_path: Path
) -> None:
    env = {"FAKE_DOCKER_LOG": "/dev/null", "MODEL_CACHE": str(tmp_path), "CPU_MEMORY_GIB": "9999"}
    doctor = run("doctor", path=with_fake(fake_bin), env=env)
    assert doctor.returncode == 1
    assert "needs about 9999 GiB (from CPU_MEMORY_GIB in containers/service.env" in doctor.stderr


def test_doctor_checks_the_gpu_and_the_nvidia_toolkit(fake_bin: Path, tmp_path: Path) -> None:
    env = {"FAKE_DOCKER_LOG": "/dev/null", "MODEL_CACHE": str(tmp_path), "FAKE_GPU_MIB": "4096"}
    doctor = run("doctor", "cuda", path=with_fake(fake_bin), env=env)
    assert doctor.returncode == 1
    assert "the NVIDIA container toolkit is not registered with Docker" in doctor.stderr
    assert "needs about 8 GiB (from CUDA_MEMORY_GIB" in doctor.stderr
    assert "the GPU memory is 4 GiB" in doctor.stderr
    env |= {"FAKE_GPU_MIB": "24576", "FAKE_NVIDIA_RUNTIME": "1"}
    doctor = run("doctor", "cuda", path=with_fake(fake_bin), env=env)
    assert doctor.returncode == 0, doctor.stdout
    assert "Ready for profile cuda." in doctor.stdout


# -- the scale-out stack (compose.scale.yaml and nginx.conf) --------------------------------


@pytest.fixture(scope="module")
def scale() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONTAINERS / "compose.scale.yaml").read_text())
    return loaded


def test_the_scale_profile_has_every_piece(scale: dict[str, Any]) -> None:
    services = scale["services"]
    assert {name: service.get("profiles") for name, service in services.items()} == {
        name: ["scale"] for name in
        ("downloader", "tgi-a", "tgi-b", "tgi-pool", "postgres", "migrate", "app", "nginx")
    }
    assert services["app"]["deploy"]["replicas"] == "${APP_REPLICAS}"
    assert int(read_env_file()["APP_REPLICAS"]) >= 2
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}, "nginx is the only door"
    assert services["app"]["environment"]["BACKEND_URL"] == "http://tgi-pool:8080"
    assert services["app"]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert services["app"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "tgi-pool": {"condition": "service_started"},
    }
    assert services["nginx"]["depends_on"] == {"app": {"condition": "service_healthy"}}
    assert set(services["tgi-pool"]["depends_on"]) == {"tgi-a", "tgi-b"}
    assert services["migrate"]["environment"]["DATABASE_URL"] == services["app"][
        "environment"]["DATABASE_URL"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    assert "./nginx-tgi.conf:/etc/nginx/nginx.conf:ro" in services["tgi-pool"]["volumes"]


def test_each_tgi_replica_has_its_own_gpu_and_the_shared_cache(scale: dict[str, Any]) -> None:
    services = scale["services"]
    gpus = []
    for name in ("tgi-a", "tgi-b"):
        tgi = services[name]
        assert tgi["image"] == "ghcr.io/huggingface/text-generation-inference:${TGI_VERSION}"
        assert tgi["volumes"] == ["${MODEL_CACHE}:/data"]
        assert tgi["environment"]["HF_HUB_OFFLINE"] == "1"
        assert "--model-id ${CUDA_MODEL_ID}" in tgi["command"]
        assert tgi["depends_on"] == {"downloader": {"condition": "service_completed_successfully"}}
        [device] = tgi["deploy"]["resources"]["reservations"]["devices"]
        gpus.append(device["device_ids"])
    env = read_env_file()
    assert gpus == [["${TGI_A_GPU}"], ["${TGI_B_GPU}"]]
    assert env["TGI_A_GPU"] != env["TGI_B_GPU"]


def test_the_scale_stack_sets_only_settings_the_app_reads(scale: dict[str, Any]) -> None:
    settings = {name.upper() for name in Settings.model_fields}
    for name in ("app", "migrate", "downloader"):
        assert set(scale["services"][name]["environment"]) <= settings | {"HF_HOME"}, name


def test_postgres_takes_every_replica_pool(scale: dict[str, Any]) -> None:
    env = read_env_file()
    # SQLAlchemy's default pool: 5 connections and 10 more on demand, per replica.
    assert int(env["POSTGRES_MAX_CONNECTIONS"]) >= 15 * int(env["APP_REPLICAS"]) + 5
    assert "max_connections=${POSTGRES_MAX_CONNECTIONS}" in scale["services"]["postgres"][
        "command"]


def test_nginx_keeps_each_page_on_one_replica_and_streams_unbuffered() -> None:
    conf = (CONTAINERS / "nginx.conf").read_text()
    pool = (CONTAINERS / "nginx-tgi.conf").read_text()
    app_upstream = re.search(r"upstream app \{(.*?)\}", conf, re.DOTALL)
    assert app_upstream is not None
    assert "hash $route consistent;" in app_upstream.group(1)
    assert "server app:7860;" in app_upstream.group(1)
    assert re.search(r'map \$cookie_playground_route \$route \{\s*""\s+\$request_id;', conf)
    assert 'Set-Cookie "playground_route=$route;' in conf
    assert "proxy_buffering off;" in conf
    tgi_upstream = re.search(r"upstream tgi \{(.*?)\}", pool, re.DOTALL)
    assert tgi_upstream is not None
    assert "least_conn;" in tgi_upstream.group(1)
    assert {"server tgi-a:80", "server tgi-b:80"} <= set(
        re.findall(r"server tgi-\w:80", tgi_upstream.group(1)))
    assert "proxy_buffering off;" in pool


def test_the_app_trusts_the_forwarded_address_of_nginx_alone(scale: dict[str, Any]) -> None:
    env = read_env_file()
    nginx = scale["services"]["nginx"]["networks"]["default"]["ipv4_address"]
    assert nginx == "${NGINX_ADDRESS}"
    assert scale["services"]["app"]["environment"]["TRUSTED_PROXIES"] == nginx
    [network] = scale["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(env["SCALE_SUBNET"])
    others = ipaddress.ip_network(env["SCALE_IP_RANGE"])
    assert network == {"subnet": "${SCALE_SUBNET}", "ip_range": "${SCALE_IP_RANGE}"}
    assert ipaddress.ip_address(env["NGINX_ADDRESS"]) in subnet
    assert others.subnet_of(subnet)  # type: ignore[arg-type]
    assert ipaddress.ip_address(env["NGINX_ADDRESS"]) not in others, (
        "Docker places the other containers in SCALE_IP_RANGE: none may take nginx's address")


def test_behind_the_shipped_nginx_a_locked_out_address_leaves_the_others_signing_in(
    tmp_path: Path,
) -> None:
    """Behind nginx every client had nginx's address (uvicorn trusted X-Forwarded-For from
    127.0.0.1 only), so 20 failed logins from anyone locked everyone out. nginx connects
    from 127.0.0.9 here (proxy_bind), as in the Compose network it connects from an address
    other than the app's; the clients come from 127.0.0.2 and 127.0.0.1."""
    try:
        nginx_binary()
    except RuntimeError:
        pytest.skip("needs Debian's nginx: apt-get install nginx-light")
    proxy, door = "127.0.0.9", free_port()
    settings = {"AUTH_MODE": "password", "ALLOW_SIGNUP": "true", "TRUSTED_PROXIES": proxy}
    with procs.app(tmp_path / "app", f"http://127.0.0.1:{free_port()}",
                   settings=settings) as app:
        conf = render_conf("nginx.conf", tmp_path / "door", door, {"app:7860": [app.port]})
        conf = conf.replace("proxy_pass http://app;", f"proxy_pass http://app;\n"
                            f"            proxy_bind {proxy};", 1)
        assert f"proxy_bind {proxy};" in conf
        url = f"http://127.0.0.1:{door}/api/v1"
        with (
            Nginx(conf, tmp_path / "door", door),
            httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(
                local_address="127.0.0.2")) as guesser,
            httpx.Client(base_url=url, timeout=30) as alice,
        ):
            credentials = {"name": "alice", "password": "a long enough passphrase"}
            assert alice.post("/signup", json=credentials).status_code == 201
            for number in range(20):
                wrong = {"name": f"guess{number}", "password": "not the passphrase"}
                assert guesser.post("/login", json=wrong).status_code == 401
            locked = guesser.post("/login", json=credentials)
            assert locked.status_code == 429, "20 failed logins from 127.0.0.2"
            assert "Too many failed logins" in locked.json()["error"]
            assert alice.post("/login", json=credentials).status_code == 200, (
                "127.0.0.1 still signs in")


@contextmanager
def two_replicas(
    tmp_path: Path, backend: ServerThread, postgres_url: str, settings: dict[str, str],
) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """Two replicas of the app on one PostgreSQL behind the shipped nginx.conf, with
    ``settings`` and accounts on: a client of nginx's door and the headers of alice, signed
    up. nginx sends a request without a route cookie to a replica picked by a random hash
    (clear the client's cookies before each)."""
    try:
        nginx_binary()
    except RuntimeError:
        pytest.skip("needs Debian's nginx: apt-get install nginx-light")
    settings = {"AUTH_MODE": "password", "ALLOW_SIGNUP": "true", **settings}
    door = free_port()
    with ExitStack() as stack:
        # One after the other: the first migrates the database, the second finds it done.
        apps = [stack.enter_context(procs.app(tmp_path / f"app-{index}", backend.url,
                                              database_url=postgres_url, settings=settings))
                for index in range(2)]
        conf = render_conf("nginx.conf", tmp_path / "door", door,
                           {"app:7860": [app.port for app in apps]})
        stack.enter_context(Nginx(conf, tmp_path / "door", door))
        client = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{door}/api/v1", timeout=30))
        credentials = {"name": "alice", "password": "a long enough passphrase"}
        assert client.post("/signup", json=credentials).status_code == 201
        token = client.post("/login", json=credentials).json()["token"]
        yield client, {"authorization": f"Bearer {token}"}


@pytest.mark.postgres
def test_behind_the_shipped_nginx_two_replicas_hold_a_user_to_one_message_rate(
    tmp_path: Path, backend: ServerThread, postgres_url: str,
) -> None:
    """Behind nginx (``two_replicas``), a user with a rate of 2 messages a minute sends 10,
    each to a replica picked at random, and 2 are answered, the rest refused with 429,
    wherever they land. Each replica counted its own before, and answered more."""
    with two_replicas(tmp_path, backend, postgres_url,
                      {"RATE_LIMIT_PER_MINUTE": "2"}) as (client, alice):
        statuses = []
        for number in range(10):
            client.cookies.clear()  # no route cookie: nginx picks a replica at random
            statuses.append(client.post("/dialogue", json={"message": f"hello {number}"},
                                        headers=alice).status_code)
        assert statuses == [200, 200] + [429] * 8, statuses


@pytest.mark.postgres
def test_behind_the_shipped_nginx_two_replicas_hold_a_user_to_one_cap_of_running_replies(
    tmp_path: Path, fake: FakeBackend, backend: ServerThread, postgres_url: str,
) -> None:
    """Behind nginx (``two_replicas``), a user with MAX_RUNNING_REPLIES_PER_USER=2 starts 8
    slow replies, each on a replica picked at random: 2 start and run on, the other 6 are
    refused with 429, wherever they land. Each replica counted its own before, and started
    up to 2 each."""
    fake.tokens, fake.token_delay = [f"token{i} " for i in range(600)], 0.05
    settings = {"MAX_RUNNING_REPLIES_PER_USER": "2", "RATE_LIMIT_PER_MINUTE": "100"}
    with two_replicas(tmp_path, backend, postgres_url, settings) as (client, alice):
        statuses = []
        for number in range(8):
            client.cookies.clear()  # no route cookie: nginx picks a replica at random
            # The reply runs on after its client leaves (REPLY_KEEPS_RUNNING).
            with client.stream("POST", "/dialogue", headers=alice,
                               json={"message": f"long one {number}", "stream": True}) as answer:
                statuses.append(answer.status_code)
        assert statuses == [200, 200] + [429] * 6, statuses
