"""Per-org and per-key limit overrides, kept in the database.

An override changes the limit of a bucket or of an in-flight pool (the ``bucket`` column
holds either's name: the policy keeps bucket and pool names apart).
An org's override applies to every environment of the org or to one (``environment``:
SANDBOX or PRODUCTION), so sandbox traffic never changes production's limits (and the
reverse); a key's override has no environment (a key belongs to one already).
Precedence: the key's override > the org's for the caller's environment > the org's for
every environment > the policy's limit. The server polls the table (every 0.5 s by
default) and swaps in a new snapshot when anything changed, so an override takes effect
within a second on every instance sharing the database. The request path reads the
snapshot, a dict, never SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    func,
    inspect,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import NotFound, StorageError
from tollhouse.keys.model import ENVIRONMENTS
from tollhouse.policy.model import Bucket, Pool
from tollhouse.security import audit
from tollhouse.storage.migrations import create_tables, rebuild_table
from tollhouse.storage.poll import Poller
from tollhouse.storage.schema import metadata
from tollhouse.times import as_utc

logger = logging.getLogger(__name__)

limit_overrides = Table(
    "limit_overrides",
    metadata,
    Column("org_id", String(64), nullable=False),
    # "" for every environment of the org (always "" with a key_id)
    Column("environment", String(16), nullable=False, server_default=""),
    Column("key_id", String(40), nullable=False),  # "" for the whole org
    Column("bucket", String(64), nullable=False),  # a bucket's or a pool's name
    Column("limit", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("org_id", "environment", "key_id", "bucket"),
)


def separate_override_environments(conn: Connection) -> None:
    """Migration step: ``limit_overrides`` gains ``environment`` ('' for every
    environment, what every existing row keeps) in its primary key. Creates the table when
    missing; a table that has the column already is left as it is.

    SQLite cannot change a primary key in place: the table is made again, rows copied.
    """
    catalog = inspect(conn)
    if limit_overrides.name not in set(catalog.get_table_names()):
        create_tables(conn, (limit_overrides,))
        return
    if "environment" in {c["name"] for c in catalog.get_columns(limit_overrides.name)}:
        return
    if conn.dialect.name == "sqlite":
        rebuild_table(conn, limit_overrides)
        return
    old = catalog.get_pk_constraint(limit_overrides.name).get("name")
    conn.exec_driver_sql(
        "ALTER TABLE limit_overrides ADD COLUMN environment VARCHAR(16) NOT NULL DEFAULT ''"
    )
    if old:
        conn.exec_driver_sql(f'ALTER TABLE limit_overrides DROP CONSTRAINT "{old}"')
    conn.exec_driver_sql(
        "ALTER TABLE limit_overrides ADD PRIMARY KEY (org_id, environment, key_id, bucket)"
    )


@dataclass(frozen=True, slots=True)
class Override:
    """One stored override."""

    org: str
    key_id: str | None
    """None: applies to every key of the org."""
    bucket: str
    """The bucket's or the pool's name."""
    limit: int
    updated_at: datetime
    environment: str | None = None
    """None: applies to every environment of the org (always None for a key's)."""


def _row(org: str, bucket: str, key_id: str | None, environment: str | None) -> Any:
    """The row of one override (checking the environment).

    Raises:
        ValueError: an unknown environment, or an environment with a key.
    """
    if environment is not None:
        if environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be SANDBOX or PRODUCTION, not {environment!r}")
        if key_id:
            raise ValueError(
                "a key's override takes no environment: the key belongs to one already"
            )
    o = limit_overrides.c
    return (
        (o.org_id == org)
        & (o.environment == (environment or ""))
        & (o.key_id == (key_id or ""))
        & (o.bucket == bucket)
    )


def _target(bucket: str, key_id: str | None) -> str:
    """The audit log's target id: the bucket, /key for a key's (the environment is in the
    details)."""
    return bucket + (f"/{key_id}" if key_id else "")


class OverrideStore:
    """Set, list and clear overrides."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def set(
        self,
        org: str,
        bucket: str,
        limit: int,
        key_id: str | None = None,
        *,
        environment: str | None = None,
        actor: str | None = None,
        address: str | None = None,
    ) -> Override:
        """Create or replace the override of ``bucket`` for an org (in one ``environment``
        or, None, in every one) or for one of its keys. With an ``actor``, the change is
        audited in the same transaction (``address``: the caller's, for a change made over
        HTTP).

        Raises:
            ValueError: ``environment`` is not SANDBOX or PRODUCTION, or is given with a
                key (whose environment is its own).
        """
        now = datetime.now(UTC)
        where = _row(org, bucket, key_id, environment)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(delete(limit_overrides).where(where))
                await conn.execute(
                    limit_overrides.insert().values(
                        org_id=org,
                        environment=environment or "",
                        key_id=key_id or "",
                        bucket=bucket,
                        limit=limit,
                        updated_at=now,
                    )
                )
                if actor is not None:
                    await audit.record(
                        conn,
                        actor=actor,
                        action="limit.set",
                        org=org,
                        target_id=_target(bucket, key_id),
                        details={
                            "bucket": bucket,
                            "key": key_id,
                            "environment": environment,
                            "limit": limit,
                        },
                        at=now,
                        address=address,
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not set the override: {exc}") from exc
        return Override(org, key_id, bucket, limit, now, environment)

    async def clear(
        self,
        org: str,
        bucket: str,
        key_id: str | None = None,
        *,
        environment: str | None = None,
        actor: str | None = None,
        address: str | None = None,
    ) -> bool:
        """Remove an override (the org's for ``environment``, or for every environment
        when None; or a key's); False when there was none. With an ``actor``, the change
        is audited in the same transaction.

        Raises:
            ValueError: as :meth:`set`.
        """
        where = _row(org, bucket, key_id, environment)
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(delete(limit_overrides).where(where))
                if actor is not None and result.rowcount:
                    await audit.record(
                        conn,
                        actor=actor,
                        action="limit.cleared",
                        org=org,
                        target_id=_target(bucket, key_id),
                        details={"bucket": bucket, "key": key_id, "environment": environment},
                        address=address,
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not clear the override: {exc}") from exc
        return bool(result.rowcount)

    async def list(self, org: str | None = None) -> list[Override]:
        """Overrides, optionally of one org."""
        o = limit_overrides.c
        q = select(limit_overrides).order_by(o.org_id, o.key_id, o.environment, o.bucket)
        if org is not None:
            q = q.where(limit_overrides.c.org_id == org)
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q)).all()
        except SQLAlchemyError as exc:
            raise StorageError(f"could not list overrides: {exc}") from exc
        out = []
        for r in rows:
            stamp = as_utc(r.updated_at)
            out.append(
                Override(
                    r.org_id, r.key_id or None, r.bucket, r.limit, stamp, r.environment or None
                )
            )
        return out

    async def version(self) -> tuple[int, str]:
        """(row count, latest change): changes whenever a row is set or cleared."""
        q = select(func.count(), func.max(limit_overrides.c.updated_at))
        try:
            async with self.engine.connect() as conn:
                count, latest = (await conn.execute(q)).one()
        except SQLAlchemyError as exc:
            raise StorageError(f"could not read overrides: {exc}") from exc
        return int(count), str(latest)


def check_limit_name(buckets: Iterable[Bucket], pools: Iterable[Pool], name: str) -> None:
    """Check that the policy has a bucket or a pool called ``name`` (an override's
    ``bucket`` names either: the policy keeps their names apart).

    Raises:
        NotFound: the policy has neither (404, naming the buckets and the pools it has).
    """
    bucket_names = [b.name for b in buckets]
    pool_names = [p.name for p in pools]
    if name in bucket_names or name in pool_names:
        return
    raise NotFound(
        f"The policy has no bucket or pool {name!r}; its buckets: "
        f"{', '.join(bucket_names) or 'none'}; its pools: {', '.join(pool_names) or 'none'}."
    )


def _stamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def effective_limits(
    buckets: Iterable[Bucket],
    pools: Iterable[Pool],
    overrides: Iterable[Override],
    environment: str | None = None,
) -> dict[str, Any]:
    """One org's limits as the provider API shows them: every bucket and every pool with
    the policy's limit, the org's override for every environment (when set) and the limit
    its keys get without a key override, its overrides for one environment and the limit
    a key of each environment gets, its keys' overrides.

    With ``environment`` (an org's own view, from a key of that environment), the
    ``limit``, ``overridden`` and ``override`` of a bucket or pool are those of that
    environment (its own override, else the one for every environment), the other
    environment's overrides are left out, and so are ``environmentOverrides`` and
    ``byEnvironment``.

    Args:
        buckets: the policy's buckets.
        pools: the policy's pools.
        overrides: the org's overrides (:meth:`OverrideStore.list` of the org).
        environment: the caller's environment, for an org's own view; None for the
            provider's.
    """
    by_name: dict[str, list[Override]] = {}
    for o in overrides:
        by_name.setdefault(o.bucket, []).append(o)
    out_buckets = []
    for b in buckets:
        shown = _overridden(b.limit, by_name.get(b.name, []), environment)
        out_buckets.append(
            {
                "name": b.name,
                "displayName": b.display_name,
                "windowSeconds": b.window_seconds,
                "scope": b.scope,
                **shown,
                "shadow": b.shadow,
            }
        )
    return {
        "buckets": out_buckets,
        "pools": [
            {"name": p.name, **_overridden(p.limit, by_name.get(p.name, []), environment)}
            for p in pools
        ],
    }


def _overridden(policy_limit: int, mine: list[Override], environment: str | None) -> dict[str, Any]:
    """The override fields of one bucket or pool (:func:`effective_limits`): ``mine``
    are the org's overrides of it."""
    org_wide = next((o for o in mine if o.key_id is None and o.environment is None), None)
    per_env = {o.environment: o for o in mine if o.key_id is None and o.environment}
    shown = org_wide if environment is None else per_env.get(environment, org_wide)
    out: dict[str, Any] = {
        "policyLimit": policy_limit,
        "limit": shown.limit if shown is not None else policy_limit,
        "overridden": shown is not None,
        "override": (
            {"limit": shown.limit, "updatedAt": _stamp(shown.updated_at)}
            if shown is not None
            else None
        ),
        "keyOverrides": [
            {"keyId": o.key_id, "limit": o.limit, "updatedAt": _stamp(o.updated_at)}
            for o in mine
            if o.key_id is not None
        ],
    }
    if environment is None:
        out["environmentOverrides"] = [
            {"environment": env, "limit": e.limit, "updatedAt": _stamp(e.updated_at)}
            for env in ENVIRONMENTS
            if (e := per_env.get(env)) is not None
        ]
        by_env: dict[str, Any] = {}
        for env in ENVIRONMENTS:
            applied = per_env.get(env, org_wide)
            by_env[env] = {
                "limit": applied.limit if applied is not None else policy_limit,
                "overridden": applied is not None,
            }
        out["byEnvironment"] = by_env
    return out


#: (org, environment, key id, bucket) → limit. A key's override is at (org, "", key id,
#: bucket); the org's at (org, environment, "", bucket) for each environment, its own
#: override there else the one for every environment (resolved when the snapshot is made,
#: so a request looks up two keys at most).
Snapshot = dict[tuple[str, str, str, str], int]


def build_snapshot(rows: Iterable[Override]) -> Snapshot:
    """The snapshot of these overrides (see :data:`Snapshot`)."""
    snap: Snapshot = {}
    every: list[Override] = []
    for o in rows:
        if o.key_id is not None:
            snap[(o.org, "", o.key_id, o.bucket)] = o.limit
        elif o.environment is not None:
            snap[(o.org, o.environment, "", o.bucket)] = o.limit
        else:
            every.append(o)
    for o in every:
        for env in ENVIRONMENTS:
            snap.setdefault((o.org, env, "", o.bucket), o.limit)
    return snap


class OverrideCache:
    """The server's view of the overrides: a snapshot dict refreshed in the background.

    Args:
        store: where overrides live.
        on_change: called after a new snapshot is installed (the gateway drops its
            cached checks, which carry limits).
        poll_interval: seconds between two polls.
    """

    def __init__(
        self,
        store: OverrideStore,
        on_change: Callable[[], None] | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.on_change = on_change
        self.poll_interval = poll_interval
        self.snapshot: Snapshot = {}
        self._version: tuple[int, str] | None = None
        self._poller = Poller(self.refresh, poll_interval, "limit overrides")

    def limit(self, org: str, environment: str, key_id: str, bucket: str, default: int) -> int:
        """The effective limit for a key of ``environment``: the key's override > the
        org's for that environment > the org's for every environment > ``default``."""
        snap = self.snapshot
        if not snap:
            return default
        found = snap.get((org, "", key_id, bucket))
        if found is None:
            found = snap.get((org, environment, "", bucket))
        return default if found is None else found

    async def refresh(self) -> bool:
        """Reload when the table changed; True when a new snapshot was installed."""
        version = await self.store.version()
        if version == self._version:
            return False
        self.snapshot = build_snapshot(await self.store.list())
        self._version = version
        if self.on_change is not None:
            self.on_change()
        return True

    async def start(self) -> None:
        """Load once, then poll in the background."""
        try:
            await self.refresh()
        except StorageError:
            logger.warning("could not load overrides at start; polling")
        self._poller.start()

    async def stop(self) -> None:
        """Stop polling."""
        await self._poller.stop()
