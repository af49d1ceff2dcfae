"""The metrics catalogue shape (docs/api-shapes.md) over HTTP on both engines: every metric
of the catalogue on realistic events, hand-computed values, pagination, bucket sizes,
isolation and every documented error."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.support import (
    DAY,
    DAY0,
    evaluate,
    iso,
    platform,
    realistic_events,
    who,
)
from tests.storage.support import run_with
from tollhouse.analytics.buckets import metric_step
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.analytics.sources import granularity, rollup_for
from tollhouse.metering.meter import UsageMeter
from tollhouse.metering.record import CallRecord
from tollhouse.metering.retention import Retention

#: The metrics catalogue shape's catalogue, as the shape lists it.
SHAPE_METRICS = [
    "flow_runs",
    "trigger_runs",
    "manual_runs",
    "agent_runs",
    "active_users",
    "active_runs",
    "active_triggers",
    "errors",
    "average_run_time",
    "flow_runs_distribution",
    "flow_per_user",
    "errors_over_time",
    "run_time_over_time",
    "ai_models_total_cost",
    "ai_models_total_tokens",
    "average_cost_per_run",
    "tokens_cost",
    "tokens_cost_by_workflow",
    "tokens_cost_by_user",
    "tokens_cost_by_node",
    "model_tokens_total_cost",
    "ai_operations_per_tool",
    "model_tokens_per_tool",
    "ai_operations_per_user",
    "model_tokens_per_user",
    "conversations_started",
    "messages_sent",
    "messages_per_conversation",
    "conversation_users",
    "conversations_started_over_time",
    "messages_sent_over_time",
    "conversations_started_by_user",
    "messages_sent_by_user",
    "conversation_tokens_cost",
    "conversation_tokens_cost_by_user",
    "conversation_chat_costs_total",
    "api_calls_per_date",
    "api_calls_per_endpoint",
    "api_calls_log",
    "kb_total_documents",
    "kb_processed_successfully",
    "kb_failed_documents",
    "kb_contributors",
    "kb_documents_over_time",
    "kb_documents_per_kb",
    "kb_documents_by_user",
    "kb_document_types",
    "kb_user_activity",
    "kb_overview",
]

SHAPE_TYPES = {
    "simple": "simple",
    "barchart": "barchart",
    "table": "table",
    "paginated-table": "table",
}
NOW = DAY0 + 10 * DAY


#: Tollhouse's additions (docs/analytics.md), consumed by the dashboard by these names.
ADDED_METRICS = [
    "api_calls_by_status_class",
    "api_latency_percentiles",
    "fair_use_flags",  # read from the fair-use pass's flags: tests/fairuse/test_route.py
    "regeneration_loops",  # and the other signals' subjects: tests/fairuse/test_flags.py
    "unscored_criteria_jobs",
    "polling_keys",
    "early_retry_keys",
    "burst_submission_keys",
]


def test_the_catalogue_is_the_shape_s_plus_tollhouse_s_additions() -> None:
    assert len(SHAPE_METRICS) == 49
    assert sorted(CATALOGUE) == sorted(SHAPE_METRICS + ADDED_METRICS)
    for metric in CATALOGUE.values():
        assert metric.description and metric.output in SHAPE_TYPES


def seed_calls(meter: UsageMeter, org: str, env: str, n: int, start: float) -> list[CallRecord]:
    routes = [("POST", "/v1/score"), ("GET", "/v1/score/{scoringJobId}"), ("GET", None)]
    out = []
    for i in range(n):
        method, route = routes[i % 3]
        c = CallRecord(
            start + i * 1337.3,
            org,
            env,
            f"key_{i % 2}",
            None,
            "SCORING" if route else None,
            method,
            route,
            (200, 404, 500, 429, 302)[i % 5],
            3.0 + (i % 17) * 11.3,
            {},
        )
        meter.record(c)
        out.append(c)
    return out


async def post_events(client: Any, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 1000):
        r = await client.post("/v1/events", json={"events": events[i : i + 1000]})
        assert r.status_code == 200, r.text
        assert r.json()["inserted"] == len(events[i : i + 1000])


def test_every_metric_matches_the_reference_evaluation(database_url: str) -> None:
    events = realistic_events(seed=3, start=DAY0, days=7)
    noise = realistic_events(seed=4, start=DAY0, days=7)  # another org, and PRODUCTION
    ranges = [
        (DAY0 + 2 * DAY + 3 * 3600 + 17 * 60, DAY0 + 5 * DAY + 3 * 3600 + 17 * 60),  # hourly
        (DAY0 - DAY / 2, DAY0 + 8 * DAY),  # daily
    ]

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        calls = seed_calls(meter, "acme", "SANDBOX", 600, DAY0)
        seed_calls(meter, "other", "SANDBOX", 300, DAY0)
        seed_calls(meter, "acme", "PRODUCTION", 300, DAY0)
        async with platform(engine, who("other"), meter=meter, now=NOW) as other:
            await post_events(other, noise)
        async with platform(engine, who("acme", environment="PRODUCTION"), now=NOW) as prod:
            await post_events(prod, [{**e, "id": "p" + e["id"]} for e in noise])
        async with platform(engine, who("acme", role="member"), meter=meter, now=NOW) as client:
            await post_events(client, events)
            for start, end in ranges:
                step = metric_step(start, end)
                g = granularity(rollup_for(step, start, NOW, Retention()))
                for name, metric in CATALOGUE.items():
                    if metric.source == "fair_use":
                        continue  # no flags in these events: tests/fairuse/test_route.py
                    params = {"time_start": iso(start), "time_end": iso(end)}
                    r = await client.get(f"/v1/analytics/{name}", params=params)
                    assert r.status_code == 200, (name, r.text)
                    want = evaluate(metric, events, start, end, calls, granularity=g)
                    assert r.json() == want, name
                    assert want["type"] != "empty", name  # the data exercises every metric
            params = {"time_start": iso(DAY0), "time_end": iso(NOW), "page": 3, "page_size": 7}
            r = await client.get("/v1/analytics/api_calls_log", params=params)
            want = evaluate(CATALOGUE["api_calls_log"], [], DAY0, NOW, calls, page=3, size=7)
            assert r.json() == want and len(want["value"]["items"]) == 7

    run_with(database_url, go)


def ev(i: int, kind: str, t: float, **data: Any) -> dict[str, Any]:
    return {"id": f"e{i}", "type": kind, "time": iso(t), "data": data}


HAND = [
    ev(1, "flow_run", DAY0 + 10, run_id="r1", status="running", source="manual", user="ann"),
    ev(
        2,
        "flow_run",
        DAY0 + 70,
        run_id="r1",
        status="succeeded",
        source="manual",
        user="ann",
        duration_ms=60_000,
    ),
    ev(3, "flow_run", DAY0 + 20, run_id="r2", status="running", source="trigger", user="bob"),
    ev(4, "flow_run", DAY0 + 30, run_id="r3", status="failed", source="agent", duration_ms=250),
    ev(5, "trigger", DAY0, trigger_id="t1", enabled=True),
    ev(6, "trigger", DAY0 + 5, trigger_id="t1", enabled=False),
    ev(7, "trigger", DAY0 + 5, trigger_id="t2", enabled=True),
    ev(8, "trigger", DAY0 + 3 * DAY, trigger_id="t3", enabled=True),  # after the range
    ev(
        9,
        "llm_call",
        DAY0 + 11,
        model="gpt-4o",
        tokens_in=1000,
        tokens_out=500,
        cost=0.5,
        tool="flow",
        user="ann",
        workflow="wf",
        node="n1",
    ),
    ev(
        10,
        "llm_call",
        DAY0 + 12,
        model="gpt-4o",
        tokens_in=100,
        tokens_out=0,
        cost=0.25,
        cached=True,
        tool="flow",
        user="ann",
    ),
    ev(
        11,
        "llm_call",
        DAY0 + 13,
        model="mini",
        tokens_in=10,
        tokens_out=5,
        cost=0.125,
        tool="agent",
        conversation_id="c1",
        user="bob",
    ),
    ev(12, "conversation_started", DAY0 + 1, conversation_id="c1", user="bob"),
    ev(13, "message_sent", DAY0 + 2, conversation_id="c1", user="bob", role="user"),
    ev(14, "message_sent", DAY0 + 3, conversation_id="c1", user="bob", role="agent"),
    ev(15, "message_sent", DAY0 + 4, conversation_id="c0", user="bob", role="user"),
    ev(16, "kb_document", DAY0 + 1, kb="hr", document_id="d1", user="ann", file_type="pdf"),
    ev(
        17,
        "kb_document",
        DAY0 + 2,
        kb="hr",
        document_id="d1",
        user="ann",
        file_type="pdf",
        status="processed",
    ),
    ev(
        18, "kb_document", DAY0 + 3, kb="legal", document_id="d2", file_type="docx", status="failed"
    ),
]


def test_hand_computed_values(database_url: str) -> None:
    window = {"time_start": iso(DAY0), "time_end": iso(DAY0 + DAY)}

    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            await post_events(client, HAND)

            async def value(name: str) -> Any:
                r = await client.get(f"/v1/analytics/{name}", params=window)
                assert r.status_code == 200, r.text
                return r.json()

            simple = {
                "flow_runs": 3, "trigger_runs": 1, "manual_runs": 1, "agent_runs": 1,
                "errors": 1, "active_users": 2, "active_runs": 1, "active_triggers": 1,
                "average_run_time": 30125.0, "ai_models_total_cost": 0.625,
                "model_tokens_total_cost": 0.625, "ai_models_total_tokens": 1615,
                "average_cost_per_run": round(0.5 / 3, 6), "conversations_started": 1,
                "messages_sent": 3, "messages_per_conversation": 1.5, "conversation_users": 1,
                "conversation_chat_costs_total": 0.125, "kb_total_documents": 2,
                "kb_processed_successfully": 1, "kb_failed_documents": 1, "kb_contributors": 1,
            }  # fmt: skip
            for name, expected in simple.items():
                body = await value(name)
                assert body["type"] == "simple" and body["value"]["value"] == expected, name
            assert (await value("flow_runs"))["value"] == {
                "value": 3,
                "prefix": None,
                "suffix": " runs",
            }
            assert (await value("ai_models_total_cost"))["value"]["prefix"] == "$"
            assert (await value("tokens_cost"))["value"] == {
                "headings": ["Model", "Tokens", "Cost"],
                "rows": [
                    {"Model": "gpt-4o", "Tokens": 1600, "Cost": 0.5},
                    {"Model": "mini", "Tokens": 15, "Cost": 0.125},
                ],
                "prefixes": {"Cost": "$"},
                "suffixes": None,
            }
            per_user = (await value("flow_per_user"))["value"]["rows"]
            assert per_user == [
                {"User": "ann", "runs": 1},
                {"User": "bob", "runs": 1},
                {"User": "unknown", "runs": 1},
            ]
            overview = (await value("kb_overview"))["value"]["rows"]
            assert overview == [
                {"Knowledge Base": "hr", "Documents": 1, "Processed": 1, "Failed": 0,
                 "Contributors": 1},
                {"Knowledge Base": "legal", "Documents": 1, "Processed": 0, "Failed": 1,
                 "Contributors": 0},
            ]  # fmt: skip
            bars = (await value("run_time_over_time"))["value"]["values"]
            assert len(bars) == 25 and bars[0]["name"] == "2026-01-01T00:00:00Z"
            assert bars[0]["values"] == {"P25": 250.0, "P50": 250.0, "P90": 60000.0}
            assert bars[1]["values"] == {"P25": None, "P50": None, "P90": None}
            dist = (await value("flow_runs_distribution"))["value"]["values"][0]
            assert dist == {
                "name": "2026-01-01T00:00:00Z",
                "values": {"manual": 1, "trigger": 1, "agent": 1},
                "value_mapping": None,
            }
            # Nothing in the range → empty; live counts look only at time_end.
            later = {"time_start": iso(DAY0 + 5 * DAY), "time_end": iso(DAY0 + 6 * DAY)}
            r = await client.get("/v1/analytics/flow_runs", params=later)
            assert r.json() == {"type": "empty", "value": {}}
            r = await client.get("/v1/analytics/active_triggers", params=later)
            assert r.json()["value"]["value"] == 2
            r = await client.get("/v1/analytics/api_calls_log", params=later)
            assert r.json() == {"type": "empty", "value": {}}

    run_with(database_url, go)


def test_bucket_size_switches_after_three_days_utc(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            await post_events(client, HAND)
            for end, size, first in (
                (DAY0 + 3 * DAY, 73, "2026-01-01T00:00:00Z"),
                (DAY0 + 3 * DAY + 1, 4, "2026-01-01"),
            ):
                params = {"time_start": iso(DAY0), "time_end": iso(end)}
                r = await client.get("/v1/analytics/messages_sent_over_time", params=params)
                values = r.json()["value"]["values"]
                assert len(values) == size and values[0]["name"] == first
                assert values[0]["values"] == {"messages": 3}
            # Offsets are honoured: 01:00+01:00 is midnight UTC.
            params = {"time_start": "2026-01-01T01:00:00+01:00", "time_end": iso(DAY0 + 3600)}
            r = await client.get("/v1/analytics/messages_sent", params=params)
            assert r.json()["value"]["value"] == 3

    run_with(database_url, go)


def test_the_call_log_pages(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        for i in range(120):
            meter.record(
                CallRecord(DAY0 + i, "acme", "SANDBOX", "k", None, None, "GET", "/v1/x", 200,
                           141.6, {})
            )  # fmt: skip
        async with platform(engine, who(), meter=meter, now=NOW) as client:
            base = {"time_start": iso(DAY0), "time_end": iso(DAY0 + DAY)}
            r = await client.get("/v1/analytics/api_calls_log", params=base)
            value = r.json()["value"]
            assert (value["total"], value["pages"], value["size"], value["page"]) == (120, 3, 50, 1)
            assert value["items"][0] == {
                "Endpoint": "/v1/x",
                "Method": "GET",
                "Status": 200,
                "Duration": "142ms",
            }
            r = await client.get(
                "/v1/analytics/api_calls_log", params={**base, "page": 3, "page_size": 50}
            )
            assert len(r.json()["value"]["items"]) == 20
            r = await client.get("/v1/analytics/api_calls_log", params={**base, "page": 4})
            assert r.json()["value"]["items"] == [] and r.json()["value"]["total"] == 120
            r = await client.get("/v1/analytics/api_calls_log", params={**base, "page_size": 200})
            assert len(r.json()["value"]["items"]) == 120

    run_with(database_url, go)


def test_one_org_never_sees_another_s_data(database_url: str) -> None:
    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        seed_calls(meter, "acme", "SANDBOX", 50, DAY0)
        async with platform(engine, who("acme"), meter=meter, now=NOW) as acme:
            await post_events(acme, realistic_events(seed=9, start=DAY0, days=2))
        window = {"time_start": iso(DAY0), "time_end": iso(DAY0 + 2 * DAY)}
        for intruder in (who("globex"), who("acme", environment="PRODUCTION")):
            async with platform(engine, intruder, meter=meter, now=NOW) as client:
                for name in CATALOGUE:
                    r = await client.get(f"/v1/analytics/{name}", params=window)
                    assert r.json() == {"type": "empty", "value": {}}, name
                r = await client.get(
                    "/call-counts/historical/",
                    params={"start_timestamp": DAY0, "end_timestamp": DAY0 + 2 * DAY},
                )
                assert r.json()["counts"] == []
                for label in ("ACCOUNTS", "ENDPOINTS", "CHAT", "LLM"):
                    r = await client.get(
                        f"/call-counts/historical/{label}/",
                        params={"start_timestamp": DAY0, "end_timestamp": DAY0 + 2 * DAY},
                    )
                    assert r.json()["series"] == [], label

    run_with(database_url, go)


BAD_QUERIES = [
    ({"time_start": iso(DAY0 + 10), "time_end": iso(DAY0)}, 400),
    ({"time_start": iso(DAY0), "time_end": iso(DAY0)}, 400),
    ({"time_end": iso(DAY0)}, 422),
    ({"time_start": "2026-01-01T00:00:00", "time_end": iso(DAY0 + 1)}, 422),
    ({"time_start": "yesterday", "time_end": iso(DAY0 + 1)}, 422),
    ({"time_start": iso(DAY0), "time_end": iso(DAY0 + 1), "page_size": 201}, 422),
    ({"time_start": iso(DAY0), "time_end": iso(DAY0 + 1), "page_size": 0}, 422),
    ({"time_start": iso(DAY0), "time_end": iso(DAY0 + 1), "page": 0}, 422),
    ({"time_start": iso(DAY0), "time_end": iso(DAY0 + 1), "page": "x"}, 422),
]


@pytest.mark.parametrize(("params", "status"), BAD_QUERIES)
def test_documented_errors(tmp_path: Any, params: dict[str, Any], status: int) -> None:
    from tests.storage.support import sqlite_url

    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who(), now=NOW) as client:
            r = await client.get("/v1/analytics/flow_runs", params=params)
            assert r.status_code == status, r.text
            detail = r.json()["detail"]
            if status == 400:
                assert detail == "time_start must be before time_end"
            else:
                assert isinstance(detail, list) and {"loc", "msg", "type"} <= set(detail[0])
                assert detail[0]["loc"][0] == "query"

    run_with(sqlite_url(tmp_path), go)


def test_error_shapes_follow_the_metrics_catalogue_shape(tmp_path: Any) -> None:
    from tests.storage.support import sqlite_url

    async def go(engine: AsyncEngine) -> None:
        ok = {"time_start": iso(DAY0), "time_end": iso(DAY0 + 1)}
        async with platform(engine, who(), now=NOW) as client:
            r = await client.get("/v1/analytics/flow_runs", params={**ok, "page_size": 500})
            assert r.json() == {
                "detail": [
                    {
                        "loc": ["query", "page_size"],
                        "msg": "ensure this value is less than or equal to 200",
                        "type": "value_error.number.not_le",
                    }
                ]
            }
            r = await client.get("/v1/analytics/flow_runs", params={"time_end": ok["time_end"]})
            assert r.json()["detail"] == [
                {
                    "loc": ["query", "time_start"],
                    "msg": "field required",
                    "type": "value_error.missing",
                }
            ]
            r = await client.get("/v1/analytics/no_such_metric", params=ok)
            assert r.status_code == 404 and "no_such_metric" in r.json()["detail"]
        async with platform(engine, None, now=NOW) as anonymous:
            r = await anonymous.get("/v1/analytics/flow_runs", params=ok)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "UNAUTHORIZED"
            assert r.json()["error"]["requestId"] == "req_test"

    run_with(sqlite_url(tmp_path), go)
