"""Settings: flags > environment > config file > defaults, in one loader.

The server and the CLI call :func:`load_settings` with the same inputs and so find the
same database. Environment variables: ``TOLLHOUSE_CONFIG``, ``TOLLHOUSE_DATABASE_URL``,
``TOLLHOUSE_REDIS_URL``, ``TOLLHOUSE_INSTANCES``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tollhouse.errors import ConfigError
from tollhouse.policy.load import load_policy
from tollhouse.policy.model import Policy

ENV_CONFIG = "TOLLHOUSE_CONFIG"
ENV_DATABASE_URL = "TOLLHOUSE_DATABASE_URL"
ENV_REDIS_URL = "TOLLHOUSE_REDIS_URL"
ENV_INSTANCES = "TOLLHOUSE_INSTANCES"
ENV_EMBEDDED_WORKERS = "TOLLHOUSE_EMBEDDED_WORKERS"
ENV_ALLOW_PRIVATE_TARGETS = "TOLLHOUSE_ALLOW_PRIVATE_TARGETS"
ENV_METRICS_TOKEN = "TOLLHOUSE_METRICS_TOKEN"
ENV_JOB_LEASE_SECONDS = "TOLLHOUSE_JOB_LEASE_SECONDS"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where tollhouse reads its policy and keeps its state."""

    policy: Policy
    """The policy from the config file, or the built-in default."""
    config_path: Path | None
    """The config file used, or None for the built-in policy."""
    database_url: str
    """Keys and orgs (SQLite file by default)."""
    redis_url: str
    """Shared limits; empty keeps them in process memory."""
    embedded_workers: bool = True
    """Run job workers inside the server process (the embedded default); set
    ``TOLLHOUSE_EMBEDDED_WORKERS=0`` when ``tollhouse worker`` processes do the work."""
    instances: int = 1
    """Processes sharing the limits (workers × replicas): while Redis is unreachable each
    enforces ``limit ÷ instances`` locally."""
    allow_private_targets: bool = False
    """Webhook URLs may reach loopback/private addresses (``[security]
    allow_private_targets`` or ``TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1``): local development."""
    metrics_token: str = ""
    """When set (``TOLLHOUSE_METRICS_TOKEN``), ``GET /metrics`` needs ``Authorization:
    Bearer <token>``; empty leaves it open like ``/healthz``."""
    job_lease_seconds: float = 30.0
    """How long the embedded worker's claim on a job lasts without a heartbeat
    (``TOLLHOUSE_JOB_LEASE_SECONDS``): after a crash, its running jobs are run again
    this long (plus up to 5 s) later."""

    @property
    def is_embedded_default(self) -> bool:
        """True when running on the built-in policy with the bundled example upstream."""
        return self.config_path is None and self.policy.upstream.is_example


def load_settings(
    config: str | Path | None = None,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    instances: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: explicit arguments (flags) win over the environment, which wins
    over the config file, which wins over defaults.

    Raises:
        PolicyError: the config file is missing or wrong.
    """
    env = os.environ if environ is None else environ
    path_text = config or env.get(ENV_CONFIG) or None
    path = Path(path_text) if path_text else None
    policy = load_policy(path)
    return Settings(
        policy=policy,
        config_path=path,
        database_url=database_url or env.get(ENV_DATABASE_URL) or policy.storage.database_url,
        redis_url=(
            redis_url if redis_url is not None else env.get(ENV_REDIS_URL, policy.storage.redis_url)
        ),
        instances=instances or positive_int(env.get(ENV_INSTANCES), ENV_INSTANCES) or 1,
        embedded_workers=env.get(ENV_EMBEDDED_WORKERS, "1").strip().lower()
        not in ("0", "false", "no", "off"),
        allow_private_targets=_flag(
            env.get(ENV_ALLOW_PRIVATE_TARGETS),
            ENV_ALLOW_PRIVATE_TARGETS,
            policy.security.allow_private_targets,
        ),
        metrics_token=env.get(ENV_METRICS_TOKEN, "").strip(),
        job_lease_seconds=_seconds(env.get(ENV_JOB_LEASE_SECONDS), ENV_JOB_LEASE_SECONDS, 30.0),
    )


def _seconds(text: str | None, name: str, default: float) -> float:
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name}={text!r}: use a positive number of seconds")
    return value


def _flag(text: str | None, name: str, default: bool) -> bool:
    if text is None or not text.strip():
        return default
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={text!r}: use 1 or 0")


def positive_int(text: str | None, name: str) -> int | None:
    """An environment variable's whole number ≥ 1; None when it is unset or empty.

    Raises:
        ConfigError: any other value, naming the variable.
    """
    if not text or not text.strip():
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={text!r}: must be a whole number of at least 1")
    return value
