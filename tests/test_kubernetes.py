"""The Kubernetes manifests (deploy/kubernetes/): every overlay rendered with Debian trixie's
``kubectl`` (1.32.3, its Kustomize v5.5.0; fetched once by tests/debian.py), every object
checked against the Kubernetes API's schema of that version (``kubernetes-validate``'s bundled
schemas, strict: a field the API does not know fails), and what a user relies on asserted on
the rendered objects. Nothing here runs: tests/test_kubernetes_podman.py plays the cpu overlay
with podman, and docs/kubernetes.md says what has and has not been verified.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.debian import unpacked
from tests.docker_engine import read_env_file

pytestmark = pytest.mark.kubernetes

REPO = Path(__file__).resolve().parent.parent
KUBERNETES = REPO / "deploy/kubernetes"
KUBECTL_VERSION = "1.32.3+ds-2"
SCHEMA_VERSION = "1.32.0"
OVERLAYS = ("cpu", "cuda", "scale")
SECRET = "playground"
# What only the Secret may hold; any other variable named like a secret too.
SECRET_VARIABLES = {"DATABASE_URL", "POSTGRES_PASSWORD", "HF_TOKEN", "BACKEND_TOKEN"}
SECRET_NAME = re.compile(r"(^|_)TOKEN$|PASSWORD|PASSWD|SECRET", re.IGNORECASE)
# A value holding one: a URL with credentials, a Hugging Face token.
SECRET_VALUE = re.compile(r"://[^/\s]*@|\bhf_[A-Za-z0-9]{8,}")
WORKLOADS = {"Deployment", "StatefulSet", "Job"}

Obj = dict[str, Any]


def kubectl() -> Path:
    return unpacked("kubectl", KUBECTL_VERSION) / "usr/bin/kubectl"


@cache
def rendered(overlay: str) -> tuple[Obj, ...]:
    done = subprocess.run([kubectl(), "kustomize", KUBERNETES / "overlays" / overlay],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return tuple(item for item in yaml.safe_load_all(done.stdout) if item)


def one(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    [found] = [item for item in objects
               if item["kind"] == kind and item["metadata"]["name"] == name]
    return found


def workloads(objects: tuple[Obj, ...]) -> Iterator[tuple[str, Obj]]:
    """Each workload's name and its pod template."""
    for item in objects:
        if item["kind"] in WORKLOADS:
            yield item["metadata"]["name"], item["spec"]["template"]


def containers(template: Obj) -> list[Obj]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def selected(objects: tuple[Obj, ...], selector: Obj) -> set[str]:
    """The workloads whose pods ``selector`` picks."""
    return {name for name, template in workloads(objects)
            if selects(selector, template["metadata"]["labels"])}


def app_container(objects: tuple[Obj, ...]) -> Obj:
    container: Obj
    [container] = one(objects, "Deployment", "app")["spec"]["template"]["spec"]["containers"]
    return container


def tgi_container(objects: tuple[Obj, ...]) -> Obj:
    container: Obj
    [container] = one(objects, "Deployment", "tgi")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_kubectl_is_debians_with_its_kustomize() -> None:
    done = subprocess.run([kubectl(), "version", "--client"], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "Client Version: v1.32.3\n" in done.stdout
    assert "Kustomize Version: v5.5.0" in done.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_every_overlay_is_valid_for_the_kubernetes_api(overlay: str) -> None:
    objects = rendered(overlay)
    kinds = sorted(f"{item['kind']}/{item['metadata']['name']}" for item in objects)
    assert kinds == [
        "ConfigMap/" + name for name in sorted(
            item["metadata"]["name"] for item in objects if item["kind"] == "ConfigMap")
    ] + [
        "Deployment/app", "Deployment/tgi", "HorizontalPodAutoscaler/app", "Ingress/app",
        "Job/migrate", "Namespace/coding-playground", "NetworkPolicy/app",
        "NetworkPolicy/postgres", "NetworkPolicy/tgi", "PersistentVolumeClaim/model-cache",
        "PodDisruptionBudget/app", "Service/app", "Service/postgres", "Service/tgi",
        "StatefulSet/postgres",
    ]
    errors = []
    for item in objects:
        try:
            kubernetes_validate.validate(item, SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{item['kind']}/{item['metadata']['name']}: {err}")
    assert errors == []
    assert all(item["metadata"].get("namespace", "coding-playground") == "coding-playground"
               for item in objects)


def test_the_secret_example_is_a_valid_secret_of_placeholders() -> None:
    [secret] = yaml.safe_load_all((KUBERNETES / "secret.example.yaml").read_text())
    kubernetes_validate.validate(secret, SCHEMA_VERSION, strict=True)
    assert secret["metadata"] == {"name": SECRET, "namespace": "coding-playground"}
    assert set(secret["stringData"]) == SECRET_VARIABLES
    assert {secret["stringData"][name] for name in ("HF_TOKEN", "BACKEND_TOKEN")} == {""}
    assert "change-me" in secret["stringData"]["DATABASE_URL"]
    assert "deploy/kubernetes/secret.yaml" in (REPO / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_the_secret_alone(overlay: str) -> None:
    objects = rendered(overlay)
    # No Secret is rendered: the user makes it (secret.example.yaml).
    assert not [item for item in objects if item["kind"] == "Secret"]
    for item in objects:
        if item["kind"] == "ConfigMap":
            for key, value in item["data"].items():
                assert key not in SECRET_VARIABLES
                assert not SECRET_NAME.search(key), key
                assert not SECRET_VALUE.search(value), (key, value)
    example = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())["stringData"]
    given: dict[str, set[str]] = {}
    for workload, template in workloads(objects):
        for container in containers(template):
            assert "envFrom" not in container or all(
                "secretRef" not in source for source in container["envFrom"])
            for variable in container.get("env", []):
                name = variable["name"]
                if name in SECRET_VARIABLES or SECRET_NAME.search(name):
                    assert "value" not in variable, (workload, name)
                    reference = variable["valueFrom"]["secretKeyRef"]
                    assert reference["name"] == SECRET
                    assert reference["key"] in example
                    given.setdefault(name, set()).add(f"{workload}/{container['name']}")
                else:
                    assert not SECRET_VALUE.search(str(variable.get("value", ""))), name
    # Each secret reaches only what needs it: the Hub token the downloader alone.
    assert given == {
        "DATABASE_URL": {"app/wait-for-schema", "app/app", "migrate/migrate"},
        "BACKEND_TOKEN": {"app/app"},
        "HF_TOKEN": {"tgi/download"},
        "POSTGRES_PASSWORD": {"postgres/postgres"},
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_app_reaches_tgi_and_postgres(overlay: str) -> None:
    objects = rendered(overlay)
    policies = {item["metadata"]["name"]: item["spec"] for item in objects
                if item["kind"] == "NetworkPolicy"}
    pods = {name: template["metadata"]["labels"] for name, template in workloads(objects)}
    # Each policy covers its own pods, and the app's labels are the ones its rules name.
    assert selected(objects, policies["tgi"]["podSelector"]) == {"tgi"}
    assert selected(objects, policies["postgres"]["podSelector"]) == {"postgres"}
    assert selected(objects, policies["app"]["podSelector"]) == {"app"}
    for name, peers in (("tgi", {"app"}), ("postgres", {"app", "migrate"})):
        assert policies[name]["policyTypes"] == ["Ingress"]
        [rule] = policies[name]["ingress"]
        reached = set().union(*(selected(objects, peer["podSelector"]) for peer in rule["from"]))
        assert reached == peers, name
        assert all(set(peer) == {"podSelector"} for peer in rule["from"])
    assert policies["tgi"]["ingress"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]
    assert policies["postgres"]["ingress"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
    [rule] = policies["app"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    assert rule["ports"] == [{"port": 7860, "protocol": "TCP"}]
    # Services and the Deployments' own selectors agree with the pods' labels.
    for item in objects:
        if item["kind"] == "Service":
            assert selected(objects, {"matchLabels": item["spec"]["selector"]}) == {
                item["metadata"]["name"]}
        if item["kind"] in {"Deployment", "StatefulSet"}:
            assert selects(item["spec"]["selector"], pods[item["metadata"]["name"]])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_apps_and_tgis_health(overlay: str) -> None:
    objects = rendered(overlay)
    app = app_container(objects)
    assert app["ports"] == [{"name": "http", "containerPort": 7860}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert app[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    tgi = tgi_container(objects)
    assert tgi["ports"] == [{"name": "http", "containerPort": 80}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert tgi[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Up to 10 minutes to load the model, as compose.yaml's start_period (600 s).
    startup = tgi["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    [postgres] = one(objects, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"]
    assert postgres["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    assert one(objects, "Service", "tgi")["spec"]["ports"][0]["port"] == 80
    assert "BACKEND_URL=http://tgi:80" in (KUBERNETES / "base/kustomization.yaml").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ingress_keeps_a_page_on_its_replica_and_streams_unbuffered(overlay: str) -> None:
    objects = rendered(overlay)
    ingress = one(objects, "Ingress", "app")
    annotations = {key.removeprefix("nginx.ingress.kubernetes.io/"): value
                   for key, value in ingress["metadata"]["annotations"].items()}
    assert annotations["affinity"] == "cookie"
    assert annotations["affinity-mode"] == "persistent"
    assert annotations["session-cookie-name"] == "playground_route"
    assert annotations["proxy-buffering"] == "off"
    assert int(annotations["proxy-read-timeout"]) >= 3600
    assert int(annotations["proxy-send-timeout"]) >= 3600
    assert ingress["spec"]["ingressClassName"] == "nginx"
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "app", "port": {"name": "http"}}
    [port] = one(objects, "Service", "app")["spec"]["ports"]
    assert port == {"name": "http", "port": 7860, "targetPort": "http"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_app_scales_on_cpu_with_the_measured_cost(overlay: str) -> None:
    objects = rendered(overlay)
    hpa = one(objects, "HorizontalPodAutoscaler", "app")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "app"}
    [metric] = hpa["metrics"]
    assert metric == {"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    # The autoscaler alone sets the app's replicas: an apply that named them would undo it.
    assert "replicas" not in one(objects, "Deployment", "app")["spec"]
    # One process, one core (docs/scaling.md): the autoscaler's 70% is of that core.
    resources = app_container(objects)["resources"]
    assert resources["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert "cpu" not in resources["limits"]
    pdb = one(objects, "PodDisruptionBudget", "app")["spec"]
    assert selected(objects, pdb["selector"]) == {"app"}
    assert "maxUnavailable" in pdb
    scaling = " ".join((REPO / "docs/scaling.md").read_text().split())
    assert "0.34 ms a token at 16 streams" in scaling
    assert "about 40 streams a replica at 70% CPU" in scaling


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_are_asked_for_in_cuda_alone_by_tgi_alone(overlay: str) -> None:
    objects = rendered(overlay)
    asking = {f"{workload}/{container['name']}": container["resources"]
              for workload, template in workloads(objects) for container in containers(template)
              if "nvidia.com/gpu" in str(container.get("resources"))}
    if overlay == "cpu":
        assert asking == {}
        assert tgi_container(objects)["resources"]["requests"]["memory"] == "4Gi"
    else:
        assert list(asking) == ["tgi/tgi"]
        assert asking["tgi/tgi"]["limits"]["nvidia.com/gpu"] == 1
        assert asking["tgi/tgi"]["requests"]["nvidia.com/gpu"] == 1


def test_the_scale_overlay_has_the_replicas_docs_scaling_plans() -> None:
    scaling = " ".join((REPO / "docs/scaling.md").read_text().split())
    assert "/ 0.7 = **50 replicas**" in scaling
    assert "500,000 \N{MULTIPLICATION SIGN} 0.35 ms / 0.7 = 250 replicas" in scaling
    assert "= 10 TGI replicas, one per GPU**" in scaling
    assert "Qwen2.5-Coder-7B-Instruct in bf16" in scaling
    objects = rendered("scale")
    hpa = one(objects, "HorizontalPodAutoscaler", "app")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (50, 250)
    assert one(objects, "Deployment", "tgi")["spec"]["replicas"] == 10
    assert one(objects, "PersistentVolumeClaim", "model-cache")["spec"]["accessModes"] == [
        "ReadWriteMany"]
    [postgres] = [item for item in objects if item["kind"] == "ConfigMap"
                  and "POSTGRES_MAX_CONNECTIONS" in item["data"]]
    assert int(postgres["data"]["POSTGRES_MAX_CONNECTIONS"]) >= 50 * 15
    [model] = [item for item in objects if item["kind"] == "ConfigMap"
               and "MODEL_ID" in item["data"]]
    assert model["data"]["MODEL_ID"] == "Qwen/Qwen2.5-Coder-7B-Instruct"
    for overlay in ("cpu", "cuda"):
        assert one(rendered(overlay), "Deployment", "tgi")["spec"]["replicas"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_model_are_the_stacks(overlay: str) -> None:
    """The app image as scripts/build tags it, TGI's official image at TGI_VERSION, PostgreSQL
    at POSTGRES_VERSION, and the model of the matching Compose profile (service.env)."""
    env = read_env_file()
    objects = rendered(overlay)
    images = {container["image"] for _, template in workloads(objects)
              for container in containers(template)}
    tgi = f"ghcr.io/huggingface/text-generation-inference:{env['TGI_VERSION']}"
    assert images == {f"{env['REGISTRY']}coding-playground:{env['TAG']}",
                      tgi + ("-intel-cpu" if overlay == "cpu" else ""),
                      f"postgres:{env['POSTGRES_VERSION']}"}
    [model] = [item["data"] for item in objects if item["kind"] == "ConfigMap"
               and "MODEL_ID" in item["data"]]
    profile = "CPU" if overlay == "cpu" else "CUDA"
    assert model["MAX_INPUT_TOKENS"] == env[f"{profile}_MAX_INPUT_TOKENS"]
    assert model["MAX_TOTAL_TOKENS"] == env[f"{profile}_MAX_TOTAL_TOKENS"]
    if overlay != "scale":
        assert model["MODEL_ID"] == env[f"{profile}_MODEL_ID"]
    assert tgi_container(objects)["args"] == [
        "--model-id=$(MODEL_ID)", "--revision=$(MODEL_REVISION)",
        "--max-input-tokens=$(MAX_INPUT_TOKENS)", "--max-total-tokens=$(MAX_TOTAL_TOKENS)"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_app_image_and_postgresql_run_as_non_root_on_a_read_only_root(overlay: str) -> None:
    objects = rendered(overlay)
    checked = []
    for workload, template in workloads(objects):
        pod = template["spec"].get("securityContext", {})
        assert template["spec"]["automountServiceAccountToken"] is False
        for container in containers(template):
            if container["image"].startswith("ghcr.io/huggingface/"):
                continue  # TGI's official image runs as root
            context = {**pod, **container["securityContext"]}
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] == (999 if workload == "postgres" else 10001)
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            checked.append(f"{workload}/{container['name']}")
    assert sorted(checked) == ["app/app", "app/wait-for-schema", "migrate/migrate",
                               "postgres/postgres", "tgi/download"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_migration_runs_once_and_the_app_waits_for_it(overlay: str) -> None:
    objects = rendered(overlay)
    job = one(objects, "Job", "migrate")["spec"]["template"]["spec"]
    [migrate] = job["containers"]
    assert migrate["command"][-1] == ("from app.server import open_store; from app.settings "
                                      "import load_settings; open_store(load_settings())")
    assert job["restartPolicy"] == "OnFailure"
    [wait] = one(objects, "Deployment", "app")["spec"]["template"]["spec"]["initContainers"]
    assert wait["name"] == "wait-for-schema"
    script = wait["command"][-1]
    compile(script, "wait-for-schema", "exec")
    assert "get_current_head()" in script
    assert "get_current_revision()" in script
    [download] = one(objects, "Deployment", "tgi")["spec"]["template"]["spec"]["initContainers"]
    assert download["command"] == ["python", "-m", "app.downloader", "hub"]
