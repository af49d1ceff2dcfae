"""``tollhouse audit`` — who changed which key, webhook endpoint or limit, and when."""

from __future__ import annotations

from typing import Annotated

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
from tollhouse.security.audit import read_log


def audit(
    org: Annotated[str | None, typer.Option("--org", help="Only this org's changes.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Show the latest N entries (oldest first).")
    ] = 1000,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Show the audit log: key, webhook and limit changes (never secrets)."""
    if limit < 1:
        fail("--limit must be at least 1", 2)
    entries = with_database(settings_from(config, database_url), lambda e: read_log(e, org, limit))
    if as_json:
        write_json([e.as_json() for e in entries])
        return
    if not entries:
        console.print("No audited changes yet.")
        return
    table = Table("at", "actor", "action", "org", "target", "details")
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in e.details.items() if v is not None)
        table.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%SZ"), e.actor, e.action, e.org, e.target_id, details
        )
    console.print(table)
