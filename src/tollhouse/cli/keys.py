"""``tollhouse keys create | list | revoke``."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
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
from tollhouse.keys.model import ROLES, KeyRecord
from tollhouse.keys.store import KeyStore

T = TypeVar("T")
ORG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def key_json(record: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    """The contract JSON of a key (DESIGN §3.1); ``key`` only at creation."""
    out: dict[str, Any] = {"id": record.id}
    if secret is not None:
        out["key"] = secret
    out.update(
        {
            "org": record.org,
            "environment": "test" if record.environment == "SANDBOX" else "live",
            "role": record.role,
            "name": record.name,
            "prefix": record.prefix,
            "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
            "revoked_at": (
                record.revoked_at.isoformat().replace("+00:00", "Z") if record.revoked_at else None
            ),
        }
    )
    return out


def with_store(
    config: str | None, database_url: str | None, fn: Callable[[KeyStore], Awaitable[T]]
) -> T:
    """Open the configured database, run ``fn`` with a key store, close it."""
    return with_database(settings_from(config, database_url), lambda e: fn(KeyStore(e)))


@app.command("create")
def create(
    org: Annotated[str, typer.Option("--org", help="The org that owns the key.")],
    env: Annotated[str, typer.Option("--env", help="test (sk_test_, SANDBOX) or live.")] = "test",
    role: Annotated[
        str, typer.Option("--role", help="root, manager, backend or member.")
    ] = "member",
    name: Annotated[str, typer.Option("--name", help="A label for people.")] = "",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Create a key; its secret is printed once and stored only as a hash."""
    if not ORG_PATTERN.match(org):
        fail(f"--org {org!r}: use letters, digits, _ . - (at most 64 characters)", 2)
    if env not in ("test", "live"):
        fail(f"--env {env!r}: use test or live", 2)
    if role not in ROLES:
        fail(f"--role {role!r}: use one of {', '.join(ROLES)}", 2)
    record, secret = with_store(config, database_url, lambda s: s.create(org, env, role, name))
    if as_json:
        write_json(key_json(record, secret))
        return
    console.print(
        f"Created [bold]{record.id}[/] for org [bold]{org}[/] ({record.environment}, {role})"
    )
    console.print(f"  key: [bold green]{secret}[/]", highlight=False)
    console.print("  Store it now: tollhouse keeps only its hash and cannot show it again.")


@app.command("list")
def list_keys(
    org: Annotated[str | None, typer.Option("--org", help="Only this org's keys.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """List keys (never their secrets)."""
    records = with_store(config, database_url, lambda s: s.list_keys(org))
    if as_json:
        write_json([key_json(r) for r in records])
        return
    if not records:
        console.print("No keys yet: create one with `tollhouse keys create --org ORG`.")
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    for heading in ("org", "env", "role", "name", "prefix", "created", "revoked"):
        table.add_column(heading)
    for r in records:
        table.add_row(
            r.id,
            r.org,
            "live" if r.environment == "PRODUCTION" else "test",
            r.role,
            r.name,
            r.prefix + "…",
            r.created_at.strftime("%Y-%m-%d %H:%MZ"),
            r.revoked_at.strftime("%Y-%m-%d %H:%MZ") if r.revoked_at else "",
        )
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…), as `keys list` shows.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Revoke a key; running servers refuse it within a second."""
    record = with_store(config, database_url, lambda s: s.revoke(key_id))
    if record is None:
        fail(f"no key with id {key_id!r}; see `tollhouse keys list`")
    if as_json:
        write_json(key_json(record))
        return
    console.print(f"Revoked [bold]{record.id}[/] (org {record.org}).")
