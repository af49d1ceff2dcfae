"""``POST /v1/events`` on both engines: shapes, idempotency per (org, id), validation."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.support import DAY, DAY0, iso, platform, who
from tests.storage.support import run_with, sqlite_url
from tollhouse.analytics.events import MAX_EVENTS
from tollhouse.metering.schema import product_events

NOW = DAY0 + DAY


def flow(i: int, **data: Any) -> dict[str, Any]:
    body = {"run_id": f"r{i}", "status": "succeeded", "source": "manual", "duration_ms": 12.5}
    body.update(data)
    return {"id": f"evt_{i}", "type": "flow_run", "time": iso(DAY0 + i), "data": body}


async def stored(engine: AsyncEngine, org: str | None = None) -> list[Any]:
    stmt = select(product_events).order_by(product_events.c.seq)
    if org is not None:
        stmt = stmt.where(product_events.c.org == org)
    async with engine.connect() as conn:
        return list((await conn.execute(stmt)).all())


def test_events_are_stored_once_per_org_and_id(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who("acme"), now=NOW) as acme:
            r = await acme.post("/v1/events", json=[flow(1), flow(2), flow(1)])
            assert r.status_code == 200
            assert r.json() == {"received": 3, "inserted": 2, "duplicates": 1}
            r = await acme.post("/v1/events", json={"events": [flow(2), flow(3)]})
            assert r.json() == {"received": 2, "inserted": 1, "duplicates": 1}
            r = await acme.post("/v1/events", json={"events": []})
            assert r.json() == {"received": 0, "inserted": 0, "duplicates": 0}
        async with platform(engine, who("globex"), now=NOW) as globex:
            r = await globex.post("/v1/events", json=[flow(1)])
            assert r.json()["inserted"] == 1  # ids are per org
        rows = await stored(engine, "acme")
        assert [r.event_id for r in rows] == ["evt_1", "evt_2", "evt_3"]
        first = rows[0]
        assert first.environment == "SANDBOX" and first.type == "flow_run"
        assert first.time_us == (DAY0 + 1) * 1_000_000
        assert (first.run_id, first.status, first.source, first.duration_us) == (
            "r1",
            "succeeded",
            "manual",
            12_500,
        )
        assert first.data["run_id"] == "r1"
        assert len(await stored(engine)) == 4

    run_with(database_url, go)


def test_event_ids_are_per_environment(database_url: str) -> None:
    """A sandbox event never hides (or replaces) a production event with the same id."""

    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who("acme", environment="SANDBOX"), now=NOW) as sandbox:
            r = await sandbox.post("/v1/events", json=[flow(1, workflow="sandbox")])
            assert r.json()["inserted"] == 1
        async with platform(engine, who("acme", environment="PRODUCTION"), now=NOW) as live:
            r = await live.post("/v1/events", json=[flow(1, workflow="live"), flow(1)])
            assert r.json() == {"received": 2, "inserted": 1, "duplicates": 1}
        rows = await stored(engine, "acme")
        assert sorted((r.environment, r.event_id, r.workflow) for r in rows) == [
            ("PRODUCTION", "evt_1", "live"),
            ("SANDBOX", "evt_1", "sandbox"),
        ]

    run_with(database_url, go)


def test_typed_columns_and_unknown_fields_and_types(database_url: str) -> None:
    events = [
        {
            "id": "l1",
            "type": "llm_call",
            "time": "2026-01-01T01:00:00+01:00",
            "data": {"model": "gpt-4o", "tokens_in": 10, "tokens_out": 5.0, "cost": 0.0123456,
                     "cached": True, "tool": "agent", "conversation_id": "c", "extra": [1, 2]},
        },
        {"id": "j1", "type": "job.completed", "time": DAY0 + 5, "data": {"anything": {"x": 1}}},
        {"id": "k1", "type": "kb_document", "time": iso(DAY0),
         "data": {"kb": "hr", "document_id": "d", "status": "processed", "user": "ann"}},
    ]  # fmt: skip

    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            r = await client.post("/v1/events", json=events)
            assert r.status_code == 200 and r.json()["inserted"] == 3
        llm, job, kb = await stored(engine)
        assert llm.time_us == DAY0 * 1_000_000
        assert (llm.tokens_in, llm.tokens_out, llm.cost_micros, llm.cached) == (10, 5, 12346, True)
        assert llm.data["extra"] == [1, 2]
        assert job.type == "job.completed" and job.data == {"anything": {"x": 1}}
        assert job.time_us == (DAY0 + 5) * 1_000_000
        assert (kb.kb, kb.document_id, kb.status, kb.user_id) == ("hr", "d", "processed", "ann")

    run_with(database_url, go)


INVALID = [
    ({"not": "events"}, "The body must be a JSON array"),
    ([flow(0), "nope"], "events[1]: must be an object"),
    ([{**flow(0), "id": ""}], "events[0].id: is required"),
    ([{**flow(0), "id": "x" * 201}], "events[0].id: must be at most 200"),
    ([flow(0), {**flow(1), "type": "Flow Run"}], "events[1].type: is required"),
    ([{k: v for k, v in flow(0).items() if k != "time"}], "events[0].time: is required"),
    ([{**flow(0), "time": "2026-01-01T00:00:00"}], "events[0].time: '2026-01-01T00:00:00' has no"),
    ([{**flow(0), "time": "yesterday"}], "events[0].time: 'yesterday' is not an ISO 8601"),
    ([{**flow(0), "time": True}], "events[0].time: must be an ISO 8601"),
    ([{**flow(0), "time": iso(NOW + 2 * DAY)}], "events[0].time: is more than a day in the"),
    ([{**flow(0), "data": [1]}], "events[0].data: must be an object"),
    ([flow(0, status=None)], "events[0].data.status: is required"),
    ([flow(0, status="done")], "events[0].data.status: must be one of running, succeeded, failed"),
    ([flow(0, source="cron")], "events[0].data.source: must be one of manual, trigger, agent"),
    ([flow(0, duration_ms="fast")], "events[0].data.duration_ms: must be a number"),
    ([flow(0, duration_ms=-1)], "events[0].data.duration_ms: must be a finite number >= 0"),
    ([flow(0, user=7)], "events[0].data.user: must be a non-empty string"),
    (
        [
            {
                "id": "t",
                "type": "trigger",
                "time": iso(DAY0),
                "data": {"trigger_id": "t", "enabled": "yes"},
            }
        ],
        "events[0].data.enabled: must be true or false",
    ),
    (
        [
            {
                "id": "l",
                "type": "llm_call",
                "time": iso(DAY0),
                "data": {"model": "m", "tokens_in": 1.5},
            }
        ],
        "events[0].data.tokens_in: must be a whole number",
    ),
    (
        [{"id": "k", "type": "kb_document", "time": iso(DAY0), "data": {"kb": "hr"}}],
        "events[0].data.document_id: is required",
    ),
    ([flow(i) for i in range(MAX_EVENTS + 1)], f"send at most {MAX_EVENTS}"),
]


@pytest.mark.parametrize(("body", "message"), INVALID)
def test_a_bad_event_is_refused_naming_its_index_and_field(
    tmp_path: Any, body: Any, message: str
) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            r = await client.post("/v1/events", json=body)
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "VALIDATION_FAILED" and error["requestId"] == "req_test"
            assert message in error["message"]
        assert await stored(engine) == []  # nothing of a refused batch is kept

    run_with(sqlite_url(tmp_path), go)


def test_malformed_json_and_missing_identity(tmp_path: Any) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            # Malformed JSON is a 400, as on every route; a body of another type a 415.
            r = await client.post("/v1/events", content=b"[{")
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "BAD_REQUEST" and "not valid JSON" in error["message"]
            assert r.headers["x-request-id"] == error["requestId"] == "req_test"
            for kind in ("text/plain", "application/x-www-form-urlencoded"):
                r = await client.post("/v1/events", content=b"[]", headers={"content-type": kind})
                assert r.status_code == 415, kind
                assert r.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
            r = await client.post(
                "/v1/events",
                content=b"[]",
                headers={"content-type": "application/json; charset=utf-8"},
            )
            assert r.status_code == 200
        async with platform(engine, None, now=NOW) as anonymous:
            r = await anonymous.post("/v1/events", json=[flow(1)])
            assert r.status_code == 401
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(product_events))).scalar()
        assert count == 0

    run_with(sqlite_url(tmp_path), go)
