"""Signed webhooks (Standard Webhooks): endpoints per org and environment, an outbox of
deliveries, a sender with a retry schedule, and every attempt recorded.

* **Environments**: an endpoint belongs to an org in one environment (SANDBOX or
  PRODUCTION); a job's events go only to the endpoints of its own org and environment,
  and a key lists only the deliveries of its own.

* **Signing**: ``webhook-id`` (the event's message id, the same for every retry),
  ``webhook-timestamp`` (Unix seconds of this attempt) and
  ``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed with the
  base64-decoded part of the endpoint's ``whsec_<base64>`` secret — by
  :func:`tollhouse.webhooks.sign`, the function receivers verify with. For an overlap
  after :meth:`WebhookStore.rotate_secret` the old secret signs too: the header carries
  both signatures, space-separated (Standard Webhooks allows several), so a receiver
  verifies with either secret until the overlap ends.
* **Event types**: an endpoint with an event-type filter gets only those events
  (``ping`` test messages always go through).
* **Test and replay**: :meth:`WebhookStore.ping` and :meth:`WebhookStore.replay` stage
  one delivery already held by the caller, who sends its first attempt at once
  (:func:`send_attempt`, :meth:`WebhookStore.record`); a failed one is retried on the
  schedule like any other.
* **Outbox**: when a job finishes, :func:`tollhouse.jobs.outbox.stage_events` writes one
  delivery per enabled endpoint of the job's org and environment in the job's own
  transaction; the body is
  fixed then, so every retry sends the same bytes. It lives in its own module because
  the queue's state machine calls it: the queue needs the outbox, not the sender.
* **Schedule**: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (±10 % jitter);
  ``Retry-After`` on a failed attempt is honoured (up to 10 h); after the last attempt
  the delivery is ``failed``.
* **410 Gone** disables the endpoint; its pending deliveries are cancelled.
* Redirects are not followed (a 3xx is a failed attempt): the signed body goes only to
  the URL the org registered.
* :class:`WebhookSender` runs attempts in its own tasks with its own concurrency, so a
  slow receiver never holds a job worker's slot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.jobs.model import PRODUCTION, Clock, iso, utc_now
from tollhouse.jobs.outbox import stage_events
from tollhouse.jobs.schema import webhook_attempts, webhook_deliveries, webhook_endpoints
from tollhouse.keys.model import ENVIRONMENTS
from tollhouse.security import audit
from tollhouse.security.net import check_target, webhook_client
from tollhouse.storage.transactions import read_connection, write_transaction
from tollhouse.times import as_utc, parse_retry_after
from tollhouse.webhooks import HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SECRET_PREFIX, sign

logger = logging.getLogger(__name__)

# stage_events is re-exported: callers that stage events of their own import it from here.
__all__ = [
    "Attempt",
    "AttemptResult",
    "Delivery",
    "DeliveryTask",
    "Endpoint",
    "EndpointChanges",
    "WebhookSender",
    "WebhookStore",
    "check_event_types",
    "check_url",
    "delivery_json",
    "endpoint_json",
    "new_secret",
    "next_delay",
    "send_attempt",
    "signed_headers",
    "stage_events",
]

#: Delay before each attempt, in seconds: attempt 1 at once, then 5 s, 5 min, 30 min, 2 h,
#: 5 h, 10 h, 10 h after the one before.
SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
#: Each delay is scaled by a random factor in 1 ± JITTER.
JITTER = 0.1
#: A receiver's Retry-After is honoured up to this many seconds.
MAX_RETRY_AFTER = 36000.0
#: Longest URL accepted for an endpoint.
MAX_URL_CHARS = 2048
USER_AGENT = "tollhouse-webhooks/1"
#: The event type of a test message (:meth:`WebhookStore.ping`); never filtered out.
PING: Final = "ping"
#: Most event types one endpoint's filter names, and the longest one.
MAX_EVENT_TYPES = 20
MAX_EVENT_TYPE_CHARS = 64
#: Characters of a receiver's answer kept with each attempt.
EXCERPT_CHARS = 500

# --- signing (pure) ----------------------------------------------------------------------


def new_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(
    secret: str,
    message_id: str,
    timestamp: int,
    body: bytes,
    previous_secret: str | None = None,
) -> dict[str, str]:
    """Every header of one attempt; with ``previous_secret`` (a rotation's overlap) the
    signature header carries a signature by each secret, space-separated."""
    signature = sign(body, secret, message_id, timestamp)
    if previous_secret is not None:
        signature += " " + sign(body, previous_secret, message_id, timestamp)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        HEADER_ID: message_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: signature,
    }


# --- schedule (pure) ---------------------------------------------------------------------


def next_delay(
    attempts_made: int,
    retry_after: float | None = None,
    rng: random.Random | None = None,
    schedule: Sequence[float] = SCHEDULE,
) -> float | None:
    """Seconds to wait before the next attempt after ``attempts_made`` failed ones, or None
    when the schedule is used up.

    Args:
        attempts_made: attempts so far (1 after the first).
        retry_after: the receiver's ``Retry-After``, in seconds, if it sent one.
        rng: randomness for the jitter.
        schedule: delays before each attempt (the first is the first attempt's).
    """
    if attempts_made >= len(schedule):
        return None
    r = rng.random() if rng is not None else random.random()
    delay = schedule[attempts_made] * (1 + JITTER * (2 * r - 1))
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def check_url(url: str) -> str:
    """An endpoint URL as stored: ``http(s)://host…``.

    Raises:
        ValueError: not an absolute http(s) URL with a host, or too long.
    """
    text = url.strip()
    if len(text) > MAX_URL_CHARS:
        raise ValueError(f"the URL must be at most {MAX_URL_CHARS} characters")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("the URL must not carry credentials")
    return text


def check_event_types(value: Any) -> tuple[str, ...] | None:
    """An endpoint's event-type filter as stored: None (every type) or 1 to
    :data:`MAX_EVENT_TYPES` distinct names such as ``score.completed``.

    Raises:
        ValueError: not null or a non-empty list of such names.
    """
    if value is None:
        return None
    problem = (
        f'"eventTypes" must be null (every event) or a list of 1 to {MAX_EVENT_TYPES} event '
        f"types such as \"score.completed\" (letters, digits, '.', '_', '-'; at most "
        f"{MAX_EVENT_TYPE_CHARS} characters each)"
    )
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_EVENT_TYPES:
        raise ValueError(problem)
    for item in value:
        if (
            not isinstance(item, str)
            or not 1 <= len(item) <= MAX_EVENT_TYPE_CHARS
            or not item.isascii()
            or not item.replace(".", "").replace("_", "").replace("-", "").isalnum()
        ):
            raise ValueError(problem)
    return tuple(dict.fromkeys(value))


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL an org receives one environment's events at (never its secret, shown once at
    creation)."""

    id: str
    org: str
    url: str
    created_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    environment: str = PRODUCTION
    """SANDBOX or PRODUCTION: only jobs of this environment are sent here."""
    event_types: tuple[str, ...] | None = None
    """The event types sent here; None sends every type."""
    previous_secret_expires_at: datetime | None = None
    """After a secret rotation: until when the old secret signs too."""

    @property
    def enabled(self) -> bool:
        """False once disabled (by its org, or a 410 from the receiver)."""
        return self.disabled_at is None


class _Keep:
    """:class:`EndpointChanges`' "leave as it is"."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """What ``PATCH /v1/webhooks/endpoints/{id}`` changes (None: leave as it is)."""

    enabled: bool | None = None
    event_types: tuple[str, ...] | _Keep | None = KEEP
    """A new filter, None for every type, :data:`KEEP` to leave it."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recorded attempt of a delivery."""

    attempt: int
    started_at: datetime
    status_code: int | None
    """The receiver's status, None when no response came (timeout, refused…)."""
    duration_ms: float
    error: str | None
    """Why it failed, None for a 2xx."""
    response_excerpt: str | None = None
    """The start of the receiver's answer (None when it sent none)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event for one endpoint, with its attempts."""

    id: str
    message_id: str
    endpoint_id: str
    url: str
    org: str
    job_id: str | None
    event_type: str
    status: str
    """``pending``, ``delivered``, ``failed`` (gave up or 410) or ``cancelled``."""
    attempts: tuple[Attempt, ...]
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryTask:
    """A claimed delivery, ready to send."""

    id: str
    message_id: str
    endpoint_id: str
    url: str
    secret: str
    body: bytes
    attempts: int
    """Attempts made before this one."""
    token: str
    previous_secret: str | None = None
    """The endpoint's old secret while a rotation's overlap lasts: it signs too."""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """How one attempt went."""

    status_code: int | None
    duration_ms: float
    error: str | None
    retry_after: float | None = None
    response_excerpt: str | None = None

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


def delivery_json(d: Delivery) -> dict[str, Any]:
    """A delivery as ``GET /v1/webhooks/deliveries`` shows it."""
    return {
        "id": d.id,
        "messageId": d.message_id,
        "endpointId": d.endpoint_id,
        "url": d.url,
        "jobId": d.job_id,
        "eventType": d.event_type,
        "status": d.status,
        "createdAt": iso(d.created_at),
        "nextAttemptAt": iso(d.next_attempt_at)
        if d.next_attempt_at and d.status == "pending"
        else None,
        "finishedAt": iso(d.finished_at) if d.finished_at else None,
        "attempts": [
            {
                "attempt": a.attempt,
                "at": iso(a.started_at),
                "statusCode": a.status_code,
                "durationMs": round(a.duration_ms, 1),
                "error": a.error,
                "responseBody": a.response_excerpt,
            }
            for a in d.attempts
        ],
    }


def endpoint_json(e: Endpoint) -> dict[str, Any]:
    """An endpoint as the self-serve API shows it (never its secret)."""
    return {
        "id": e.id,
        "url": e.url,
        "environment": e.environment,
        "enabled": e.enabled,
        "disabledReason": e.disabled_reason,
        "eventTypes": list(e.event_types) if e.event_types is not None else None,
        "createdAt": iso(e.created_at),
        "previousSecretExpiresAt": (
            iso(e.previous_secret_expires_at) if e.previous_secret_expires_at else None
        ),
    }


# --- the store ---------------------------------------------------------------------------


class WebhookStore:
    """Endpoints, deliveries and attempts in the SQL database.

    Args:
        engine: the same engine as the job queue.
        clock: returns aware UTC datetimes.
        rng: randomness for the schedule's jitter.
        lease_seconds: how long a claimed delivery is held before another sender may
            retry it (longer than one attempt's timeout).
        schedule: delays before each attempt; :data:`SCHEDULE` unless testing.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        lease_seconds: float = 60.0,
        schedule: Sequence[float] = SCHEDULE,
        allow_private_targets: bool = False,
    ) -> None:
        self.engine = engine
        # SSRF guard (tollhouse.security.net): private targets are refused at add_endpoint
        # and at every attempt unless allowed (local development).
        self.allow_private_targets = allow_private_targets
        self.schedule = tuple(schedule)
        self.clock = clock
        self.rng = rng or random.Random()
        self.lease_seconds = lease_seconds

    # endpoints

    async def add_endpoint(
        self,
        org: str,
        url: str,
        *,
        environment: str = PRODUCTION,
        actor: str | None = None,
        event_types: tuple[str, ...] | None = None,
        address: str | None = None,
    ) -> tuple[Endpoint, str]:
        """Register ``url`` for the events of ``org`` in ``environment`` (only
        ``event_types`` when given); returns the endpoint and its secret (shown once).
        With an ``actor``, the change is audited in the same transaction (with the client
        ``address`` when given).

        Raises:
            ValueError: the URL is not an absolute http(s) URL, or reaches a private
                address (:class:`tollhouse.security.net.TargetRefused`), or the
                environment is not SANDBOX or PRODUCTION.
        """
        if environment not in ENVIRONMENTS:
            raise ValueError(f"environment must be one of {', '.join(ENVIRONMENTS)}")
        clean = check_url(url)
        await check_target(clean, allow_private=self.allow_private_targets)
        secret = new_secret()
        endpoint = Endpoint(
            "we_" + secrets.token_hex(10),
            org,
            clean,
            self.clock(),
            environment=environment,
            event_types=event_types,
        )
        async with write_transaction(self.engine, "webhooks") as conn:
            await conn.execute(
                webhook_endpoints.insert().values(
                    id=endpoint.id,
                    org_id=org,
                    environment=environment,
                    url=clean,
                    secret=secret,
                    created_at=endpoint.created_at,
                    event_types=_types_column(event_types),
                )
            )
            if actor is not None:
                await audit.record(
                    conn,
                    actor=actor,
                    action="webhook.added",
                    org=org,
                    target_id=endpoint.id,
                    details={
                        "url": audit.safe_url(clean),
                        "environment": environment,
                        "eventTypes": list(event_types) if event_types else None,
                    },
                    address=address,
                )
        return endpoint, secret

    async def list_endpoints(
        self, org: str | None = None, *, environment: str | None = None
    ) -> list[Endpoint]:
        """Endpoints not removed, oldest first, optionally of one org and one environment."""
        q = select(webhook_endpoints).where(webhook_endpoints.c.removed_at.is_(None))
        if org is not None:
            q = q.where(webhook_endpoints.c.org_id == org)
        if environment is not None:
            q = q.where(webhook_endpoints.c.environment == environment)
        q = q.order_by(webhook_endpoints.c.created_at, webhook_endpoints.c.id)
        async with read_connection(self.engine, "webhooks") as conn:
            rows = (await conn.execute(q)).all()
        return [_endpoint(r) for r in rows]

    async def remove_endpoint(
        self,
        endpoint_id: str,
        *,
        actor: str | None = None,
        org: str | None = None,
        environment: str | None = None,
        address: str | None = None,
    ) -> Endpoint | None:
        """Remove an endpoint (its pending deliveries are cancelled); None if unknown —
        or not of ``org`` and ``environment``, when given. With an ``actor``, the change
        is audited in the same transaction."""
        now = self.clock()
        async with write_transaction(self.engine, "webhooks") as conn:
            row = (
                await conn.execute(
                    update(webhook_endpoints)
                    .where(*_scope(endpoint_id, org, environment))
                    .values(removed_at=now)
                    .returning(*webhook_endpoints.c)
                )
            ).first()
            if row is None:
                return None
            await self._cancel_pending(conn, endpoint_id, now)
            if actor is not None:
                await audit.record(
                    conn,
                    actor=actor,
                    action="webhook.removed",
                    org=row.org_id,
                    target_id=endpoint_id,
                    details={"url": audit.safe_url(row.url)},
                    address=address,
                )
        return _endpoint(row)

    async def get_endpoint(self, endpoint_id: str, org: str, environment: str) -> Endpoint | None:
        """The endpoint of ``org`` in ``environment`` with this id (not removed), or None."""
        async with read_connection(self.engine, "webhooks") as conn:
            row = (
                await conn.execute(
                    select(webhook_endpoints).where(*_scope(endpoint_id, org, environment))
                )
            ).first()
        return _endpoint(row) if row is not None else None

    async def update_endpoint(
        self,
        endpoint_id: str,
        changes: EndpointChanges,
        *,
        org: str,
        environment: str,
        actor: str,
        address: str | None = None,
    ) -> Endpoint | None:
        """Enable, disable or change the event-type filter of an endpoint of ``org`` in
        ``environment``; None if it has none with this id. Disabling cancels its pending
        deliveries; enabling clears why it was disabled. Audited (``webhook.updated``)."""
        now = self.clock()
        values: dict[str, Any] = {}
        details: dict[str, Any] = {}
        if changes.enabled is not None:
            details["enabled"] = changes.enabled
            values["disabled_at"] = None if changes.enabled else now
            values["disabled_reason"] = None if changes.enabled else f"disabled by {actor}"
        if not isinstance(changes.event_types, _Keep):
            values["event_types"] = _types_column(changes.event_types)
            details["eventTypes"] = (
                list(changes.event_types) if changes.event_types is not None else None
            )
        e = webhook_endpoints.c
        async with write_transaction(self.engine, "webhooks") as conn:
            row = (
                await conn.execute(
                    select(webhook_endpoints)
                    .where(*_scope(endpoint_id, org, environment))
                    .with_for_update()
                )
            ).first()
            if row is None:
                return None
            if changes.enabled is not None and changes.enabled == (row.disabled_at is None):
                # Already so: keep when (and why) it was disabled.
                values.pop("disabled_at")
                values.pop("disabled_reason")
            if values:
                await conn.execute(
                    update(webhook_endpoints).where(e.id == endpoint_id).values(**values)
                )
            if changes.enabled is False:
                await self._cancel_pending(conn, endpoint_id, now)
            await audit.record(
                conn,
                actor=actor,
                action="webhook.updated",
                org=org,
                target_id=endpoint_id,
                details=details,
                address=address,
            )
            row = (await conn.execute(select(webhook_endpoints).where(e.id == endpoint_id))).one()
        return _endpoint(row)

    async def rotate_secret(
        self,
        endpoint_id: str,
        overlap: timedelta,
        *,
        org: str,
        environment: str,
        actor: str,
        address: str | None = None,
    ) -> tuple[Endpoint, str] | None:
        """A new secret for an endpoint of ``org`` in ``environment``; the old one keeps
        signing beside it for ``overlap`` (0: the new one alone, at once). Returns the
        endpoint and the new secret (shown once), or None if there is no such endpoint.
        Audited (``webhook.secret_rotated``), never with either secret."""
        now = self.clock()
        secret = new_secret()
        e = webhook_endpoints.c
        async with write_transaction(self.engine, "webhooks") as conn:
            row = (
                await conn.execute(
                    select(webhook_endpoints)
                    .where(*_scope(endpoint_id, org, environment))
                    .with_for_update()
                )
            ).first()
            if row is None:
                return None
            keep = overlap > timedelta(0)
            await conn.execute(
                update(webhook_endpoints)
                .where(e.id == endpoint_id)
                .values(
                    secret=secret,
                    previous_secret=row.secret if keep else None,
                    previous_secret_expires_at=now + overlap if keep else None,
                )
            )
            await audit.record(
                conn,
                actor=actor,
                action="webhook.secret_rotated",
                org=org,
                target_id=endpoint_id,
                details={"overlapSeconds": max(0, int(overlap.total_seconds()))},
                address=address,
            )
            row = (await conn.execute(select(webhook_endpoints).where(e.id == endpoint_id))).one()
        return _endpoint(row), secret

    async def ping(
        self,
        endpoint_id: str,
        *,
        org: str,
        environment: str,
        actor: str,
        address: str | None = None,
    ) -> DeliveryTask | None:
        """Stage a signed ``ping`` for an endpoint of ``org`` in ``environment``, held by
        the caller: send its first attempt (:func:`send_attempt`) and :meth:`record` it.
        None if there is no such endpoint.

        Raises:
            ValueError: the endpoint is disabled.
        """
        now = self.clock()
        message_id = "msg_" + secrets.token_hex(12)
        body = orjson.dumps(
            {"type": PING, "timestamp": iso(now), "data": {"endpointId": endpoint_id}}
        ).decode()
        async with write_transaction(self.engine, "webhooks") as conn:
            row = (
                await conn.execute(
                    select(webhook_endpoints).where(*_scope(endpoint_id, org, environment))
                )
            ).first()
            if row is None:
                return None
            task = await self._stage_held(conn, row, message_id, None, PING, body, now)
            await audit.record(
                conn,
                actor=actor,
                action="webhook.tested",
                org=org,
                target_id=endpoint_id,
                details={"deliveryId": task.id},
                address=address,
            )
        return task

    async def replay(
        self,
        delivery_id: str,
        *,
        org: str,
        environment: str,
        actor: str,
        address: str | None = None,
    ) -> DeliveryTask | None:
        """Send a delivery of ``org`` in ``environment`` again: a new delivery with the
        same ``webhook-id`` (receivers deduplicate on it) and the same body, to the same
        endpoint, held by the caller as :meth:`ping`'s. None if there is no such delivery
        (or its endpoint was removed).

        Raises:
            ValueError: the endpoint is disabled.
        """
        now = self.clock()
        d = webhook_deliveries.c
        async with write_transaction(self.engine, "webhooks") as conn:
            found = (
                await conn.execute(
                    select(webhook_deliveries).where(
                        d.id == delivery_id, d.org_id == org, d.environment == environment
                    )
                )
            ).first()
            if found is None:
                return None
            row = (
                await conn.execute(
                    select(webhook_endpoints).where(*_scope(found.endpoint_id, org, environment))
                )
            ).first()
            if row is None:
                return None
            task = await self._stage_held(
                conn, row, found.message_id, found.job_id, found.event_type, found.payload, now
            )
            await audit.record(
                conn,
                actor=actor,
                action="webhook.replayed",
                org=org,
                target_id=row.id,
                details={"deliveryId": task.id, "replayOf": delivery_id},
                address=address,
            )
        return task

    async def _stage_held(
        self,
        conn: AsyncConnection,
        endpoint: Any,
        message_id: str,
        job_id: str | None,
        event_type: str,
        body: str,
        now: datetime,
    ) -> DeliveryTask:
        """Insert one delivery to ``endpoint`` already claimed (leased) by the caller."""
        if endpoint.disabled_at is not None:
            raise ValueError(
                f"webhook endpoint {endpoint.id} is disabled ({endpoint.disabled_reason}); "
                "enable it first"
            )
        token = secrets.token_hex(16)
        delivery_id = "dlv_" + secrets.token_hex(12)
        await conn.execute(
            webhook_deliveries.insert().values(
                id=delivery_id,
                message_id=message_id,
                endpoint_id=endpoint.id,
                org_id=endpoint.org_id,
                environment=endpoint.environment,
                job_id=job_id,
                event_type=event_type,
                payload=body,
                status="pending",
                attempts=0,
                next_attempt_at=now + timedelta(seconds=self.lease_seconds),
                lease_token=token,
                created_at=now,
            )
        )
        return DeliveryTask(
            id=delivery_id,
            message_id=message_id,
            endpoint_id=endpoint.id,
            url=endpoint.url,
            secret=endpoint.secret,
            body=body.encode(),
            attempts=0,
            token=token,
            previous_secret=_previous(endpoint, now),
        )

    async def _cancel_pending(self, conn: AsyncConnection, endpoint_id: str, now: datetime) -> None:
        await conn.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.endpoint_id == endpoint_id,
                webhook_deliveries.c.status == "pending",
            )
            .values(status="cancelled", finished_at=now, lease_token=None)
        )

    # deliveries

    async def claim(self, limit: int) -> list[DeliveryTask]:
        """Take up to ``limit`` due deliveries, holding each for ``lease_seconds``."""
        if limit <= 0:
            return []
        now = self.clock()
        hold = now + timedelta(seconds=self.lease_seconds)
        d, e = webhook_deliveries, webhook_endpoints
        tasks: list[DeliveryTask] = []
        async with write_transaction(self.engine, "webhooks") as conn:
            rows = (
                await conn.execute(
                    select(
                        d,
                        e.c.url,
                        e.c.secret,
                        e.c.previous_secret,
                        e.c.previous_secret_expires_at,
                        e.c.disabled_at,
                        e.c.removed_at,
                    )
                    .join(e, e.c.id == d.c.endpoint_id)
                    .where(d.c.status == "pending", d.c.next_attempt_at <= now)
                    .order_by(d.c.next_attempt_at, d.c.id)
                    .limit(limit)
                    .with_for_update(of=d, skip_locked=True)
                )
            ).all()
            for r in rows:
                if r.disabled_at is not None or r.removed_at is not None:
                    await conn.execute(
                        update(d)
                        .where(d.c.id == r.id)
                        .values(status="cancelled", finished_at=now, lease_token=None)
                    )
                    continue
                token = secrets.token_hex(16)
                await conn.execute(
                    update(d).where(d.c.id == r.id).values(next_attempt_at=hold, lease_token=token)
                )
                tasks.append(
                    DeliveryTask(
                        id=r.id,
                        message_id=r.message_id,
                        endpoint_id=r.endpoint_id,
                        url=r.url,
                        secret=r.secret,
                        body=r.payload.encode(),
                        attempts=r.attempts,
                        token=token,
                        previous_secret=_previous(r, now),
                    )
                )
        return tasks

    async def record(self, task: DeliveryTask, result: AttemptResult, started_at: datetime) -> str:
        """Record one attempt and move the delivery on; returns its new status (or
        ``stale`` when another sender took it over meanwhile: the attempt is still kept)."""
        now = self.clock()
        d = webhook_deliveries
        attempt = task.attempts + 1
        async with write_transaction(self.engine, "webhooks") as conn:
            await conn.execute(
                webhook_attempts.insert().values(
                    delivery_id=task.id,
                    attempt=attempt,
                    started_at=started_at,
                    status_code=result.status_code,
                    duration_ms=result.duration_ms,
                    error=(result.error or "")[:500] or None,
                    response_excerpt=result.response_excerpt,
                )
            )
            held = (
                await conn.execute(
                    select(d.c.id)
                    .where(
                        d.c.id == task.id, d.c.lease_token == task.token, d.c.status == "pending"
                    )
                    .with_for_update()
                )
            ).first()
            if held is None:
                return "stale"
            values: dict[str, Any] = {"attempts": attempt, "lease_token": None}
            if result.ok:
                values.update(status="delivered", finished_at=now, next_attempt_at=None)
            elif result.status_code == 410:
                values.update(status="failed", finished_at=now, next_attempt_at=None)
                await conn.execute(
                    update(webhook_endpoints)
                    .where(webhook_endpoints.c.id == task.endpoint_id)
                    .values(disabled_at=now, disabled_reason="the receiver answered 410 Gone")
                )
                await self._cancel_pending(conn, task.endpoint_id, now)
                logger.warning(
                    "webhook endpoint disabled after 410", extra={"endpoint": task.endpoint_id}
                )
            else:
                delay = next_delay(attempt, result.retry_after, self.rng, self.schedule)
                if delay is None:
                    values.update(status="failed", finished_at=now, next_attempt_at=None)
                else:
                    values.update(next_attempt_at=now + timedelta(seconds=delay))
            await conn.execute(update(d).where(d.c.id == task.id).values(**values))
        return str(values.get("status", "pending"))

    async def deliveries(
        self,
        org: str,
        job_id: str | None = None,
        limit: int = 100,
        *,
        environment: str,
        delivery_id: str | None = None,
    ) -> list[Delivery]:
        """The deliveries of ``org`` in ``environment`` with their attempts, newest first
        (optionally of one job, or the one delivery ``delivery_id``)."""
        d, e = webhook_deliveries, webhook_endpoints
        q = (
            select(d, e.c.url)
            .join(e, e.c.id == d.c.endpoint_id)
            .where(d.c.org_id == org, d.c.environment == environment)
            .order_by(d.c.created_at.desc(), d.c.id)
            .limit(limit)
        )
        if job_id is not None:
            q = q.where(d.c.job_id == job_id)
        if delivery_id is not None:
            q = q.where(d.c.id == delivery_id)
        async with read_connection(self.engine, "webhooks") as conn:
            rows = (await conn.execute(q)).all()
            ids = [r.id for r in rows]
            attempts: dict[str, list[Attempt]] = {i: [] for i in ids}
            if ids:
                for a in (
                    await conn.execute(
                        select(webhook_attempts)
                        .where(webhook_attempts.c.delivery_id.in_(ids))
                        .order_by(webhook_attempts.c.delivery_id, webhook_attempts.c.attempt)
                    )
                ).all():
                    attempts[a.delivery_id].append(
                        Attempt(
                            a.attempt,
                            as_utc(a.started_at),
                            a.status_code,
                            a.duration_ms,
                            a.error,
                            a.response_excerpt,
                        )
                    )
        return [
            Delivery(
                id=r.id,
                message_id=r.message_id,
                endpoint_id=r.endpoint_id,
                url=r.url,
                org=r.org_id,
                job_id=r.job_id,
                event_type=r.event_type,
                status=r.status,
                attempts=tuple(attempts[r.id]),
                next_attempt_at=as_utc(r.next_attempt_at),
                created_at=as_utc(r.created_at),
                finished_at=as_utc(r.finished_at),
            )
            for r in rows
        ]


def _endpoint(row: Any) -> Endpoint:
    types = orjson.loads(row.event_types) if row.event_types else None
    ends = as_utc(row.previous_secret_expires_at)
    return Endpoint(
        id=row.id,
        org=row.org_id,
        url=row.url,
        created_at=as_utc(row.created_at),
        disabled_at=as_utc(row.disabled_at),
        disabled_reason=row.disabled_reason,
        environment=row.environment,
        event_types=tuple(types) if types is not None else None,
        previous_secret_expires_at=ends if row.previous_secret else None,
    )


def _scope(endpoint_id: str, org: str | None, environment: str | None) -> list[Any]:
    """WHERE clauses: the endpoint (not removed), of ``org`` and ``environment`` if given."""
    e = webhook_endpoints.c
    clauses = [e.id == endpoint_id, e.removed_at.is_(None)]
    if org is not None:
        clauses.append(e.org_id == org)
    if environment is not None:
        clauses.append(e.environment == environment)
    return clauses


def _previous(row: Any, now: datetime) -> str | None:
    """The endpoint's old secret while its overlap lasts, else None."""
    ends = as_utc(row.previous_secret_expires_at)
    if row.previous_secret and ends is not None and ends > now:
        return str(row.previous_secret)
    return None


def _types_column(types: tuple[str, ...] | None) -> str | None:
    return orjson.dumps(list(types)).decode() if types is not None else None


# --- sending -----------------------------------------------------------------------------


async def send_attempt(
    client: httpx.AsyncClient, task: DeliveryTask, now: datetime
) -> AttemptResult:
    """POST one signed attempt; never raises for the receiver's failures."""
    timestamp = int(now.timestamp())
    headers = signed_headers(
        task.secret, task.message_id, timestamp, task.body, task.previous_secret
    )
    started = time.perf_counter()
    try:
        response = await client.post(task.url, content=task.body, headers=headers)
    except httpx.TimeoutException:
        return AttemptResult(None, _ms(started), "timed out")
    except httpx.HTTPError as exc:
        return AttemptResult(None, _ms(started), f"{type(exc).__name__}: {exc}"[:500])
    duration = _ms(started)
    status = response.status_code
    # PostgreSQL text holds no NUL.
    text = response.content[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    excerpt = text[:EXCERPT_CHARS].replace("\x00", "\ufffd")
    if 200 <= status < 300:
        return AttemptResult(status, duration, None, response_excerpt=excerpt or None)
    error = f"HTTP {status}"
    if 300 <= status < 400:
        error += " (redirects are not followed)"
    retry_after = parse_retry_after(response.headers.get("retry-after"), now.timestamp())
    return AttemptResult(status, duration, error, retry_after, excerpt or None)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class WebhookSender:
    """Sends due deliveries in its own tasks (never in a job worker's slot).

    Args:
        store: where deliveries live.
        concurrency: attempts in flight at once.
        timeout: seconds one attempt may take (connect + response).
        poll_interval: seconds between looks for due deliveries when not woken.
        client: an httpx client to send with (tests); one is made otherwise.
    """

    def __init__(
        self,
        store: WebhookStore,
        *,
        concurrency: int = 50,
        timeout: float = 15.0,
        poll_interval: float = 1.0,
        client: httpx.AsyncClient | None = None,
        on_attempt: Callable[[AttemptResult, str], None] | None = None,
    ) -> None:
        self.store = store
        self.concurrency = concurrency
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False
        #: Called after every recorded attempt with its result and the delivery's new
        #: status (``/metrics`` counts attempts by outcome through it).
        self.on_attempt = on_attempt

    def wake(self) -> None:
        """Look for due deliveries now (called when a job finishes in this process)."""
        self._wake.set()

    async def start(self) -> None:
        """Start the send loop."""
        if self._loop_task is not None:
            return
        if self._client is None:
            # Redirects never followed; unless allowed, connections only to checked public
            # addresses, resolved once per connection (tollhouse.security.net).
            self._client = webhook_client(
                allow_private=self.store.allow_private_targets,
                timeout=self.timeout,
                max_connections=self.concurrency,
            )
        self._stopping = False
        self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; let attempts in flight finish for ``grace`` seconds, then cancel
        them (a cancelled delivery is retried after its lease by any sender)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            free = self.concurrency - len(self._inflight)
            claimed: Sequence[DeliveryTask] = ()
            if free > 0:
                try:
                    claimed = await self.store.claim(free)
                except StorageError:
                    logger.exception("could not claim webhook deliveries")
            for task in claimed:
                t = asyncio.get_running_loop().create_task(self._deliver(task))
                self._inflight.add(t)
                t.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _deliver(self, task: DeliveryTask) -> None:
        assert self._client is not None
        started_at = self.store.clock()
        result = await send_attempt(self._client, task, started_at)
        try:
            status = await self.store.record(task, result, started_at)
        except StorageError:
            # The attempt happened but is not recorded; the lease runs out and it is retried.
            logger.exception("could not record a webhook attempt", extra={"delivery": task.id})
            if self.on_attempt is not None:
                self.on_attempt(result, "unrecorded")
            return
        if self.on_attempt is not None:
            self.on_attempt(result, status)
        logger.info(
            "webhook attempt",
            extra={
                "delivery": task.id,
                "attempt": task.attempts + 1,
                "status_code": result.status_code,
                "outcome": status,
            },
        )
