"""The commands' ``--url`` mode: keys, orgs, limits, webhooks and audit through the provider
API of a real server (SQLite and PostgreSQL), with ``TOLLHOUSE_ADMIN_TOKEN``; and
``admin-tokens`` on the database."""

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
#: Webhook receivers on loopback are allowed (nothing is sent to them here).
PRIVATE = {"TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "1"}
BUCKET = load_policy(None).buckets[0].name


@pytest.fixture
def served(database_url: str) -> Iterator[tuple[str, str]]:
    settings = load_settings(
        environ={
            "TOLLHOUSE_DATABASE_URL": database_url,
            "TOLLHOUSE_ADMIN_TOKEN": TOKEN,
            **PRIVATE,
        }
    )
    with serve_in_thread(Tollhouse(settings=settings)) as url:
        yield url, database_url


def _cli(*args: str, token: str | None = TOKEN, code: int = 0, columns: int | None = None) -> str:
    env = {"TOLLHOUSE_ADMIN_TOKEN": token or "", **PRIVATE}
    if columns is not None:  # a table as wide as it needs
        env["COLUMNS"] = str(columns)
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


def test_webhooks_over_http(served: tuple[str, str]) -> None:
    url, db = served
    _cli("orgs", "create", "acme", "--url", url)
    receiver = "http://127.0.0.1:9/hooks"
    made = json.loads(
        _cli(
            "webhooks",
            "add",
            "--org",
            "acme",
            "--endpoint",
            receiver + "/sandbox",
            "--environment",
            "sandbox",
            "--url",
            url,
            "--json",
        )
    )
    assert made["secret"].startswith("whsec_") and made["environment"] == "SANDBOX"
    assert (made["org"], made["status"], made["url"]) == ("acme", "enabled", receiver + "/sandbox")
    out = _cli("webhooks", "add", "--org", "acme", "--endpoint", receiver + "/live", "--url", url)
    assert "whsec_" in out and "(PRODUCTION)" in out

    # The same JSON over HTTP as on the database.
    remote = json.loads(
        _cli("webhooks", "list", "--org", "acme", "--env", "test", "--url", url, "--json")
    )
    local = json.loads(
        _cli("webhooks", "list", "--org", "acme", "--env", "test", "--database-url", db, "--json")
    )
    # (The API's times have milliseconds; the database's, microseconds.)
    stamps = [
        (r.pop("created_at"), o.pop("created_at")) for r, o in zip(remote, local, strict=True)
    ]
    assert all(r[:23] == o[:23] for r, o in stamps), stamps
    assert remote == local and [e["id"] for e in remote] == [made["id"]]
    assert "secret" not in remote[0]
    assert made["id"] not in _cli("webhooks", "list", "--org", "acme", "--url", url)
    assert made["id"] in _cli("webhooks", "list", "--org", "acme", "--env", "test", "--url", url)
    _cli("webhooks", "list", "--url", url, code=2)  # one org's endpoints: --org needed

    # remove: scoped by org and environment (PRODUCTION unless --environment).
    assert "not found" in _cli(
        "webhooks", "remove", made["id"], "--org", "acme", "--url", url, code=1
    )
    _cli("orgs", "create", "other", "--url", url)
    args = ("webhooks", "remove", made["id"], "--env", "sandbox", "--url", url)
    assert "not found" in _cli(*args, "--org", "other", code=1)
    _cli("webhooks", "remove", made["id"], "--url", url, code=2)  # --org needed
    removed = json.loads(_cli(*args, "--org", "acme", "--json"))
    assert removed["id"] == made["id"] and "secret" not in removed
    assert (
        json.loads(
            _cli("webhooks", "list", "--org", "acme", "--env", "test", "--url", url, "--json")
        )
        == []
    )

    # The older spelling, on the database: --url is the receiver when --endpoint is not given.
    old = json.loads(
        _cli(
            "webhooks",
            "add",
            "--org",
            "acme",
            "--url",
            receiver + "/old",
            "--database-url",
            db,
            "--json",
        )
    )
    assert old["url"] == receiver + "/old" and old["environment"] == "PRODUCTION"
    _cli("webhooks", "add", "--org", "acme", "--database-url", db, code=2)  # no receiver

    entries = json.loads(
        _cli("audit", "--org", "acme", "--action", "webhook.added", "--url", url, "--json")
    )
    over_http = [e for e in entries if e["actor"] == "adt_env"]
    assert len(over_http) == 2 and {e["address"] for e in over_http} == {"127.0.0.1"}
    gone = json.loads(
        _cli("audit", "--org", "acme", "--action", "webhook.removed", "--url", url, "--json")
    )
    assert [e["targetId"] for e in gone] == [made["id"]]


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


def test_limits_per_environment_over_http_and_on_the_database(served: tuple[str, str]) -> None:
    url, db = served
    _cli("orgs", "create", "acme", "--url", url)
    org = f"--org acme --bucket {BUCKET}"
    for where in (("--url", url), ("--database-url", db)):
        _cli(*f"limits set {org} --limit 7 --environment SANDBOX".split(), *where)
        _cli(*f"limits set {org} --limit 9".split(), *where)
        listed = json.loads(_cli("limits", "list", "--org", "acme", "--json", *where))
        assert [(o["environment"], o["limit"]) for o in listed] == [(None, 9), ("SANDBOX", 7)]
        table = _cli("limits", "list", "--org", "acme", *where, columns=200)
        rows = [line.split("│")[1:3] for line in table.splitlines() if "│" in line]
        assert [[cell.strip() for cell in row] for row in rows] == [
            ["acme", "all"],
            ["acme", "SANDBOX"],
        ]
        assert "environment" in table
        said = _cli(*f"limits clear {org} --environment SANDBOX".split(), *where)
        assert "org acme in SANDBOX" in said
        listed = json.loads(_cli("limits", "list", "--org", "acme", "--json", *where))
        assert [(o["environment"], o["limit"]) for o in listed] == [(None, 9)]
        _cli(*f"limits clear {org}".split(), *where)

        bad = _cli(*f"limits set {org} --limit 7 --environment staging".split(), *where, code=2)
        assert "PRODUCTION or SANDBOX" in bad
        # Spelled as `keys create --env` and `webhooks add --environment` take it.
        _cli(*f"limits set {org} --limit 6 --env test".split(), *where)
        _cli(*f"limits set {org} --limit 8 --environment production".split(), *where)
        listed = json.loads(_cli("limits", "list", "--org", "acme", "--json", *where))
        assert [(o["environment"], o["limit"]) for o in listed] == [
            ("PRODUCTION", 8),
            ("SANDBOX", 6),
        ]
        _cli(*f"limits clear {org} --env live".split(), *where)
        _cli(*f"limits clear {org} --environment Sandbox".split(), *where)
        key = "key_" + "0" * 16
        both = f"limits set {org} --limit 7 --environment SANDBOX --key {key}"
        assert "--key" in _cli(*both.split(), *where, code=2)
        # Clearing what is not there fails, naming the environment.
        missing = _cli(*f"limits clear {org} --environment PRODUCTION".split(), *where, code=1)
        assert "PRODUCTION" in missing


POOL = load_policy(None).pools[0]


def test_pool_limits_over_http_and_on_the_database(served: tuple[str, str]) -> None:
    """``--bucket`` takes a pool's name; ``limits list`` shows the pool's policy limit."""
    url, db = served
    _cli("orgs", "create", "acme", "--url", url)
    assert "pool" in _cli("limits", "set", "--help", columns=200)
    org = f"--org acme --bucket {POOL.name}"
    for where in (("--url", url), ("--database-url", db)):
        said = _cli(*f"limits set {org} --limit 6 --environment SANDBOX".split(), *where)
        assert f"{POOL.name}: limit 6 for org acme in SANDBOX" in said
        listed = json.loads(_cli("limits", "list", "--org", "acme", "--json", *where))
        assert [(o["bucket"], o["environment"], o["limit"]) for o in listed] == [
            (POOL.name, "SANDBOX", 6)
        ]
        table = _cli("limits", "list", "--org", "acme", *where, columns=200)
        [row] = [line.split("│")[1:7] for line in table.splitlines() if "acme" in line]
        assert [cell.strip() for cell in row] == [
            "acme",
            "SANDBOX",
            "(all keys)",
            POOL.name,
            "6",
            str(POOL.limit),
        ]
        _cli(*f"limits clear {org} --environment SANDBOX".split(), *where)
        assert json.loads(_cli("limits", "list", "--org", "acme", "--json", *where)) == []
    # A name the policy has neither as a bucket nor as a pool.
    set_nothing = ["limits", "set", "--org", "acme", "--bucket", "nothing", "--limit", "3"]
    out = _cli(*set_nothing, "--url", url, code=1, columns=200)
    assert "no bucket or pool 'nothing'" in out and POOL.name in out
    out = _cli(*set_nothing, "--database-url", db, code=2, columns=200)
    assert "'nothing' is not in the policy" in out and f"pools: {POOL.name}" in out
