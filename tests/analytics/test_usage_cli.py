"""``tollhouse usage``: the HTTP API's numbers in the terminal (rich tables and --json)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from tests.analytics.support import iso, platform, realistic_events, record, who
from tests.storage.support import run_with, sqlite_url
from tollhouse.analytics import call_counts
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.analytics.metrics import run_metric
from tollhouse.cli.usage import app
from tollhouse.metering.meter import UsageMeter

runner = CliRunner()


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[str, float]:
    """A SQLite database with a day of calls and events for org acme, ending now."""
    url = sqlite_url(tmp_path)
    now = time.time()
    start = now - 86400

    async def go(engine: AsyncEngine) -> None:
        meter = UsageMeter(engine)
        for i in range(300):
            record(meter, start + i * 280, status=(200, 500)[i % 2], labels={"db": f"db{i % 3}"})
        await meter.flush()
        async with platform(engine, who(), now=now) as client:
            events = realistic_events(seed=5, start=start, days=0.99)
            r = await client.post("/v1/events", json=events)
            assert r.status_code == 200

    run_with(url, go)
    return url, now


def cli(url: str, *args: str) -> Any:
    result = runner.invoke(app, [*args, "--database-url", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_calls_json_is_the_api_body(seeded: tuple[str, float]) -> None:
    url, now = seeded
    start, end = now - 2 * 86400, now
    out = json.loads(
        cli(
            url, "calls", "--org", "acme", "--start", str(start), "--end", str(end), "--json"
        ).stdout
    )

    async def api(engine: AsyncEngine) -> dict[str, Any]:
        return await call_counts.historical(
            engine, org="acme", environment="SANDBOX", start=start, end=end, now=time.time()
        )

    assert out == run_with(url, api)
    assert sum(out["counts"]) == 300
    by_db = json.loads(
        cli(url, "calls", "--org", "acme", "--label", "DBS", "--since", "2d", "--json").stdout
    )
    assert [(s["key"], sum(s["counts"])) for s in by_db["series"]] == [
        ("db0", 100),
        ("db1", 100),
        ("db2", 100),
    ]
    table = cli(url, "calls", "--org", "acme", "--label", "DBS", "--since", "2d").stdout
    assert "db1" in table and "100" in table
    assert "total 300" in cli(url, "calls", "--org", "acme", "--since", "2d").stdout
    other = json.loads(cli(url, "calls", "--org", "globex", "--since", "2d", "--json").stdout)
    assert other["counts"] == []


def test_metric_json_is_the_api_body(seeded: tuple[str, float]) -> None:
    url, now = seeded
    start, end = iso(now - 2 * 86400), iso(now)
    for name in ("flow_runs", "tokens_cost", "run_time_over_time", "api_calls_per_endpoint"):
        out = json.loads(
            cli(
                url, "metric", name, "--org", "acme", "--start", start, "--end", end, "--json"
            ).stdout
        )

        async def api(engine: AsyncEngine, name: str = name) -> dict[str, Any]:
            s = now - 2 * 86400
            return await run_metric(
                engine, CATALOGUE[name], org="acme", environment="SANDBOX", start=s, end=now,
                now=time.time(),
            )  # fmt: skip

        assert out == run_with(url, api), name
        assert out["type"] != "empty"
    shown = cli(url, "metric", "flow_runs", "--org", "acme", "--since", "2d").stdout
    assert "flow_runs:" in shown and " runs" in shown
    assert "Model" in cli(url, "metric", "tokens_cost", "--org", "acme").stdout
    assert "P50" in cli(url, "metric", "run_time_over_time", "--org", "acme").stdout
    log = cli(url, "metric", "api_calls_log", "--org", "acme", "--page-size", "5").stdout
    assert "page 1 of 60" in log
    empty = cli(url, "metric", "flow_runs", "--org", "acme", "--env", "live").stdout
    assert "no data" in empty


def test_log_pages_by_cursor(seeded: tuple[str, float]) -> None:
    url, _ = seeded
    first = json.loads(cli(url, "log", "--org", "acme", "--limit", "200", "--json").stdout)
    assert len(first["calls"]) == 200 and first["next_cursor"]
    rest = json.loads(
        cli(url, "log", "--org", "acme", "--limit", "200", "--cursor", first["next_cursor"],
            "--json").stdout
    )  # fmt: skip
    assert len(rest["calls"]) == 100 and rest["next_cursor"] is None
    ids = [c["id"] for c in first["calls"] + rest["calls"]]
    assert len(set(ids)) == 300
    times = [c["time"] for c in first["calls"] + rest["calls"]]
    assert times == sorted(times, reverse=True)
    assert "/v1/score" in cli(url, "log", "--org", "acme", "--limit", "3").stdout


def test_metrics_list_and_prune(seeded: tuple[str, float]) -> None:
    url, _ = seeded
    listed = json.loads(runner.invoke(app, ["metrics", "--json"]).stdout)
    assert {m["name"] for m in listed} == set(CATALOGUE)
    assert "kb_overview" in runner.invoke(app, ["metrics"]).stdout
    deleted = json.loads(cli(url, "prune", "--json").stdout)
    assert all(n == 0 for n in deleted.values())


@pytest.mark.parametrize(
    "args",
    [
        ["calls", "--org", "acme", "--env", "prod"],
        ["calls", "--org", "acme", "--label", "PLANETS"],
        ["calls", "--org", "acme", "--since", "fortnight"],
        ["calls", "--org", "acme", "--start", "2026-01-01T00:00:00"],
        ["calls", "--org", "acme", "--amt", "500"],
        ["metric", "no_such", "--org", "acme"],
        ["metric", "flow_runs", "--org", "acme", "--page-size", "201"],
    ],
)
def test_bad_options_exit_2_with_a_message(tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--database-url", sqlite_url(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "error" in result.output
