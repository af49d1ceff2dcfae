"""Keys and orgs in the SQL database (SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import Conflict, NotFound, StorageError
from tollhouse.keys.hashing import SHOWN_PREFIX, hash_secret, new_key_id, new_secret
from tollhouse.keys.model import KeyRecord
from tollhouse.keys.schema import api_keys, orgs
from tollhouse.security.audit import record as audit
from tollhouse.storage.dialect import insert
from tollhouse.storage.transactions import read_connection, write_transaction
from tollhouse.times import as_utc

_ENV_NAME = {"test": "SANDBOX", "live": "PRODUCTION"}


class NotRotatable(Conflict, ValueError):
    """The key is revoked or expired already: there is nothing to rotate (409; a
    ValueError to callers that predate the provider API)."""


def _record(row: Any) -> KeyRecord:
    meta = getattr(row, "meta", None)
    return KeyRecord(
        id=row.id,
        org=row.org_id,
        environment=row.environment,
        role=row.role,
        name=row.name,
        prefix=row.prefix,
        created_at=as_utc(row.created_at),
        revoked_at=as_utc(row.revoked_at),
        expires_at=as_utc(row.expires_at),
        last_used_at=as_utc(getattr(row, "last_used_at", None)),
        meta=orjson.loads(meta) if isinstance(meta, str) else meta,
        org_suspended=getattr(row, "org_suspended_at", None) is not None,
    )


_ENV_ARG = {"SANDBOX": "test", "PRODUCTION": "live"}


def _new_row(org: str, env: str, role: str, name: str, now: datetime) -> tuple[dict[str, Any], str]:
    secret = new_secret(env)
    return {
        "id": new_key_id(),
        "org_id": org,
        "environment": _ENV_NAME[env],
        "role": role,
        "name": name,
        "prefix": secret[:SHOWN_PREFIX],
        "secret_hash": hash_secret(secret),
        "created_at": now,
    }, secret


def _details(row: dict[str, Any]) -> dict[str, Any]:
    # What the audit log keeps of a key: never the secret, its hash or its prefix.
    return {"environment": row["environment"], "role": row["role"], "name": row["name"]}


async def insert_key(
    conn: AsyncConnection,
    org: str,
    env: str,
    role: str,
    name: str,
    now: datetime,
    *,
    actor: str,
    address: str | None = None,
    expires_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[KeyRecord, str]:
    """Insert a key of an org that exists, audited (``key.created``), on ``conn`` inside
    the caller's transaction (an org and its first key are made in one).

    Returns:
        The record and the secret (shown once: only its hash is stored).
    """
    row, secret = _new_row(org, env, role, name, now)
    if expires_at is not None:
        row["expires_at"] = expires_at
    if meta is not None:
        row["meta"] = orjson.dumps(meta).decode()
    await conn.execute(api_keys.insert().values(**row))
    details = _details(row)
    if expires_at is not None:
        details["expiresAt"] = expires_at.isoformat().replace("+00:00", "Z")
    await audit(
        conn,
        actor=actor,
        action="key.created",
        org=org,
        target_id=row["id"],
        details=details,
        at=now,
        address=address,
    )
    return _record(_Row(row)), secret


class KeyStore:
    """Create, list, revoke and look up API keys."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self,
        org: str,
        env: str = "test",
        role: str = "member",
        name: str = "",
        *,
        actor: str = "system",
        address: str | None = None,
        expires_at: datetime | None = None,
        meta: dict[str, Any] | None = None,
        existing_org: bool = False,
    ) -> tuple[KeyRecord, str]:
        """Make a key for ``org``. Returns the record and the secret.

        The secret is returned once and never stored: only its hash is. The change is
        audited (``key.created``) in the same transaction.

        Args:
            org: the org; created if new, unless ``existing_org``.
            env: ``test`` (SANDBOX) or ``live`` (PRODUCTION).
            role: root, manager, backend or member.
            name: a label for people.
            actor: who makes it (the audit log's actor).
            address: the caller's address, for a change made over HTTP.
            expires_at: when the key stops working (None: never).
            meta: free-form JSON kept with the key.
            existing_org: refuse an unknown org instead of creating it (the provider API).

        Raises:
            NotFound: ``existing_org`` and no org has that id.
        """
        now = datetime.now(UTC)
        try:
            async with self.engine.begin() as conn:
                if existing_org:
                    found = await conn.execute(select(orgs.c.id).where(orgs.c.id == org))
                    if found.first() is None:
                        raise NotFound(f"No org has the id {org!r}.")
                else:
                    # Two keys of a new org may be created at once: the org row is inserted
                    # once, whoever comes second does nothing.
                    await conn.execute(
                        insert(conn.dialect.name, orgs)
                        .values(id=org, created_at=now)
                        .on_conflict_do_nothing(index_elements=["id"])
                    )
                return await insert_key(
                    conn,
                    org,
                    env,
                    role,
                    name,
                    now,
                    actor=actor,
                    address=address,
                    expires_at=expires_at,
                    meta=meta,
                )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not create a key: {exc}") from exc

    async def rotate(
        self,
        key_id: str,
        overlap: timedelta,
        *,
        actor: str = "system",
        address: str | None = None,
        org: str | None = None,
        environment: str | None = None,
    ) -> tuple[KeyRecord, str, KeyRecord] | None:
        """Replace a key: a new secret for the same org, environment, role, name, meta
        and expiry (a time-limited key's successor ends when it would have); the old key
        keeps working for ``overlap`` (0 revokes it at once).

        Args:
            key_id: the key to replace.
            overlap: how long the old key keeps working.
            actor: who rotates it (the audit log's actor).
            address: the caller's address, for a change made over HTTP.
            org: only a key of this org (another org's key is None, like an unknown one).
            environment: only a key of this environment too (the self-serve API's scope).

        Returns:
            The new record, its secret (shown once) and the old record as it is now, or
            None when no key has that id (in the scope).

        Raises:
            NotRotatable: the key is revoked or has expired already (a ValueError, 409).
        """
        now = datetime.now(UTC)
        # BEGIN IMMEDIATE on SQLite: two rotations of one key cannot both read it active.
        async with write_transaction(self.engine, f"could not rotate {key_id}") as conn:
            found = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
            if found is None or not _in_scope(found, org, environment):
                return None
            old = _record(found)
            if not old.active(now):
                raise NotRotatable(f"{key_id} is revoked or expired: there is nothing to rotate")
            env = _ENV_ARG[old.environment]
            row, secret = _new_row(old.org, env, old.role, old.name, now)
            if found.meta is not None:
                row["meta"] = found.meta
            if old.expires_at is not None:
                # A time-limited key stays time-limited: the new secret ends when the
                # old key would have (a rotation never makes a key permanent).
                row["expires_at"] = old.expires_at
            await conn.execute(api_keys.insert().values(**row))
            ends = now + overlap
            if old.expires_at is not None and old.expires_at < ends:
                ends = old.expires_at  # a rotation never extends an older deadline
            change = {"revoked_at": now} if overlap <= timedelta(0) else {"expires_at": ends}
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(**change)
            )
            after = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).one()
            await audit(
                conn,
                actor=actor,
                action="key.rotated",
                org=old.org,
                target_id=key_id,
                details={
                    **_details(row),
                    "newKeyId": row["id"],
                    "overlapSeconds": max(0, int(overlap.total_seconds())),
                    "oldKeyExpiresAt": (
                        (now if overlap <= timedelta(0) else ends)
                        .isoformat()
                        .replace("+00:00", "Z")
                    ),
                },
                at=now,
                address=address,
            )
        return _record(_Row(row)), secret, _record(after)

    async def list_keys(
        self, org: str | None = None, *, environment: str | None = None
    ) -> list[KeyRecord]:
        """Keys, newest first, optionally of one org (and one environment)."""
        q = select(api_keys).order_by(api_keys.c.created_at.desc(), api_keys.c.id)
        if org is not None:
            q = q.where(api_keys.c.org_id == org)
        if environment is not None:
            q = q.where(api_keys.c.environment == environment)
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q)).all()
        except SQLAlchemyError as exc:
            raise StorageError(f"could not list keys: {exc}") from exc
        return [_record(r) for r in rows]

    async def get(self, key_id: str, org: str | None = None) -> KeyRecord | None:
        """One key (of ``org`` when given), or None."""
        q = select(api_keys).where(api_keys.c.id == key_id)
        if org is not None:
            q = q.where(api_keys.c.org_id == org)
        async with read_connection(self.engine, "could not read a key") as conn:
            row = (await conn.execute(q)).first()
        return _record(row) if row is not None else None

    async def page(
        self,
        org: str,
        *,
        limit: int = 50,
        before: tuple[datetime, str] | None = None,
        environment: str | None = None,
    ) -> tuple[list[KeyRecord], bool]:
        """One page of an org's keys, newest first (keyset on ``(created_at, id)``).

        Args:
            org: the org.
            limit: keys per page.
            before: ``(created_at, id)`` of the last key of the previous page.
            environment: only keys of this environment (SANDBOX or PRODUCTION).

        Returns:
            The keys, and whether more follow.
        """
        c = api_keys.c
        q = (
            select(api_keys)
            .where(c.org_id == org)
            .order_by(c.created_at.desc(), c.id.desc())
            .limit(limit + 1)
        )
        if environment is not None:
            q = q.where(c.environment == environment)
        if before is not None:
            at, last = before
            q = q.where(or_(c.created_at < at, and_(c.created_at == at, c.id < last)))
        async with read_connection(self.engine, "could not list keys") as conn:
            rows = (await conn.execute(q)).all()
        return [_record(r) for r in rows[:limit]], len(rows) > limit

    async def revoke(
        self,
        key_id: str,
        *,
        actor: str = "system",
        address: str | None = None,
        org: str | None = None,
        environment: str | None = None,
    ) -> KeyRecord | None:
        """Revoke a key; returns it (already-revoked keys keep their first revocation time),
        or None when no key has that id — of ``org`` and ``environment`` when given. A
        revocation is audited (``key.revoked``)."""
        now = datetime.now(UTC)
        try:
            async with self.engine.begin() as conn:
                where = [api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)]
                if org is not None:
                    where.append(api_keys.c.org_id == org)
                if environment is not None:
                    where.append(api_keys.c.environment == environment)
                changed = await conn.execute(update(api_keys).where(*where).values(revoked_at=now))
                row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
                if row is not None and not _in_scope(row, org, environment):
                    row = None
                if row is not None and changed.rowcount:
                    await audit(
                        conn,
                        actor=actor,
                        action="key.revoked",
                        org=row.org_id,
                        target_id=key_id,
                        details={"environment": row.environment, "role": row.role},
                        at=now,
                        address=address,
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not revoke {key_id}: {exc}") from exc
        return _record(row) if row is not None else None

    async def by_hash(self, secret_hash: str) -> tuple[KeyRecord, str] | None:
        """The key whose secret hashes to ``secret_hash`` with its stored hash, or None
        (with :attr:`KeyRecord.org_suspended` read from its org)."""
        q = (
            select(api_keys, orgs.c.suspended_at.label("org_suspended_at"))
            .select_from(api_keys.outerjoin(orgs, orgs.c.id == api_keys.c.org_id))
            .where(api_keys.c.secret_hash == secret_hash)
        )
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(q)).first()
        except SQLAlchemyError as exc:
            raise StorageError(f"could not look up a key: {exc}") from exc
        return (_record(row), row.secret_hash) if row is not None else None

    async def revoked_since(self, since: datetime, now: datetime | None = None) -> list[str]:
        """Hashes of keys revoked at or after ``since``, whose rotation overlap (or expiry)
        ended between ``since`` and ``now``, or whose org was suspended or reinstated
        (``orgs.updated_at``) at or after ``since``."""
        now = now or datetime.now(UTC)
        changed_orgs = select(orgs.c.id).where(orgs.c.updated_at >= since)
        q = select(api_keys.c.secret_hash).where(
            or_(
                api_keys.c.revoked_at >= since,
                (api_keys.c.expires_at >= since) & (api_keys.c.expires_at <= now),
                api_keys.c.org_id.in_(changed_orgs.scalar_subquery()),
            )
        )
        try:
            async with self.engine.connect() as conn:
                return [r[0] for r in (await conn.execute(q)).all()]
        except SQLAlchemyError as exc:
            raise StorageError(f"could not read revocations: {exc}") from exc

    async def by_hash_secret(self, secret: str) -> KeyRecord | None:
        """Convenience for tools: the active key for a secret, or None."""
        found = await self.by_hash(hash_secret(secret))
        if found is None or not found[0].active(datetime.now(UTC)):
            return None
        return found[0]


def _in_scope(row: Any, org: str | None, environment: str | None) -> bool:
    """Whether a stored key belongs to ``org`` and ``environment`` (None: any)."""
    return (org is None or row.org_id == org) and (
        environment is None or row.environment == environment
    )


class _Row:
    """Attribute access over a dict, so a just-inserted row reads like a fetched one."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self.__dict__.setdefault("revoked_at", None)
        self.__dict__.setdefault("expires_at", None)
        self.__dict__.setdefault("last_used_at", None)
        self.__dict__.setdefault("meta", None)
