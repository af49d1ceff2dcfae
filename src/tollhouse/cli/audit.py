"""``tollhouse audit`` — who changed which key, webhook endpoint or limit, and when."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from tollhouse.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    JsonOpt,
    console,
    fail,
    settings_from,
    with_database,
    write_json,
)
from tollhouse.cli.remote import AdminTokenOpt, UrlOpt, call
from tollhouse.security.audit import AuditEntry, read_log


def audit(
    org: Annotated[str | None, typer.Option("--org", help="Only this org's changes.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Show the latest N entries (oldest first).")
    ] = 1000,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Show the audit log: org, key, webhook, limit and admin token changes: who, when,
    from which address (never secrets)."""
    if limit < 1:
        fail("--limit must be at least 1", 2)
    if url is not None:
        entries = call(url, admin_token, lambda c: _remote(c, org, action, limit))
    else:
        entries = with_database(
            settings_from(config, database_url), lambda e: read_log(e, org, limit)
        )
        if action is not None:
            entries = [e for e in entries if e.action == action]
    if as_json:
        write_json([e.as_json() for e in entries])
        return
    if not entries:
        console.print("No audited changes yet.")
        return
    table = Table("at", "actor", "address", "action", "org", "target", "details")
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in e.details.items() if v is not None)
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%SZ"),
            e.actor,
            e.address or "",
            e.action,
            e.org,
            e.target_id,
            details,
        )
    console.print(table)


def _remote(client: Any, org: str | None, action: str | None, limit: int) -> list[AuditEntry]:
    """The latest ``limit`` entries from the provider API, oldest first (as on the
    database)."""
    out: list[AuditEntry] = []
    for page in client.audit.iter(org=org, action=action, limit=min(limit, 100)):
        for e in page.data:
            out.append(
                AuditEntry(e.id, e.at, e.actor, e.action, e.org, e.target_id, e.details, e.address)
            )
        if len(out) >= limit:
            break
    out = out[:limit]
    out.reverse()
    return out
