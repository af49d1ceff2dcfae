"""The outbox: what a finished job leaves behind, written in the job's own transaction.

When the queue moves jobs to a terminal state it calls :func:`stage_finished` on the
same connection, before commit, so a finished job always has its webhook deliveries and
its product event (docs/jobs.md, "Job events") — even if the process dies right after —
and a rolled-back finish leaves neither.

This is the one piece of the webhooks the queue needs. Keeping it apart from
:mod:`tollhouse.jobs.webhook_store` (endpoints) and :mod:`tollhouse.jobs.webhook_sender`
(HTTP) is what lets the queue's state machine depend on the outbox without depending on
the sender, and the sender on the queue's types without a cycle.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import orjson
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tollhouse.jobs import shapes
from tollhouse.jobs.events import record_job_events
from tollhouse.jobs.model import Job, iso
from tollhouse.jobs.schema import webhook_deliveries, webhook_endpoints

#: The enabled endpoints of some orgs, in every environment (built once: jobs finish by
#: the hundred); each event picks those of its own environment.
_ACTIVE_ENDPOINTS = select(
    webhook_endpoints.c.id,
    webhook_endpoints.c.org_id,
    webhook_endpoints.c.environment,
    webhook_endpoints.c.event_types,
).where(
    webhook_endpoints.c.org_id.in_(bindparam("orgs", expanding=True)),
    webhook_endpoints.c.disabled_at.is_(None),
    webhook_endpoints.c.removed_at.is_(None),
)

#: What :func:`stage_events` takes per event: ``(org, environment, job id, event type,
#: data)``.
StagedEvent = tuple[str, str, str | None, str, dict[str, Any] | Callable[[], dict[str, Any]]]


async def stage_events(
    conn: AsyncConnection,
    events: Sequence[StagedEvent],
    now: datetime,
    *,
    with_endpoints: Collection[tuple[str, str]] | None = None,
) -> int:
    """Write one pending delivery per enabled endpoint of each event's org *in the event's
    environment*, inside the caller's transaction: a sandbox job's events go to sandbox
    endpoints only, a production job's to production endpoints only; an endpoint with an
    event-type filter gets only the types it names. Returns how many were written.

    Args:
        conn: a connection in the caller's write transaction.
        events: ``(org, environment, job id, event type, data)`` per event; ``data`` may
            be a function making it, called only when the org has an endpoint there
            (most orgs have none, and the job queue finishes jobs by the hundred).
        now: the events' time.
        with_endpoints: the ``(org, environment)`` scopes that have an enabled endpoint,
            when the caller read that in this transaction already (the job queue reads it
            with the jobs it finishes): endpoints are looked up for those alone, and not
            at all when none of the events is in one. None: look up every event's org.

    The body is ``{"type", "timestamp", "data"}`` (Standard Webhooks' recommended shape).
    """
    if not events:
        return 0
    if with_endpoints is None:
        orgs = sorted({org for org, *_ in events})
    else:
        orgs = sorted({org for org, env, *_ in events if (org, env) in with_endpoints})
        if not orgs:
            return 0
    endpoints: dict[tuple[str, str], list[tuple[str, frozenset[str] | None]]] = {}
    for endpoint_id, org_id, environment, types in await conn.execute(
        _ACTIVE_ENDPOINTS, {"orgs": orgs}
    ):
        wanted = frozenset(orjson.loads(types)) if types else None
        endpoints.setdefault((org_id, environment), []).append((endpoint_id, wanted))
    rows = []
    for org, environment, job_id, event_type, data in events:
        targets = [
            endpoint_id
            for endpoint_id, wanted in endpoints.get((org, environment), ())
            if wanted is None or event_type in wanted
        ]
        if not targets:
            continue
        message_id = "msg_" + secrets.token_hex(12)
        if callable(data):
            data = data()
        body = orjson.dumps({"type": event_type, "timestamp": iso(now), "data": data}).decode()
        rows += [
            {
                "id": "dlv_" + secrets.token_hex(12),
                "message_id": message_id,
                "endpoint_id": endpoint_id,
                "org_id": org,
                "environment": environment,
                "job_id": job_id,
                "event_type": event_type,
                "payload": body,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for endpoint_id in targets
        ]
    if rows:
        await conn.execute(webhook_deliveries.insert(), rows)
    return len(rows)


async def stage_finished(
    conn: AsyncConnection,
    finished: Sequence[Job],
    now: datetime,
    *,
    with_endpoints: Collection[tuple[str, str]] | None = None,
) -> int:
    """Record the product event and stage the webhook deliveries of ``finished`` jobs,
    inside the caller's transaction. Returns the deliveries staged.

    Args:
        conn: the connection of the transaction that finished the jobs.
        finished: jobs in a terminal state.
        now: when they finished.
        with_endpoints: as in :func:`stage_events`.
    """
    if not finished:
        return 0
    await record_job_events(conn, finished, now)
    return await stage_events(
        conn,
        [
            (j.org, j.environment, j.id, shapes.event_type(j), partial(shapes.job_json, j))
            for j in finished
        ],
        now,
        with_endpoints=with_endpoints,
    )
