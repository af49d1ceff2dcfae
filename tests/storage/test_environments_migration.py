"""The step that keeps sandbox apart from production, on a database of the layout before it
(version 7, rows in every table it changes), on SQLite and PostgreSQL.

The old layout is written out here as it was released: the queue's per-org tables, webhook
endpoints and deliveries without an environment, and Idempotency-Keys and event ids unique
per org only. The database is brought forward both ways a process can meet it: by the
migration runner (``tollhouse serve``, the CLI) and by :func:`create_job_schema` (a
``tollhouse worker`` started first).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Connection,
    Index,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    inspect,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.storage.support import run_with
from tollhouse.jobs import NewJob, open_queue
from tollhouse.jobs.schema import (
    create_job_schema,
    job_orgs,
    jobs,
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
)
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.metering.schema import product_events
from tollhouse.schema import LATEST, MIGRATIONS, migrate
from tollhouse.storage.migrations import create_tables, schema_version
from tollhouse.storage.schema import schema_info

#: The last version before the step.
BEFORE = 7
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _columns(table: Table, *without: str) -> Iterator[Column[Any]]:
    for c in table.columns:
        if c.name not in without:
            yield Column(
                c.name,
                c.type,
                primary_key=c.primary_key,
                nullable=c.nullable,
                autoincrement=c.autoincrement,
                unique=c.unique,
                server_default=c.server_default,
            )


def _old_layout() -> tuple[Table, ...]:
    """The tables the step changes, as version 7 made them."""
    old = MetaData()
    return (
        Table(
            "jobs",
            old,
            *_columns(jobs),
            UniqueConstraint("org_id", "idempotency_key", name="uq_jobs_org_idempotency"),
            Index("ix_jobs_org_status_seq", "org_id", "status", "seq"),
            Index("ix_jobs_status_lease", "status", "lease_expires_at"),
            Index("ix_jobs_org_application", "org_id", "application_id", "seq"),
            Index("ix_jobs_org_finished", "org_id", "finished_at"),
            Index("ix_jobs_org_created", "org_id", "created_at", "id"),
        ),
        Table(
            "job_orgs",
            old,
            Column("org_id", String(64), primary_key=True),
            *_columns(job_orgs, "org_id", "environment"),
            Index("ix_job_orgs_served", "last_served_at"),
        ),
        Table(
            "webhook_endpoints",
            old,
            *_columns(webhook_endpoints, "environment"),
            Index("ix_webhook_endpoints_org", "org_id"),
        ),
        Table(
            "webhook_deliveries",
            old,
            *_columns(webhook_deliveries, "environment"),
            Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
            Index("ix_webhook_deliveries_org_job", "org_id", "job_id"),
        ),
        Table(
            "webhook_attempts",
            old,
            *_columns(webhook_attempts),
            Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),
        ),
        Table(
            "product_events",
            old,
            *_columns(product_events),
            UniqueConstraint("org", "event_id", name="uq_product_events_org_event"),
            Index("ix_product_events_scope", "org", "environment", "type", "time_us"),
            Index("ix_product_events_time", "time_us"),
        ),
    )


def _job(seq: int, org: str, environment: str, status: str, key: str | None) -> dict[str, Any]:
    # seq is left to the database (inserted in order: 1, 2, …), so its sequence moves on.
    return {
        "id": f"sj_old{seq:017d}",
        "org_id": org,
        "environment": environment,
        "route": "POST /v1/score",
        "idempotency_key": key,
        "request_hash": "h" * 64 if key else None,
        "payload": "{}",
        "status": status,
        "attempts": 1 if status != "queued" else 0,
        "max_attempts": 5,
        "run_after": NOW,
        "created_at": NOW + timedelta(seconds=seq),
        "lease_token": "tok" if status == "running" else None,
        "lease_expires_at": NOW + timedelta(days=365) if status == "running" else None,
        "finished_at": NOW if status == "completed" else None,
        "accepted_position": 1,
        "accepted_wait": 0,
    }


#: (seq, org, environment, status, Idempotency-Key) of the old database's jobs.
OLD_JOBS = [
    (1, "acme", "SANDBOX", "queued", "shared-key"),
    (2, "acme", "SANDBOX", "running", None),
    (3, "acme", "PRODUCTION", "queued", None),
    (4, "acme", "PRODUCTION", "running", None),
    (5, "acme", "PRODUCTION", "running", None),
    (6, "acme", "", "queued", "python-api"),  # enqueued through the Python API: no environment
    (7, "acme", "SANDBOX", "completed", None),
    (8, "globex", "PRODUCTION", "queued", None),
]


def _fill(conn: Connection, tables: tuple[Table, ...]) -> None:
    old = {t.name: t for t in tables}
    conn.execute(old["jobs"].insert(), [_job(*j) for j in OLD_JOBS])
    served = NOW - timedelta(minutes=5)
    conn.execute(
        old["job_orgs"].insert(),
        [
            # Counters as the old code kept them: both environments in one row.
            {"org_id": "acme", "running": 3, "queued": 3, "cap": 7, "last_served_at": served,
             "avg_seconds": 2.5, "samples": 40},
            {"org_id": "globex", "running": 0, "queued": 1, "cap": None, "last_served_at": served,
             "avg_seconds": None, "samples": 0},
        ],
    )  # fmt: skip
    conn.execute(
        old["webhook_endpoints"].insert(),
        {"id": "we_old", "org_id": "acme", "url": "https://hooks.example.com/a",
         "secret": "whsec_b2xk", "created_at": NOW},
    )  # fmt: skip
    conn.execute(
        old["webhook_deliveries"].insert(),
        {"id": "dlv_old", "message_id": "msg_old", "endpoint_id": "we_old", "org_id": "acme",
         "job_id": "sj_old00000000000000007", "event_type": "score.completed", "payload": "{}",
         "status": "delivered", "attempts": 1, "created_at": NOW, "finished_at": NOW},
    )  # fmt: skip
    conn.execute(
        old["product_events"].insert(),
        {"org": "acme", "environment": "SANDBOX", "event_id": "evt_1", "type": "flow_run",
         "time_us": 1, "received_us": 1, "data": {}},
    )  # fmt: skip


async def _old_database(engine: AsyncEngine) -> None:
    """Version 7 as released, with rows."""
    assert await migrate(engine, MIGRATIONS[:6]) == (0, 6)
    tables = _old_layout()

    def make(conn: Connection) -> None:
        # The runner made today's layout of these (product_events in step 3; the rest as
        # tables registered without a step yet): replaced by the old one.
        for table in tables:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table.name}")
        create_tables(conn, tables)
        _fill(conn, tables)
        conn.execute(schema_info.update().values(version=BEFORE))

    async with engine.begin() as conn:
        await conn.run_sync(make)
    assert await schema_version(engine) == BEFORE


def _catalog(conn: Connection) -> dict[str, Any]:
    catalog = inspect(conn)
    names = ("jobs", "job_orgs", "webhook_endpoints", "webhook_deliveries", "product_events")
    return {
        "indexes": {ix["name"] for t in names for ix in catalog.get_indexes(t)},
        "uniques": {uc["name"] for t in names for uc in catalog.get_unique_constraints(t)},
        "job_orgs_key": catalog.get_pk_constraint("job_orgs")["constrained_columns"],
    }


async def _check_carried(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        found = {
            r.seq: r
            for r in await conn.execute(
                select(jobs.c.seq, jobs.c.id, jobs.c.environment, jobs.c.status)
            )
        }
        counters = {(r.org_id, r.environment): r for r in await conn.execute(select(job_orgs))}
        endpoints = (await conn.execute(select(webhook_endpoints))).all()
        deliveries = (await conn.execute(select(webhook_deliveries))).all()
        catalog = await conn.run_sync(_catalog)
    # Every job is kept, with its seq and id; the one without an environment is production.
    assert sorted(found) == [j[0] for j in OLD_JOBS]
    for seq, _, environment, status, _ in OLD_JOBS:
        assert found[seq].environment == (environment or "PRODUCTION")
        assert found[seq].status == status
    # Counters per (org, environment), counted from the jobs; the cap and the moving
    # average go to both of the org's environments.
    acme_live, acme_test = counters[("acme", "PRODUCTION")], counters[("acme", "SANDBOX")]
    assert (acme_live.running, acme_live.queued) == (2, 2)
    assert (acme_test.running, acme_test.queued) == (1, 1)
    assert acme_live.cap == acme_test.cap == 7
    assert acme_live.avg_seconds == acme_test.avg_seconds == 2.5
    assert (counters[("globex", "PRODUCTION")].queued, counters[("globex", "SANDBOX")].queued) == (
        1,
        0,
    )
    assert len(counters) == 4
    # Endpoints and deliveries made before environments are production's.
    assert [(e.id, e.environment) for e in endpoints] == [("we_old", "PRODUCTION")]
    assert [(d.id, d.environment) for d in deliveries] == [("dlv_old", "PRODUCTION")]
    # The per-org layout is gone, the per-(org, environment) one is there.
    assert not catalog["indexes"] & {
        "ix_jobs_org_status_seq",
        "ix_jobs_org_application",
        "ix_jobs_org_finished",
        "ix_jobs_org_created",
        "ix_webhook_endpoints_org",
        "ix_webhook_deliveries_org_job",
    }
    assert {
        "ix_jobs_scope_status_seq",
        "ix_jobs_scope_application",
        "ix_jobs_scope_finished",
        "ix_jobs_scope_created",
        "ix_jobs_status_lease",
        "ix_job_orgs_served",
        "ix_webhook_endpoints_scope",
        "ix_webhook_deliveries_scope_job",
        "ix_webhook_deliveries_due",
        "ix_product_events_scope",
    } <= catalog["indexes"]
    assert {"uq_jobs_scope_idempotency", "uq_product_events_scope_event"} <= catalog["uniques"]
    assert not catalog["uniques"] & {"uq_jobs_org_idempotency", "uq_product_events_org_event"}
    assert sorted(catalog["job_orgs_key"]) == ["environment", "org_id"]


async def _check_working(engine: AsyncEngine) -> None:
    """The carried database works as a new one: keys and ids are per environment."""
    queue = open_queue(engine)

    def keyed(environment: str) -> NewJob:
        return NewJob(
            org="acme",
            route="POST /v1/score",
            payload={},
            environment=environment,
            idempotency_key="shared-key",
            request_hash="h" * 64,
        )

    # The sandbox job's Idempotency-Key, sent by a live key: a new job, not a replay.
    [live] = await queue.enqueue([keyed("PRODUCTION")])
    assert live.created and live.job.id != "sj_old00000000000000001"
    [again] = await queue.enqueue([keyed("SANDBOX")])
    assert not again.created and again.job.id == "sj_old00000000000000001"
    old_sandbox = "sj_old00000000000000007"
    assert await queue.get("acme", old_sandbox, environment="PRODUCTION") is None
    assert await queue.get("acme", old_sandbox, environment="SANDBOX") is not None
    # Production's queue: jobs 3, 6 and the new one queued; 2 running under a cap of 7.
    counters = await queue.org_counters("acme", environment="PRODUCTION")
    assert (counters.queued, counters.running, counters.cap) == (3, 2, 7)
    # The claims take each environment's jobs in order and move its own counters.
    leases = await queue.claim("w", 10)
    by_scope = sorted((lease.job.environment, lease.job.seq) for lease in leases)
    assert ("PRODUCTION", 3) in by_scope and ("PRODUCTION", 6) in by_scope
    assert ("SANDBOX", 1) in by_scope
    after = {(c.org, c.environment): c for c in await queue.counters()}
    assert after[("acme", "SANDBOX")].running == 2 and after[("acme", "SANDBOX")].queued == 0
    assert after[("acme", "PRODUCTION")].running == 5 and after[("acme", "PRODUCTION")].queued == 0
    # A sandbox endpoint can be added beside the old (production) one.
    store = WebhookStore(engine)
    await store.add_endpoint("acme", "https://93.184.215.14/sandbox", environment="SANDBOX")
    assert [e.id for e in await store.list_endpoints("acme", environment="PRODUCTION")] == [
        "we_old"
    ]
    assert await store.deliveries("acme", environment="SANDBOX") == []
    assert [d.id for d in await store.deliveries("acme", environment="PRODUCTION")] == ["dlv_old"]
    # The sandbox event's id is free in production.
    async with engine.begin() as conn:
        await conn.execute(
            product_events.insert().values(
                org="acme", environment="PRODUCTION", event_id="evt_1", type="flow_run",
                time_us=2, received_us=2, data={},
            )
        )  # fmt: skip


@pytest.mark.parametrize("path", ["runner", "worker first"])
def test_a_database_of_the_old_layout_is_carried(database_url: str, path: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        await _old_database(engine)
        if path == "worker first":
            # `tollhouse worker` makes sure of the queue's tables before any migration ran.
            await create_job_schema(engine)
            await create_job_schema(engine)  # and again: nothing left to do
            await _check_carried(engine)
        assert await migrate(engine) == (BEFORE, LATEST)
        await _check_carried(engine)
        assert await migrate(engine) == (LATEST, LATEST)
        await create_job_schema(engine)
        await _check_carried(engine)
        await _check_working(engine)

    run_with(database_url, go, schema=False)


def test_a_fresh_database_goes_through_the_step_unchanged(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        assert await migrate(engine) == (0, LATEST)
        async with engine.connect() as conn:
            before = await conn.run_sync(_catalog)
        await create_job_schema(engine)
        async with engine.connect() as conn:
            assert await conn.run_sync(_catalog) == before

    run_with(database_url, go, schema=False)
