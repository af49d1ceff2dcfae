"""The commands' ``--url`` mode: keys, orgs, limits and audit through the provider API of a
real server (SQLite and PostgreSQL), with ``TOLLHOUSE_ADMIN_TOKEN``; and ``admin-tokens``
on the database."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from tests.conftest import serve_in_thread
from tests.storage.support import database_url
from tollhouse.cli.main import app
from tollhouse.http.app import Tollhouse
from tollhouse.policy.load import load_policy
from tollhouse.settings import load_settings

__all__ = ["database_url"]

pytestmark = pytest.mark.integration

TOKEN = "adm_" + "c" * 40
BUCKET = load_policy(None).buckets[0].name


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[str, str]]:
    settings = load_settings(
        environ={"TOLLHOUSE_DATABASE_URL": database_url, "TOLLHOUSE_ADMIN_TOKEN": TOKEN}
    )
    with serve_in_thread(Tollhouse(settings=settings)) as url:
        yield url, database_url


def _cli(*args: str, token: str | None = TOKEN, code: int = 0) -> str:
    env = {"TOLLHOUSE_ADMIN_TOKEN": token} if token else {"TOLLHOUSE_ADMIN_TOKEN": ""}
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == code, result.output
    return result.output


def test_keys_orgs_limits_and_audit_over_http(served: tuple[str, str]) -> None:
    url, _ = served
    made = json.loads(
        _cli(
            "orgs", "create", "acme", "--name", "Acme", "--key-env", "test", "--url", url, "--json"
        )
    )
    assert made["id"] == "acme" and made["firstKey"]["key"].startswith("sk_test_")
    key = json.loads(
        _cli(
            "keys",
            "create",
            "--org",
            "acme",
            "--env",
            "live",
            "--role",
            "backend",
            "--url",
            url,
            "--json",
        )
    )
    assert key["key"].startswith("sk_live_") and key["environment"] == "live"
    listed = json.loads(_cli("keys", "list", "--org", "acme", "--url", url, "--json"))
    assert [k["id"] for k in listed] == [key["id"], made["firstKey"]["id"]]
    assert all("key" not in k for k in listed)
    assert key["id"] in _cli("keys", "list", "--org", "acme", "--url", url)

    _cli("limits", "set", "--org", "acme", "--bucket", BUCKET, "--limit", "77", "--url", url)
    _cli(
        "limits",
        "set",
        "--org",
        "acme",
        "--bucket",
        BUCKET,
        "--limit",
        "5",
        "--key",
        key["id"],
        "--url",
        url,
    )
    overrides = json.loads(_cli("limits", "list", "--org", "acme", "--url", url, "--json"))
    assert [(o["key"], o["limit"]) for o in overrides] == [(None, 77), (key["id"], 5)]
    _cli("limits", "clear", "--org", "acme", "--bucket", BUCKET, "--key", key["id"], "--url", url)
    _cli(
        "limits",
        "clear",
        "--org",
        "acme",
        "--bucket",
        BUCKET,
        "--key",
        key["id"],
        "--url",
        url,
        code=1,
    )

    rotated = json.loads(
        _cli("keys", "rotate", key["id"], "--overlap", "0", "--url", url, "--json")
    )
    assert rotated["replaces"] == key["id"] and rotated["key"].startswith("sk_live_")
    revoked = json.loads(_cli("keys", "revoke", rotated["id"], "--url", url, "--json"))
    assert revoked["revoked_at"] is not None

    suspended = json.loads(_cli("orgs", "update", "acme", "--suspend", "--url", url, "--json"))
    assert suspended["suspended"] is True
    assert json.loads(_cli("orgs", "show", "acme", "--url", url, "--json"))["suspended"]
    assert [o["id"] for o in json.loads(_cli("orgs", "list", "--url", url, "--json"))] == ["acme"]

    entries = json.loads(_cli("audit", "--org", "acme", "--url", url, "--json"))
    assert entries[-1]["action"] == "org.updated"  # oldest first, as on the database
    assert {e["actor"] for e in entries} == {"adt_env"}
    assert {e["address"] for e in entries} == {"127.0.0.1"}
    only = json.loads(_cli("audit", "--action", "key.rotated", "--url", url, "--json"))
    assert [e["targetId"] for e in only] == [key["id"]]
    assert "adt_env" in _cli("audit", "--limit", "2", "--url", url)


def test_errors_over_http(served: tuple[str, str]) -> None:
    url, _ = served
    out = _cli("orgs", "list", "--url", url, token=None, code=1)
    assert "admin token" in out
    out = _cli("orgs", "list", "--url", url, token="adm_" + "x" * 40, code=1)
    assert "ADMIN_TOKEN_REQUIRED" in out, out
    out = _cli("orgs", "list", "--url", url, token="sk_test_" + "x" * 32, code=1)
    assert "not an admin token" in out
    assert "No org" in _cli("keys", "create", "--org", "ghost", "--url", url, code=1)
    _cli("keys", "list", "--url", url, code=2)  # one org's keys: --org needed
    _cli("orgs", "create", "dup", "--url", url)
    assert "exists" in _cli("orgs", "create", "dup", "--url", url, code=1)


def test_stored_admin_tokens(served: tuple[str, str]) -> None:
    url, db = served
    made = json.loads(
        _cli("admin-tokens", "create", "--name", "ops", "--database-url", db, "--json")
    )
    assert made["token"].startswith("adm_") and made["prefix"] == made["token"][:10]
    listed = json.loads(_cli("admin-tokens", "list", "--database-url", db, "--json"))
    assert [t["id"] for t in listed] == [made["id"]] and "token" not in listed[0]
    _cli("orgs", "create", "via-stored", "--url", url, token=made["token"])
    entries = json.loads(_cli("audit", "--org", "via-stored", "--url", url, "--json"))
    assert [e["actor"] for e in entries] == [made["id"]]
    _cli("admin-tokens", "revoke", made["id"], "--database-url", db)
    _cli("orgs", "list", "--url", url, token=made["token"], code=1)
    _cli("admin-tokens", "revoke", "adt_missing", "--database-url", db, code=1)
