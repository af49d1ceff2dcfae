"""The audit log: who changed which key, webhook endpoint or limit, and when.

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
from sqlalchemy import Column, Connection, DateTime, Index, String, Table, Text, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateIndex, CreateTable

from tollhouse.keys.schema import api_keys
from tollhouse.storage.schema import metadata
from tollhouse.storage.transactions import read_connection
from tollhouse.times import as_utc

Action = Literal[
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
    Index("ix_audit_log_org_at", "org_id", "at"),
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
    """``cli:<user>``, ``cli``, ``system`` or the key id that made the change (then
    ``details["address"]`` is the client address it came from)."""
    action: str
    org: str
    target_id: str
    """The key (``key_…``), endpoint (``we_…``) or ``bucket[/key_…]`` changed."""
    details: dict[str, Any]

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
    out = [
        AuditEntry(
            id=r.id,
            at=as_utc(r.at),
            actor=r.actor,
            action=r.action,
            org=r.org_id,
            target_id=r.target_id,
            details=orjson.loads(r.details),
        )
        for r in rows
    ]
    out.reverse()
    return out
