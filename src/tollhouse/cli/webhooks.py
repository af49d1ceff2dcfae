"""``tollhouse webhooks add | list | remove``.

An endpoint receives the events of one org in one environment: ``--environment`` is
``PRODUCTION`` (the default: the jobs of ``sk_live_`` keys) or ``SANDBOX`` (``sk_test_``
keys); ``live`` and ``test`` are accepted too, as ``keys create --env`` spells them.

With ``--url`` (a running server) and ``TOLLHOUSE_ADMIN_TOKEN`` the commands go through
the provider API (``/v1/admin/orgs/{orgId}/webhooks/…``) as ``keys|orgs|limits|audit``
do, and need ``--org``. ``add`` names the receiver with ``--endpoint``; its older
spelling ``add --url RECEIVER`` (no ``--endpoint``) still works on the database.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    JsonOpt,
    console,
    environment_option,
    err_console,
    fail,
    run,
    settings_from,
    with_database,
    write_json,
)
from tollhouse.cli.keys import ORG_PATTERN
from tollhouse.cli.remote import AdminTokenOpt, UrlOpt, call, iso
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import Endpoint, check_url
from tollhouse.schema import create_schema
from tollhouse.security.audit import cli_actor
from tollhouse.security.net import check_target
from tollhouse.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="Add, list and remove webhook endpoints (signed, Standard Webhooks).",
    no_args_is_help=True,
)


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


EnvironmentOpt = Annotated[
    str,
    typer.Option(
        "--environment",
        "--env",
        help="PRODUCTION (sk_live_ keys' jobs; the default) or SANDBOX (sk_test_ keys'); "
        "live and test work too.",
    ),
]


def endpoint_json(endpoint: Endpoint, secret: str | None = None) -> dict[str, Any]:
    """The JSON of an endpoint, as ``--json`` prints it (docs/api-shapes.md); ``secret`` only at
    creation."""
    out: dict[str, Any] = {"id": endpoint.id, "url": endpoint.url}
    if secret is not None:
        out["secret"] = secret
    out.update(
        {
            "org": endpoint.org,
            "environment": endpoint.environment,
            "status": "enabled" if endpoint.enabled else "disabled",
            "created_at": _iso(endpoint.created_at),
            "disabled_at": _iso(endpoint.disabled_at),
            "disabled_reason": endpoint.disabled_reason,
        }
    )
    return out


def remote_endpoint_json(endpoint: Any, with_secret: bool = False) -> dict[str, Any]:
    """The JSON of an endpoint the provider API answered (an
    :class:`~tollhouse.client.AdminWebhookEndpoint`), in :func:`endpoint_json`'s shape."""
    out: dict[str, Any] = {"id": endpoint.id, "url": endpoint.url}
    if with_secret and endpoint.secret is not None:
        out["secret"] = endpoint.secret
    out.update(
        {
            "org": endpoint.org,
            "environment": endpoint.environment,
            "status": "enabled" if endpoint.enabled else "disabled",
            "created_at": iso(endpoint.created_at),
            "disabled_at": iso(endpoint.disabled_at),
            "disabled_reason": endpoint.disabled_reason,
        }
    )
    return out


def _as_endpoint(remote: Any) -> Endpoint:
    """An endpoint the provider API answered, as the table prints database endpoints."""
    return Endpoint(
        id=remote.id,
        org=remote.org,
        url=remote.url,
        created_at=remote.created_at,
        disabled_at=remote.disabled_at,
        disabled_reason=remote.disabled_reason,
        environment=remote.environment,
        event_types=remote.event_types,
    )


async def _prepare(engine: AsyncEngine) -> None:
    await create_schema(engine)  # the audit log and the webhooks tables


def with_store(
    config: str | None,
    database_url: str | None,
    fn: Callable[[WebhookStore], Awaitable[T]],
    settings: Settings | None = None,
) -> T:
    """Open the configured database, run ``fn`` with a webhook store, close it."""
    settings = settings or settings_from(config, database_url)
    return with_database(
        settings,
        lambda e: fn(WebhookStore(e, allow_private_targets=settings.allow_private_targets)),
        prepare=_prepare,
    )


@app.command("add")
def add(
    org: Annotated[str, typer.Option("--org", help="The org whose events are sent.")],
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint", help="Where to POST events (http or https)."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="With --endpoint: a running server, to go through its provider API with "
            "TOLLHOUSE_ADMIN_TOKEN. Without --endpoint (the older spelling): where to POST "
            "events, added on the database.",
        ),
    ] = None,
    environment: EnvironmentOpt = "PRODUCTION",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Add an endpoint for one org's jobs in one environment; its signing secret (whsec_…)
    is printed once."""
    if not ORG_PATTERN.match(org):
        fail(f"--org {org!r}: use letters, digits, _ . - (at most 64 characters)", 2)
    scope = environment_option(environment)
    server: str | None = url if endpoint_url is not None else None
    target = endpoint_url if endpoint_url is not None else url
    if target is None:
        fail("give the receiver's URL: --endpoint URL (with --url SERVER for a server)", 2)
    if server is not None:
        made = call(
            server,
            admin_token,
            lambda c: c.webhooks.endpoints.create(org, target, environment=scope),
        )
        if as_json:
            write_json(remote_endpoint_json(made, with_secret=True))
            return
        _print_added(made.id, org, scope, made.url, made.secret)
        return
    settings = settings_from(config, database_url)
    url = target
    try:
        clean = check_url(url)
        resolved = run(lambda: check_target(clean, allow_private=settings.allow_private_targets))
    except ValueError as exc:
        fail(f"--url: {exc}", 2)
    if not resolved and not settings.allow_private_targets:
        err_console.print(
            f"[yellow]warning:[/] {urlsplit(clean).hostname} does not resolve now; "
            "each delivery resolves and checks it again.",
            highlight=False,
        )
    endpoint, secret = with_store(
        config,
        database_url,
        lambda s: s.add_endpoint(org, url, environment=scope, actor=cli_actor()),
        settings,
    )
    if as_json:
        write_json(endpoint_json(endpoint, secret))
        return
    _print_added(endpoint.id, org, scope, endpoint.url, secret)


def _print_added(endpoint_id: str, org: str, scope: str, url: str, secret: str | None) -> None:
    console.print(f"Added [bold]{endpoint_id}[/] for org [bold]{org}[/] ({scope}): {url}")
    console.print(f"  secret: [bold green]{secret}[/]", highlight=False)
    console.print(
        "  Verify each request's webhook-signature with it (Standard Webhooks). "
        "It is not shown again."
    )


@app.command("list")
def list_endpoints(
    org: Annotated[str | None, typer.Option("--org", help="Only this org's endpoints.")] = None,
    environment: EnvironmentOpt = "PRODUCTION",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """List one environment's endpoints (PRODUCTION unless --environment; never their
    secrets); with --url, one org's (--org)."""
    scope = environment_option(environment)
    if url is not None:
        if org is None:
            fail("--url lists one org's endpoints: give --org", 2)
        found = call(url, admin_token, lambda c: c.webhooks.endpoints.list(org, environment=scope))
        if as_json:
            write_json([remote_endpoint_json(e) for e in found])
            return
        endpoints = [_as_endpoint(e) for e in found]
    else:
        endpoints = with_store(
            config, database_url, lambda s: s.list_endpoints(org, environment=scope)
        )
        if as_json:
            write_json([endpoint_json(e) for e in endpoints])
            return
    if not endpoints:
        console.print(
            f"No {scope} webhook endpoints: add one with "
            f"`tollhouse webhooks add --org ORG --url URL --environment {scope}`."
        )
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    for heading in ("org", "environment", "url", "status", "created"):
        table.add_column(heading)
    for e in endpoints:
        status = "enabled" if e.enabled else f"disabled ({e.disabled_reason or ''})"
        table.add_row(
            e.id, e.org, e.environment, e.url, status, e.created_at.strftime("%Y-%m-%d %H:%MZ")
        )
    console.print(table)


@app.command("remove")
def remove(
    endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (we_…).")],
    org: Annotated[
        str | None, typer.Option("--org", help="The endpoint's org (needed with --url).")
    ] = None,
    environment: Annotated[
        str | None,
        typer.Option(
            "--environment",
            "--env",
            help="The endpoint's environment: PRODUCTION or SANDBOX (with --url: "
            "PRODUCTION unless given).",
        ),
    ] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Remove an endpoint; deliveries still pending for it are cancelled. --org and
    --environment, when given, must be the endpoint's."""
    scope = environment_option(environment) if environment is not None else None
    if url is not None:
        if org is None:
            fail("--url removes one org's endpoint: give --org (and --environment)", 2)
        where = scope or "PRODUCTION"
        removed = call(
            url,
            admin_token,
            lambda c: c.webhooks.endpoints.delete(org, endpoint_id, environment=where),
        )
        if as_json:
            write_json(remote_endpoint_json(removed))
            return
        console.print(f"Removed [bold]{removed.id}[/] ({removed.url}).")
        return
    endpoint = with_store(
        config,
        database_url,
        lambda s: s.remove_endpoint(endpoint_id, actor=cli_actor(), org=org, environment=scope),
    )
    if endpoint is None:
        fail(f"no webhook endpoint with id {endpoint_id!r}; see `tollhouse webhooks list`")
    if as_json:
        write_json(endpoint_json(endpoint))
        return
    console.print(f"Removed [bold]{endpoint.id}[/] ({endpoint.url}).")


if __name__ == "__main__":
    app()
