"""The audit log: who changed which org, key, webhook endpoint, limit or admin token,
when, and from which address.

The actor is ``cli:<OS user>`` for a command on the database, the admin token's id
(``adt_…``, or ``adt_env`` for ``TOLLHOUSE_ADMIN_TOKEN``) for the provider API, the key's
id (``key_…``) for a change an org makes with its own key, or ``system``. The address is
the caller's (after trusted proxies) for a change made over HTTP, else empty.

One row per change, written with :func:`record` on the connection of the change's own
transaction, so a change and its audit row are committed (or rolled back) together.
Details never hold secrets: key secrets and webhook signing secrets are shown once at
creation and are not stored in clear anywhere, this table included; webhook URLs are
kept without their query string and credentials, which may carry tokens.
"""

from __future__ import annotations

import getpass
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Index,
    String,
    Table,
    Text,
    and_,
    inspect,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from tollhouse.keys.schema import admin_tokens, api_keys, orgs
from tollhouse.storage.schema import metadata
from tollhouse.storage.transactions import read_connection
from tollhouse.times import as_utc

Action = Literal[
    "org.created",
    "org.updated",
    "admin_token.created",
    "admin_token.revoked",
    "key.created",
    "key.revoked",
    "key.rotated",
    "webhook.added",
    "webhook.removed",
    "webhook.updated",
    "webhook.secret_rotated",
    "webhook.tested",
    "webhook.replayed",
    "limit.set",
    "limit.cleared",
]

#: Every action the log records.
ACTIONS: tuple[Action, ...] = (
    "org.created",
    "org.updated",
    "admin_token.created",
    "admin_token.revoked",
    "key.created",
    "key.revoked",
    "key.rotated",
    "webhook.added",
    "webhook.removed",
    "webhook.updated",
    "webhook.secret_rotated",
    "webhook.tested",
    "webhook.replayed",
    "limit.set",
    "limit.cleared",
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(32), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("details", Text, nullable=False),
    # Step 11: the caller's address for changes made over HTTP.
    Column("address", String(64), nullable=True),
    Index("ix_audit_log_org_at", "org_id", "at"),
    Index("ix_audit_log_at", "at", "id"),
)


def migrate_security(conn: Connection) -> None:
    """Migration step: the audit log table, and ``api_keys.expires_at`` (key rotation)
    where a database made before it lacks the column."""
    present = {c["name"] for c in inspect(conn).get_columns(api_keys.name)}
    if "expires_at" not in present:
        kind = api_keys.c.expires_at.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {api_keys.name} ADD COLUMN expires_at {kind}")
    for index in api_keys.indexes:
        conn.execute(CreateIndex(index, if_not_exists=True))
    conn.execute(CreateTable(audit_log, if_not_exists=True))
    for index in audit_log.indexes:
        conn.execute(CreateIndex(index, if_not_exists=True))


def _add_missing_columns(conn: Connection, table: Table, names: tuple[str, ...]) -> None:
    """``ALTER TABLE … ADD COLUMN`` for each of ``names`` the table lacks (a database made
    before the step); a fresh database got them from the table's definition."""
    present = {c["name"] for c in inspect(conn).get_columns(table.name)}
    for name in names:
        if name in present:
            continue
        column = table.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        default = column.server_default
        extra = ""
        if default is not None:
            text = getattr(default, "arg", "")
            extra = f" DEFAULT '{text}'"
        if not column.nullable:
            extra += " NOT NULL"
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}{extra}")


def migrate_admin(conn: Connection) -> None:
    """Migration step 11 (the provider API): org name and suspension, key
    ``last_used_at`` and ``meta``, the audit log's caller address, the admin tokens."""
    _add_missing_columns(conn, orgs, ("name", "suspended_at", "updated_at"))
    _add_missing_columns(conn, api_keys, ("last_used_at", "meta"))
    _add_missing_columns(conn, audit_log, ("address",))
    for table in (orgs, audit_log):
        for index in table.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))
    conn.execute(CreateTable(admin_tokens, if_not_exists=True))


def cli_actor() -> str:
    """The actor of a CLI command: ``cli:<OS user>``, or ``cli`` when it is unknown."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        return "cli"
    return f"cli:{user}" if user else "cli"


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment (they may carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded change."""

    id: str
    at: datetime
    actor: str
    """``cli:<user>``, ``cli``, ``system``, the admin token id (``adt_…``) or the key id
    that made the change."""
    action: str
    org: str
    """The org whose data changed (empty for an admin token's creation or revocation)."""
    target_id: str
    """The org, key (``key_…``), endpoint (``we_…``), ``bucket[/key_…]`` or admin token
    (``adt_…``) changed."""
    details: dict[str, Any]
    address: str | None = None
    """The caller's address, for a change made over HTTP."""

    def as_json(self) -> dict[str, Any]:
        """The entry as ``tollhouse audit --json`` prints it."""
        return {
            "id": self.id,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "actor": self.actor,
            "action": self.action,
            "org": self.org,
            "targetId": self.target_id,
            "details": self.details,
            "address": self.address,
        }


async def record(
    conn: AsyncConnection,
    *,
    actor: str,
    action: Action,
    org: str,
    target_id: str,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
    address: str | None = None,
) -> None:
    """Write one audit row on ``conn``, inside the caller's transaction.

    Args:
        conn: the connection of the transaction that makes the change.
        actor: who made it.
        action: what kind of change.
        org: whose data changed.
        target_id: what changed.
        details: what else is worth knowing — never a secret.
        at: when (now by default).
        address: the caller's address, for a change made over HTTP.
    """
    await conn.execute(
        audit_log.insert().values(
            id="aud_" + secrets.token_hex(10),
            at=at or datetime.now(UTC),
            actor=actor[:200],
            action=action,
            org_id=org,
            target_id=target_id,
            details=orjson.dumps(details or {}, option=orjson.OPT_SORT_KEYS).decode(),
            address=address[:64] if address else None,
        )
    )


async def read_log(
    engine: AsyncEngine, org: str | None = None, limit: int = 1000
) -> list[AuditEntry]:
    """Audit entries, oldest first, optionally of one org (the latest ``limit``).

    Raises:
        StorageError: the database could not be read.
    """
    q = select(audit_log).order_by(audit_log.c.at.desc(), audit_log.c.id.desc()).limit(limit)
    if org is not None:
        q = q.where(audit_log.c.org_id == org)
    async with read_connection(engine, "could not read the audit log") as conn:
        rows = (await conn.execute(q)).all()
    out = [_entry(r) for r in rows]
    out.reverse()
    return out


def _entry(r: Any) -> AuditEntry:
    return AuditEntry(
        id=r.id,
        at=as_utc(r.at),
        actor=r.actor,
        action=r.action,
        org=r.org_id,
        target_id=r.target_id,
        details=orjson.loads(r.details),
        address=r.address,
    )


async def read_page(
    engine: AsyncEngine,
    *,
    org: str | None = None,
    action: str | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> tuple[list[AuditEntry], bool]:
    """One page of the audit log, newest first (keyset on ``(at, id)``).

    Args:
        engine: the database.
        org: only this org's changes.
        action: only this action (one of :data:`ACTIONS`).
        limit: entries per page.
        before: ``(at, id)`` of the last entry of the previous page.

    Returns:
        The entries, and whether more follow.

    Raises:
        StorageError: the database could not be read.
    """
    c = audit_log.c
    q = select(audit_log).order_by(c.at.desc(), c.id.desc()).limit(limit + 1)
    if org is not None:
        q = q.where(c.org_id == org)
    if action is not None:
        q = q.where(c.action == action)
    if before is not None:
        at, last = before
        q = q.where(or_(c.at < at, and_(c.at == at, c.id < last)))
    async with read_connection(engine, "could not read the audit log") as conn:
        rows = (await conn.execute(q)).all()
    return [_entry(r) for r in rows[:limit]], len(rows) > limit
