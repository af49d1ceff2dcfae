"""Settings: one table of every ``TOLLHOUSE_*`` variable, and what it drives.

:data:`TABLE` has a row per variable: the name the value has in code, the variable, the
config file key (if any), how its text is parsed, the default and one line of doc. From
it come

* :func:`load_settings` — flags > environment > config file > defaults, for the rows
  read into :class:`Settings` (the server and every command resolve them alike, so
  ``tollhouse keys create`` writes where ``tollhouse serve`` reads);
* :func:`to_environ` — the variables ``tollhouse serve --workers N`` sets for its worker
  processes, whose own :func:`load_settings` then gives the same settings back;
* :func:`markdown_table` — the settings section of ``docs/operations.md``
  (``scripts/settings-docs`` rewrites it; a test fails while it is out of date).

The other rows document variables read elsewhere, under the same names and defaults:
options of a command (Typer reads ``envvar=ROW.env``), the SDK's (it imports nothing
from the server, so it keeps its own constants) and the bundled example upstream's.

Every boolean is read by :func:`parse_bool`: ``1/true/yes/on`` or ``0/false/no/off``, in
any case; anything else is a :class:`~tollhouse.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tollhouse.errors import ConfigError
from tollhouse.policy.load import load_policy, udp_address
from tollhouse.policy.model import DEFAULT_DATABASE_URL, Policy

# --- parsers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parser:
    """How one kind of value is read from a variable's text, and written back."""

    values: str
    """What it accepts, for the docs."""
    parse: Callable[[str, str], Any]
    """``(text, variable name) → value``; raises ConfigError naming the variable."""
    format: Callable[[Any], str] = str
    """``value → text`` that ``parse`` reads back as the same value."""


TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def parse_bool(text: str, name: str) -> bool:
    """``1/true/yes/on`` → True, ``0/false/no/off`` → False, in any case.

    Raises:
        ConfigError: anything else, naming ``name`` and the accepted values.
    """
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(
        f"{name}={text!r}: not a boolean; use {', '.join(TRUE)} or {', '.join(FALSE)} (any case)"
    )


def positive_int(text: str | None, name: str) -> int | None:
    """A variable's whole number ≥ 1; None when it is unset or blank.

    Raises:
        ConfigError: any other value, naming the variable.
    """
    if not text or not text.strip():
        return None
    return _count(text, name)


def _count(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={text!r}: must be a whole number of at least 1")
    return value


def _flag_text(value: bool) -> str:
    return "1" if value else "0"


def _text(text: str, name: str) -> str:
    return text.strip()


def _path(text: str, name: str) -> Path:
    return Path(text.strip())


def _seconds(values: str, accept: Callable[[float], bool]) -> Parser:
    def parse(text: str, name: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not accept(value):  # NaN fails every comparison
            raise ConfigError(f"{name}={text!r}: must be {values}")
        return value

    return Parser(values, parse, repr)


def _choice(*names: str) -> Parser:
    def parse(text: str, name: str) -> str:
        value = text.strip().lower()
        if value not in names:
            raise ConfigError(f"{name}={text!r}: use one of {', '.join(names)}")
        return value

    *others, last = (f"`{n}`" for n in names)
    return Parser(f"{', '.join(others)} or {last}", parse)


def _udp(text: str, name: str) -> str:
    value = text.strip()
    if value:
        try:
            udp_address(value)
        except ValueError as exc:
            raise ConfigError(f"{name}={text!r}: {exc}") from None
    return value


TEXT = Parser("text", _text)
UDP = Parser("`udp://HOST:PORT`", _udp)
URL = Parser("URL", _text)
PATH = Parser("path", _path, lambda value: "" if value is None else str(value))
FLAG = Parser("`1` `true` `yes` `on` / `0` `false` `no` `off`", parse_bool, _flag_text)
COUNT = Parser("whole number ≥ 1", _count)
SECONDS = _seconds("seconds, more than 0", lambda v: 0 < v < math.inf)

# --- the table ---------------------------------------------------------------------------

#: Who reads a row: ``settings`` — :func:`load_settings` into :class:`Settings` (the
#: server and every command); ``command`` — one command's option; ``sdk`` — the Python
#: client and the commands that call a server; ``example`` — the bundled example upstream.
Reader = Literal["settings", "command", "sdk", "example"]

READERS: dict[Reader, str] = {
    "settings": "server and every command",
    "command": "command option",
    "sdk": "SDK; `status`, `score`, `usage`",
    "example": "example upstream",
}


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of :data:`TABLE`: one ``TOLLHOUSE_*`` variable."""

    field: str
    """The name of the value in code: a :class:`Settings` field for ``settings`` rows,
    else the option or argument it feeds."""
    env: str
    """The environment variable."""
    toml: str | None
    """The config file key as ``section.key`` (``[section] key``), or None."""
    parser: Parser
    default: Any
    doc: str
    """One line for the docs."""
    reader: Reader = "settings"
    keeps_empty: bool = False
    """An empty value is a value (e.g. no Redis) rather than "unset"."""

    def unset(self, value: object) -> bool:
        """Whether a flag's or the variable's value leaves the setting to the next source:
        None, or blank text unless :attr:`keeps_empty`."""
        if value is None:
            return True
        return isinstance(value, str) and not value.strip() and not self.keeps_empty


CONFIG_PATH = Setting(
    "config_path",
    "TOLLHOUSE_CONFIG",
    None,
    PATH,
    None,
    "The policy file (TOML); unset: the built-in policy. Flag `--config`.",
)
DATABASE_URL = Setting(
    "database_url",
    "TOLLHOUSE_DATABASE_URL",
    "storage.database_url",
    URL,
    DEFAULT_DATABASE_URL,
    "Keys, orgs, jobs and usage: `sqlite:///path/file.db` or `postgresql://…`. "
    "Flag `--database-url`.",
)
REDIS_URL = Setting(
    "redis_url",
    "TOLLHOUSE_REDIS_URL",
    "storage.redis_url",
    URL,
    "",
    "Shared limits (`redis://host:port/db`, or a Redis Cluster by its startup nodes: "
    "`redis+cluster://host:port[,host:port…]`; over TLS `rediss://…` and "
    "`rediss+cluster://…`, the CA as `?ssl_ca_certs=/path/ca.pem`); empty — even over the "
    "file — keeps them in process memory. Flag `serve --redis-url`.",
    keeps_empty=True,
)
INSTANCES = Setting(
    "instances",
    "TOLLHOUSE_INSTANCES",
    None,
    COUNT,
    1,
    "Processes sharing the limits (instances × `--workers`): sizes each one's share of "
    "every limit for when Redis cannot be asked, and of every pool.",
)
REDIS_TIMEOUT = Setting(
    "redis_timeout",
    "TOLLHOUSE_REDIS_TIMEOUT",
    None,
    _seconds("seconds, more than 0 and at most 10", lambda v: 0 < v <= 10),
    0.1,
    "How long one Redis round trip (or connecting) may take; a request whose round trip "
    "takes longer is decided without Redis (`[limits] on_store_failure`).",
)
REDIS_BREAKER_FAILURES = Setting(
    "redis_breaker_failures",
    "TOLLHOUSE_REDIS_BREAKER_FAILURES",
    None,
    COUNT,
    3,
    "Consecutive failed Redis round trips (those in flight together count once) after "
    "which Redis is no longer asked, only probed; `degraded` is then true.",
)
REDIS_PROBE_INTERVAL = Setting(
    "redis_probe_interval",
    "TOLLHOUSE_REDIS_PROBE_INTERVAL",
    None,
    _seconds("seconds, more than 0 and at most 60", lambda v: 0 < v <= 60),
    0.25,
    "Seconds between two probes of Redis while it is not asked; the first that succeeds "
    "shares the limits again.",
)
LIMITS_RESERVE = Setting(
    "limits_reserve",
    "TOLLHOUSE_LIMITS_RESERVE",
    None,
    _seconds("a fraction from 0 to 1", lambda v: 0 <= v <= 1),
    0.1,
    "With several instances: the part of each limit they set aside in Redis, each "
    "limit × reserve ÷ instances per window, to admit from while Redis is slow or away.",
)
EMBEDDED_WORKERS = Setting(
    "embedded_workers",
    "TOLLHOUSE_EMBEDDED_WORKERS",
    None,
    FLAG,
    True,
    "Run job workers inside the server process; `0` when `tollhouse worker` processes do the work.",
)
ALLOW_PRIVATE_TARGETS = Setting(
    "allow_private_targets",
    "TOLLHOUSE_ALLOW_PRIVATE_TARGETS",
    "security.allow_private_targets",
    FLAG,
    False,
    "Webhook URLs may reach loopback and private addresses (local development).",
)
METRICS_TOKEN = Setting(
    "metrics_token",
    "TOLLHOUSE_METRICS_TOKEN",
    None,
    TEXT,
    "",
    "When set, `GET /metrics` needs `Authorization: Bearer <token>`; empty leaves it open.",
)
ADMIN_TOKEN = Setting(
    "admin_token",
    "TOLLHOUSE_ADMIN_TOKEN",
    None,
    TEXT,
    "",
    "An admin token for the provider API (`/v1/admin/*`, `Authorization: Bearer <token>`), "
    "beside the stored ones of `tollhouse admin-tokens create`; the commands' `--url` send "
    "it. Empty: stored tokens only.",
)
FAIR_USE_WEBHOOK_ORG = Setting(
    "fair_use_webhook_org",
    "TOLLHOUSE_FAIR_USE_WEBHOOK_ORG",
    None,
    TEXT,
    "",
    "The provider's own org: its webhook endpoints (in the flagged environment) get one "
    "`fair_use.flagged` event per signal, org and window. Empty: no events.",
)
FAIR_USE_INTERVAL = Setting(
    "fair_use_interval",
    "TOLLHOUSE_FAIR_USE_INTERVAL",
    None,
    SECONDS,
    300.0,
    "Seconds between two scheduled fair-use passes inside each server process (with "
    "several, each interval is still passed once).",
)
JOB_LEASE_SECONDS = Setting(
    "job_lease_seconds",
    "TOLLHOUSE_JOB_LEASE_SECONDS",
    None,
    SECONDS,
    30.0,
    "How long the embedded worker's claim on a job lasts without a heartbeat: a crashed "
    "process's running jobs run again this long (plus up to 5 s) later.",
)
ACCESS_LOG_LISTEN = Setting(
    "access_log_listen",
    "TOLLHOUSE_ACCESS_LOG_LISTEN",
    "forward_auth.access_log_listen",
    UDP,
    "",
    "Forward-auth: where the proxy's JSON access-log lines (syslog over UDP) are received, "
    "joining upstream status and latency to decided calls and freeing their pool slots "
    "(docs/forward-auth.md); one process only. Flag `serve --access-log-listen`.",
)
LOG_BODIES = Setting(
    "log_bodies",
    "TOLLHOUSE_LOG_BODIES",
    None,
    FLAG,
    False,
    "Log SQL statements with their parameters, fetched rows and WebSocket frames (they hold "
    "key hashes, webhook secrets, request bodies): off at every log level, debug included, "
    "unless this or `serve --log-bodies` is set.",
)
RAW_CALL_LOG = Setting(
    "raw_call_log",
    "TOLLHOUSE_RAW_CALL_LOG",
    None,
    FLAG,
    True,
    "Keep the raw call log (`api_calls_log`, one row per call); off: the rollups and every "
    "count stay exact, `api_calls_log` stays empty and a flush writes no row per call "
    "(docs/analytics.md).",
)
USAGE_RETENTION = Setting(
    "usage_retention",
    "TOLLHOUSE_USAGE_RETENTION",
    None,
    FLAG,
    True,
    "Delete usage and fair-use rows older than their default retention (docs/analytics.md: "
    "raw call log 30 days, minute rollups 7, hourly 400, …) once an hour in each server "
    "process; off: keep everything (then `tollhouse usage prune` deletes by the same ages).",
)
KEEP_ALIVE = Setting(
    "keep_alive",
    "TOLLHOUSE_KEEP_ALIVE",
    None,
    _seconds("seconds, more than 0 and at most 3600", lambda v: 0 < v <= 3600),
    5.0,
    "`serve --keep-alive`: how long an idle keep-alive connection stays open; behind a "
    "load balancer, above its idle timeout.",
    reader="command",
)
LOG_FORMAT = Setting(
    "log_format",
    "TOLLHOUSE_LOG_FORMAT",
    None,
    _choice("text", "json"),
    "text",
    "`serve`/`worker --log-format`: `text` on stderr, or `json`, one object per line on stdout.",
    reader="command",
)
LOG_LEVEL = Setting(
    "log_level",
    "TOLLHOUSE_LOG_LEVEL",
    None,
    _choice("critical", "error", "warning", "info", "debug"),
    "info",
    "`serve`/`worker --log-level`.",
    reader="command",
)
TENANT_ID = Setting(
    "tenant",
    "TOLLHOUSE_TENANT_ID",
    None,
    TEXT,
    None,
    "`score --tenant`: the `X-Tenant-Id` to send.",
    reader="command",
)
API_KEY = Setting(
    "api_key",
    "TOLLHOUSE_API_KEY",
    None,
    TEXT,
    None,
    "The key the SDK's clients send (`api_key`), and the commands (`--api-key`).",
    reader="sdk",
)
BASE_URL = Setting(
    "base_url",
    "TOLLHOUSE_URL",
    None,
    URL,
    "http://127.0.0.1:8000",
    "The server the SDK's clients call (`base_url`), and the commands (`--url`).",
    reader="sdk",
)
EXAMPLE_MAX_JOBS = Setting(
    "max_jobs_per_org",
    "TOLLHOUSE_EXAMPLE_MAX_JOBS",
    None,
    COUNT,
    10_000,
    "How many jobs with criteria the bundled example upstream keeps per org and environment.",
    reader="example",
)
EXAMPLE_MAX_RESULTS = Setting(
    "max_results_per_org",
    "TOLLHOUSE_EXAMPLE_MAX_RESULTS",
    None,
    COUNT,
    10_000,
    "How many scoring results the bundled example upstream keeps per org and environment.",
    reader="example",
)
EXAMPLE_PROCESSING_SECONDS = Setting(
    "processing_seconds",
    "TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS",
    None,
    _seconds("seconds, 0 to 3600", lambda v: 0 <= v <= 3600),
    0.0,
    "How long the bundled example upstream takes to score a candidate.",
    reader="example",
)

#: Every ``TOLLHOUSE_*`` variable tollhouse reads, once.
TABLE: tuple[Setting, ...] = (
    CONFIG_PATH,
    DATABASE_URL,
    REDIS_URL,
    INSTANCES,
    REDIS_TIMEOUT,
    REDIS_BREAKER_FAILURES,
    REDIS_PROBE_INTERVAL,
    LIMITS_RESERVE,
    EMBEDDED_WORKERS,
    ALLOW_PRIVATE_TARGETS,
    METRICS_TOKEN,
    ADMIN_TOKEN,
    FAIR_USE_WEBHOOK_ORG,
    FAIR_USE_INTERVAL,
    JOB_LEASE_SECONDS,
    ACCESS_LOG_LISTEN,
    LOG_BODIES,
    RAW_CALL_LOG,
    USAGE_RETENTION,
    KEEP_ALIVE,
    LOG_FORMAT,
    LOG_LEVEL,
    TENANT_ID,
    API_KEY,
    BASE_URL,
    EXAMPLE_MAX_JOBS,
    EXAMPLE_MAX_RESULTS,
    EXAMPLE_PROCESSING_SECONDS,
)
#: The rows :func:`load_settings` reads: one per :class:`Settings` field but ``policy``.
LOADED: tuple[Setting, ...] = tuple(row for row in TABLE if row.reader == "settings")


@dataclass(frozen=True, slots=True)
class Settings:
    """Where tollhouse reads its policy and keeps its state: the policy, and one field
    per ``settings`` row of :data:`TABLE` (the row constant is the field's name in
    capitals, and its ``doc`` says what the field means)."""

    policy: Policy
    """The policy from the config file, or the built-in default."""
    config_path: Path | None
    database_url: str
    redis_url: str
    embedded_workers: bool = EMBEDDED_WORKERS.default
    instances: int = INSTANCES.default
    redis_timeout: float = REDIS_TIMEOUT.default
    redis_breaker_failures: int = REDIS_BREAKER_FAILURES.default
    redis_probe_interval: float = REDIS_PROBE_INTERVAL.default
    limits_reserve: float = LIMITS_RESERVE.default
    allow_private_targets: bool = ALLOW_PRIVATE_TARGETS.default
    metrics_token: str = METRICS_TOKEN.default
    admin_token: str = ADMIN_TOKEN.default
    fair_use_webhook_org: str = FAIR_USE_WEBHOOK_ORG.default
    fair_use_interval: float = FAIR_USE_INTERVAL.default
    job_lease_seconds: float = JOB_LEASE_SECONDS.default
    access_log_listen: str = ACCESS_LOG_LISTEN.default
    log_bodies: bool = LOG_BODIES.default
    raw_call_log: bool = RAW_CALL_LOG.default
    usage_retention: bool = USAGE_RETENTION.default

    @property
    def is_embedded_default(self) -> bool:
        """True when running on the built-in policy with the bundled example upstream."""
        return self.config_path is None and self.policy.upstream.is_example


# --- the loader --------------------------------------------------------------------------


def load_settings(
    config: str | Path | None = None,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    instances: int | None = None,
    log_bodies: bool | None = None,
    access_log_listen: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve settings: explicit arguments (flags) win over the environment, which wins
    over the config file, which wins over defaults. A flag or variable that is None,
    unset or blank leaves the setting to the next source (but an empty Redis URL is
    "no Redis"); flags are checked by the same parsers as the variables.

    Args:
        config: the policy file (``--config``).
        database_url: ``--database-url``.
        redis_url: ``--redis-url``.
        instances: processes sharing the limits.
        log_bodies: ``serve --log-bodies`` (None or False: the variable decides).
        access_log_listen: ``serve --access-log-listen``.
        environ: the variables to read (default ``os.environ``).

    Raises:
        PolicyError: the config file is missing or wrong.
        ConfigError: a flag or variable has a value its parser refuses.
    """
    env = os.environ if environ is None else environ
    flags: dict[str, object] = {
        CONFIG_PATH.field: config,
        DATABASE_URL.field: database_url,
        REDIS_URL.field: redis_url,
        INSTANCES.field: instances,
        LOG_BODIES.field: log_bodies or None,
        ACCESS_LOG_LISTEN.field: access_log_listen,
    }
    path: Path | None = _resolve(CONFIG_PATH, flags, env, None)
    policy = load_policy(path)
    values = {
        row.field: _resolve(row, flags, env, policy) for row in LOADED if row is not CONFIG_PATH
    }
    return Settings(policy=policy, config_path=path, **values)


def _resolve(
    row: Setting, flags: Mapping[str, object], env: Mapping[str, str], policy: Policy | None
) -> Any:
    flag = flags.get(row.field)
    if not row.unset(flag):
        return row.parser.parse(row.parser.format(flag), row.field)
    text = env.get(row.env)
    if text is not None and not row.unset(text):
        return row.parser.parse(text, row.env)
    if row.toml is not None and policy is not None:
        value: Any = policy
        for part in row.toml.split("."):  # [storage] database_url → policy.storage.database_url
            value = getattr(value, part)
        return value
    return row.default


def to_environ(settings: Settings) -> dict[str, str]:
    """The ``TOLLHOUSE_*`` variables from which :func:`load_settings` (without flags, and
    whatever else the environment holds) gives ``settings`` back: one per row of
    :data:`LOADED`. ``tollhouse serve --workers N`` hands its settings to its worker
    processes this way."""
    return {row.env: row.parser.format(getattr(settings, row.field)) for row in LOADED}


# --- the docs ----------------------------------------------------------------------------

DOCS_BEGIN = "<!-- settings:begin (generated from tollhouse.settings.TABLE) -->"
DOCS_END = "<!-- settings:end -->"


def markdown_table() -> str:
    """:data:`TABLE` as the Markdown table ``docs/operations.md`` shows."""
    lines = [
        "| variable | config file | default | values | read by | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in TABLE:
        toml = "`[{}] {}`".format(*row.toml.split(".", 1)) if row.toml else "—"
        if row.default is None:
            default = "—"
        else:
            default = f"`{row.parser.format(row.default)}`" if row.default != "" else "empty"
        cells = (f"`{row.env}`", toml, default, row.parser.values, READERS[row.reader], row.doc)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def with_markdown_table(text: str) -> str:
    """``text`` (a Markdown document) with what stands between :data:`DOCS_BEGIN` and
    :data:`DOCS_END` replaced by :func:`markdown_table`.

    Raises:
        ValueError: the markers are missing.
    """
    begin = text.find(DOCS_BEGIN)
    end = text.find(DOCS_END, begin)
    if begin < 0 or end < 0:
        raise ValueError(f"the document has no {DOCS_BEGIN} … {DOCS_END} section")
    return text[: begin + len(DOCS_BEGIN)] + "\n" + markdown_table() + text[end:]
