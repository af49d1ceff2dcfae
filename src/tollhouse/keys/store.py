"""Keys and orgs in the SQL database (SQLite by default, PostgreSQL at scale)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.keys.hashing import SHOWN_PREFIX, hash_secret, new_key_id, new_secret
from tollhouse.keys.model import KeyRecord
from tollhouse.keys.schema import api_keys, orgs
from tollhouse.security.audit import record as audit
from tollhouse.storage.dialect import insert
from tollhouse.storage.transactions import write_transaction
from tollhouse.times import as_utc

_ENV_NAME = {"test": "SANDBOX", "live": "PRODUCTION"}


def _record(row: Any) -> KeyRecord:
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
    )


_ENV_ARG = {"SANDBOX": "test", "PRODUCTION": "live"}


def _new_row(
    org: str, env: str, role: str, name: str, now: datetime, expires_at: datetime | None = None
) -> tuple[dict[str, Any], str]:
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
        "expires_at": expires_at,
    }, secret


def _details(row: dict[str, Any], address: str | None = None) -> dict[str, Any]:
    # What the audit log keeps of a key: never the secret, its hash or its prefix.
    out = {"environment": row["environment"], "role": row["role"], "name": row["name"]}
    return _from(out, address)


def _from(details: dict[str, Any], address: str | None) -> dict[str, Any]:
    """``details`` with the client address a change came from (self-serve API calls)."""
    return {**details, "address": address} if address is not None else details


def _in_scope(row: Any, org: str | None, environment: str | None) -> bool:
    """Whether a stored key belongs to ``org`` and ``environment`` (None: any)."""
    return (org is None or row.org_id == org) and (
        environment is None or row.environment == environment
    )


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
        expires_at: datetime | None = None,
        address: str | None = None,
    ) -> tuple[KeyRecord, str]:
        """Make a key for ``org`` (created if new). Returns the record and the secret.

        The secret is returned once and never stored: only its hash is. The change is
        audited (``key.created``, with the client ``address`` when given) in the same
        transaction. A key with ``expires_at`` is refused from then on.
        """
        now = datetime.now(UTC)
        row, secret = _new_row(org, env, role, name, now, expires_at)
        try:
            async with self.engine.begin() as conn:
                # Two keys of a new org may be created at once: the org row is inserted
                # once, whoever comes second does nothing.
                await conn.execute(
                    insert(conn.dialect.name, orgs)
                    .values(id=org, created_at=now)
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                await conn.execute(api_keys.insert().values(**row))
                await audit(
                    conn,
                    actor=actor,
                    action="key.created",
                    org=org,
                    target_id=row["id"],
                    details=_details(row, address),
                    at=now,
                )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not create a key: {exc}") from exc
        return _record(_Row(row)), secret

    async def rotate(
        self,
        key_id: str,
        overlap: timedelta,
        *,
        actor: str = "system",
        org: str | None = None,
        environment: str | None = None,
        address: str | None = None,
    ) -> tuple[KeyRecord, str, KeyRecord] | None:
        """Replace a key: a new secret for the same org, environment, role and name; the
        old key keeps working for ``overlap`` (0 revokes it at once).

        Args:
            org, environment: only a key of this org and environment (the self-serve
                API's scope); another's is reported as unknown.

        Returns:
            The new record, its secret (shown once) and the old record as it is now, or
            None when no key has that id (in the scope).

        Raises:
            ValueError: the key is revoked or has expired already.
        """
        now = datetime.now(UTC)
        # BEGIN IMMEDIATE on SQLite: two rotations of one key cannot both read it active.
        async with write_transaction(self.engine, f"could not rotate {key_id}") as conn:
            found = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
            if found is None or not _in_scope(found, org, environment):
                return None
            old = _record(found)
            if not old.active(now):
                raise ValueError(f"{key_id} is revoked or expired: there is nothing to rotate")
            env = _ENV_ARG[old.environment]
            row, secret = _new_row(old.org, env, old.role, old.name, now)
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
                    **_details(row, address),
                    "newKeyId": row["id"],
                    "overlapSeconds": max(0, int(overlap.total_seconds())),
                    "oldKeyExpiresAt": (
                        (now if overlap <= timedelta(0) else ends)
                        .isoformat()
                        .replace("+00:00", "Z")
                    ),
                },
                at=now,
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

    async def revoke(
        self,
        key_id: str,
        *,
        actor: str = "system",
        org: str | None = None,
        environment: str | None = None,
        address: str | None = None,
    ) -> KeyRecord | None:
        """Revoke a key; returns it (already-revoked keys keep their first revocation time),
        or None when no key has that id — of ``org`` and ``environment`` when given. A
        revocation is audited (``key.revoked``)."""
        now = datetime.now(UTC)
        scope = [api_keys.c.id == key_id]
        if org is not None:
            scope.append(api_keys.c.org_id == org)
        if environment is not None:
            scope.append(api_keys.c.environment == environment)
        try:
            async with self.engine.begin() as conn:
                changed = await conn.execute(
                    update(api_keys)
                    .where(*scope, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                row = (await conn.execute(select(api_keys).where(*scope))).first()
                if row is not None and changed.rowcount:
                    await audit(
                        conn,
                        actor=actor,
                        action="key.revoked",
                        org=row.org_id,
                        target_id=key_id,
                        details=_from({"environment": row.environment, "role": row.role}, address),
                        at=now,
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"could not revoke {key_id}: {exc}") from exc
        return _record(row) if row is not None else None

    async def by_hash(self, secret_hash: str) -> tuple[KeyRecord, str] | None:
        """The key whose secret hashes to ``secret_hash`` with its stored hash, or None."""
        q = select(api_keys).where(api_keys.c.secret_hash == secret_hash)
        try:
            async with self.engine.connect() as conn:
                row = (await conn.execute(q)).first()
        except SQLAlchemyError as exc:
            raise StorageError(f"could not look up a key: {exc}") from exc
        return (_record(row), row.secret_hash) if row is not None else None

    async def revoked_since(self, since: datetime, now: datetime | None = None) -> list[str]:
        """Hashes of keys revoked at or after ``since``, or whose rotation overlap ended
        between ``since`` and ``now``."""
        now = now or datetime.now(UTC)
        q = select(api_keys.c.secret_hash).where(
            or_(
                api_keys.c.revoked_at >= since,
                (api_keys.c.expires_at >= since) & (api_keys.c.expires_at <= now),
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


class _Row:
    """Attribute access over a dict, so a just-inserted row reads like a fetched one."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self.__dict__.setdefault("revoked_at", None)
        self.__dict__.setdefault("expires_at", None)
