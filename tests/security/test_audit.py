"""The audit log: every org, key, webhook, limit and admin token change is recorded with
its actor, in the change's own transaction, and no secret (sk_…, whsec_…, adm_…) reaches
the table or the output."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from tollhouse.cli.main import app
from tollhouse.security.audit import ACTIONS, safe_url

#: Actions only the self-serve API makes.
SELF_SERVE_ONLY = {
    "webhook.updated",
    "webhook.secret_rotated",
    "webhook.tested",
    "webhook.replayed",
}
SECRET = re.compile(
    r"(sk_(test|live)_[A-Za-z0-9]{32}|whsec_[A-Za-z0-9+/=]{8,}|adm_[A-Za-z0-9]{40})"
)


def _cli(db: str, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, [*args, "--database-url", db])
    assert result.exit_code == code, result.output
    return result.stdout


def test_every_change_is_audited_and_no_secret_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    db = f"sqlite:///{path}"
    outputs: list[str] = []
    created = json.loads(_cli(db, "keys", "create", "--org", "acme", "--role", "root", "--json"))
    other = json.loads(_cli(db, "keys", "create", "--org", "globex", "--json"))
    rotated = json.loads(_cli(db, "keys", "rotate", created["id"], "--overlap", "1h", "--json"))
    _cli(db, "keys", "revoke", other["id"])
    url = "https://93.184.215.14:8443/hooks/in?token=hunter2#frag"
    hook = json.loads(_cli(db, "webhooks", "add", "--org", "acme", "--url", url, "--json"))
    _cli(db, "webhooks", "remove", hook["id"])
    _cli(db, "limits", "set", "--org", "acme", "--bucket", "scoring", "--limit", "7")
    _cli(
        db,
        "limits",
        "set",
        "--org",
        "acme",
        "--bucket",
        "scoring",
        "--limit",
        "9",
        "--key",
        rotated["id"],
    )
    _cli(db, "limits", "clear", "--org", "acme", "--bucket", "scoring")
    made = json.loads(_cli(db, "orgs", "create", "initech", "--key-env", "live", "--json"))
    _cli(db, "orgs", "update", "initech", "--suspend")
    token = json.loads(_cli(db, "admin-tokens", "create", "--name", "support", "--json"))
    _cli(db, "admin-tokens", "revoke", token["id"])
    secrets = [
        created["key"],
        other["key"],
        rotated["key"],
        hook["secret"],
        made["firstKey"]["key"],
        token["token"],
    ]

    # A failed change leaves no audit row (same transaction): a revoked key cannot rotate.
    _cli(db, "keys", "rotate", other["id"], code=1)
    _cli(db, "limits", "clear", "--org", "acme", "--bucket", "scoring", code=1)
    _cli(db, "orgs", "create", "initech", code=1)  # taken
    _cli(db, "orgs", "update", "initech", "--suspend")  # no change: nothing audited

    entries = json.loads(_cli(db, "audit", "--json"))
    outputs.append(json.dumps(entries))
    outputs.append(_cli(db, "audit"))
    # The rest are made through the self-serve API (tests/security/test_self_serve.py).
    assert {e["action"] for e in entries} == set(ACTIONS) - SELF_SERVE_ONLY
    seen = [(e["action"], e["org"], e["targetId"]) for e in entries]
    seen_sorted = seen[:9] + sorted(seen[9:11]) + seen[11:]
    assert seen_sorted == [
        ("key.created", "acme", created["id"]),
        ("key.created", "globex", other["id"]),
        ("key.rotated", "acme", created["id"]),
        ("key.revoked", "globex", other["id"]),
        ("webhook.added", "acme", hook["id"]),
        ("webhook.removed", "acme", hook["id"]),
        ("limit.set", "acme", "scoring"),
        ("limit.set", "acme", f"scoring/{rotated['id']}"),
        ("limit.cleared", "acme", "scoring"),
        # An org and its first key: one transaction, one time (either order).
        *sorted(seen[9:11]),
        ("org.updated", "initech", "initech"),
        ("admin_token.created", "", token["id"]),
        ("admin_token.revoked", "", token["id"]),
    ]
    assert sorted(seen[9:11]) == sorted(
        [("org.created", "initech", "initech"), ("key.created", "initech", made["firstKey"]["id"])]
    )
    assert all(e["actor"].startswith("cli") for e in entries)
    assert all(e["at"].endswith("Z") for e in entries)
    rotation = entries[2]["details"]
    assert rotation["newKeyId"] == rotated["id"] and rotation["overlapSeconds"] == 3600
    assert rotation["oldKeyExpiresAt"] == rotated["oldKeyExpiresAt"]
    assert entries[4]["details"]["url"] == "https://93.184.215.14:8443/hooks/in"
    assert entries[7]["details"] == {
        "bucket": "scoring",
        "key": rotated["id"],
        "environment": None,  # a key's override: the key's own environment
        "limit": 9,
    }

    only = json.loads(_cli(db, "audit", "--org", "globex", "--json"))
    assert [e["action"] for e in only] == ["key.created", "key.revoked"]

    with sqlite3.connect(path) as conn:
        rows = conn.execute("select * from audit_log").fetchall()
    dump = json.dumps(rows) + "".join(outputs)
    assert len(rows) == 14
    for secret in secrets:
        assert secret not in dump
        assert secret[8:] not in dump  # not even without the prefix
    assert not SECRET.search(dump), SECRET.search(dump)
    assert "hunter2" not in dump


def test_safe_url_drops_what_may_carry_tokens() -> None:
    assert safe_url("https://h.example/a/b?x=1#y") == "https://h.example/a/b"
    assert safe_url("http://[2001:db8::1]:8080/p?q") == "http://[2001:db8::1]:8080/p"


def test_audit_of_an_empty_database(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    assert json.loads(_cli(db, "audit", "--json")) == []
    assert "No audited changes" in _cli(db, "audit")
    _cli(db, "audit", "--limit", "0", code=2)
