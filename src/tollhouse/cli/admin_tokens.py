"""``tollhouse admin-tokens create | list | revoke`` — the provider API's tokens (on the
database: making a token is what gives HTTP access, so it cannot itself need one)."""

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
from tollhouse.keys.admin_tokens import AdminTokenStore
from tollhouse.security.audit import cli_actor

app = typer.Typer(
    help="Create, list and revoke admin tokens of the provider API (/v1/admin/*).",
    no_args_is_help=True,
)


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A label for people.")] = "",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Create a token; its secret (adm_…) is printed once and stored only as a hash."""
    token, secret = with_database(
        settings_from(config, database_url),
        lambda e: AdminTokenStore(e).create(name, actor=cli_actor()),
    )
    if as_json:
        write_json({**token.as_json(), "token": secret})
        return
    console.print(f"Created admin token [bold]{token.id}[/].")
    console.print(f"  token: [bold green]{secret}[/]", highlight=False)
    console.print("  Store it now: tollhouse keeps only its hash and cannot show it again.")


@app.command("list")
def list_tokens(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """List stored tokens (never their secrets)."""
    tokens = with_database(settings_from(config, database_url), lambda e: AdminTokenStore(e).list())
    if as_json:
        write_json([t.as_json() for t in tokens])
        return
    if not tokens:
        console.print("No admin tokens: create one with `tollhouse admin-tokens create`.")
        return
    table = Table("id", "name", "prefix", "created", "revoked")
    for t in tokens:
        row = t.as_json()
        table.add_row(t.id, t.name, t.prefix + "…", row["createdAt"], row["revokedAt"] or "")
    console.print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (adt_…).")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Revoke a token: refused from its next request on."""
    token = with_database(
        settings_from(config, database_url),
        lambda e: AdminTokenStore(e).revoke(token_id, actor=cli_actor()),
    )
    if token is None:
        fail(f"no admin token with id {token_id!r}; see `tollhouse admin-tokens list`")
    if as_json:
        write_json(token.as_json())
        return
    console.print(f"Revoked admin token [bold]{token.id}[/].")
