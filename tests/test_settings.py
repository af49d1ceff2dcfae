"""The settings table: precedence, strict booleans, the hand-off to `serve --workers`
processes, and the docs generated from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tollhouse.cli.serve import worker_environ
from tollhouse.errors import ConfigError
from tollhouse.policy.load import load_policy
from tollhouse.policy.model import DEFAULT_DATABASE_URL
from tollhouse.settings import (
    ALLOW_PRIVATE_TARGETS,
    API_KEY,
    BASE_URL,
    DOCS_BEGIN,
    DOCS_END,
    EMBEDDED_WORKERS,
    EXAMPLE_MAX_JOBS,
    EXAMPLE_MAX_RESULTS,
    LOADED,
    LOG_BODIES,
    RAW_CALL_LOG,
    TABLE,
    USAGE_RETENTION,
    Setting,
    Settings,
    load_settings,
    markdown_table,
    parse_bool,
    to_environ,
    with_markdown_table,
)

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src" / "tollhouse"
OPERATIONS = REPO / "docs" / "operations.md"

FILE_POLICY = """
[storage]
database_url = "sqlite:///file.db"
redis_url = "redis://file:6379/0"

[security]
allow_private_targets = true
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tollhouse.toml"
    path.write_text(FILE_POLICY)
    return path


# --- precedence: flags > environment > config file > defaults ----------------------------


def test_defaults() -> None:
    s = load_settings(environ={})
    assert s.config_path is None and s.policy.source == "<built-in>"
    assert s.database_url == DEFAULT_DATABASE_URL
    assert s.redis_url == ""
    assert s.instances == 1
    assert s.embedded_workers is True
    assert s.allow_private_targets is False
    assert s.metrics_token == ""
    assert s.job_lease_seconds == 30.0


def test_the_file_wins_over_defaults(config: Path) -> None:
    s = load_settings(config, environ={})
    assert s.config_path == config
    assert s.database_url == "sqlite:///file.db"
    assert s.redis_url == "redis://file:6379/0"
    assert s.allow_private_targets is True
    # The file may also come from the environment.
    assert load_settings(environ={"TOLLHOUSE_CONFIG": str(config)}) == s


def test_the_environment_wins_over_the_file(config: Path) -> None:
    env = {
        "TOLLHOUSE_DATABASE_URL": "sqlite:///env.db",
        "TOLLHOUSE_REDIS_URL": "redis://env:6379/0",
        "TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "off",
        "TOLLHOUSE_INSTANCES": "3",
        "TOLLHOUSE_EMBEDDED_WORKERS": "No",
        "TOLLHOUSE_METRICS_TOKEN": " scrape-me ",
        "TOLLHOUSE_JOB_LEASE_SECONDS": "2.5",
    }
    s = load_settings(config, environ=env)
    assert s.database_url == "sqlite:///env.db"
    assert s.redis_url == "redis://env:6379/0"
    assert s.allow_private_targets is False
    assert s.instances == 3
    assert s.embedded_workers is False
    assert s.metrics_token == "scrape-me"
    assert s.job_lease_seconds == 2.5


def test_flags_win_over_the_environment(config: Path, tmp_path: Path) -> None:
    env = {
        "TOLLHOUSE_CONFIG": str(tmp_path / "missing.toml"),  # never read: the flag wins
        "TOLLHOUSE_DATABASE_URL": "sqlite:///env.db",
        "TOLLHOUSE_REDIS_URL": "redis://env:6379/0",
        "TOLLHOUSE_INSTANCES": "3",
    }
    s = load_settings(
        str(config),
        database_url="sqlite:///flag.db",
        redis_url="redis://flag:6379/0",
        instances=5,
        environ=env,
    )
    assert s.config_path == config
    assert s.database_url == "sqlite:///flag.db"
    assert s.redis_url == "redis://flag:6379/0"
    assert s.instances == 5


def test_blank_means_unset_but_an_empty_redis_url_means_no_redis(config: Path) -> None:
    blank = {"TOLLHOUSE_DATABASE_URL": "  ", "TOLLHOUSE_INSTANCES": "", "TOLLHOUSE_CONFIG": ""}
    s = load_settings(config, database_url="", environ=blank)
    assert s.database_url == "sqlite:///file.db" and s.instances == 1
    assert load_settings(environ={"TOLLHOUSE_CONFIG": " "}).config_path is None
    # An empty Redis URL, from a flag or the environment, turns the file's Redis off.
    assert load_settings(config, environ={"TOLLHOUSE_REDIS_URL": ""}).redis_url == ""
    assert load_settings(config, redis_url="", environ={}).redis_url == ""


def test_flags_are_checked_like_variables() -> None:
    with pytest.raises(ConfigError, match="instances='0': must be a whole number"):
        load_settings(instances=0, environ={})


@pytest.mark.parametrize(
    ("name", "bad", "hint"),
    [
        ("TOLLHOUSE_INSTANCES", "0", "whole number of at least 1"),
        ("TOLLHOUSE_INSTANCES", "two", "whole number of at least 1"),
        ("TOLLHOUSE_JOB_LEASE_SECONDS", "-1", "seconds, more than 0"),
        ("TOLLHOUSE_JOB_LEASE_SECONDS", "nan", "seconds, more than 0"),
    ],
)
def test_bad_values_name_the_variable(name: str, bad: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}={bad!r}: .*{hint}"):
        load_settings(environ={name: bad})


# --- booleans: one strict parser ---------------------------------------------------------

BOOLEANS = [row for row in TABLE if isinstance(row.default, bool)]


def test_every_boolean_row_uses_the_strict_parser() -> None:
    assert {row.env for row in BOOLEANS} == {
        EMBEDDED_WORKERS.env,
        ALLOW_PRIVATE_TARGETS.env,
        LOG_BODIES.env,
        RAW_CALL_LOG.env,
        USAGE_RETENTION.env,
    }
    assert all(row.parser.parse is parse_bool for row in BOOLEANS)
    bool_fields = {f.name for f in dataclasses.fields(Settings) if f.type == "bool"}
    assert bool_fields == {row.field for row in BOOLEANS}


@pytest.mark.parametrize("row", BOOLEANS, ids=lambda r: r.env)
@pytest.mark.parametrize(
    ("text", "value"),
    [
        *((t, True) for t in ("1", "true", "TRUE", "Yes", "on", " On ")),
        *((t, False) for t in ("0", "false", "False", "NO", "off", "oFF\n")),
    ],
)
def test_booleans_accept(row: Setting, text: str, value: bool) -> None:
    assert getattr(load_settings(environ={row.env: text}), row.field) is value


@pytest.mark.parametrize("row", BOOLEANS, ids=lambda r: r.env)
@pytest.mark.parametrize("text", ["maybe", "2", "y", "enabled", "-1", "truee"])
def test_booleans_refuse_anything_else(row: Setting, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={row.env: text})
    message = str(caught.value)
    assert message.startswith(f"{row.env}={text!r}")
    assert "1, true, yes, on" in message and "0, false, no, off" in message


# --- the hand-off to `serve --workers N` processes ---------------------------------------


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        ({}, {}),
        (
            {"database_url": "sqlite:///flag.db", "redis_url": "redis://flag:6379/0"},
            {
                "TOLLHOUSE_EMBEDDED_WORKERS": "off",
                "TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "false",  # over the file's true
                "TOLLHOUSE_METRICS_TOKEN": "t0ken",
                "TOLLHOUSE_JOB_LEASE_SECONDS": "0.30000000000000004",
                "TOLLHOUSE_INSTANCES": "2",
            },
        ),
        ({"redis_url": ""}, {}),  # an empty Redis URL over the file's
    ],
)
def test_the_hand_off_round_trips(config: Path, flags: dict[str, str], env: dict[str, str]) -> None:
    parent = load_settings(config, environ=env, **flags)
    handed = to_environ(parent)
    assert set(handed) == {row.env for row in LOADED}
    # The child inherits the parent's environment, which the hand-off overrides.
    stale = {
        "TOLLHOUSE_CONFIG": "elsewhere.toml",
        "TOLLHOUSE_DATABASE_URL": "sqlite:///stale.db",
        "TOLLHOUSE_REDIS_URL": "redis://stale:6379/0",
        "TOLLHOUSE_METRICS_TOKEN": "stale",
        "TOLLHOUSE_INSTANCES": "9",
    }
    child = load_settings(environ={**env, **stale, **handed})
    assert child == parent


def test_serve_hands_the_workers_their_settings(config: Path) -> None:
    parent = load_settings(config, environ={"TOLLHOUSE_INSTANCES": "2"})
    child = load_settings(environ=worker_environ(parent, 3))
    assert child == dataclasses.replace(parent, instances=6)


def test_the_built_in_policy_has_the_table_defaults() -> None:
    """A setting's default is what the built-in policy holds for its config file key."""
    policy = load_policy(None)
    for row in TABLE:
        if row.toml:
            section, key = row.toml.split(".")
            assert getattr(getattr(policy, section), key) == row.default, row.env


def test_one_row_per_settings_field() -> None:
    fields = [f.name for f in dataclasses.fields(Settings) if f.name != "policy"]
    assert sorted(fields) == sorted(row.field for row in LOADED)
    names = [row.env for row in TABLE]
    assert len(names) == len(set(names))


def test_every_variable_in_the_code_is_in_the_table() -> None:
    known = {row.env for row in TABLE}
    found: dict[str, str] = {}
    for path in SRC.rglob("*.py"):
        for name in re.findall(r"\bTOLLHOUSE_[A-Z][A-Z0-9_]*\b", path.read_text()):
            found.setdefault(name, str(path.relative_to(REPO)))
    missing = {name: where for name, where in found.items() if name not in known}
    assert not missing, f"add a row to TABLE in src/tollhouse/settings.py for {missing}"


def test_the_sdk_rows_match_the_sdk() -> None:
    # The SDK imports nothing from the server, so it keeps its own constants.
    from tollhouse.client import DEFAULT_BASE_URL, ENV_API_KEY, ENV_BASE_URL

    assert (API_KEY.env, BASE_URL.env, BASE_URL.default) == (
        ENV_API_KEY,
        ENV_BASE_URL,
        DEFAULT_BASE_URL,
    )


def test_the_example_rows_match_the_example() -> None:
    from tollhouse.example.store import MAX_JOBS_PER_ORG, MAX_RESULTS_PER_ORG

    assert (EXAMPLE_MAX_JOBS.default, EXAMPLE_MAX_RESULTS.default) == (
        MAX_JOBS_PER_ORG,
        MAX_RESULTS_PER_ORG,
    )


# --- the docs ----------------------------------------------------------------------------


def test_the_docs_show_the_table() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    assert DOCS_BEGIN in text and DOCS_END in text, f"{OPERATIONS} lost its settings markers"
    assert with_markdown_table(text) == text, (
        "docs/operations.md's settings section differs from tollhouse.settings.TABLE: "
        "run scripts/settings-docs to regenerate it"
    )


def test_the_markdown_table() -> None:
    lines = markdown_table().splitlines()
    assert len(lines) == 2 + len(TABLE)
    assert all(line.count(" | ") == 5 for line in lines)  # no stray pipes in a cell
    assert "| `TOLLHOUSE_DATABASE_URL` | `[storage] database_url` |" in lines[3]


def test_with_markdown_table_replaces_only_the_section() -> None:
    text = f"before\n{DOCS_BEGIN}\nold\n{DOCS_END}\nafter\n"
    assert (
        with_markdown_table(text) == f"before\n{DOCS_BEGIN}\n{markdown_table()}{DOCS_END}\nafter\n"
    )
    with pytest.raises(ValueError, match="no <!-- settings:begin"):
        with_markdown_table("no markers")
