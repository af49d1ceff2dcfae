"""``tollhouse webhooks add | list | remove``.

An endpoint receives the events of one org in one environment: ``--environment`` is
``PRODUCTION`` (the default: the jobs of ``sk_live_`` keys) or ``SANDBOX`` (``sk_test_``
keys); ``live`` and ``test`` are accepted too, as ``keys create --env`` spells them.
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
    err_console,
    fail,
    run,
    settings_from,
    with_database,
    write_json,
)
from tollhouse.cli.keys import ORG_PATTERN
from tollhouse.jobs.webhooks import Endpoint, WebhookStore, check_url
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


#: ``--environment`` values (any case) → the environment stored.
ENVIRONMENT_NAMES: dict[str, str] = {
    "production": "PRODUCTION",
    "live": "PRODUCTION",
    "sandbox": "SANDBOX",
    "test": "SANDBOX",
}

EnvironmentOpt = Annotated[
    str,
    typer.Option(
        "--environment",
        "--env",
        help="PRODUCTION (sk_live_ keys' jobs; the default) or SANDBOX (sk_test_ keys'); "
        "live and test work too.",
    ),
]


def environment_option(value: str) -> str:
    """The environment an ``--environment`` value names; fails with usage (exit 2) else."""
    found = ENVIRONMENT_NAMES.get(value.strip().lower())
    if found is None:
        fail(f"--environment {value!r}: use PRODUCTION or SANDBOX (or live, test)", 2)
    return found


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
    url: Annotated[str, typer.Option("--url", help="Where to POST events (http or https).")],
    environment: EnvironmentOpt = "PRODUCTION",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Add an endpoint for one org's jobs in one environment; its signing secret (whsec_…)
    is printed once."""
    if not ORG_PATTERN.match(org):
        fail(f"--org {org!r}: use letters, digits, _ . - (at most 64 characters)", 2)
    scope = environment_option(environment)
    settings = settings_from(config, database_url)
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
    console.print(f"Added [bold]{endpoint.id}[/] for org [bold]{org}[/] ({scope}): {endpoint.url}")
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
) -> None:
    """List one environment's endpoints (PRODUCTION unless --environment; never their
    secrets)."""
    scope = environment_option(environment)
    endpoints = with_store(config, database_url, lambda s: s.list_endpoints(org, environment=scope))
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
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Remove an endpoint; deliveries still pending for it are cancelled."""
    endpoint = with_store(
        config, database_url, lambda s: s.remove_endpoint(endpoint_id, actor=cli_actor())
    )
    if endpoint is None:
        fail(f"no webhook endpoint with id {endpoint_id!r}; see `tollhouse webhooks list`")
    if as_json:
        write_json(endpoint_json(endpoint))
        return
    console.print(f"Removed [bold]{endpoint.id}[/] ({endpoint.url}).")


if __name__ == "__main__":
    app()
