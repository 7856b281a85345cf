"""The Docker Space (containers/space/, assembled by scripts/space-docker) built and run in the
docker tier (tests/docker_engine.py): built with BuildKit through Buildx (its ``docker``
driver: the engine's own BuildKit, no image pulled) on TGI's stand-in image
(tests/docker/tgi.Dockerfile, laid out as TGI 3.3.6's image), and run as a Space runs it.

The build has the host's network, as the Space's builder has the Internet: pip fetches the
lock from PyPI. The container then runs as the image's uid 1000 on the engine's bridge (whose
address the host reaches), with the Space's variables (tests/test_space.py: SPACE_VARIABLES)
and persistent storage (a folder at /data) holding the model in the Hugging Face cache, put
there by the downloader from the fake Hub; TGI runs offline. A client calls ``/ask`` with
``gradio_client``, signed in as a Hugging Face login leaves a browser (``hf_session``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from tests.conftest import OUTPUT, REPO, answers
from tests.docker_engine import TGI_IMAGE, DockerEngine, read_env_file
from tests.fake_hub import FakeHub, FakeRepo
from tests.test_docker import FILES
from tests.test_downloader import download
from tests.test_space import MODEL, SPACE_VARIABLES, hf_session
from tests.waiting import wait_for

# The first test to run also waits for the engine, its stand-ins and the Space's build.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]

IMAGE = "coding-playground-space:test"
SPACE_UID = 1000


@pytest.fixture(scope="module")
def space_image(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Space's folder as scripts/space-docker assembles it, built with ``docker buildx
    build``, cold (the engine's build cache is new each session); the time goes to
    test-output/docker-space-build-time.txt."""
    folder = tmp_path_factory.mktemp("space")
    subprocess.run([REPO / "scripts/space-docker", folder], check=True, capture_output=True)
    started = time.monotonic()
    build = docker_engine.docker("buildx", "build", "--network", "host", "--progress", "plain",
                                 "--tag", IMAGE, str(folder), timeout=900)
    seconds = time.monotonic() - started
    assert "using docker driver" in build.stderr
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "docker-space-build-time.txt").write_text(
        f"the Docker Space image, docker buildx build (pip from PyPI, cold): {seconds:.1f} s\n")
    return IMAGE


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """The Space's persistent storage: the model in the Hugging Face cache where start looks
    (/data/huggingface/hub), fetched by the downloader from the fake Hub, all of it uid 1000's
    as a Space's /data is."""
    with FakeHub(repos={MODEL: FakeRepo(FILES)}).serving() as hub:
        fetched = download(hub, tmp_path, "--model-id", MODEL)
    assert fetched.returncode == 0, fetched.stderr
    data = tmp_path / "data"
    (data / "huggingface").mkdir(parents=True)
    (tmp_path / "cache").rename(data / "huggingface/hub")
    for path in [data, *data.rglob("*")]:
        os.lchown(path, SPACE_UID, SPACE_UID)
    return data


def run_space(engine: DockerEngine, image: str, *options: str) -> str:
    """``docker run`` of the Space's image, detached, as the Space runs it: its id."""
    return engine.docker("run", "--detach", *options, image).stdout.strip()


@pytest.fixture
def space(docker_engine: DockerEngine, space_image: str, storage: Path) -> Iterator[str]:
    variables = {**SPACE_VARIABLES, "MODEL_ID": MODEL, "HF_HUB_OFFLINE": "1"}
    container = run_space(
        docker_engine, space_image, "--volume", f"{storage}:/data",
        *(option for name, value in variables.items() for option in ("--env", f"{name}={value}")),
    )
    yield container
    docker_engine.docker("rm", "--force", container, check=False)


def inspect(engine: DockerEngine, container: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(engine.docker("inspect", container).stdout)[0]
    return found


def test_the_space_runs_tgi_and_the_app_to_a_streamed_answer_as_uid_1000(
    docker_engine: DockerEngine, space: str, storage: Path
) -> None:
    address = inspect(docker_engine, space)["NetworkSettings"]["IPAddress"]
    url = f"http://{address}:7860"

    def started() -> bool:
        assert inspect(docker_engine, space)["State"]["Running"], docker_engine.docker(
            "logs", space).stderr[-3000:]
        return answers(f"{url}/healthz")

    wait_for(started, 120, step=0.5, what="the Space's app on port 7860")
    logs = docker_engine.docker("logs", space)
    snapshots = f"/data/huggingface/hub/models--{MODEL.replace('/', '--')}/snapshots/"
    assert f"Loading {MODEL} from {snapshots}" in logs.stdout, "TGI took the model from /data"
    assert docker_engine.docker("exec", space, "id", "-u").stdout.strip() == str(SPACE_UID)

    alice = Client(url, verbose=False, headers={"Cookie": hf_session("alice")})
    job = alice.submit(message="Reverse a string in Python.", api_name="/ask")
    updates: list[dict[str, Any]] = list(job)
    last = job.result()
    assert last["error"] is None
    assert "return s[::-1]" in last["reply"], "streamed from the TGI stand-in through the app"
    assert len({update["reply"] for update in updates}) > 1, "in more than one update"
    assert (storage / "playground.db").stat().st_uid == SPACE_UID, "on the persistent storage"

    wait_for(lambda: inspect(docker_engine, space)["State"]["Health"]["Status"] == "healthy",
             90, step=1, what="Docker's health check of the Space (every 30 s)")


def test_tgis_image_alone_does_not_start_as_uid_1000(docker_engine: DockerEngine) -> None:
    """As TGI 3.3.6's image (TGI issue #3082), its stand-in keeps its Python under /root, which
    uid 1000 cannot enter: what the Space's Dockerfile opens /root for."""
    image = f"{TGI_IMAGE}:{read_env_file()['TGI_VERSION']}"
    alone = docker_engine.docker("run", "--rm", "--user", str(SPACE_UID), image,
                                 "--model-id", MODEL, check=False)
    assert alone.returncode != 0
    assert "Permission denied" in alone.stderr


def test_without_model_id_the_space_stops_with_starts_message(
    docker_engine: DockerEngine, space_image: str
) -> None:
    container = run_space(docker_engine, space_image)
    try:
        wait_for(lambda: not inspect(docker_engine, container)["State"]["Running"], 30,
                 what="the Space to stop")
        assert inspect(docker_engine, container)["State"]["ExitCode"] != 0
        logs = docker_engine.docker("logs", container)
        assert "set MODEL_ID in the Space settings" in logs.stderr
    finally:
        docker_engine.docker("rm", "--force", container, check=False)
