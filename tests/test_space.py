"""Deploying as a Hugging Face Space: the README's configuration block, the Space's
requirements, and the app in Space mode (Hugging Face login, Inference Providers, storage).

No Hub and no real Space here: the Space is its environment variables, Inference Providers'
router is the fake OpenAI-compatible server (tests/fake_backend.py), and a Hugging Face login
is the session cookie that Gradio's own OAuth callback would have set (see ``hf_session``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import itsdangerous
import pytest
import yaml
from gradio_client import Client
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from app.chat import ChatService
from app.chat.guard import Guard
from app.settings import SPACE_DEFAULT_MODEL, load_settings
from app.store import Store
from app.ui import PlaygroundUI
from app.ui.gradio_compat import oauth_username
from tests.conftest import OAUTH_SECRET, REPO, answers
from tests.fake_backend import FakeBackend
from tests.servers import ServerThread, free_port
from tests.test_lock import Pin, read_lock
from tests.test_persistence import CONTROLS

# The Spaces configuration reference (huggingface.co/docs/hub/spaces-config-reference).
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
SPACE_SDKS = {"gradio", "docker", "static"}
MODEL = "Qwen/Qwen2.5-Coder-7B-Instruct"


def front_matter(text: str) -> dict[str, Any]:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "the README must start with the Space configuration block (--- ... ---)"
    config = yaml.safe_load(match.group(1))
    assert isinstance(config, dict)
    return config


def runtime_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = (Requirement(line) for line in project["dependencies"])
    return {canonicalize_name(r.name): r for r in found}


def space_requirements() -> dict[str, Pin]:
    """What the Space installs on Linux with Python 3.11 (its README's python_version)."""
    return {pin.name: pin for pin in read_lock(REPO / "requirements.txt") if pin.applies()}


# -- the configuration block ---------------------------------------------------------------


def test_the_readme_starts_with_a_valid_space_configuration() -> None:
    config = front_matter((REPO / "README.md").read_text())
    assert isinstance(config["title"], str)
    assert config["title"]
    assert isinstance(config["emoji"], str)
    assert config["emoji"]
    assert config["colorFrom"] in SPACE_COLORS
    assert config["colorTo"] in SPACE_COLORS
    assert config["sdk"] == "gradio"
    assert config["sdk"] in SPACE_SDKS
    assert config["sdk_version"] == gr.__version__
    assert config["python_version"] == "3.11"
    assert config["hf_oauth"] is True
    assert 0 < len(config["short_description"]) <= 60
    assert (REPO / config["app_file"]).is_file()
    assert config["app_file"].endswith(".py")
    assert isinstance(config.get("license", "apache-2.0"), str)


def test_the_two_commands_still_come_first_for_github_readers() -> None:
    text = (REPO / "README.md").read_text()
    body = text.split("\n---\n", 1)[1]
    assert body.lstrip().startswith("# Coding Playground")
    first_block = body.split("```bash\n", 1)[1].split("```", 1)[0]
    assert "scripts/run" in first_block
    assert "scripts/test" in first_block
    assert "## " not in body.split("```bash\n", 1)[0], "no section before the two commands"


def test_the_space_requirements_are_the_apps_lock() -> None:
    """The Space installs requirements.txt, the app's lock (tests/test_lock.py): each runtime
    dependency pinned at a version pyproject.toml allows, with its hashes, and gradio at the
    README's sdk_version (the Space installs that one too); not the engine, not the test tools."""
    runtime, space = runtime_requirements(), space_requirements()
    assert set(runtime) <= set(space)
    for name, wanted in runtime.items():
        assert wanted.specifier.contains(space[name].version), name
        assert wanted.extras <= space[name].extras, name
        assert space[name].hashes, name
    assert "oauth" in space["gradio"].extras, "the Space's Hugging Face login needs gradio[oauth]"
    config = front_matter((REPO / "README.md").read_text())
    assert space["gradio"].version == config["sdk_version"]
    assert not {"llama-cpp-python", "pytest", "matplotlib"} & set(space)


@pytest.mark.pypi
@pytest.mark.timeout(1500)
def test_the_space_requirements_install_into_a_fresh_virtualenv(tmp_path: Path) -> None:
    """Downloads from PyPI (pip's cache is reused): what the Space's build does (its hashes
    put pip in hash-checking mode), then the import the Space's start needs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(REPO / "requirements.txt")],
        capture_output=True, text=True, timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    check = subprocess.run(
        [str(python), "-c", "import app.server, authlib, itsdangerous, space; print('ok')"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert check.stdout.strip() == "ok", check.stderr[-3000:]


# -- Space mode settings -------------------------------------------------------------------


def test_space_mode_defaults(tmp_path: Path) -> None:
    storage = tmp_path / "data"
    storage.mkdir()
    settings = load_settings(
        space_id="someone/playground", hf_token="hf_spacetoken", space_storage=storage
    )
    assert settings.space_mode
    assert settings.auth_mode == "hf"
    assert settings.app_host == "0.0.0.0"
    assert settings.app_port == 7860
    assert settings.database_url.get_secret_value() == f"sqlite:///{storage}/playground.db"
    assert not settings.ephemeral_history
    assert not settings.runs_allowed
    assert not settings.allow_sharing
    [backend] = settings.backend_list
    assert (backend.kind, backend.root, backend.models) == (
        "hf", "https://router.huggingface.co", [SPACE_DEFAULT_MODEL]
    )
    assert settings.backend_token_for(backend) == "hf_spacetoken"


def test_space_secrets_choose_the_backend_and_explicit_settings_win(tmp_path: Path) -> None:
    tgi = load_settings(
        space_id="someone/playground", backend_url="https://endpoint.example:8080",
        backend_token="hf_endpoint", space_storage=tmp_path / "none", auth_mode="none",
        snippet_runs="on", database_url="sqlite:///elsewhere.db", allow_sharing=True,
    )
    [backend] = tgi.backend_list
    assert (backend.kind, backend.root) == ("auto", "https://endpoint.example:8080")
    assert tgi.auth_mode == "none"
    assert tgi.database_url.get_secret_value() == "sqlite:///elsewhere.db"
    assert not tgi.ephemeral_history
    assert not tgi.runs_allowed, "never snippet runs in a Space"
    assert tgi.allow_sharing
    chosen = load_settings(
        space_id="someone/playground", hf_token="hf_x", default_model=MODEL,
        space_storage=tmp_path / "none",
    )
    assert chosen.backend_list[0].models == [MODEL]
    assert chosen.ephemeral_history


def test_a_space_without_a_backend_secret_names_the_fix() -> None:
    with pytest.raises(Exception, match=r"BACKEND_URL .*BACKENDS, or HF_TOKEN"):
        load_settings(space_id="someone/playground")


def test_outside_a_space_nothing_changes() -> None:
    settings = load_settings(hf_token="hf_x")
    assert not settings.space_mode
    assert not settings.ephemeral_history
    assert (settings.auth_mode, settings.app_host) == ("none", "127.0.0.1")
    assert settings.allow_sharing
    assert settings.backend_list[0].kind == "auto"


def components_of(demo: gr.Blocks) -> dict[str, str]:
    config: Any = demo.get_config_file()
    return {
        str(c["props"].get("elem_id")): c["type"]
        for c in config["components"] if c["props"].get("elem_id")
    }


@pytest.mark.usefixtures("oauth_app")
def test_the_page_warns_when_history_is_lost_on_restart(tmp_path: Path) -> None:
    def page(storage: Path) -> gr.Blocks:
        settings = load_settings(
            space_id="someone/playground", hf_token="hf_x", space_storage=storage
        )
        store = Store(f"sqlite:///{tmp_path / 'ui.db'}")
        store.migrate()
        ui = PlaygroundUI(ChatService(settings), store, Guard(settings, store))
        return ui.build()

    (tmp_path / "data").mkdir()
    pages = page(tmp_path / "data"), page(tmp_path / "none")
    assert all(demo.expects_oauth for demo in pages), "a gr.LoginButton on the page"
    with_storage, without = (components_of(demo) for demo in pages)
    assert with_storage["sign-in"] == without["sign-in"] == "button"
    assert "storage-warning" not in with_storage
    assert without["storage-warning"] == "markdown"


SHARING = {"share", "share-link", "shares", "revoke-share", "import-link", "import-share"}


@pytest.mark.usefixtures("oauth_app")
def test_in_a_space_the_page_shares_nothing_unless_allow_sharing_is_true(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'ui.db'}")
    store.migrate()

    def page(**options: Any) -> dict[str, str]:
        settings = load_settings(space_id="someone/playground", hf_token="hf_x", **options)
        ui = PlaygroundUI(ChatService(settings), store, Guard(settings, store))
        return components_of(ui.build())

    assert SHARING.isdisjoint(page())
    assert set(page(allow_sharing=True)) >= SHARING


def test_outside_a_space_the_page_has_no_login_button(tmp_path: Path) -> None:
    settings = load_settings()
    store = Store(f"sqlite:///{tmp_path / 'ui.db'}")
    store.migrate()
    demo = PlaygroundUI(ChatService(settings), store, Guard(settings, store)).build()
    assert not demo.expects_oauth
    assert {"sign-in", "sign-in-note", "storage-warning"}.isdisjoint(components_of(demo))
    assert set(components_of(demo)) >= SHARING, "sharing on by default"


class FakeRequest:
    def __init__(self, session: dict[str, Any] | None) -> None:
        self.scope: dict[str, Any] = {} if session is None else {"session": session}


def test_the_hf_username_comes_from_a_current_oauth_session() -> None:
    def name(session: dict[str, Any] | None) -> str | None:
        return oauth_username(gr.Request(FakeRequest(session)))  # type: ignore[arg-type]

    assert name(oauth_info("alice")) == "alice"
    assert name(None) is None
    assert name({}) is None
    assert name({"oauth_info": {**oauth_info("alice")["oauth_info"], "expires_at": 1}}) is None
    assert oauth_username(None) is None


# -- the app in Space mode, as its own process ---------------------------------------------


def oauth_info(username: str) -> dict[str, Any]:
    """The session Gradio's ``/login/callback`` stores after a Hugging Face login: authlib's
    token response with the OpenID ``userinfo`` claims (shape as in gradio/oauth.py)."""
    return {"oauth_info": {
        "access_token": f"hf_oauth_{username}", "token_type": "bearer", "expires_in": 28800,
        "scope": "openid profile", "expires_at": int(time.time()) + 28800,
        "userinfo": {
            "sub": f"id-{username}", "name": username.title(),
            "preferred_username": username, "profile": f"https://huggingface.co/{username}",
            "picture": "", "website": "",
        },
    }}


def hf_session(username: str) -> str:
    """The signed session cookie a browser holds after logging in with Hugging Face.

    Stands in for the real login (a redirect to huggingface.co's OpenID provider and back),
    which needs the Hub: the cookie is made exactly as Starlette's SessionMiddleware makes it,
    with the key Gradio derives from the Space's OAUTH_CLIENT_SECRET (gradio/oauth.py,
    ``attach_oauth``), holding what the callback stores. The app itself is not touched.
    """
    key = hashlib.sha256((OAUTH_SECRET + "-v4").encode()).hexdigest()
    data = base64.b64encode(json.dumps(oauth_info(username)).encode())
    return "session=" + itsdangerous.TimestampSigner(key).sign(data).decode()


# What the Hub sets in every Space (SYSTEM, its id and host), and in one with ``hf_oauth: true``
# the OAuth app's (Gradio reads them on import; ``hf_session`` signs with its secret).
SPACE_VARIABLES = {
    "SYSTEM": "spaces", "SPACE_ID": "someone/playground",
    "SPACE_HOST": "someone-playground.hf.space", "SPACE_AUTHOR_NAME": "someone",
    "SPACE_REPO_NAME": "playground", "OAUTH_CLIENT_ID": "test-client-id",
    "OAUTH_CLIENT_SECRET": OAUTH_SECRET, "OAUTH_SCOPES": "openid profile",
    "OPENID_PROVIDER_URL": "http://127.0.0.1:1",  # never reached here
}


@pytest.fixture
def providers() -> Iterator[tuple[FakeBackend, ServerThread]]:
    """The Inference Providers router: OpenAI-compatible, serving many models."""
    fake = FakeBackend(kind="openai", served=["meta-llama/Llama-3.1-8B-Instruct", MODEL])
    with ServerThread(fake.app()) as server:
        yield fake, server


@pytest.fixture
def space(providers: tuple[FakeBackend, ServerThread], tmp_path: Path) -> Iterator[str]:
    """``python space.py`` with a Gradio Space's environment: the variables the Space sets
    (SYSTEM, SPACE_ID, SPACE_HOST, the OAuth app's from ``hf_oauth: true``), the owner's
    secrets (HF_TOKEN, DEFAULT_MODEL) and persistent storage (a folder for /data)."""
    _, router = providers
    port = free_port()
    storage = tmp_path / "data"
    storage.mkdir()
    env = {
        **os.environ, "PYTHONPATH": str(REPO), **SPACE_VARIABLES,
        "HF_TOKEN": "hf_spaceownertoken", "DEFAULT_MODEL": MODEL,
        "HF_ROUTER_URL": router.url, "SPACE_STORAGE": str(storage),
        "APP_PORT": str(port), "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
    }
    process = subprocess.Popen(
        [sys.executable, str(REPO / "space.py")], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not answers(f"{url}/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the Space did not start:\n{process.communicate()[0]}")
            time.sleep(0.2)
        yield url
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


def test_a_chat_round_trips_for_a_signed_in_user_in_space_mode(
    space: str, providers: tuple[FakeBackend, ServerThread], tmp_path: Path
) -> None:
    fake, _ = providers
    alice = Client(space, verbose=False, headers={"Cookie": hf_session("alice")})
    result = alice.predict(message="reverse a string", api_name="/ask")
    assert result["reply"] == "Hello, world!"
    assert result["stats"]["finish"] == "stop"
    assert fake.requests[-1]["model"] == MODEL
    assert fake.headers[-1]["authorization"] == "Bearer hf_spaceownertoken"
    # The database is on the Space's persistent storage, keyed by the Hugging Face user.
    store = Store(f"sqlite:///{tmp_path / 'data' / 'playground.db'}")
    [summary] = store.list_conversations(store.user_id("hf:alice"))
    assert summary.title.startswith("reverse a string")
    assert store.list_conversations(store.user_id("hf:bob")) == []
    bob = Client(space, verbose=False, headers={"Cookie": hf_session("bob")})
    bob.predict(message="bob's question", api_name="/ask")
    [bobs] = store.list_conversations(store.user_id("hf:bob"))
    assert bobs.title.startswith("bob's question")
    assert [c.id for c in store.list_conversations(store.user_id("hf:alice"))] == [summary.id]


def test_a_request_without_a_hugging_face_login_is_refused(
    space: str, providers: tuple[FakeBackend, ServerThread]
) -> None:
    fake, _ = providers
    page = Client(space, verbose=False)
    page.predict(api_name="/backend_info")  # the page itself loads, with its login button
    with pytest.raises(Exception, match="Sign in with Hugging Face first"):
        page.predict("hello", None, "", "", "", *CONTROLS, api_name="/chat")
    with pytest.raises(Exception, match="Sign in with Hugging Face first"):
        page.predict(message="hello", api_name="/ask")
    forged = Client(space, verbose=False, headers={"Cookie": "session=bm90IHNpZ25lZA=="})
    with pytest.raises(Exception, match="Sign in with Hugging Face first"):
        forged.predict(message="hello", api_name="/ask")
    assert fake.requests == []


# -- the Docker Space variant, linted and assembled (tests/test_docker_space.py builds it) --

SPACE_IMAGE = REPO / "containers" / "space"


def test_the_docker_space_is_lint_clean_pinned_and_runs_as_uid_1000() -> None:
    dockerfile = SPACE_IMAGE / "Dockerfile"
    lint = subprocess.run([REPO / ".venv/bin/hadolint", dockerfile], capture_output=True,
                          text=True, check=False)
    assert lint.returncode == 0, lint.stdout
    text = dockerfile.read_text()
    tgi_version = dict(
        line.split("=", 1) for line in (REPO / "containers/service.env").read_text().splitlines()
        if line and not line.startswith("#")
    )["TGI_VERSION"]
    froms = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert froms[-1] == f"ghcr.io/huggingface/text-generation-inference:{tgi_version}"
    assert re.findall(r"^USER (.+)$", text, flags=re.MULTILINE)[-1] == "1000"
    assert "EXPOSE 7860" in text
    assert "SPACE_STORAGE=/data" in text
    declared = re.findall(r"^(?:ARG|ENV)\s+(.*)$", text, flags=re.MULTILINE)
    assert not [d for d in declared if re.search(r"TOKEN|PASSWORD|SECRET", d, re.IGNORECASE)]
    config = front_matter((SPACE_IMAGE / "README.md").read_text())
    assert config["sdk"] == "docker"
    assert config["app_port"] == 7860
    assert config["hf_oauth"] is True
    assert 0 < len(config["short_description"]) <= 60


def test_the_docker_space_scripts_pass_shellcheck_and_name_a_missing_model() -> None:
    scripts = [str(SPACE_IMAGE / "start"), str(REPO / "scripts/space-docker")]
    lint = subprocess.run([REPO / ".venv/bin/shellcheck", *scripts], capture_output=True,
                          text=True, check=False)
    assert lint.returncode == 0, lint.stdout
    started = subprocess.run([SPACE_IMAGE / "start"], capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"})
    assert started.returncode != 0
    assert "set MODEL_ID in the Space settings" in started.stderr


def test_the_docker_space_folder_holds_what_its_dockerfile_copies(tmp_path: Path) -> None:
    dest = tmp_path / "space"
    subprocess.run([REPO / "scripts/space-docker", dest], check=True, capture_output=True)
    assert front_matter((dest / "README.md").read_text())["sdk"] == "docker"
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+) ", (dest / "Dockerfile").read_text(),
                        flags=re.MULTILINE)
    sources = [source for source in copied if not source.startswith("/")]
    assert sources == ["requirements.txt", "app", "space.py", "start"]
    assert all((dest / source).exists() for source in sources)
    assert (dest / "app" / "__main__.py").is_file()
    assert not list(dest.rglob("__pycache__"))
    assert os.access(dest / "start", os.X_OK)
