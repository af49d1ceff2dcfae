"""Orgs: made, listed, renamed, suspended and reinstated (the provider API, the CLI).

An org is made on its own (``POST /v1/admin/orgs``, ``tollhouse orgs create``) — with its
first key in the same transaction when asked, so nothing is half made — or implicitly by
``tollhouse keys create`` for an org that does not exist yet. A suspended org's keys are
refused with 403 ``ORG_SUSPENDED`` (see :mod:`tollhouse.keys.cache`); nothing of the org is
deleted, and reinstating it lets its keys in again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import Conflict, NotFound
from tollhouse.keys.model import KeyRecord
from tollhouse.keys.schema import orgs
from tollhouse.keys.store import insert_key
from tollhouse.security.audit import record as audit
from tollhouse.storage.dialect import insert
from tollhouse.storage.transactions import read_connection, write_transaction
from tollhouse.times import as_utc

#: An org id: letters, digits, ``_ . -``, at most 64 characters, not starting with a symbol.
ORG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Longest org or key name.
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class OrgRecord:
    """One org."""

    id: str
    name: str
    created_at: datetime
    suspended_at: datetime | None = None
    """When the org was suspended, or None while it is active."""
    updated_at: datetime | None = None
    """When its name or suspension last changed."""

    @property
    def suspended(self) -> bool:
        """The org's keys are refused (403 ``ORG_SUSPENDED``)."""
        return self.suspended_at is not None


@dataclass(frozen=True, slots=True)
class FirstKey:
    """The key to make with a new org, in the same transaction."""

    environment: str
    """``test`` (SANDBOX) or ``live`` (PRODUCTION)."""
    role: str = "member"
    name: str = ""
    expires_at: datetime | None = None
    meta: dict[str, Any] | None = None


def _org(row: Any) -> OrgRecord:
    return OrgRecord(
        id=row.id,
        name=row.name or "",
        created_at=as_utc(row.created_at),
        suspended_at=as_utc(row.suspended_at),
        updated_at=as_utc(row.updated_at),
    )


class OrgStore:
    """Make, read, page and change orgs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self,
        org_id: str,
        name: str = "",
        *,
        actor: str = "system",
        address: str | None = None,
        first_key: FirstKey | None = None,
    ) -> tuple[OrgRecord, tuple[KeyRecord, str] | None]:
        """Make an org, and its first key with it when asked (one transaction: both or
        neither). Audited (``org.created``, ``key.created``).

        Returns:
            The org, and the first key with its secret (shown once) or None.

        Raises:
            Conflict: an org has that id already (409).
        """
        now = datetime.now(UTC)
        async with write_transaction(self.engine, f"could not create org {org_id!r}") as conn:
            made = await conn.execute(
                insert(conn.dialect.name, orgs)
                .values(id=org_id, name=name, created_at=now)
                .on_conflict_do_nothing(index_elements=["id"])
            )
            if not made.rowcount:
                raise Conflict(f"An org with the id {org_id!r} exists already.")
            await audit(
                conn,
                actor=actor,
                action="org.created",
                org=org_id,
                target_id=org_id,
                details={"name": name},
                at=now,
                address=address,
            )
            key = None
            if first_key is not None:
                key = await insert_key(
                    conn,
                    org_id,
                    first_key.environment,
                    first_key.role,
                    first_key.name,
                    now,
                    actor=actor,
                    address=address,
                    expires_at=first_key.expires_at,
                    meta=first_key.meta,
                )
        return OrgRecord(org_id, name, now), key

    async def get(self, org_id: str) -> OrgRecord | None:
        """One org, or None."""
        async with read_connection(self.engine, "could not read an org") as conn:
            row = (await conn.execute(select(orgs).where(orgs.c.id == org_id))).first()
        return _org(row) if row is not None else None

    async def require(self, org_id: str) -> OrgRecord:
        """One org.

        Raises:
            NotFound: no org has that id (404).
        """
        found = await self.get(org_id)
        if found is None:
            raise NotFound(f"No org has the id {org_id!r}.")
        return found

    async def page(
        self, *, limit: int = 50, before: tuple[datetime, str] | None = None
    ) -> tuple[list[OrgRecord], bool]:
        """One page of orgs, newest first (keyset on ``(created_at, id)``).

        Returns:
            The orgs, and whether more follow.
        """
        c = orgs.c
        q = select(orgs).order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
        if before is not None:
            at, last = before
            q = q.where(or_(c.created_at < at, and_(c.created_at == at, c.id < last)))
        async with read_connection(self.engine, "could not list orgs") as conn:
            rows = (await conn.execute(q)).all()
        return [_org(r) for r in rows[:limit]], len(rows) > limit

    async def update(
        self,
        org_id: str,
        *,
        name: str | None = None,
        suspended: bool | None = None,
        actor: str = "system",
        address: str | None = None,
    ) -> OrgRecord:
        """Rename, suspend or reinstate an org (the fields given). Audited
        (``org.updated``) when something changed. Running servers refuse (or admit again)
        the org's keys within a second.

        Raises:
            NotFound: no org has that id (404).
        """
        now = datetime.now(UTC)
        async with write_transaction(self.engine, f"could not change org {org_id!r}") as conn:
            row = (await conn.execute(select(orgs).where(orgs.c.id == org_id))).first()
            if row is None:
                raise NotFound(f"No org has the id {org_id!r}.")
            before = _org(row)
            changes: dict[str, Any] = {}
            details: dict[str, Any] = {}
            if name is not None and name != before.name:
                changes["name"] = name
                details["name"] = name
            if suspended is not None and suspended != before.suspended:
                changes["suspended_at"] = now if suspended else None
                details["suspended"] = suspended
            if not changes:
                return before
            changes["updated_at"] = now
            await conn.execute(update(orgs).where(orgs.c.id == org_id).values(**changes))
            await audit(
                conn,
                actor=actor,
                action="org.updated",
                org=org_id,
                target_id=org_id,
                details=details,
                at=now,
                address=address,
            )
            after = (await conn.execute(select(orgs).where(orgs.c.id == org_id))).one()
        return _org(after)
