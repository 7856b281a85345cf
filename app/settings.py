"""The one settings object, built once in ``main`` and passed down.

Values come from environment variables and an env file (``.env`` by default); the shell
environment wins over the file. Every field here has a row in the README's settings table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]
from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful, concise coding assistant. Answer with working code in fenced code "
    "blocks tagged with their language, then explain briefly what it does. Prefer the standard "
    "library, handle edge cases, and say so when you are unsure rather than inventing an API."
)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

SECRET_SETTINGS = frozenset({"BACKEND_TOKEN", "HF_TOKEN", "DATABASE_URL"})


class SettingsError(Exception):
    """A setting has a wrong value; the message names the variable and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    app_host: str = "127.0.0.1"
    app_port: int = Field(7860, ge=1, le=65535)

    backend_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8080")
    backend_token: SecretStr | None = None
    backend_probe_timeout: float = Field(5.0, gt=0)
    backend_read_timeout: float = Field(120.0, gt=0)
    context_tokens: int = Field(2048, ge=256)

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_new_tokens: int = Field(512, ge=1)
    max_message_chars: int = Field(8000, ge=1)
    max_message_tokens: int = Field(4000, ge=1)
    rate_limit_per_minute: int = Field(30, ge=0)

    queue_concurrency: int = Field(256, ge=1)
    queue_max_size: int | None = Field(None, ge=1)
    stream_interval: float = Field(0.05, ge=0)

    engine_model_path: Path = Path("volumes/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    engine_host: str = "127.0.0.1"
    engine_port: int = Field(8080, ge=1, le=65535)
    engine_start_timeout: float = Field(120.0, gt=0)

    model_id: str = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    model_revision: str = Field("main", min_length=1)
    model_cache_dir: Path = Path("volumes/models/model_cache")
    hf_token: SecretStr | None = None

    database_url: SecretStr = SecretStr("sqlite:///volumes/data/playground.db")
    auth_mode: Literal["none", "password"] = "none"
    allow_signup: bool = False
    token_ttl_hours: float = Field(24 * 7, gt=0)

    snippet_runs: Literal["auto", "on", "off"] = "auto"

    debug: bool = False

    @field_validator("backend_url")
    @classmethod
    def _no_trailing_path(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        if url.path not in (None, "", "/"):
            raise ValueError(
                "give the server's root URL (like http://host:8080), without /v1 or another path"
            )
        return url

    @field_validator("model_id")
    @classmethod
    def _hub_repo_id(cls, model_id: str) -> str:
        try:
            validate_repo_id(model_id)
        except HFValidationError as err:
            raise ValueError(f"give a Hub model id like org/name: {err}") from err
        return model_id

    @field_validator("hf_token")
    @classmethod
    def _empty_token_is_none(cls, token: SecretStr | None) -> SecretStr | None:
        return token if token is not None and token.get_secret_value() else None

    @property
    def runs_allowed(self) -> bool:
        """Whether snippets may run in the sandbox: SNIPPET_RUNS, where ``auto`` allows them
        only while the app listens on this machine alone."""
        if self.snippet_runs == "auto":
            return self.app_host in LOOPBACK_HOSTS
        return self.snippet_runs == "on"

    @property
    def backend_root(self) -> str:
        return str(self.backend_url).rstrip("/")

    @property
    def engine_url(self) -> str:
        return f"http://{self.engine_host}:{self.engine_port}"


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation failures into one message per bad variable."""
    try:
        if env_file is None:
            return Settings(**overrides)
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as err:
        lines = []
        for problem in err.errors():
            name = str(problem["loc"][0]).upper() if problem["loc"] else "settings"
            shown = "hidden" if name in SECRET_SETTINGS else repr(problem.get("input"))
            lines.append(f"{name}: {problem['msg']} (got {shown})")
        raise SettingsError(
            "Invalid setting(s); fix the environment variable or the env file:\n  "
            + "\n  ".join(lines)
        ) from err
