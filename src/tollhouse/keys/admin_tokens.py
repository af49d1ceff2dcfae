"""Admin tokens: what the provider API (``/v1/admin/*``) is called with.

An admin token acts for the API provider, across every org: it is never an org's key and
an org's key is never one. Tokens come from two places:

* ``TOLLHOUSE_ADMIN_TOKEN`` (a setting): one token known to every process, id
  :data:`ENV_TOKEN_ID` in the audit log;
* ``tollhouse admin-tokens create``: stored like keys — only a SHA-256 hash and a short
  prefix — listed and revoked (a revoked token is refused at its next request: tokens are
  looked up in the database on every admin request, which are rare and all touch it).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.keys.hashing import hash_secret, same_hash
from tollhouse.keys.schema import admin_tokens
from tollhouse.security.audit import record as audit
from tollhouse.storage.transactions import read_connection, write_transaction
from tollhouse.times import as_utc

#: Every admin token starts so (an org key starts ``sk_``: the two cannot be mistaken).
TOKEN_PREFIX = "adm_"
#: Random characters after the prefix (base62, ≈ 238 bits).
TOKEN_LENGTH = 40
#: Characters kept in clear for people to recognise a token.
SHOWN_PREFIX = 10
#: The audit log's actor for ``TOLLHOUSE_ADMIN_TOKEN``.
ENV_TOKEN_ID = "adt_env"
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True, slots=True)
class AdminToken:
    """One stored admin token (never its secret)."""

    id: str
    """``adt_…``: what the audit log names as the actor, and ``admin-tokens revoke`` takes."""
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        """The token as ``admin-tokens list --json`` prints it."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "createdAt": _iso(self.created_at),
            "revokedAt": _iso(self.revoked_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _token(row: Any) -> AdminToken:
    return AdminToken(row.id, row.name, row.prefix, as_utc(row.created_at), as_utc(row.revoked_at))


def new_token() -> str:
    """A fresh admin token secret, ``adm_`` + 40 base62 characters."""
    return TOKEN_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(TOKEN_LENGTH))


class AdminTokenStore:
    """Create, list, revoke and check admin tokens.

    Args:
        engine: the database.
        env_token: ``TOLLHOUSE_ADMIN_TOKEN`` (empty: none).
    """

    def __init__(self, engine: AsyncEngine, env_token: str = "") -> None:
        self.engine = engine
        self._env_digest = hashlib.sha256(env_token.encode()).digest() if env_token else None

    async def create(
        self, name: str = "", *, actor: str = "system", address: str | None = None
    ) -> tuple[AdminToken, str]:
        """A new token; returns it and its secret (shown once, stored only as a hash).
        Audited (``admin_token.created``)."""
        now = datetime.now(UTC)
        secret = new_token()
        token = AdminToken("adt_" + secrets.token_hex(8), name, secret[:SHOWN_PREFIX], now)
        row = {
            "id": token.id,
            "name": name,
            "prefix": token.prefix,
            "secret_hash": hash_secret(secret),
            "created_at": now,
        }
        async with write_transaction(self.engine, "could not create an admin token") as conn:
            await conn.execute(admin_tokens.insert().values(**row))
            await audit(
                conn,
                actor=actor,
                action="admin_token.created",
                org="",
                target_id=token.id,
                details={"name": name},
                at=now,
                address=address,
            )
        return token, secret

    async def list(self) -> list[AdminToken]:
        """Every stored token, newest first."""
        q = select(admin_tokens).order_by(admin_tokens.c.created_at.desc(), admin_tokens.c.id)
        async with read_connection(self.engine, "could not list admin tokens") as conn:
            return [_token(r) for r in (await conn.execute(q)).all()]

    async def revoke(
        self, token_id: str, *, actor: str = "system", address: str | None = None
    ) -> AdminToken | None:
        """Revoke a token (refused from its next request on); None when no token has that
        id. Audited (``admin_token.revoked``) the first time."""
        now = datetime.now(UTC)
        c = admin_tokens.c
        async with write_transaction(self.engine, "could not revoke an admin token") as conn:
            changed = await conn.execute(
                update(admin_tokens)
                .where(c.id == token_id, c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (await conn.execute(select(admin_tokens).where(c.id == token_id))).first()
            if row is not None and changed.rowcount:
                await audit(
                    conn,
                    actor=actor,
                    action="admin_token.revoked",
                    org="",
                    target_id=token_id,
                    at=now,
                    address=address,
                )
        return _token(row) if row is not None else None

    async def identify(self, secret: str) -> str | None:
        """The id of the admin token ``secret`` is (:data:`ENV_TOKEN_ID` for
        ``TOLLHOUSE_ADMIN_TOKEN``), or None when it is none, or revoked.

        Raises:
            StorageError: the database could not be read.
        """
        if not secret.startswith(TOKEN_PREFIX) and self._env_digest is None:
            return None
        digest = hashlib.sha256(secret.encode()).digest()
        if self._env_digest is not None and hmac.compare_digest(digest, self._env_digest):
            return ENV_TOKEN_ID
        if not secret.startswith(TOKEN_PREFIX) or len(secret) != len(TOKEN_PREFIX) + TOKEN_LENGTH:
            return None
        wanted = digest.hex()
        c = admin_tokens.c
        q = select(c.id, c.secret_hash, c.revoked_at).where(c.secret_hash == wanted)
        async with read_connection(self.engine, "could not check an admin token") as conn:
            row = (await conn.execute(q)).first()
        if row is None or row.revoked_at is not None or not same_hash(row.secret_hash, wanted):
            return None
        return str(row.id)
