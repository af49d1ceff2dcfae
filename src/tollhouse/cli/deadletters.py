"""``tollhouse dead-letters`` — rows the database refused, set aside instead of retried."""

from __future__ import annotations

from datetime import UTC, datetime
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
from tollhouse.metering.deadletters import KINDS, list_dead_letters, printable


def dead_letters(
    kind: Annotated[
        str | None, typer.Option("--kind", help=f"Only this kind: {', '.join(KINDS)}.")
    ] = None,
    org: Annotated[str | None, typer.Option("--org", help="Only this org's.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Show the latest N (oldest first).")] = 100,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """List dead letters: metered calls and events whose values the database refused
    (e.g. a tenant longer than its column), kept with the reason and the request id."""
    if limit < 1:
        fail("--limit must be at least 1", 2)
    if kind is not None and kind not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}", 2)
    letters = with_database(
        settings_from(config, database_url),
        lambda e: list_dead_letters(e, kind=kind, org=org, limit=limit),
    )
    if as_json:
        write_json([letter.as_json() for letter in letters])
        return
    if not letters:
        console.print("No dead letters.")
        return
    table = Table("id", "at", "kind", "org", "request id", "rows", "error")
    for letter in letters:
        at = datetime.fromtimestamp(letter.at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        table.add_row(
            str(letter.id),
            at,
            letter.kind,
            printable(letter.org, 40),
            letter.request_id or "",
            str(letter.rows),
            letter.error,
        )
    console.print(table)
