"""Settings: one YAML file (``HITL_BRIDGE_CONFIG``) with ``${ENV_VAR}`` references for secrets.

Secrets never live in the file itself: ``api_token: ${JIRA_TOKEN}`` is read from the
environment when the file is loaded, kept as ``SecretStr`` and never logged. Tests and the
sandbox build ``Settings`` directly; code reads them from ``get_settings()`` (cached) or
from the app's state, never from import-time globals.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors import ConnectionConfig, config_for

Scope = Literal["reviews:write", "reviews:read", "admin", "audit"]


def hash_api_key(key: str) -> str:
    """API keys are stored as SHA-256 hashes (they are long random tokens, so no salt or KDF
    is needed: nothing to brute-force)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    scopes: list[Scope]
    expires_at: datetime | None = Field(default=None, description="After this the key is refused.")
    rate_limit_per_minute: int | None = Field(default=None, ge=1, description="Review submissions a minute (429 beyond).")


class WorkerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concurrency: int = Field(default=4, ge=1, le=64)
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    lease_seconds: float = Field(default=120, gt=0)
    max_attempts: int = Field(default=12, ge=1)
    backoff_initial_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    breaker_threshold: int = Field(default=5, ge=1, description="Consecutive retryable failures that open a connection's circuit.")
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0, description="How long an open circuit holds that connection's jobs.")
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, description="On SIGTERM, how long jobs in hand may finish before they are released.")


class LangGraphDeployment(BaseModel):
    """A LangGraph server whose interrupted threads the worker turns into reviews."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Reviews from it are submitted as 'langgraph:<name>'.")
    url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    assistant_id: str | None = Field(default=None, description="Only threads of this assistant or graph; all when unset.")
    poll_seconds: float = Field(default=5.0, gt=0)
    title: str = Field(default="Approve {actions}", description="Review title; {actions}, {thread_id} and {graph_id} are filled in.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Added to every review's metadata (routing).")


class LangSmithScores(BaseModel):
    """The feedback score each decision type leaves on the run (None: no score, value only)."""

    model_config = ConfigDict(extra="forbid")
    approve: float | None = 1.0
    reject: float | None = 0.0
    edit: float | None = 0.5
    respond: float | None = None


class LangSmithSettings(BaseModel):
    """LangSmith: reviews built from runs, automation-rule intake, decisions back as feedback."""

    model_config = ConfigDict(extra="forbid")
    api_url: str = Field(default="https://api.smith.langchain.com", pattern=r"^https?://")
    api_key: SecretStr | None = None
    web_url: str | None = Field(default=None, description="Where trace links point (derived from api_url when unset).")
    feedback_key: str = Field(default="human_review", min_length=1)
    scores: LangSmithScores = Field(default_factory=LangSmithScores)
    corrections_dataset: str = Field(default="hitl-bridge-corrections", min_length=1)
    confidence_key: str = Field(default="confidence", description="Read from the run's outputs, else its feedback.")
    intake_secrets: list[SecretStr] = Field(
        default_factory=list, description="Automation-rule webhooks must carry one (several during rotation)."
    )
    intake_metadata: dict[str, Any] = Field(default_factory=dict, description="Added to reviews from automation rules (routing).")
    timeout_seconds: float = Field(default=10.0, gt=0)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    database_url: str = "sqlite:///hitl-bridge.db"
    mappings_dir: Path = Field(
        default=Path("mappings"),
        description="The mapping and routes files; a relative path is from the working directory "
                    "(the repository for `make sandbox`, /app in the Docker image).",
    )
    connections: dict[str, ConnectionConfig] = Field(default_factory=dict)
    api_keys: list[ApiKey] = Field(default_factory=list)
    callback_secret: SecretStr = Field(
        default=SecretStr(""), description="Standard Webhooks secret (whsec_...) for agent callbacks."
    )
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = 1_048_576
    run_worker: bool = True
    mappings_follow_seconds: float = Field(
        default=5.0, ge=0, description="How often an instance takes up mapping saves made on other instances (0: never)."
    )
    auto_migrate: bool = True
    log_level: str = "INFO"
    sandbox: bool = False
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    langgraph: list[LangGraphDeployment] = Field(default_factory=list)
    langsmith: LangSmithSettings | None = None
    retention_days: float | None = Field(
        default=None, gt=0, description="Finished reviews' content is purged after this many days (`hitl-bridge retention purge`)."
    )

    @field_validator("connections", mode="before")
    @classmethod
    def _vendor_models(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out = {}
        for name, value in raw.items():
            if isinstance(value, ConnectionConfig):
                out[name] = value
            else:
                out[name] = config_for({"name": name, **value})
        return out

    def key_by_hash(self) -> dict[str, ApiKey]:
        return {key.hash: key for key in self.api_keys}


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ValueError(f"environment variable {name} is referenced in the config but not set")
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def load_settings(path: str | Path | None = None) -> Settings:
    if path is None:
        path = os.environ.get("HITL_BRIDGE_CONFIG")
    data: dict[str, Any] = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
    if "HITL_BRIDGE_DATABASE_URL" in os.environ:
        data["database_url"] = os.environ["HITL_BRIDGE_DATABASE_URL"]
    return Settings.model_validate(_expand(data))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
