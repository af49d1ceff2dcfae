"""``tollhouse limits set | list | clear`` — per-org (every environment or one) and
per-key limit overrides."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from tollhouse.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    JsonOpt,
    console,
    environment_option,
    fail,
    settings_from,
    with_database,
    write_json,
)
from tollhouse.cli.remote import AdminTokenOpt, UrlOpt, call
from tollhouse.limits.overrides import Override, OverrideStore
from tollhouse.security.audit import cli_actor
from tollhouse.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="Override a bucket's or an in-flight pool's limit for one org (in every "
    "environment or one) or one key (key > org in the key's environment > org in every "
    "environment > policy).",
    no_args_is_help=True,
)

OrgOpt = Annotated[str, typer.Option("--org", help="The org the override applies to.")]
KeyOpt = Annotated[
    str | None, typer.Option("--key", help="Only this key (key_…); omit for the whole org.")
]
BucketOpt = Annotated[
    str,
    typer.Option(
        "--bucket", help="A bucket's or an in-flight pool's name from the policy (limits list)."
    ),
]
EnvironmentOpt = Annotated[
    str | None,
    typer.Option(
        "--environment",
        "--env",
        help="SANDBOX or PRODUCTION (test and live work too): the org's override for that "
        "environment alone; omit for every environment (not with --key: a key has its own).",
    ),
]


def override_json(o: Override) -> dict[str, Any]:
    return {
        "org": o.org,
        "key": o.key_id,
        "environment": o.environment,
        "bucket": o.bucket,
        "limit": o.limit,
        "updated_at": o.updated_at.isoformat().replace("+00:00", "Z"),
    }


def _with_store(settings: Settings, fn: Callable[[OverrideStore], Awaitable[T]]) -> T:
    return with_database(settings, lambda e: fn(OverrideStore(e)))


def _check_environment(environment: str | None, key: str | None) -> str | None:
    """The environment ``--environment`` names (any case; ``test``/``live`` as ``keys
    create --env`` spells them), or None; fails with usage (exit 2) else."""
    if environment is None:
        return None
    found = environment_option(environment)
    if key is not None:
        fail(
            "--environment and --key exclude each other: a key's override applies to the "
            "key's own environment",
            2,
        )
    return found


def _whose(org: str, key: str | None, environment: str | None) -> str:
    if key:
        return f"key {key}"
    return f"org {org}" + (f" in {environment}" if environment else "")


def _policy_limits(settings: Settings) -> dict[str, int]:
    """The policy's limit of each bucket and pool, by name."""
    policy = settings.policy
    return {b.name: b.limit for b in policy.buckets} | {p.name: p.limit for p in policy.pools}


def _check_bucket(settings: Settings, bucket: str) -> None:
    policy = settings.policy
    if bucket not in _policy_limits(settings):
        buckets = ", ".join(b.name for b in policy.buckets) or "none"
        pools = ", ".join(p.name for p in policy.pools) or "none"
        fail(
            f"--bucket {bucket!r} is not in the policy; buckets: {buckets}; pools: {pools}",
            2,
        )


@app.command("set")
def set_limit(
    org: OrgOpt,
    bucket: BucketOpt,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", help="The new limit: per window for a bucket, in flight for a pool."
        ),
    ],
    key: KeyOpt = None,
    environment: EnvironmentOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Set an override of a bucket or a pool; running servers apply it within a second.
    With --url the server checks the name against its own policy."""
    if limit < 1:
        fail("--limit must be at least 1", 2)
    environment = _check_environment(environment, key)
    if url is not None:
        made = call(
            url,
            admin_token,
            lambda c: c.limits.set(org, bucket, limit, key_id=key, environment=environment),
        )
        override = Override(
            made.org, made.key_id, made.bucket, made.limit, made.updated_at, made.environment
        )
    else:
        settings = settings_from(config, database_url)
        _check_bucket(settings, bucket)
        override = _with_store(
            settings,
            lambda s: s.set(org, bucket, limit, key, environment=environment, actor=cli_actor()),
        )
    if as_json:
        write_json(override_json(override))
        return
    console.print(f"{bucket}: limit {limit} for {_whose(org, key, environment)}.", highlight=False)


@app.command("list")
def list_limits(
    org: Annotated[str | None, typer.Option("--org", help="Only this org.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """List overrides next to the policy's limits (with --url, one org's: --org)."""
    if url is not None:
        if org is None:
            fail("--url lists one org's overrides: give --org", 2)
        found = call(url, admin_token, lambda c: c.limits.get(org))
        overrides, policy = _remote_overrides(found)
    else:
        settings = settings_from(config, database_url)
        overrides = _with_store(settings, lambda s: s.list(org))
        policy = _policy_limits(settings)
    if as_json:
        write_json([override_json(o) for o in overrides])
        return
    if not overrides:
        console.print("No overrides: every org gets the policy's limits.")
        return
    table = Table("org", "environment", "key", "bucket", "limit", "policy limit", "updated")
    for o in overrides:
        table.add_row(
            o.org,
            "—" if o.key_id else (o.environment or "all"),
            o.key_id or "(all keys)",
            o.bucket,
            str(o.limit),
            str(policy.get(o.bucket, "—")),
            o.updated_at.strftime("%Y-%m-%d %H:%MZ"),
        )
    console.print(table)


@app.command("clear")
def clear_limit(
    org: OrgOpt,
    bucket: BucketOpt,
    key: KeyOpt = None,
    environment: EnvironmentOpt = None,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
    url: UrlOpt = None,
    admin_token: AdminTokenOpt = None,
) -> None:
    """Remove an override: the next one down applies again (the org's, the policy's)."""
    environment = _check_environment(environment, key)
    whose = _whose(org, key, environment)
    if url is not None:
        call(
            url,
            admin_token,
            lambda c: c.limits.clear(org, bucket, key_id=key, environment=environment),
        )
        console.print(f"Cleared: {bucket} for {whose}.", highlight=False)
        return
    settings = settings_from(config, database_url)
    if not _with_store(
        settings,
        lambda s: s.clear(org, bucket, key, environment=environment, actor=cli_actor()),
    ):
        fail(f"no override of {bucket!r} for {whose}")
    console.print(f"Cleared: {bucket} for {whose}.", highlight=False)


def _remote_overrides(limits: Any) -> tuple[list[Override], dict[str, int]]:
    """The overrides in an org's limits as the provider API answered them (an
    :class:`~tollhouse.client.OrgLimits`), and the server's policy limits."""
    out: list[Override] = []
    for b in (*limits.buckets, *limits.pools):
        if b.overridden and b.updated_at is not None:
            out.append(Override(limits.org, None, b.name, b.limit, b.updated_at))
        for e in b.environment_overrides:
            out.append(Override(limits.org, None, b.name, e.limit, e.updated_at, e.environment))
        for k in b.key_overrides:
            out.append(Override(limits.org, k.key_id, b.name, k.limit, k.updated_at))
    out.sort(key=lambda o: (o.key_id or "", o.environment or "", o.bucket))
    return out, {b.name: b.policy_limit for b in (*limits.buckets, *limits.pools)}
