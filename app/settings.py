"""The one settings object, built once in ``main`` and passed down.

Values come from environment variables and an env file (``.env`` by default); the shell
environment wins over the file. Every field here has a row in docs/settings.md's table.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id  # type: ignore[attr-defined]
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

DEFAULT_SYSTEM_PROMPT = (
    "You are a careful, concise coding assistant. Answer with working code in fenced code "
    "blocks tagged with their language, then explain briefly what it does. Prefer the standard "
    "library, handle edge cases, and say so when you are unsure rather than inventing an API."
)


# Defaults of ATTACHMENT_MAX_BYTES and ATTACHMENTS_PER_MESSAGE, also the limits an import
# checks when it is given none.
ATTACHMENT_MAX_BYTES = 256 * 1024
ATTACHMENTS_PER_MESSAGE = 5

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

SECRET_SETTINGS = frozenset({"BACKEND_TOKEN", "HF_TOKEN", "DATABASE_URL"})

# Hugging Face Inference Providers: one OpenAI-compatible router in front of every provider.
HF_ROUTER_URL = "https://router.huggingface.co"

# In a Space with only HF_TOKEN (no BACKEND_URL or BACKENDS secret) and no DEFAULT_MODEL, the
# one Inference Providers backend serves this coding model.
SPACE_DEFAULT_MODEL = "Qwen/Qwen2.5-Coder-32B-Instruct"

BackendConfigKind = Literal["auto", "tgi", "openai", "hf"]


def _root_url(url: AnyHttpUrl | None) -> AnyHttpUrl | None:
    if url is not None and url.path not in (None, "", "/"):
        raise ValueError(
            "give the server's root URL (like http://host:8080), without /v1 or another path"
        )
    return url


class SettingsError(Exception):
    """A setting has a wrong value; the message names the variable and the fix."""


class BackendConfig(BaseModel):
    """One entry of BACKENDS: an inference server the playground may use."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: BackendConfigKind = "auto"
    url: AnyHttpUrl | None = None
    token: SecretStr | None = None
    models: list[str] = Field(default_factory=list)
    provider: str | None = Field(None, pattern=r"^[a-z0-9-]+$")
    timeout: float | None = Field(None, gt=0)
    context_tokens: int | None = Field(None, ge=256)

    @field_validator("url")
    @classmethod
    def _root(cls, url: AnyHttpUrl | None) -> AnyHttpUrl | None:
        return _root_url(url)

    @model_validator(mode="after")
    def _complete(self) -> BackendConfig:
        if self.kind == "hf":
            if not self.models:
                raise ValueError(
                    "an `hf` backend needs `models`: the Hub model ids to use through "
                    "Inference Providers"
                )
            self.url = self.url or AnyHttpUrl(HF_ROUTER_URL)
        elif self.url is None:
            raise ValueError(f"a `{self.kind}` backend needs `url`, the server's root URL")
        elif self.provider is not None:
            raise ValueError("`provider` applies only to `hf` backends")
        return self

    @property
    def root(self) -> str:
        return str(self.url).rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    app_host: str = "127.0.0.1"
    app_port: int = Field(7860, ge=1, le=65535)
    trusted_proxies: str = "127.0.0.1,::1"

    backend_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8080")
    backend_token: SecretStr | None = None
    backend_probe_timeout: float = Field(5.0, gt=0)
    backend_read_timeout: float = Field(120.0, gt=0)
    context_tokens: int = Field(2048, ge=256)
    backends: list[BackendConfig] = Field(default_factory=list)
    default_model: str | None = None
    backend_retries: int = Field(2, ge=0, le=10)
    backend_retry_backoff: float = Field(0.5, ge=0)
    backend_failure_threshold: int = Field(3, ge=1)
    backend_check_interval: float = Field(15.0, gt=0)
    response_cache_size: int = Field(0, ge=0)

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_new_tokens: int = Field(512, ge=1)
    max_message_chars: int = Field(8000, ge=1)
    max_message_tokens: int = Field(4000, ge=1)
    rate_limit_per_minute: int = Field(30, ge=0)
    attachment_max_bytes: int = Field(ATTACHMENT_MAX_BYTES, ge=1)
    attachments_per_message: int = Field(ATTACHMENTS_PER_MESSAGE, ge=1)

    queue_concurrency: int = Field(256, ge=1)
    queue_max_size: int | None = Field(None, ge=1)
    stream_interval: float = Field(0.05, ge=0)
    stream_updates_per_second: float = Field(400.0, gt=0)
    stream_render_interval: float = Field(1.0, ge=0)
    session_capacity: int = Field(2000, ge=1)
    reply_keeps_running: bool = True
    max_running_replies: int = Field(512, ge=1)
    max_running_replies_per_user: int = Field(4, ge=1)
    lease_heartbeat_interval: float = Field(2.0, gt=0)
    lease_expiry: float = Field(10.0, gt=0)

    engine_server: str = "llama-server"
    engine_model_path: Path = Path("volumes/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    engine_host: str = "127.0.0.1"
    engine_port: int = Field(8080, ge=1, le=65535)
    engine_start_timeout: float = Field(120.0, gt=0)
    engine_parallel: int | None = Field(None, ge=1, le=64)
    engine_threads: int | None = Field(None, ge=1)
    engine_context_tokens: int | None = Field(None, ge=256)

    model_id: str = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    model_revision: str = Field("main", min_length=1)
    model_cache_dir: Path = Path("volumes/models/model_cache")
    hf_token: SecretStr | None = None

    database_url: SecretStr = SecretStr("sqlite:///volumes/data/playground.db")
    auth_mode: Literal["none", "password", "hf"] = "none"
    allow_signup: bool = False
    allow_sharing: bool = True
    allow_shared_board: bool = False
    token_ttl_hours: float = Field(24 * 7, gt=0)

    snippet_runs: Literal["auto", "on", "off"] = "auto"
    snippet_runs_at_once: int = Field(2, ge=1)
    check_rounds: int = Field(3, ge=0, le=10)
    preview_max_bytes: int = Field(512 * 1024, ge=1024)

    # Set by Hugging Face Spaces; its presence turns Space mode on (see ``_space_mode``).
    space_id: str | None = None
    space_storage: Path = Path("/data")
    hf_router_url: AnyHttpUrl = AnyHttpUrl(HF_ROUTER_URL)

    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    debug: bool = False

    @field_validator("backend_url", "hf_router_url")
    @classmethod
    def _no_trailing_path(cls, url: AnyHttpUrl) -> AnyHttpUrl:
        checked = _root_url(url)
        assert checked is not None
        return checked

    _ephemeral_history: bool = PrivateAttr(False)

    @field_validator("space_id")
    @classmethod
    def _empty_space_is_none(cls, space_id: str | None) -> str | None:
        return space_id or None

    @model_validator(mode="after")
    def _space_mode(self) -> Settings:
        """In a Space (SPACE_ID set): Hugging Face login, all interfaces, the database on the
        persistent storage when the Space has one, no sharing by link; settings given
        explicitly still win."""
        if self.space_id is None:
            return self
        given = self.model_fields_set
        if "auth_mode" not in given:
            self.auth_mode = "hf"
        if "app_host" not in given:
            self.app_host = "0.0.0.0"
        if "allow_sharing" not in given:
            self.allow_sharing = False
        if "database_url" not in given:
            if self.space_storage.is_dir():
                self.database_url = SecretStr(f"sqlite:///{self.space_storage / 'playground.db'}")
            else:
                self._ephemeral_history = True
        if not self.backends and "backend_url" not in given and self.hf_token is None:
            raise ValueError(
                "In a Space, set a backend as a Space secret: BACKEND_URL (with BACKEND_TOKEN) "
                "for TGI or an Inference Endpoint, BACKENDS, or HF_TOKEN for Inference Providers"
            )
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        """Comma-separated addresses and networks, or ``*``; uvicorn would take a mistyped one
        as a name that never matches, silently."""
        given = [item.strip() for item in value.split(",") if item.strip()]
        if given == ["*"]:
            return "*"
        for item in given:
            try:
                ipaddress.ip_network(item)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network; give the proxies' addresses "
                    "separated by commas, like 127.0.0.1,172.31.250.2 or 10.0.0.0/8 (host bits "
                    "zero), * for any, or nothing for none"
                ) from None
        return ",".join(given)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level

    @field_validator("backends", mode="before")
    @classmethod
    def _each_backend(cls, raw: Any) -> list[BackendConfig]:
        if not isinstance(raw, list):
            raise ValueError(
                'give a JSON list of objects, like [{"name": "gpu", "kind": "tgi", '
                '"url": "http://gpu:8080"}]'
            )
        entries = []
        for number, item in enumerate(raw, start=1):
            try:
                entries.append(BackendConfig.model_validate(item))
            except ValidationError as err:
                raise ValueError(_entry_problem(number, item, err)) from None
        return entries

    @model_validator(mode="after")
    def _unique_backend_names(self) -> Settings:
        seen: dict[str, int] = {}
        for number, backend in enumerate(self.backends, start=1):
            if backend.name in seen:
                raise ValueError(
                    f"BACKENDS entries {seen[backend.name]} and {number} are both named "
                    f"{backend.name!r}; give each backend its own name"
                )
            seen[backend.name] = number
            if backend.kind == "hf" and backend.token is None and self.hf_token is None:
                raise ValueError(
                    f"BACKENDS entry {number} ({backend.name!r}) uses Inference Providers and "
                    "needs a Hugging Face token: set HF_TOKEN or give the entry a `token`"
                )
        return self

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        if self.lease_expiry <= self.lease_heartbeat_interval:
            raise ValueError(
                f"LEASE_EXPIRY ({self.lease_expiry:g} s) must be longer than "
                f"LEASE_HEARTBEAT_INTERVAL ({self.lease_heartbeat_interval:g} s), several times "
                "over: a live process would otherwise be taken for dead between two heartbeats"
            )
        return self

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
    def space_mode(self) -> bool:
        """Running as a Hugging Face Space (the Space sets SPACE_ID)."""
        return self.space_id is not None

    @property
    def ephemeral_history(self) -> bool:
        """In a Space without persistent storage: the database is lost at each restart."""
        return self._ephemeral_history

    @property
    def runs_allowed(self) -> bool:
        """Whether snippets may run in the sandbox: SNIPPET_RUNS, where ``auto`` allows them
        only while the app listens on this machine alone; never in a Space."""
        if self.space_mode:
            return False
        if self.snippet_runs == "auto":
            return self.app_host in LOOPBACK_HOSTS
        return self.snippet_runs == "on"

    @property
    def backend_root(self) -> str:
        return str(self.backend_url).rstrip("/")

    @property
    def backend_list(self) -> list[BackendConfig]:
        """BACKENDS, or when it is empty one backend at BACKEND_URL whose kind is probed; in a
        Space with HF_TOKEN and no BACKEND_URL, one Inference Providers backend instead."""
        if self.backends:
            return self.backends
        if self.space_mode and "backend_url" not in self.model_fields_set and self.hf_token:
            model = self.default_model or SPACE_DEFAULT_MODEL
            return [BackendConfig(
                name="inference-providers", kind="hf", url=self.hf_router_url, models=[model]
            )]
        return [BackendConfig(name="default", url=self.backend_url, token=self.backend_token)]

    def backend_token_for(self, backend: BackendConfig) -> str | None:
        """The entry's own token; Inference Providers fall back to HF_TOKEN."""
        token = backend.token or (self.hf_token if backend.kind == "hf" else None)
        return token.get_secret_value() if token else None

    def secrets(self) -> list[str]:
        """Every secret value the settings hold, for scrubbing logs and messages."""
        values = [self.backend_token, self.hf_token, *(b.token for b in self.backends)]
        found = [v.get_secret_value() for v in values if v is not None]
        found.append(self.database_url.get_secret_value())
        return [value for value in found if len(value) >= 4]

    @property
    def engine_url(self) -> str:
        return f"http://{self.engine_host}:{self.engine_port}"

    @property
    def engine_slots(self) -> int:
        """ENGINE_PARALLEL, or by default two slots a core, from 1 to 8, and at most one a
        GiB of memory."""
        if self.engine_parallel is not None:
            return self.engine_parallel
        cores = len(os.sched_getaffinity(0))
        memory_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**30
        return max(1, min(2 * cores, 8, memory_gib))

    @property
    def engine_slot_context(self) -> int:
        """ENGINE_CONTEXT_TOKENS, or by default room for the longest message the guard lets
        through and the longest reply (at least CONTEXT_TOKENS), in llama.cpp's steps of 256
        tokens."""
        if self.engine_context_tokens is not None:
            return self.engine_context_tokens
        wanted = max(self.context_tokens, self.max_message_tokens + self.max_new_tokens)
        return -(-wanted // 256) * 256


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation failures into one message per bad variable."""
    try:
        if env_file is None:
            return Settings(**overrides)
        return Settings(_env_file=env_file, **overrides)
    except SourceError as err:
        raise SettingsError(
            f"Invalid setting: BACKENDS is not valid JSON ({err.__cause__ or err}); give a "
            'JSON list of objects, like [{"name": "gpu", "kind": "tgi", "url": "http://gpu:8080"}].'
        ) from err
    except ValidationError as err:
        lines = [_problem_line(problem) for problem in err.errors()]
        raise SettingsError(
            "Invalid setting(s); fix the environment variable or the env file:\n  "
            + "\n  ".join(lines)
        ) from err


def _problem_line(problem: ErrorDetails) -> str:
    loc = problem["loc"]
    message = problem["msg"].removeprefix("Value error, ")
    if not loc:
        return message
    name = str(loc[0]).upper()
    if name == "BACKENDS":
        # The entries may hold tokens: the message names the entry and field instead.
        return f"{name}: {message}"
    shown = "hidden" if name in SECRET_SETTINGS else repr(problem.get("input"))
    return f"{name}: {message} (got {shown})"


def _entry_problem(number: int, item: Any, err: ValidationError) -> str:
    """What is wrong with one BACKENDS entry, named by its number and name; no token shown."""
    label = f"entry {number}"
    if isinstance(item, dict) and isinstance(item.get("name"), str):
        label += f" ({item['name']!r})"
    parts = []
    for problem in err.errors():
        field = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if not field:
            parts.append(message)
        else:
            shown = "hidden" if field == "token" else repr(problem.get("input"))
            parts.append(f"{field}: {message} (got {shown})")
    return f"{label}: " + "; ".join(parts)
