"""``tollhouse orgs create | list | show | update`` — orgs, on the database or (``--url``)
through the provider API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar

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
from tollhouse.cli.keys import key_json, remote_key_json
from tollhouse.cli.remote import AdminTokenOpt, UrlOpt, call, iso
from tollhouse.errors import ApiError
from tollhouse.keys.model import ROLES
from tollhouse.keys.orgs import ORG_ID, FirstKey, OrgStore
from tollhouse.security.audit import cli_actor

T = TypeVar("T")

app = typer.Typer(
    help="Make, list, rename, suspend and reinstate orgs.",
    no_args_is_help=True,
)


def _org_json(
    org_id: str, name: str, created_at: datetime, suspended_at: datetime | None
) -> dict[str, Any]:
    return {
        "id": org_id,
        "name": name,
        "createdAt": iso(created_at),
        "suspended": suspended_at is not None,
        "suspendedAt": iso(suspended_at),
    }


def _on_db(
    config: str | None, database_url: str | None, fn: Callable[[OrgStore], Awaitable[T]]
) -> T:
    async def go(engine: Any) -> T:
        try:
            return await fn(OrgStore(engine))
        except ApiError as exc:
            fail(exc.message)

    return with_database(settings_from(config, database_url), go)


OrgArg = Annotated[str, typer.Argument(help="The org's id.")]


@app.command("create")
def create(
    org_id: OrgArg,
    name: Annotated[str, typer.Option("--name", help="A name for people.")] = "",
    key_env: Annotated[
        str | None,
        typer.Option("--key-env", help="Make a first key too: test (SANDBOX) or live."),
    ] = None,
    key_role: Annotated[str, typer.Option("--key-role", help="The first key's role.")] = "root",
    key_name: Annotated[str, typer.Option("--key-name", help="The first key's name.")] = "",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Make an org; with --key-env, its first key in the same transaction (its secret is
    printed once)."""
    if not ORG_ID.fullmatch(org_id):
        fail(f"{org_id!r}: use letters, digits, _ . - (at most 64 characters)", 2)
    if key_env is not None and key_env not in ("test", "live"):
        fail(f"--key-env {key_env!r}: use test or live", 2)
    if key_role not in ROLES:
        fail(f"--key-role {key_role!r}: use one of {', '.join(ROLES)}", 2)
    out: dict[str, Any]
    if url is not None:
        first = None
        if key_env is not None:
            environment = "SANDBOX" if key_env == "test" else "PRODUCTION"
            first = {"environment": environment, "role": key_role, "name": key_name}
        made = call(url, admin_token, lambda c: c.orgs.create(org_id, name=name, first_key=first))
        out = _org_json(made.id, made.name, made.created_at, made.suspended_at)
        if made.first_key is not None:
            out["firstKey"] = remote_key_json(made.first_key)
    else:
        first_key = FirstKey(key_env, key_role, key_name) if key_env is not None else None
        org, key = _on_db(
            config,
            database_url,
            lambda s: s.create(org_id, name, actor=cli_actor(), first_key=first_key),
        )
        out = _org_json(org.id, org.name, org.created_at, org.suspended_at)
        if key is not None:
            out["firstKey"] = key_json(*key)
    if as_json:
        write_json(out)
        return
    console.print(f"Created org [bold]{org_id}[/].")
    if "firstKey" in out:
        console.print(
            f"  first key {out['firstKey']['id']}: [bold green]{out['firstKey']['key']}[/]",
            highlight=False,
        )
        console.print("  Store it now: tollhouse keeps only its hash and cannot show it again.")


@app.command("list")
def list_orgs(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """List orgs, newest first."""
    if url is not None:
        found = call(url, admin_token, lambda c: [o for page in c.orgs.iter() for o in page.data])
        rows = [_org_json(o.id, o.name, o.created_at, o.suspended_at) for o in found]
    else:

        async def every(store: OrgStore) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            before = None
            while True:
                page, more = await store.page(limit=100, before=before)
                out += [_org_json(o.id, o.name, o.created_at, o.suspended_at) for o in page]
                if not more:
                    return out
                before = (page[-1].created_at, page[-1].id)

        rows = _on_db(config, database_url, every)
    if as_json:
        write_json(rows)
        return
    if not rows:
        console.print("No orgs yet: make one with `tollhouse orgs create ORG`.")
        return
    table = Table("id", "name", "created", "suspended")
    for r in rows:
        table.add_row(r["id"], r["name"], r["createdAt"], r["suspendedAt"] or "")
    console.print(table)


@app.command("show")
def show(
    org_id: OrgArg,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """One org."""
    if url is not None:
        o = call(url, admin_token, lambda c: c.orgs.get(org_id))
        row = _org_json(o.id, o.name, o.created_at, o.suspended_at)
    else:
        org = _on_db(config, database_url, lambda s: s.require(org_id))
        row = _org_json(org.id, org.name, org.created_at, org.suspended_at)
    if as_json:
        write_json(row)
        return
    state = f"suspended since {row['suspendedAt']}" if row["suspended"] else "active"
    console.print(f"[bold]{row['id']}[/] {row['name']!r}: {state}", highlight=False)


@app.command("update")
def update(
    org_id: OrgArg,
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    suspend: Annotated[
        bool | None,
        typer.Option(
            "--suspend/--reinstate",
            help="Suspend the org (its keys get 403 ORG_SUSPENDED within a second), or "
            "reinstate it.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Rename, suspend or reinstate an org."""
    if url is not None:
        o = call(url, admin_token, lambda c: c.orgs.update(org_id, name=name, suspended=suspend))
        row = _org_json(o.id, o.name, o.created_at, o.suspended_at)
    else:
        org = _on_db(
            config,
            database_url,
            lambda s: s.update(org_id, name=name, suspended=suspend, actor=cli_actor()),
        )
        row = _org_json(org.id, org.name, org.created_at, org.suspended_at)
    if as_json:
        write_json(row)
        return
    state = "suspended" if row["suspended"] else "active"
    console.print(f"[bold]{row['id']}[/] {row['name']!r}: {state}", highlight=False)
