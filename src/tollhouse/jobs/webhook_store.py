"""Webhook endpoints, deliveries and attempts in the SQL database: :class:`WebhookStore`.

The values, signing and schedule it uses are in :mod:`tollhouse.jobs.webhooks` (with the
overview of how webhooks work); its reads in :mod:`tollhouse.jobs.webhook_reads`; the HTTP
side is :mod:`tollhouse.jobs.webhook_sender`.

* Every change is one write transaction; with an ``actor`` it is audited in the same
  transaction. Reads of endpoints and deliveries are scoped to an org and an environment.
* A sender claims due deliveries (:meth:`~WebhookStore.claim`), each held under a lease
  token for ``lease_seconds``, and records each attempt (:meth:`~WebhookStore.record`):
  delivered on a 2xx, the endpoint disabled (its pending deliveries cancelled) on a 410,
  else the next attempt scheduled by :func:`tollhouse.jobs.webhooks.next_delay` or
  ``failed`` when the schedule is used up. An attempt recorded after the lease went to
  another sender is kept, and moves nothing (``stale``).
* :meth:`~WebhookStore.ping` and :meth:`~WebhookStore.replay` stage one delivery already
  held by the caller, who sends its first attempt at once
  (:func:`tollhouse.jobs.webhook_sender.send_attempt`) and records it.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.jobs.model import PRODUCTION, Clock, iso, utc_now
from tollhouse.jobs.schema import webhook_attempts, webhook_deliveries, webhook_endpoints
from tollhouse.jobs.webhook_reads import WebhookReads, endpoint_scope, row_endpoint
from tollhouse.jobs.webhooks import (
    PING,
    SCHEDULE,
    AttemptResult,
    DeliveryTask,
    Endpoint,
    EndpointChanges,
    Keep,
    check_url,
    new_secret,
    next_delay,
)
from tollhouse.keys.model import ENVIRONMENTS
from tollhouse.security import audit
from tollhouse.security.net import check_target
from tollhouse.storage.transactions import write_transaction
from tollhouse.times import as_utc

logger = logging.getLogger(__name__)

__all__ = ["WebhookStore"]


class WebhookStore(WebhookReads):
    """Endpoints, deliveries and attempts in the SQL database: the writes, on top of
    :class:`~tollhouse.jobs.webhook_reads.WebhookReads` (``list_endpoints``,
    ``get_endpoint``, ``deliveries``).

    Args:
        engine: the same engine as the job queue.
        clock: returns aware UTC datetimes.
        rng: randomness for the schedule's jitter.
        lease_seconds: how long a claimed delivery is held before another sender may
            retry it (longer than one attempt's timeout).
        schedule: delays before each attempt;
            :data:`tollhouse.jobs.webhooks.SCHEDULE` unless testing.
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
        super().__init__(engine)
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
                    .where(*endpoint_scope(endpoint_id, org, environment))
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
        return row_endpoint(row)

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
        if not isinstance(changes.event_types, Keep):
            values["event_types"] = _types_column(changes.event_types)
            details["eventTypes"] = (
                list(changes.event_types) if changes.event_types is not None else None
            )
        e = webhook_endpoints.c
        async with write_transaction(self.engine, "webhooks") as conn:
            row = await _locked_endpoint(conn, endpoint_id, org, environment)
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
        return row_endpoint(row)

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
            row = await _locked_endpoint(conn, endpoint_id, org, environment)
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
        return row_endpoint(row), secret

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
        the caller: send its first attempt
        (:func:`tollhouse.jobs.webhook_sender.send_attempt`) and :meth:`record` it.
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
                    select(webhook_endpoints).where(*endpoint_scope(endpoint_id, org, environment))
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
                    select(webhook_endpoints).where(
                        *endpoint_scope(found.endpoint_id, org, environment)
                    )
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


async def _locked_endpoint(
    conn: AsyncConnection, endpoint_id: str, org: str | None, environment: str | None
) -> Any:
    """The endpoint's row (not removed; of ``org`` and ``environment`` when given), locked
    for the rest of the transaction; None if there is none."""
    return (
        await conn.execute(
            select(webhook_endpoints)
            .where(*endpoint_scope(endpoint_id, org, environment))
            .with_for_update()
        )
    ).first()


def _previous(row: Any, now: datetime) -> str | None:
    """The endpoint's old secret while its overlap lasts, else None."""
    ends = as_utc(row.previous_secret_expires_at)
    if row.previous_secret and ends is not None and ends > now:
        return str(row.previous_secret)
    return None


def _types_column(types: tuple[str, ...] | None) -> str | None:
    return orjson.dumps(list(types)).decode() if types is not None else None
