"""The auth cache: secret hash → identity, so the request path never waits on SQL.

Hits are answered from memory. A background task polls the database for revocations every
``poll_interval`` seconds (0.5 s by default) and evicts them, so a revoked key stops working
within a second on every instance that shares the database. A rotated-out key carries its
expiry in its cache entry: the entry lasts no longer than the key, and the next lookup
finds it expired (the poll also evicts keys whose overlap ended, for entries cached before
the rotation). Unknown secrets are cached as
misses for ``negative_ttl`` so a client hammering with a bad key costs one query a second.

A key that exists but may not be used for a reason the caller should hear — it expired, or
its org is suspended — is cached as a :class:`Refusal` (401 ``KEY_EXPIRED``, 403
``ORG_SUSPENDED``). Suspending or reinstating an org stamps ``orgs.updated_at``; the poll
evicts that org's keys, so the change is seen within a second too.

Entries are keyed by the secret's SHA-256 digest, as the database knows it, and each
secret's digest is remembered by the secret itself (up to ``MAX_ENTRIES``), so a key the
cache has seen is not hashed again: in the gateway's hot path the hash cost about 1 µs a
request of the ~11 µs the gateway adds in-process (OpenSSL's per-call set-up, not the 40
bytes), the memo's lookup a few hundredths of one. Secrets are thereby held in memory
while they are in use — as every gateway that authenticates from memory does, and as the
requests carrying them are anyway; the database still stores only digests. The memo
holds no identity: revoking a key evicts its digest's entry, and its next request goes to
the database as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tollhouse.errors import ApiError, KeyExpired, OrgSuspended, StorageError
from tollhouse.keys.hashing import SECRET_LENGTH, same_hash
from tollhouse.keys.model import PREFIX_ENVIRONMENT, Identity
from tollhouse.keys.store import KeyStore
from tollhouse.memo import remember
from tollhouse.storage.poll import Poller

logger = logging.getLogger(__name__)

#: Returned by :meth:`KeyCache.cached` when the database must be asked.
MISS = object()
_PREFIXES = frozenset(p.encode() for p in PREFIX_ENVIRONMENT)
KEY_LENGTH = 8 + SECRET_LENGTH

#: Entries kept at most; the cache is emptied when it fills (hostile key floods).
MAX_ENTRIES = 100_000
#: Revocations older than this before the last poll are read again (clock skew between hosts).
REVOCATION_OVERLAP = timedelta(seconds=2)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A known key that is refused with its own error (a new one per request)."""

    expired: bool
    """True: the key expired (401); False: its org is suspended (403)."""
    org: str

    def error(self) -> ApiError:
        """The error to answer with."""
        if self.expired:
            return KeyExpired("The API key has expired; use its replacement or create a new key.")
        return OrgSuspended(
            f"The org {self.org!r} is suspended: its keys are refused until the provider "
            "reinstates it."
        )


class KeyCache:
    """Authenticates secrets against a :class:`KeyStore` through an in-memory cache."""

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 1.0,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.poll_interval = poll_interval
        self.clock = clock
        self.wall_clock = wall_clock or (lambda: datetime.now(UTC))
        # Keyed by the raw SHA-256 digest of the secret (the database keeps its hex form).
        self._entries: dict[bytes, tuple[Identity | Refusal | None, float]] = {}
        #: secret → its digest: the hot path hashes a key once (cleared when full).
        self._digests: dict[bytes, bytes] = {}
        self._inflight: dict[bytes, asyncio.Future[Identity | Refusal | None]] = {}
        self._since = self.wall_clock()
        self._poller = Poller(self.poll_revocations, poll_interval, "key revocations")

    def cached(self, secret: bytes) -> Identity | Refusal | object | None:
        """The answer for ``secret`` if memory has it (an identity, a :class:`Refusal`, or
        None for a bad key), else :data:`MISS`: then ``await authenticate(secret)``. No
        I/O, no coroutine: this is the gateway's hot path."""
        digest = self._digests.get(secret)
        if digest is None:
            if len(secret) != KEY_LENGTH or secret[:8] not in _PREFIXES:
                return None
            digest = hashlib.sha256(secret).digest()
            remember(self._digests, MAX_ENTRIES, secret, digest)
        entry = self._entries.get(digest)
        if entry is not None and entry[1] > self.clock():
            return entry[0]
        return MISS

    async def authenticate(self, secret: str | bytes) -> Identity | Refusal | None:
        """The identity of an active key with this secret, a :class:`Refusal` for an
        expired key or a key of a suspended org, or None.

        Raises:
            StorageError: the key is not cached and the database cannot be reached.
        """
        raw = secret if isinstance(secret, bytes) else secret.encode("utf-8", "replace")
        if len(raw) != KEY_LENGTH or raw[:8] not in _PREFIXES:
            return None
        digest = hashlib.sha256(raw).digest()
        entry = self._entries.get(digest)
        now = self.clock()
        if entry is not None and entry[1] > now:
            return entry[0]
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Identity | Refusal | None] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        try:
            identity = await self._load(digest, entry)
            fut.set_result(identity)
            return identity
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[digest]

    async def _load(
        self, digest: bytes, stale: tuple[Identity | Refusal | None, float] | None
    ) -> Identity | Refusal | None:
        try:
            found = await self.store.by_hash(digest.hex())
        except StorageError:
            if stale is not None and isinstance(stale[0], Identity):
                # The database is away: keep honouring a key we knew was valid.
                logger.warning("key lookup failed; serving cached identity")
                return stale[0]
            raise
        identity: Identity | Refusal | None = None
        ttl = self.negative_ttl
        wall = self.wall_clock()
        if found is not None:
            record, stored = found
            if not same_hash(stored, digest.hex()) or record.revoked_at is not None:
                pass
            elif record.org_suspended:
                identity = Refusal(False, record.org)
                ttl = self.ttl  # the poll evicts it when the org is reinstated
            elif not record.active(wall):
                identity = Refusal(True, record.org)
                ttl = self.ttl
            else:
                identity = Identity(record.id, record.org, record.environment, record.role)
                ttl = self.ttl
                if record.expires_at is not None:
                    # The entry ends when the key does; the lookup after it refuses the key.
                    ttl = min(ttl, (record.expires_at - wall).total_seconds())
        remember(self._entries, MAX_ENTRIES, digest, (identity, self.clock() + ttl))
        return identity

    def with_tenant(self, identity: Identity, tenant: str | None) -> Identity:
        """The identity for one request carrying ``X-Tenant-Id``."""
        return identity if tenant is None else dataclasses.replace(identity, tenant=tenant)

    async def poll_revocations(self) -> int:
        """Evict keys revoked since the last poll; returns how many were evicted."""
        started = self.wall_clock()
        hashes = await self.store.revoked_since(self._since - REVOCATION_OVERLAP, started)
        self._since = started
        evicted = 0
        for h in hashes:
            if self._entries.pop(bytes.fromhex(h), None) is not None:
                evicted += 1
        return evicted

    def start(self) -> None:
        """Start polling for revocations (call from a running event loop)."""
        self._poller.start()

    async def stop(self) -> None:
        """Stop polling."""
        await self._poller.stop()
