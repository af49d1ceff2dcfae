"""The webhooks' read model: endpoints and deliveries (with their attempts) as values.

:class:`WebhookReads` runs on a plain connection
(:func:`tollhouse.storage.transactions.read_connection`) and never writes;
:class:`~tollhouse.jobs.webhook_store.WebhookStore` adds the writes on top of it, and shares
:func:`row_endpoint` and :func:`endpoint_scope` for the endpoints its writes return.
Every read of one org's endpoints or deliveries is scoped to an org *and* an
environment.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.jobs.schema import webhook_attempts, webhook_deliveries, webhook_endpoints
from tollhouse.jobs.webhooks import Attempt, Delivery, Endpoint
from tollhouse.storage.transactions import read_connection
from tollhouse.times import as_utc

__all__ = ["WebhookReads", "endpoint_scope", "row_endpoint"]


class WebhookReads:
    """The reads of :class:`tollhouse.jobs.webhook_store.WebhookStore`.

    Args:
        engine: the store's engine.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

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
        return [row_endpoint(r) for r in rows]

    async def get_endpoint(self, endpoint_id: str, org: str, environment: str) -> Endpoint | None:
        """The endpoint of ``org`` in ``environment`` with this id (not removed), or None."""
        async with read_connection(self.engine, "webhooks") as conn:
            row = (
                await conn.execute(
                    select(webhook_endpoints).where(*endpoint_scope(endpoint_id, org, environment))
                )
            ).first()
        return row_endpoint(row) if row is not None else None

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


def row_endpoint(row: Any) -> Endpoint:
    """An endpoint as a value, from its ``webhook_endpoints`` row."""
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


def endpoint_scope(endpoint_id: str, org: str | None, environment: str | None) -> list[Any]:
    """WHERE clauses: the endpoint (not removed), of ``org`` and ``environment`` if given."""
    e = webhook_endpoints.c
    clauses = [e.id == endpoint_id, e.removed_at.is_(None)]
    if org is not None:
        clauses.append(e.org_id == org)
    if environment is not None:
        clauses.append(e.environment == environment)
    return clauses
