"""The Kubernetes manifests run for real on this one machine: the cpu overlay rendered by
Debian trixie's ``kubectl kustomize`` (as tests/test_kubernetes.py renders it) and played by
Debian bookworm's ``podman kube play`` (4.3.1), to a chat through the app's REST API.

What runs is the rendered stack, in the order a cluster would reach: PostgreSQL, the
migration, TGI (its init container the downloader, filling the model-cache volume), the app
(its init container waiting for the migration's schema). Each step is one ``podman kube play``
of the rendered objects it needs, and the test waits as the pods' probes would (the readiness
probe's own ``pg_isready`` for PostgreSQL, ``/health`` and ``/healthz`` over HTTP).

Stand-ins, for what cannot be pulled or reached here (no image registry, no Hub):
- ``postgres:17``: Debian's PostgreSQL behind an entry point written from the official
  image's (tests/docker/postgres.Dockerfile, postgres_entrypoint.sh).
- TGI's image: the docker tier's (tests/docker/tgi.Dockerfile: the TGI fake behind a launcher
  that takes TGI's arguments and refuses to start without the model in its cache).
- ``python:3.11-slim``, the base of all three and of the app image: a debootstrap root.
- The Hugging Face Hub: tests/fake_hub.py on a loopback port (the downloader's
  ``HF_ENDPOINT``, as the docker tier's compose override sets it).
The app image is no stand-in: ``scripts/build`` (``docker buildx bake``) builds it in the
docker tier's private engine, and ``docker save`` hands it (and the stand-ins) to podman's
``podman load``, so what runs is exactly the bake build's image.

podman runs as root with a configuration and storage of its own in a temporary folder
(``--root``, ``--runroot``, ``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``; cgroupfs, events in
a file: there is no systemd), every pod on the host's network (``--network host``), every
server on 127.0.0.1: nothing goes to a bridge's address. Nothing of it outlives the test.

What podman 4.3.1 cannot play as rendered, and what one host needs, is changed by
``for_podman`` below, each change saying why (with podman's source where podman is the
reason); docs/kubernetes.md lists them.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import OUTPUT, answers
from tests.docker_engine import POSTGRES_IMAGE, TGI_IMAGE, DockerEngine, read_env_file
from tests.fake_hub import FakeHub, FakeRepo
from tests.servers import free_port
from tests.test_docker import FILES
from tests.test_kubernetes import KUBERNETES, Obj, one, rendered
from tests.waiting import wait_for

pytestmark = [pytest.mark.kubernetes, pytest.mark.docker]

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = read_env_file()
APP_IMAGE = f"coding-playground:{DEFAULTS['TAG']}"
PASSWORD = "a-password-of-the-test"
USER, USER_PASSWORD = "ada", "correct horse battery"
# The kinds podman 4.3.1 plays (pkg/domain/infra/abi/play.go, PlayKube's switch: Pod,
# Deployment, PersistentVolumeClaim, ConfigMap, Secret); any other it skips ("Kube kind %s not
# supported"). Of the rest, two are turned into Pods (below), the others need a cluster.
PLAYED = {"Deployment", "PersistentVolumeClaim", "ConfigMap"}
TURNED_INTO_PODS = {"StatefulSet", "Job"}
NOT_RUN = {"Namespace", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget",
           "NetworkPolicy"}
# Kubernetes' $(VAR) references in command and args (k8s.io/kubernetes
# third_party/forked/golang/expansion): $$ is a literal $, an unknown name stays as written.
# What podman 4.3.1 run as root writes outside its --root and --runroot whatever it is told:
# netavark's run folder (vendor/github.com/containers/common/libnetwork/network/interface.go:
# rootful instances share it) and the image copier's blob-info cache
# (vendor/github.com/containers/image/v5/pkg/blobinfocache/default.go). Removed after the test
# unless they were there before it.
OUTSIDE = (Path("/run/containers"), Path("/var/lib/containers"))
REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Podman:
    """Debian's podman, root, with every file of its own in a temporary folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="pg-podman-"))
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        # podman gives every container nofile and nproc of 1048576 unless told otherwise
        # (pkg/specgen/generate/oci.go, addRlimits), which needs CAP_SYS_RESOURCE: root here
        # has none, and runc fails "error setting rlimit type 7: operation not permitted".
        # So: this process's own open-files limit, and 32768 processes (per user, as on the
        # host), or fewer where this process may have fewer.
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
        (self.folder / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{self.folder / "tmp"}"\n'
        )
        (self.folder / "storage.conf").write_text(
            '[storage]\ndriver = "overlay"\n'
            f'graphroot = "{self.folder / "root"}"\nrunroot = "{self.folder / "run"}"\n'
        )
        self.created = [path for path in OUTSIDE if not path.exists()]
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.folder / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.folder / "storage.conf")}

    def __call__(self, *args: str, check: bool = True, timeout: float = 600,
                 stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", "--root", str(self.folder / "root"), "--runroot",
             str(self.folder / "run"), "--cgroup-manager", "cgroupfs", "--events-backend",
             "file", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
            input=stdin,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result

    def play(self, name: str, objects: list[Obj]) -> str:
        """``podman kube play --network host`` of ``objects``, written to NAME.yaml (kept in
        the folder, and copied to test-output/kubernetes-podman/ for a look after a run)."""
        path = self.folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
        (OUTPUT / "kubernetes-podman").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, OUTPUT / "kubernetes-podman" / path.name)
        return self("kube", "play", "--network", "host", str(path)).stdout

    def exited(self, container: str) -> int | None:
        state = json.loads(self("inspect", "--format", "{{json .State}}", container).stdout)
        return None if state["Running"] or state["Status"] != "exited" else int(state["ExitCode"])

    def logs(self) -> str:
        """Every container's output, for a failure's message."""
        names = self("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
        return "\n".join(f"--- {name}\n" + (lambda r: r.stdout + r.stderr)(
            self("logs", name, check=False))[-2000:] for name in names)

    def stop(self) -> None:
        self("pod", "rm", "--all", "--force", "--time", "0", check=False)
        self("volume", "rm", "--all", "--force", check=False)
        self("system", "reset", "--force", check=False)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.folder}/")), reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False, capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)
        for path in self.created:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Ports:
    app: int
    tgi: int
    postgres: int


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def expand(text: str, env: dict[str, str]) -> str:
    """``$(NAME)`` as Kubernetes expands it in a container's command and args."""
    return REFERENCE.sub(lambda m: "$" if m.group(0) == "$$"
                         else env.get(m.group(1), m.group(0)), text)


def container_env(container: Obj, config_maps: dict[str, dict[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = expand(variable["value"], env)
    return env


def set_env(container: Obj, name: str, value: str) -> None:
    variables = [v for v in container.get("env", []) if v["name"] != name]
    container["env"] = [*variables, {"name": name, "value": value}]


def pod(name: str, template: Obj) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {**template["metadata"], "name": name}, "spec": template["spec"]}


def for_podman(objects: tuple[Obj, ...], ports: Ports, hub_url: str) -> dict[str, list[Obj]]:
    """The rendered objects to play, step by step (postgres, migrate, tgi, app), each with the
    ConfigMaps, changed only as podman 4.3.1 or one host needs:

    1. The StatefulSet and the Job become Pods of their pod templates (podman 4.3.1 plays
       neither: play.go's switch skips them): ``postgres-0`` with the PersistentVolumeClaim its
       volumeClaimTemplate would make (``data-postgres-0``), ``migrate`` with the Job's
       restartPolicy (OnFailure: tried again until PostgreSQL answers).
    2. One host, the host's network, loopback only: the Services' names become 127.0.0.1 and
       each server its own free port (all pods share the host's ports, and TGI's 80 needs
       neither root's privilege nor a clash): the app's ConfigMap (BACKEND_URL, APP_HOST,
       APP_PORT), TGI's PORT and ``--hostname`` (launcher/src/main.rs),
       PostgreSQL's PGPORT (the server's, psql's and pg_isready's default port) and
       ``listen_addresses=127.0.0.1``; the Secret's DATABASE_URL names 127.0.0.1 too.
       (podman 4.3.1 drops a pod's hostAliases on the host's network, so the Services' names
       cannot be kept by aliasing them: tried.)
    3. ``$(VAR)`` in command and args expanded from the container's environment, as the
       kubelet does: podman 4.3.1 passes them as written (pkg/specgen/generate/kube/kube.go,
       ToSpecGen: ``s.Command = opts.Container.Args``).
    4. The downloader asks the fake Hub (HF_ENDPOINT), and the TGI stand-in loads for 2 s.
    5. The containers' ``ports`` left out: podman 4.3.1 publishes each containerPort on the
       host as the same hostPort (kube.go, getPodPorts), which the host's network refuses
       ("PortMappings can only be used with Bridge or slirp4netns networking",
       pkg/specgen/pod_validate.go); on the host's network every port is the host's anyway.
    6. PostgreSQL's socket folder mounted at /run/postgresql, the same folder as
       /var/run/postgresql in a Debian image (/var/run is a link to /run): podman 4.3.1 gives
       a new volume (an emptyDir is one) the owner and mode of the folder it covers, looked up
       with an Lstat of the container's root joined with the mount's path
       (libpod/container_internal_common.go, fixVolumePermissions), and through the absolute
       link that reaches the host's /run/postgresql (here Debian's postgres, uid 101), so
       PostgreSQL (uid 999) could not write its socket there ("could not create lock file").
       Kubernetes makes an emptyDir world-writable (0777).
    7. The Deployments with init containers (TGI's, the app's) restart their pods' containers
       OnFailure instead of Always: podman 4.3.1 gives init containers the pod's restart
       policy (play.go, playKubePod: ``RestartPolicy: ctrRestartPolicy``), so a downloader
       that finished starts again and the pod's start fails removing it ("cannot remove
       container ... as it is running"); podman 4.4.0 never restarts them (commit
       10e020c651, "Init containers should not be restarted").
    Everything else (images, commands, volumes, security contexts, init containers, env from
    ConfigMaps and the Secret) is played as rendered. The probes are kept, but podman 4.3.1
    runs liveness probes only as systemd timers (none here: it logs "unable to get systemd
    connection to add healthchecks") and ignores readiness and startup probes: the test does
    their waiting.
    """
    objects = copy.deepcopy(objects)
    kinds = {item["kind"] for item in objects}
    assert kinds <= PLAYED | TURNED_INTO_PODS | NOT_RUN, kinds
    config_maps = [item for item in objects if item["kind"] == "ConfigMap"]
    [app_config] = [item for item in config_maps if "BACKEND_URL" in item["data"]]
    app_config["data"].update(BACKEND_URL=f"http://127.0.0.1:{ports.tgi}",
                              APP_HOST="127.0.0.1", APP_PORT=str(ports.app))
    data = {item["metadata"]["name"]: item["data"] for item in config_maps}

    postgres_set = one(objects, "StatefulSet", "postgres")
    [claim] = postgres_set["spec"]["volumeClaimTemplates"]
    postgres = pod("postgres-0", postgres_set["spec"]["template"])
    postgres["spec"].setdefault("volumes", []).append(
        {"name": claim["metadata"]["name"],
         "persistentVolumeClaim": {"claimName": f"{claim['metadata']['name']}-postgres-0"}})
    [server] = postgres["spec"]["containers"]
    set_env(server, "PGPORT", str(ports.postgres))
    server["args"] = [*server["args"], "-c", "listen_addresses=127.0.0.1"]
    # See 6. above.
    [run] = [mount for mount in server["volumeMounts"] if mount["name"] == "run"]
    assert run["mountPath"] == "/var/run/postgresql"
    run["mountPath"] = "/run/postgresql"
    data_claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                  "metadata": {"name": f"{claim['metadata']['name']}-postgres-0",
                               "labels": postgres["metadata"]["labels"]},
                  "spec": claim["spec"]}

    migrate = pod("migrate", one(objects, "Job", "migrate")["spec"]["template"])
    tgi = one(objects, "Deployment", "tgi")
    [download] = tgi["spec"]["template"]["spec"]["initContainers"]
    set_env(download, "HF_ENDPOINT", hub_url)
    [launcher] = tgi["spec"]["template"]["spec"]["containers"]
    set_env(launcher, "PORT", str(ports.tgi))
    # (Not HOSTNAME in its environment, which TGI's launcher also reads: podman sets its own.)
    launcher["args"] = [*launcher["args"], "--hostname=127.0.0.1"]
    set_env(launcher, "TGI_STANDIN_LOADING_SECONDS", "2")
    app = one(objects, "Deployment", "app")

    for workload in (postgres, migrate, tgi, app):
        spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"][
            "spec"]
        if spec.get("initContainers"):
            # See 7. above.
            assert spec.get("restartPolicy", "Always") == "Always"
            spec["restartPolicy"] = "OnFailure"
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            # See 5. above.
            container.pop("ports", None)
            env = container_env(container, data)
            for field in ("command", "args"):
                if field in container:
                    container[field] = [expand(part, env) for part in container[field]]
    return {
        "postgres": [*config_maps, data_claim, postgres],
        "migrate": [*config_maps, migrate],
        "tgi": [*config_maps, one(objects, "PersistentVolumeClaim", "model-cache"), tgi],
        "app": [*config_maps, app],
    }


def the_secret(ports: Ports) -> dict[str, str]:
    """The Secret "playground" as deploy/kubernetes/secret.example.yaml says to make it, its
    placeholders filled in (and PostgreSQL's address this host's)."""
    example = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    values: dict[str, str] = dict(example["stringData"])
    values["POSTGRES_PASSWORD"] = PASSWORD
    values["DATABASE_URL"] = values["DATABASE_URL"].replace("change-me", PASSWORD).replace(
        "@postgres:5432/", f"@127.0.0.1:{ports.postgres}/")
    assert PASSWORD in values["DATABASE_URL"]
    assert f"@127.0.0.1:{ports.postgres}/" in values["DATABASE_URL"]
    return values


@pytest.fixture(scope="module")
def images(docker_engine: DockerEngine) -> Iterator[Path]:
    """The images the cpu overlay names, built in the docker tier's private engine (the app
    by scripts/build, unless the docker tier built it already in this session) and saved
    with ``docker save``."""
    engine = docker_engine
    if engine.docker("image", "inspect", APP_IMAGE, check=False).returncode != 0:
        built = subprocess.run([REPO / "scripts/build"], env={**os.environ, **engine.env},
                               capture_output=True, text=True, timeout=900, check=False)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    engine.build_postgres()
    folder = Path(tempfile.mkdtemp(prefix="pg-images-"))
    archive = folder / "images.tar"
    engine.docker("save", "--output", str(archive), APP_IMAGE, POSTGRES_IMAGE,
                  f"{TGI_IMAGE}:{DEFAULTS['TGI_VERSION']}-intel-cpu")
    yield archive
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def podman() -> Iterator[Podman]:
    missing = [tool for tool in ("podman", "catatonit") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: scripts/test installs Debian's podman and "
                    "catatonit (podman's pause process)")
    running = Podman()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(repos={DEFAULTS["CPU_MODEL_ID"]: FakeRepo(FILES)})
    with fake.serving():
        yield fake


def test_the_cpu_overlay_plays_in_podman_to_a_chat_stored_in_postgresql(
        images: Path, podman: Podman, hub: FakeHub) -> None:
    started = time.monotonic()
    times: dict[str, float] = {}
    objects = rendered("cpu")
    model = next(item["data"] for item in objects
                 if item["kind"] == "ConfigMap" and "MODEL_ID" in item["data"])
    assert model["MODEL_ID"] == DEFAULTS["CPU_MODEL_ID"], "the fake Hub serves the overlay's model"
    assert "podman version 4.3.1" in podman("--version").stdout
    loaded = podman("load", "--input", str(images)).stdout
    for image in ("coding-playground", "postgres", "text-generation-inference"):
        assert image in loaded
    times["load"] = time.monotonic() - started
    ports = Ports(app=free_port(), tgi=free_port(), postgres=free_port())
    steps = for_podman(objects, ports, hub.url)
    # The Secret as secret.example.yaml says, in the form podman 4.3.1 reads a secretKeyRef
    # from: JSON of base64 values (kube.go, k8sSecretFromSecretManager). A played Secret is
    # stored as YAML and then refused ("secret playground is not valid JSON"; podman 4.4.0
    # reads both, commit db4d018711 "Fixes secret (un)marshaling for kube play").
    secret = {name: base64.b64encode(value.encode()).decode()
              for name, value in the_secret(ports).items()}
    podman("secret", "create", "playground", "-", stdin=json.dumps(secret))
    try:
        podman.play("postgres", steps["postgres"])
        # The readiness probe's own command, as the kubelet would run it.
        [probe] = [c["readinessProbe"]["exec"]["command"] for c in
                   one(objects, "StatefulSet", "postgres")["spec"]["template"]["spec"][
                       "containers"]]
        wait_for(lambda: podman("exec", "postgres-0-postgres", *probe,
                                check=False).returncode == 0, 120, 0.5,
                 what="PostgreSQL's readiness probe")
        times["postgres"] = time.monotonic() - started

        podman.play("migrate", steps["migrate"])
        wait_for(lambda: podman.exited("migrate-migrate") == 0, 180, 0.5,
                 what="the migration Job's pod to exit 0")
        times["migrate"] = time.monotonic() - started

        # Returns once the init container (the downloader) is done: podman runs init
        # containers to their end before the pod's containers.
        podman.play("tgi", steps["tgi"])
        wait_for(lambda: answers(f"http://127.0.0.1:{ports.tgi}/health"), 120, 0.5,
                 what="TGI's /health")
        times["tgi"] = time.monotonic() - started
        # The downloader fetched the weights from the fake Hub (its CDN) into the volume.
        assert any(request.path.startswith("/cdn/") for request in hub.requests), hub.requests

        podman.play("app", steps["app"])
        app = f"http://127.0.0.1:{ports.app}"
        wait_for(lambda: answers(f"{app}/healthz"), 180, 0.5, what="the app's /healthz")
        times["app"] = time.monotonic() - started

        # The first account, as docs/kubernetes.md says (kubectl exec ... python -m app.users
        # add NAME), its password on stdin.
        podman("exec", "-i", "app-pod-0-app", "python", "-m", "app.users", "add", USER,
               stdin=USER_PASSWORD + "\n")
        with httpx.Client(base_url=f"{app}/api/v1", timeout=60) as client:
            assert client.post("/dialogue", json={"message": "hi"}).status_code == 401
            login = client.post("/login", json={"name": USER, "password": USER_PASSWORD})
            assert login.status_code == 200, login.text
            client.headers["authorization"] = f"Bearer {login.json()['token']}"
            events = []
            with client.stream("POST", "/dialogue", json={
                    "message": "Reverse a string in Python.", "stream": True}) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line.removeprefix("data: ")))
            text = "".join(str(event.get("delta", "")) for event in events)
            assert "def reverse(s):\n    return s[::-1]" in text, events
            done = events[-1]
            assert done["done"] is True, done
            assert done["error"] is None, done
            dialogue = events[0]["dialogue_id"]
            stored = client.get("/messages", params={"dialogue_id": dialogue}).json()
        [exchange] = stored["exchanges"]
        assert exchange["user"] == "Reverse a string in Python."
        assert exchange["reply"]["content"] == text
        # TGI's --model-id=$(MODEL_ID), expanded from the overlay's ConfigMap.
        assert exchange["reply"]["model"] == model["MODEL_ID"], exchange["reply"]
        assert exchange["reply"]["status"] == "stop", exchange["reply"]
        # In PostgreSQL itself, read there with its own client.
        rows = podman(
            "exec", "--env", f"PGPASSWORD={PASSWORD}", "postgres-0-postgres", "psql",
            "--host=127.0.0.1", "--username=playground", "--dbname=playground",
            "--tuples-only", "--no-align", "--command",
            "select role, md5(content) from messages where conversation_id = "
            f"'{dialogue}' order by id").stdout.split()
        assert rows == [f"user|{md5('Reverse a string in Python.')}",
                        f"assistant|{md5(text)}"]
        times["chat"] = time.monotonic() - started
    except BaseException:
        print(podman.logs())
        raise
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "kubernetes-podman-times.txt").write_text(
        "podman kube play of the cpu overlay, seconds from the test's start: "
        + ", ".join(f"{step} {seconds:.1f}" for step, seconds in times.items()) + "\n")
