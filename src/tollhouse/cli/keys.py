"""``tollhouse keys create | list | revoke | rotate``."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
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
from tollhouse.cli.remote import AdminTokenOpt, UrlOpt, call, iso
from tollhouse.keys.model import ROLES, KeyRecord
from tollhouse.keys.store import KeyStore
from tollhouse.policy.load import parse_duration
from tollhouse.security.audit import cli_actor

T = TypeVar("T")
ORG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

app = typer.Typer(help="Create, list, revoke and rotate API keys.", no_args_is_help=True)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def key_json(record: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    """The JSON of a key, as ``--json`` prints it (docs/api-shapes.md); ``key`` only at creation."""
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
            "created_at": _iso(record.created_at),
            "revoked_at": _iso(record.revoked_at),
            "expires_at": _iso(record.expires_at),
        }
    )
    return out


def remote_key_json(key: Any) -> dict[str, Any]:
    """The JSON of a key the provider API answered (a
    :class:`~tollhouse.client.AdminKey`), in :func:`key_json`'s shape."""
    out: dict[str, Any] = {"id": key.id}
    if key.key is not None:
        out["key"] = key.key
    out.update(
        {
            "org": key.org,
            "environment": "test" if key.environment == "SANDBOX" else "live",
            "role": key.role,
            "name": key.name,
            "prefix": key.prefix,
            "created_at": iso(key.created_at),
            "revoked_at": iso(key.revoked_at),
            "expires_at": iso(key.expires_at),
            "last_used_at": iso(key.last_used_at),
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
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Create a key; its secret is printed once and stored only as a hash. With --url the
    org must exist (`tollhouse orgs create`); on the database it is made if new."""
    if not ORG_PATTERN.match(org):
        fail(f"--org {org!r}: use letters, digits, _ . - (at most 64 characters)", 2)
    if env not in ("test", "live"):
        fail(f"--env {env!r}: use test or live", 2)
    if role not in ROLES:
        fail(f"--role {role!r}: use one of {', '.join(ROLES)}", 2)
    if url is not None:
        environment = "SANDBOX" if env == "test" else "PRODUCTION"
        made = call(
            url,
            admin_token,
            lambda c: c.keys.create(org, environment=environment, role=role, name=name),
        )
        out = remote_key_json(made)
        if as_json:
            write_json(out)
            return
        _print_created(made.id, org, made.environment, role, made.key)
        return
    record, secret = with_store(
        config, database_url, lambda s: s.create(org, env, role, name, actor=cli_actor())
    )
    if as_json:
        write_json(key_json(record, secret))
        return
    _print_created(record.id, org, record.environment, role, secret)


def _print_created(key_id: str, org: str, environment: str, role: str, secret: str | None) -> None:
    record_id = key_id
    console.print(f"Created [bold]{record_id}[/] for org [bold]{org}[/] ({environment}, {role})")
    console.print(f"  key: [bold green]{secret}[/]", highlight=False)
    console.print("  Store it now: tollhouse keeps only its hash and cannot show it again.")


@app.command("list")
def list_keys(
    org: Annotated[str | None, typer.Option("--org", help="Only this org's keys.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """List keys (never their secrets); with --url, one org's (--org)."""
    if url is not None:
        if org is None:
            fail("--url lists one org's keys: give --org", 2)
        found = call(
            url, admin_token, lambda c: [k for page in c.keys.iter(org) for k in page.data]
        )
        if as_json:
            write_json([remote_key_json(k) for k in found])
            return
        records = [_as_record(k) for k in found]
    else:
        records = with_store(config, database_url, lambda s: s.list_keys(org))
    if as_json:
        write_json([key_json(r) for r in records])
        return
    if not records:
        console.print("No keys yet: create one with `tollhouse keys create --org ORG`.")
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    for heading in ("org", "env", "role", "name", "prefix", "created", "revoked/expires"):
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
            (
                r.revoked_at.strftime("%Y-%m-%d %H:%MZ")
                if r.revoked_at
                else f"expires {r.expires_at:%Y-%m-%d %H:%MZ}"
                if r.expires_at
                else ""
            ),
        )
    console.print(table)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…), as `keys list` shows.")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Revoke a key; running servers refuse it within a second."""
    if url is not None:
        revoked = call(url, admin_token, lambda c: c.keys.revoke(key_id))
        if as_json:
            write_json(remote_key_json(revoked))
            return
        console.print(f"Revoked [bold]{revoked.id}[/] (org {revoked.org}).")
        return
    record = with_store(config, database_url, lambda s: s.revoke(key_id, actor=cli_actor()))
    if record is None:
        fail(f"no key with id {key_id!r}; see `tollhouse keys list`")
    if as_json:
        write_json(key_json(record))
        return
    console.print(f"Revoked [bold]{record.id}[/] (org {record.org}).")


@app.command("rotate")
def rotate(
    key_id: Annotated[str, typer.Argument(help="The key to replace (key_…).")],
    overlap: Annotated[
        str,
        typer.Option(
            "--overlap",
            help='How long the old key keeps working, e.g. "24h", "30m"; 0 revokes it now.',
        ),
    ] = "24h",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Make a new secret for the same org, environment, role and name; the old key keeps
    working until the overlap ends."""
    if re.fullmatch(r"0+(\.0*)?\s*(ms|s|m|h|d)?", overlap.strip()):
        window = timedelta(0)
    else:
        try:
            window = timedelta(seconds=parse_duration(overlap))
        except ValueError as exc:
            fail(f"--overlap {overlap!r}: {exc}", 2)
    if url is not None:
        seconds = int(window.total_seconds())
        made = call(url, admin_token, lambda c: c.keys.rotate(key_id, overlap_seconds=seconds))
        assert made.replaces is not None
        was = made.replaces
        until = iso(was.revoked_at or was.expires_at)
        if as_json:
            write_json({**remote_key_json(made), "replaces": was.id, "oldKeyExpiresAt": until})
            return
        _print_rotated(made.id, was.id, made.org, made.environment, made.role, made.key, until)
        return

    async def go(store: KeyStore) -> tuple[KeyRecord, str, KeyRecord] | str | None:
        try:
            return await store.rotate(key_id, window, actor=cli_actor())
        except ValueError as exc:
            return str(exc)

    outcome = with_store(config, database_url, go)
    if outcome is None:
        fail(f"no key with id {key_id!r}; see `tollhouse keys list`")
    if isinstance(outcome, str):
        fail(outcome)
    record, secret, old = outcome
    ends = old.revoked_at or old.expires_at
    if as_json:
        write_json({**key_json(record, secret), "replaces": old.id, "oldKeyExpiresAt": _iso(ends)})
        return
    _print_rotated(
        record.id, old.id, record.org, record.environment, record.role, secret, _iso(ends)
    )


def _print_rotated(
    new_id: str,
    old_id: str,
    org: str,
    environment: str,
    role: str,
    secret: str | None,
    ends: str | None,
) -> None:
    console.print(
        f"Created [bold]{new_id}[/] replacing [bold]{old_id}[/] (org {org}, {environment}, {role})"
    )
    console.print(f"  key: [bold green]{secret}[/]", highlight=False)
    console.print(f"  {old_id} stops working at {ends}.", highlight=False)
    console.print(
        "  Store the new key now: tollhouse keeps only its hash and cannot show it again."
    )


def _as_record(key: Any) -> KeyRecord:
    """A key the provider API answered, as the table prints database keys."""
    return KeyRecord(
        id=key.id,
        org=key.org,
        environment=key.environment,
        role=key.role,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
    )
