"""Per-org and per-key limit overrides, kept in the database.

Precedence: an override for the exact key > one for the org > the policy's limit. The
server polls the table (every 0.5 s by default) and swaps in a new snapshot when anything
changed, so an override takes effect within a second on every instance sharing the
database. The request path reads the snapshot, a dict, never SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    func,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import NotFound, StorageError
from tollhouse.policy.model import Bucket, Pool
from tollhouse.security import audit
from tollhouse.storage.poll import Poller
from tollhouse.storage.schema import metadata
from tollhouse.times import as_utc

logger = logging.getLogger(__name__)

limit_overrides = Table(
    "limit_overrides",
    metadata,
    Column("org_id", String(64), nullable=False),
    Column("key_id", String(40), nullable=False),  # "" for the whole org
    Column("bucket", String(64), nullable=False),
    Column("limit", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("org_id", "key_id", "bucket"),
)


@dataclass(frozen=True, slots=True)
class Override:
    """One stored override."""

    org: str
    key_id: str | None
    """None: applies to every key of the org."""
    bucket: str
    limit: int
    updated_at: datetime


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
        actor: str | None = None,
        address: str | None = None,
    ) -> Override:
        """Create or replace the override of ``bucket`` for an org (or one of its keys).
        With an ``actor``, the change is audited in the same transaction (``address``: the
        caller's, for a change made over HTTP)."""
        now = datetime.now(UTC)
        where = (
            (limit_overrides.c.org_id == org)
            & (limit_overrides.c.key_id == (key_id or ""))
            & (limit_overrides.c.bucket == bucket)
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(delete(limit_overrides).where(where))
                await conn.execute(
                    limit_overrides.insert().values(
                        org_id=org, key_id=key_id or "", bucket=bucket, limit=limit, updated_at=now
                    )
                )
                if actor is not None:
                    await audit.record(
                        conn,
                        actor=actor,
                        action="limit.set",
                        org=org,
                        target_id=bucket + (f"/{key_id}" if key_id else ""),
                        details={"bucket": bucket, "key": key_id, "limit": limit},
                        at=now,
                        address=address,
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not set the override: {exc}") from exc
        return Override(org, key_id, bucket, limit, now)

    async def clear(
        self,
        org: str,
        bucket: str,
        key_id: str | None = None,
        *,
        actor: str | None = None,
        address: str | None = None,
    ) -> bool:
        """Remove an override; False when there was none. With an ``actor``, the change is
        audited in the same transaction."""
        where = (
            (limit_overrides.c.org_id == org)
            & (limit_overrides.c.key_id == (key_id or ""))
            & (limit_overrides.c.bucket == bucket)
        )
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(delete(limit_overrides).where(where))
                if actor is not None and result.rowcount:
                    await audit.record(
                        conn,
                        actor=actor,
                        action="limit.cleared",
                        org=org,
                        target_id=bucket + (f"/{key_id}" if key_id else ""),
                        details={"bucket": bucket, "key": key_id},
                        address=address,
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not clear the override: {exc}") from exc
        return bool(result.rowcount)

    async def list(self, org: str | None = None) -> list[Override]:
        """Overrides, optionally of one org."""
        q = select(limit_overrides).order_by(
            limit_overrides.c.org_id, limit_overrides.c.key_id, limit_overrides.c.bucket
        )
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
            out.append(Override(r.org_id, r.key_id or None, r.bucket, r.limit, stamp))
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


def check_bucket(buckets: Iterable[Bucket], name: str) -> Bucket:
    """The policy's bucket called ``name``.

    Raises:
        NotFound: the policy has no such bucket (404, naming the buckets it has).
    """
    known = list(buckets)
    for bucket in known:
        if bucket.name == name:
            return bucket
    names = ", ".join(b.name for b in known) or "none"
    raise NotFound(f"The policy has no bucket {name!r}; its buckets: {names}.")


def _stamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def effective_limits(
    buckets: Iterable[Bucket], pools: Iterable[Pool], overrides: Iterable[Override]
) -> dict[str, Any]:
    """One org's limits as the provider API shows them: every bucket with the policy's
    limit, the org's override (when set) and the limit its keys get without a key
    override, its keys' overrides; every pool (pools take no override).

    Args:
        buckets: the policy's buckets.
        pools: the policy's pools.
        overrides: the org's overrides (:meth:`OverrideStore.list` of the org).
    """
    by_bucket: dict[str, list[Override]] = {}
    for o in overrides:
        by_bucket.setdefault(o.bucket, []).append(o)
    out_buckets = []
    for b in buckets:
        mine = by_bucket.get(b.name, [])
        org_wide = next((o for o in mine if o.key_id is None), None)
        out_buckets.append(
            {
                "name": b.name,
                "displayName": b.display_name,
                "windowSeconds": b.window_seconds,
                "scope": b.scope,
                "policyLimit": b.limit,
                "limit": org_wide.limit if org_wide is not None else b.limit,
                "overridden": org_wide is not None,
                "override": (
                    {"limit": org_wide.limit, "updatedAt": _stamp(org_wide.updated_at)}
                    if org_wide is not None
                    else None
                ),
                "keyOverrides": [
                    {"keyId": o.key_id, "limit": o.limit, "updatedAt": _stamp(o.updated_at)}
                    for o in mine
                    if o.key_id is not None
                ],
                "shadow": b.shadow,
            }
        )
    return {
        "buckets": out_buckets,
        "pools": [{"name": p.name, "limit": p.limit, "overridden": False} for p in pools],
    }


#: (org, key id or "", bucket) → limit
Snapshot = dict[tuple[str, str, str], int]


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

    def limit(self, org: str, key_id: str, bucket: str, default: int) -> int:
        """The effective limit: key override > org override > ``default``."""
        snap = self.snapshot
        if not snap:
            return default
        found = snap.get((org, key_id, bucket))
        if found is None:
            found = snap.get((org, "", bucket))
        return default if found is None else found

    async def refresh(self) -> bool:
        """Reload when the table changed; True when a new snapshot was installed."""
        version = await self.store.version()
        if version == self._version:
            return False
        rows = await self.store.list()
        self.snapshot = {(o.org, o.key_id or "", o.bucket): o.limit for o in rows}
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
