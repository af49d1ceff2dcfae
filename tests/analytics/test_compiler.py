"""The query compiler: every statement of every metric is scoped; bad definitions fail."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.analytics.support import DAY0, platform, who
from tests.storage.support import run_with, sqlite_url
from tollhouse.analytics.catalogue import CATALOGUE, Measure, Metric, eq
from tollhouse.analytics.compiler import CompileError, Window, compile_metric
from tollhouse.analytics.metrics import run_metric
from tollhouse.metering.schema import usage_rollup_1h

WINDOW = Window("org-under-test", "PRODUCTION", DAY0, DAY0 + 86400, 3600)


def statements(metric: Metric) -> list[Any]:
    plan = compile_metric(metric, WINDOW, rollup=usage_rollup_1h)
    out = [plan.aggregate, plan.log, plan.log_total]
    out += [stmt for _, stmt in plan.histograms.values()]
    out += list(plan.latest.values())
    return [s for s in out if s is not None]


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_statement_is_scoped_to_the_org_and_environment(name: str) -> None:
    found = statements(CATALOGUE[name])
    assert found
    for stmt in found:
        for dialect in (sqlite.dialect(), postgresql.dialect()):
            sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
            assert "'org-under-test'" in sql and "'PRODUCTION'" in sql, sql


BAD = [
    Metric("x", "", "simple", "events", (Measure("n", "sum", ("nope",)),), ("flow_run",)),
    Metric("x", "", "simple", "events", (Measure("n", "avg", ("cost", "tokens_in")),), ("a",)),
    Metric("x", "", "simple", "events", (Measure("n", "ratio"),), ("flow_run",)),
    Metric("x", "", "simple", "calls", (Measure("n", "sum", ("calls",), where=(eq("a", "b"),)),)),
    Metric("x", "", "simple", "calls", (Measure("n", "sum", ("bytes",)),)),
    Metric("x", "", "table", "calls", (Measure("n", "count"),), group_by=("user",)),
    Metric("x", "", "simple", "calls", (Measure("n", "percentile", ("cost",), q=0.5),)),
]


@pytest.mark.parametrize("metric", BAD)
def test_definitions_the_compiler_cannot_handle_fail_loudly(metric: Metric) -> None:
    with pytest.raises(CompileError):
        compile_metric(metric, WINDOW, rollup=usage_rollup_1h)


def test_calls_metrics_need_a_rollup() -> None:
    with pytest.raises(CompileError):
        compile_metric(CATALOGUE["api_calls_per_date"], WINDOW)


def test_a_horizontal_barchart_is_a_table_shown_as_bars(tmp_path: Any) -> None:
    ranked = Metric(
        "models_ranked",
        "LLM calls per model",
        "horizontal-barchart",
        "events",
        (Measure("Calls", "count"),),
        ("llm_call",),
        group_by=("model",),
        headings=("Model",),
    )

    async def go(engine: AsyncEngine) -> None:
        async with platform(engine, who()) as client:
            events = [
                {"id": f"e{i}", "type": "llm_call", "time": DAY0 + i, "data": {"model": m}}
                for i, m in enumerate(["a", "b", "b"])
            ]
            assert (await client.post("/v1/events", json=events)).status_code == 200
        body = await run_metric(
            engine,
            ranked,
            org="acme",
            environment="SANDBOX",
            start=DAY0,
            end=DAY0 + 60,
            now=DAY0 + 60,
        )
        assert body == {
            "type": "horizontal-barchart",
            "value": {
                "headings": ["Model", "Calls"],
                "rows": [{"Model": "b", "Calls": 2}, {"Model": "a", "Calls": 1}],
                "prefixes": None,
                "suffixes": None,
            },
        }

    run_with(sqlite_url(tmp_path), go)
