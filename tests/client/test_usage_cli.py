"""``tollhouse usage`` over the SDK, against a real `tollhouse serve`.

One org gets known traffic (three criteria generations, one scoring job) and known
events (flow runs: four by ada, two by bo); the views must show exactly those, print the
API's body with ``--json``, and draw bars in proportion.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from tests.client.conftest import KeyMaker
from tests.conftest import Server
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.cli.usage import app, bar_chart
from tollhouse.client import Client, Event

pytestmark = pytest.mark.integration

TENANT = "acme"
RESUME = "Built Python APIs on PostgreSQL and Redis for 6 years."


@dataclass(frozen=True)
class Seeded:
    url: str
    key: str
    org: str
    start: datetime  # a range around the seeded events and calls
    end: datetime


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def seeded(make_keys: KeyMaker, default_server: Server) -> Seeded:
    made = make_keys([("usage-cli", "root")])[("usage-cli", "root")]
    now = datetime.now(UTC).replace(microsecond=0)
    # All in one hour (a bar chart's bucket): ten minutes into the hour two hours ago.
    when = (now - timedelta(hours=2)).replace(minute=10, second=0)
    with Client(made["key"], default_server.url, tenant_id=TENANT) as client:
        for _ in range(3):
            client.criteria.generate("job_u", "Backend Engineer", "Python and SQL, 5 years.")
        job = client.score("app_u", "job_u", {"name": "Ada", "resume": RESUME})
        runs = [("ada", i) for i in range(4)] + [("bo", i) for i in range(2)]
        client.events.ingest(
            Event(
                f"ev_{user}_{i}",
                "flow_run",
                when + timedelta(minutes=i),
                {
                    "run_id": f"r_{user}_{i}",
                    "status": "succeeded",
                    "source": "manual",
                    "user": user,
                    "workflow": "wf",
                },
            )
            for user, i in runs
        )
        # The meter flushes every second and the job runs in the background: wait (a
        # bounded poll, not a timed assertion) until both are visible.
        for _ in range(400):
            page = client.call_counts.by_label("ENDPOINTS", amt=128)
            ai = sum(sum(s.counts) for s in page.series if s.key == "CRITERIA_AI")
            if ai == 3 and client.get_score(job.scoring_job_id).done:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the seeded calls and job never became visible")
    return Seeded(default_server.url, made["key"], made["org"], now - timedelta(hours=3), now)


runner = CliRunner()


def usage(seeded: Seeded | None, *args: str, code: int = 0, **env: str | None) -> Result:
    extra = ["--api-key", seeded.key, "--url", seeded.url] if seeded is not None else []
    result = runner.invoke(app, [*args, *extra], env=env or None)
    assert result.exit_code == code, result.output
    return result


def api(seeded: Seeded, path: str, **params: Any) -> Any:
    """The body the API answers, read without the SDK."""
    r = httpx.get(
        seeded.url + path, params=params, headers={"Authorization": f"Bearer {seeded.key}"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def bar(output: str, first: str) -> int:
    """The length of the ``#`` bar on the line whose first cell is ``first``."""
    for line in output.splitlines():
        if line.split() and line.split()[0] == first:
            return line.count("#")
    raise AssertionError(f"no row {first!r} in:\n{output}")


def test_calls_by_label_total_and_scenario(seeded: Seeded) -> None:
    start, end = str(seeded.start.timestamp()), str(seeded.end.timestamp() + 60)
    body = orjson.loads(
        usage(
            seeded, "calls", "--label", "ENDPOINTS", "--start", start, "--end", end, "--json"
        ).stdout
    )
    direct = api(
        seeded, "/call-counts/historical/ENDPOINTS/", start_timestamp=start, end_timestamp=end
    )
    assert set(body) == set(direct) and body["timestamps"] == direct["timestamps"]
    series = {s["key"]: s for s in body["series"]}
    assert sum(series["CRITERIA_AI"]["counts"]) == 3
    assert series["CRITERIA_AI"] == {s["key"]: s for s in direct["series"]}["CRITERIA_AI"]

    table = usage(seeded, "calls", "--label", "ENDPOINTS", "--since", "1d").stdout
    row = next(line for line in table.splitlines() if "CRITERIA_AI" in line)
    assert " 3 " in row and "#" in row

    # One series per page: the table follows the cursor to every page.
    paged = usage(seeded, "calls", "--label", "ENDPOINTS", "--amt", "1").stdout
    assert {"CRITERIA_AI", "SCORING", "ANALYTICS"} <= set(paged.split())
    first = orjson.loads(
        usage(seeded, "calls", "--label", "ENDPOINTS", "--amt", "1", "--json").stdout
    )
    assert len(first["series"]) == 1 and first["has_next"] and first["next_cursor"]

    totals = orjson.loads(usage(seeded, "calls", "--start", start, "--json").stdout)
    assert {"timestamps", "counts"} <= set(totals) and sum(totals["counts"]) >= 4
    shown = usage(
        seeded, "calls", "--since", "1d", TOLLHOUSE_API_KEY=seeded.key, TOLLHOUSE_URL=seeded.url
    )
    assert "total" in shown.stdout and "#" in shown.stdout
    scenario = usage(seeded, "calls", "--scenario", "home", "--reco-type", "similar", "--json")
    assert orjson.loads(scenario.stdout)["counts"] == []


def test_metric_json_is_the_api_body_and_bars_are_proportional(seeded: Seeded) -> None:
    start, end = iso(seeded.start), iso(seeded.end)
    for name in ("flow_runs", "flow_per_user", "flow_runs_distribution"):
        out = usage(seeded, "metric", name, "--start", start, "--end", end, "--json").stdout
        assert orjson.loads(out) == api(
            seeded, f"/v1/analytics/{name}", time_start=start, time_end=end
        ), name
    assert orjson.loads(out)["type"] == "barchart"

    simple = usage(seeded, "metric", "flow_runs", "--start", start, "--end", end).stdout
    assert "flow_runs:" in simple and "6 runs" in simple
    per_user = usage(seeded, "metric", "flow_per_user", "--since", "1d").stdout
    ada, bo = bar(per_user, "ada"), bar(per_user, "bo")
    assert bo > 0 and abs(ada - 2 * bo) <= 1  # 4 runs against 2
    buckets = usage(
        seeded, "metric", "flow_runs_distribution", "--start", start, "--end", end
    ).stdout
    assert sum(line.count("#") > 0 for line in buckets.splitlines()) == 1  # one busy hour
    empty = usage(seeded, "metric", "tokens_cost", "--since", "1d").stdout
    assert "no data" in empty


def test_log_is_the_paginated_call_log(seeded: Seeded) -> None:
    body = orjson.loads(usage(seeded, "log", "--limit", "2", "--json").stdout)
    value = body["value"]
    assert body["type"] == "table" and value["headings"][0] == "Endpoint"
    assert len(value["items"]) == 2 and value["page"] == 1 and value["total"] >= 4
    second = orjson.loads(usage(seeded, "log", "--limit", "2", "--page", "2", "--json").stdout)
    assert second["value"]["page"] == 2
    table = usage(seeded, "log", "--page-size", "3").stdout
    # Newest first: this test's own reads of the log lead.
    assert "page 1 of" in table and "/v1/analytics/*" in table


def test_scoring_volume(seeded: Seeded) -> None:
    body = orjson.loads(usage(seeded, "volume", "--range", "1h", "--json").stdout)
    assert body["granularity"] == "minute" and sum(p["completed"] for p in body["data"]) == 1
    table = usage(seeded, "volume", "--range", "1h").stdout
    assert "minute (UTC)" in table and "1 completed, 0 failed" in table
    assert sum(line.count("#") > 0 for line in table.splitlines()) == 1


def test_the_demo_key_is_used_for_a_local_server_only(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".tollhouse").mkdir()
    (tmp_path / ".tollhouse" / "demo-key").write_text(seeded.key + "\n")
    monkeypatch.chdir(tmp_path)
    local = usage(None, "volume", "--url", seeded.url, "--json", TOLLHOUSE_API_KEY=None)
    assert "demo key" in local.stderr and orjson.loads(local.stdout)["granularity"] == "hour"
    remote = usage(None, "volume", "--url", "http://192.0.2.1:9", code=2, TOLLHOUSE_API_KEY=None)
    assert "no API key" in remote.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["calls", "--since", "fortnight"],
        ["calls", "--start", "2026-01-01T00:00:00"],
        ["calls", "--start", "2027-01-02T00:00:00Z", "--end", "2027-01-01T00:00:00Z"],
        ["calls", "--start", "1", "--since", "1d"],
        ["calls", "--amt", "500"],
        ["calls", "--scenario", "home"],
        ["calls", "--label", "DBS", "--scenario", "home", "--reco-type", "similar"],
        ["volume", "--range", "2h"],
        ["metric", "flow_runs", "--page-size", "201"],
    ],
)
def test_bad_options_exit_2_before_sending(args: list[str]) -> None:
    # A closed port: had anything been sent, the error would be a connection failure.
    result = runner.invoke(app, [*args, "--api-key", "sk_test_x", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert "refused" not in result.output


def test_server_errors_exit_1_with_the_message(seeded: Seeded) -> None:
    unknown = usage(seeded, "metric", "no_such", code=1)
    assert "NOT_FOUND" in unknown.stderr and "no_such" in unknown.stderr
    label = usage(seeded, "calls", "--label", "PLANETS", code=1)
    assert "PLANETS" in label.stderr
    wrong = runner.invoke(app, ["volume", "--api-key", "sk_test_wrong", "--url", seeded.url])
    assert wrong.exit_code == 1 and "UNAUTHORIZED" in wrong.stderr


def test_metrics_list_and_prune(tmp_path: Path) -> None:
    listed = orjson.loads(runner.invoke(app, ["metrics", "--json"]).stdout)
    assert {m["name"] for m in listed} == set(CATALOGUE)
    assert "kb_overview" in runner.invoke(app, ["metrics"]).stdout
    pruned = runner.invoke(
        app, ["prune", "--database-url", f"sqlite:///{tmp_path}/usage.db", "--json"]
    )
    assert pruned.exit_code == 0, pruned.output
    deleted = orjson.loads(pruned.stdout)
    assert deleted and all(n == 0 for n in deleted.values())


@pytest.mark.parametrize("width", [60, 120])
def test_bars_fill_the_terminal_width(width: int) -> None:
    out = io.StringIO()
    plain = Console(width=width, file=out, force_terminal=False)
    rows = [(["a", "8"], [8.0]), (["b", "2"], [2.0]), (["c", "0"], [0.0])]
    plain.print(bar_chart(plain, ["name", "n"], rows))
    text = out.getvalue()
    assert all(len(line.rstrip()) <= width for line in text.splitlines())
    a, b, c = bar(text, "a"), bar(text, "b"), bar(text, "c")
    assert a >= width - 20 and abs(a - 4 * b) <= 2 and c == 0
    assert "\x1b[" not in text  # no colour off a terminal

    out = io.StringIO()
    fancy = Console(width=width, file=out, force_terminal=True, color_system="standard")
    fancy.print(bar_chart(fancy, ["name", "n"], [(["a", "3"], [2.0, 1.0])]))
    shown = out.getvalue()
    assert "█" in shown and "#" not in shown and "\x1b[" in shown  # coloured blocks
