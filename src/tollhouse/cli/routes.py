"""``tollhouse routes`` — every path tollhouse answers itself, from the route table.

Builds the app as ``tollhouse serve`` would (no server, no database connection) and
prints its route table: path, methods, who answers, whether a key is needed. Every other
path goes to the upstream.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tollhouse.cli.common import ConfigOpt, JsonOpt, console, fail, settings_from, write_json
from tollhouse.errors import TollhouseError


def routes(
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    ops_port: Annotated[
        bool,
        typer.Option(
            "--ops-port",
            help="As `serve --ops-port` would: without the operations endpoints.",
        ),
    ] = False,
) -> None:
    """List every path tollhouse answers itself: methods, who answers, key or not."""
    from tollhouse.http.app import Tollhouse

    try:
        app = Tollhouse(settings=settings_from(config), ops_listener=ops_port)
    except TollhouseError as exc:
        fail(str(exc), 2)
    rows = app.routes.rows()
    if as_json:
        write_json(
            [
                {"path": path, "methods": methods.split(", "), "answers": who, "key": key}
                for path, methods, who, key in rows
            ]
        )
        return
    table = Table("methods", "answered by", "key")
    table.add_column("path", overflow="fold")
    table.columns.insert(0, table.columns.pop())
    for path, methods, who, key in rows:
        table.add_row(
            path, methods, who, "admin token" if who == "admin" else "yes" if key else "no"
        )
    console.print(table)
    console.print("Every other path: the upstream (after key, access and limits).")
