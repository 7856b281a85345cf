from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AnyHttpUrl, SecretStr

from app.engine import engine_command
from app.settings import Settings, SettingsError, load_settings
from tests.conftest import REPO


def test_defaults_run_on_the_embedded_engine() -> None:
    settings = load_settings()
    assert settings.backend_root == "http://127.0.0.1:8080" == settings.engine_url
    assert (settings.app_host, settings.app_port) == ("127.0.0.1", 7860)
    assert settings.queue_concurrency > 1


def test_env_file_is_read_and_the_shell_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("APP_PORT=9000\nMAX_NEW_TOKENS=64\n")
    monkeypatch.setenv("MAX_NEW_TOKENS", "128")
    settings = load_settings()
    assert (settings.app_port, settings.max_new_tokens) == (9000, 128)


def test_another_env_file_can_be_named(tmp_path: Path) -> None:
    other = tmp_path / "prod.env"
    other.write_text("BACKEND_URL=http://tgi:8081\n")
    assert load_settings(other).backend_root == "http://tgi:8081"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("APP_PORT", "seventy", "APP_PORT: Input should be a valid integer"),
        ("APP_PORT", "70000", "APP_PORT: Input should be less than or equal to 65535"),
        ("BACKEND_URL", "localhost:8080", "BACKEND_URL: "),
        ("BACKEND_URL", "http://127.0.0.1:8080/v1", "without /v1 or another path"),
        ("QUEUE_CONCURRENCY", "0", "QUEUE_CONCURRENCY: Input should be greater than or equal"),
        ("DEBUG", "maybe", "DEBUG: Input should be a valid boolean"),
        ("TRUSTED_PROXIES", "127.0.0.1,nginx", "TRUSTED_PROXIES: 'nginx' is not an IP address"),
        ("TRUSTED_PROXIES", "10.0.0.1/8", "like 127.0.0.1,172.31.250.2 or 10.0.0.0/8"),
        ("LEASE_EXPIRY", "2", "LEASE_EXPIRY (2 s) must be longer than LEASE_HEARTBEAT_INTERVAL"),
    ],
)
def test_a_wrong_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings()


SETTINGS_PAGE = REPO / "docs" / "settings.md"
# Defaults the table describes in words rather than giving the value.
DESCRIBED_DEFAULTS = {
    "SYSTEM_PROMPT": "a coding-assistant prompt",
    "ENGINE_PARALLEL": "two a core, 1 to 8, at most one a GiB of memory",
    "ENGINE_CONTEXT_TOKENS": "room for `MAX_MESSAGE_TOKENS` + `MAX_NEW_TOKENS` (at least "
    "`CONTEXT_TOKENS`), in steps of 256",
}


def settings_table() -> dict[str, str]:
    """docs/settings.md's rows: each variable and its Default cell, as written."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", SETTINGS_PAGE.read_text(), re.MULTILINE)
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), f"a variable has two rows: {sorted(names)}"
    return dict(rows)


def shown_default(name: str) -> str:
    """The code's default of a setting, written as the table writes it."""
    value = Settings.model_fields[name.lower()].get_default(call_default_factory=True)
    if value is None or value == []:
        return "unset"
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).rstrip("/") if isinstance(value, AnyHttpUrl) else str(value)


def test_every_setting_has_one_row_in_the_settings_table() -> None:
    assert set(settings_table()) == {name.upper() for name in Settings.model_fields}


def test_the_settings_table_gives_the_code_defaults() -> None:
    for name, cell in settings_table().items():
        written = re.match(r"`([^`]*)`", cell)
        if written is None:
            assert cell == DESCRIBED_DEFAULTS.get(name, "unset"), name
            assert cell != "unset" or shown_default(name) == "unset", name
        else:
            assert written.group(1) == shown_default(name), name


def test_the_app_refuses_to_start_with_a_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app"], cwd=tmp_path, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "APP_PORT": "http"},
        timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "APP_PORT: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ('[{"name": "gpu", "kind": "tgi", "url": "http://a:8080"},'
         ' {"name": "gpu", "kind": "openai", "url": "http://b:8000"}]',
         "BACKENDS entries 1 and 2 are both named 'gpu'; give each backend its own name"),
        ('[{"name": "gpu", "kind": "tgi", "url": "http://a:8080"},'
         ' {"name": "box", "kind": "openai", "url": "box:8000", "token": "tok-s3cret"}]',
         "BACKENDS: entry 2 ('box'): url: URL scheme should be 'http' or 'https'"),
        ('[{"name": "box", "kind": "vllm", "url": "http://b:8000", "token": "tok-s3cret"}]',
         "BACKENDS: entry 1 ('box'): kind: Input should be 'auto', 'tgi', 'openai' or 'hf' "
         "(got 'vllm')"),
        ('[{"name": "box", "kind": "tgi"}]',
         "entry 1 ('box'): a `tgi` backend needs `url`"),
        ('[{"name": "box", "kind": "tgi", "url": "http://a:8080/v1"}]',
         "entry 1 ('box'): url: give the server's root URL"),
        ('[{"name": "hosted", "kind": "hf", "models": ["org/m"]}]',
         "BACKENDS entry 1 ('hosted') uses Inference Providers and needs a Hugging Face token"),
        ('[{"name": "hosted", "kind": "hf"}]', "an `hf` backend needs `models`"),
        ('[{"name": "box", "kind": "tgi", "url": "http://a:8080", "tokn": "x"}]',
         "entry 1 ('box'): tokn: Extra inputs are not permitted"),
        ("[{'name': 'box'}]", "BACKENDS is not valid JSON"),
        ('{"name": "box"}', "BACKENDS: give a JSON list of objects"),
    ],
)
def test_a_wrong_backend_list_names_the_entry_and_hides_tokens(
    monkeypatch: pytest.MonkeyPatch, backends: str, message: str
) -> None:
    monkeypatch.setenv("BACKENDS", backends)
    with pytest.raises(SettingsError, match=re.escape(message)) as caught:
        load_settings()
    assert "tok-s3cret" not in str(caught.value)


def test_the_app_refuses_to_start_on_a_wrong_backend_list(tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text(
        'BACKENDS=[{"name": "a", "kind": "tgi", "url": "http://a:1"}, '
        '{"name": "a", "kind": "tgi", "url": "http://b:1"}]\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "app", "--env-file", str(env_file)], cwd=REPO,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "BACKENDS entries 1 and 2 are both named 'a'" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_backends_one_is_made_from_backend_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_URL", "http://tgi:8080")
    monkeypatch.setenv("BACKEND_TOKEN", "tok")
    (only,) = load_settings().backend_list
    assert (only.name, only.kind, only.root) == ("default", "auto", "http://tgi:8080")
    assert load_settings().backend_token_for(only) == "tok"


def test_the_engines_slots_and_their_context_follow_the_machine_and_the_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENGINE_PARALLEL by default: two slots a core, from 1 to 8, at most one a GiB; each
    slot's context by default room for the longest message and reply the guard allows."""
    for cores, gib, slots in ((2, 24, 4), (16, 64, 8), (8, 3, 3), (1, 0, 1)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _, cores=cores: set(range(cores)))
        monkeypatch.setattr("os.sysconf", lambda name, gib=gib: {
            "SC_PHYS_PAGES": gib * 2**18, "SC_PAGE_SIZE": 4096}[name])
        assert load_settings().engine_slots == slots, (cores, gib)
    assert load_settings(engine_parallel=6).engine_slots == 6
    assert load_settings().engine_slot_context == 4608  # 4000 + 512
    assert load_settings(max_message_tokens=100, max_new_tokens=100).engine_slot_context == 2048
    assert load_settings(max_message_tokens=3000, max_new_tokens=300).engine_slot_context == 3328
    assert load_settings(engine_context_tokens=1000).engine_slot_context == 1000


def test_the_engine_is_given_its_slots_their_context_and_its_threads() -> None:
    command = engine_command(load_settings(
        engine_parallel=3, engine_context_tokens=1024, engine_threads=1), "llama-server")
    given = {name: command[command.index(name) + 1]
             for name in ("--parallel", "--ctx-size", "--threads")}
    assert given == {"--parallel": "3", "--ctx-size": "3072", "--threads": "1"}
    assert "--threads" not in engine_command(load_settings(), "llama-server")
