"""``tollhouse usage calls | metric | metrics | log | prune`` — analytics in the terminal.

The numbers are the HTTP API's: the same library functions answer both, and ``--json``
prints the very body ``GET /call-counts/…`` or ``GET /v1/analytics/{metric}`` returns.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from tollhouse.analytics import call_counts
from tollhouse.analytics.buckets import iso_z
from tollhouse.analytics.call_log import read_calls
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.analytics.events import parse_time
from tollhouse.analytics.metrics import run_metric
from tollhouse.cli.common import (
    ConfigOpt,
    DatabaseOpt,
    JsonOpt,
    console,
    fail,
    settings_from,
    with_database,
    write_json,
)
from tollhouse.errors import TollhouseError
from tollhouse.metering.retention import Retention, prune

app = typer.Typer(
    help="Usage analytics: call counts (seed 001), metrics (seed 003), the call log.",
    no_args_is_help=True,
)

_ENV = {"test": "SANDBOX", "live": "PRODUCTION"}
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}

OrgOpt = Annotated[str, typer.Option("--org", help="The org whose usage is shown.")]
EnvOpt = Annotated[str, typer.Option("--env", help="test (SANDBOX) or live (PRODUCTION).")]
StartOpt = Annotated[
    str | None,
    typer.Option("--start", help="Range start: ISO 8601 with offset (…Z) or epoch seconds."),
]
EndOpt = Annotated[
    str | None, typer.Option("--end", help="Range end (default: now), like --start.")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Range start relative to the end: 30m, 24h, 7d.")
]


def _environment(env: str) -> str:
    if env not in _ENV:
        fail(f"--env {env!r}: use test or live", 2)
    return _ENV[env]


def _moment(raw: str, flag: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        return parse_time(raw, flag).timestamp()
    except TollhouseError as exc:
        fail(str(exc), 2)


def _range(
    start: str | None, end: str | None, since: str | None, default_span: float | None
) -> tuple[float | None, float | None]:
    """Resolve --start/--end/--since to epoch seconds (None where the API defaults)."""
    if start is not None and since is not None:
        fail("give --start or --since, not both", 2)
    stop = _moment(end, "--end") if end is not None else None
    if since is not None:
        found = _SPAN.match(since)
        if not found:
            fail(f"--since {since!r}: use a number and s, m, h or d (e.g. 7d)", 2)
        span = float(found.group(1)) * _UNIT[found.group(2)]
        return (stop if stop is not None else time.time()) - span, stop
    if start is not None:
        return _moment(start, "--start"), stop
    if default_span is not None:
        return (stop if stop is not None else time.time()) - default_span, stop
    return None, stop


def _with_engine(config: str | None, database_url: str | None, fn: Any) -> Any:
    settings = settings_from(config, database_url)
    return with_database(settings, lambda e: fn(e, settings))


def _stamp(ts: float) -> str:
    try:
        return iso_z(ts)
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f}"


@app.command("calls")
def calls(
    org: OrgOpt,
    env: EnvOpt = "test",
    label: Annotated[
        str | None,
        typer.Option("--label", help=f"Series by label: {', '.join(call_counts.LABELS)}."),
    ] = None,
    reco_type: Annotated[
        str | None, typer.Option("--reco-type", help="With --scenario: one scenario's counts.")
    ] = None,
    scenario: Annotated[str | None, typer.Option("--scenario", help="Scenario name.")] = None,
    start: StartOpt = None,
    end: EndOpt = None,
    since: SinceOpt = None,
    amt: Annotated[int, typer.Option("--amt", help="Series per page (1-128).")] = 64,
    cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of a page.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Call counts over time (seed 001): in total, by label or for one scenario."""
    environment = _environment(env)
    lo, hi = _range(start, end, since, None)
    if label is not None and scenario is not None:
        fail("give --label or --scenario, not both", 2)
    if label is not None and label not in call_counts.LABELS:
        fail(f"--label {label!r}: use one of {', '.join(call_counts.LABELS)}", 2)
    if not 1 <= amt <= call_counts.MAX_AMT:
        fail(f"--amt must be from 1 to {call_counts.MAX_AMT}", 2)

    async def go(engine: Any, settings: Any) -> dict[str, Any]:
        if label is not None:
            return await call_counts.historical_by_label(
                engine,
                label,
                org=org,
                environment=environment,
                start=lo,
                end=hi,
                now=time.time(),
                amt=amt,
                cursor=cursor,
                groups=settings.policy.endpoint_groups,
            )
        return await call_counts.historical(
            engine,
            org=org,
            environment=environment,
            start=lo,
            end=hi,
            now=time.time(),
            reco_type=reco_type if scenario is not None else None,
            scenario=scenario,
        )

    body = _with_engine(config, database_url, go)
    if as_json:
        write_json(body)
        return
    for warning in body.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    table = Table(title=f"API calls of {org} ({environment})")
    if label is None:
        table.add_column("time (UTC)", no_wrap=True)
        table.add_column("calls", justify="right")
        for ts, n in zip(body["timestamps"], body["counts"], strict=True):
            table.add_row(_stamp(ts), str(n))
        table.caption = f"total {sum(body['counts'])}"
    else:
        table.add_column(label)
        table.add_column("description")
        table.add_column("calls", justify="right")
        for s in body["series"]:
            table.add_row(s["key"], s["description"], str(sum(s["counts"])))
        if body["has_next"]:
            table.caption = f"more: --cursor {body['next_cursor']}"
    console.print(table)


@app.command("metric")
def metric(
    name: Annotated[str, typer.Argument(help="A metric of `tollhouse usage metrics`.")],
    org: OrgOpt,
    env: EnvOpt = "test",
    start: StartOpt = None,
    end: EndOpt = None,
    since: SinceOpt = None,
    page: Annotated[int, typer.Option("--page", help="Page (api_calls_log).")] = 1,
    page_size: Annotated[int, typer.Option("--page-size", help="Rows per page, ≤ 200.")] = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """One metric of seed 003 (default range: the last 7 days)."""
    definition = CATALOGUE.get(name)
    if definition is None:
        fail(f"unknown metric {name!r}; see `tollhouse usage metrics`", 2)
    environment = _environment(env)
    lo, hi = _range(start, end, since, 7 * 86400)
    stop = hi if hi is not None else time.time()
    assert lo is not None
    if lo >= stop:
        fail("the range start must be before its end", 2)
    if page < 1 or not 1 <= page_size <= 200:
        fail("--page must be >= 1 and --page-size from 1 to 200", 2)

    async def go(engine: Any, settings: Any) -> dict[str, Any]:
        return await run_metric(
            engine,
            definition,
            org=org,
            environment=environment,
            start=lo,
            end=stop,
            now=time.time(),
            page=page,
            page_size=page_size,
        )

    body = _with_engine(config, database_url, go)
    if as_json:
        write_json(body)
        return
    _show(name, body)


def _show(name: str, body: dict[str, Any]) -> None:
    kind, value = body["type"], body["value"]
    if kind == "empty":
        console.print(f"{name}: no data in this range.")
        return
    if kind == "simple":
        shown = f"{value['prefix'] or ''}{value['value']}{value['suffix'] or ''}"
        console.print(f"{name}: [bold]{shown}[/]", highlight=False)
        return
    table = Table(title=name)
    if kind == "barchart":
        items = value["values"]
        series = list(items[0]["values"]) if items else []
        table.add_column("bucket", no_wrap=True)
        for s in series:
            table.add_column(s, justify="right")
        for item in items:
            table.add_row(item["name"], *(_cell(item["values"][s]) for s in series))
    else:
        headings = value["headings"]
        prefixes = value.get("prefixes") or {}
        for h in headings:
            table.add_column(h)
        for row in value.get("rows", value.get("items", [])):
            table.add_row(*(f"{prefixes.get(h, '')}{_cell(row.get(h))}" for h in headings))
        if "total" in value:
            table.caption = f"page {value['page']} of {value['pages']} ({value['total']} calls)"
    console.print(table)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


@app.command("metrics")
def metrics(as_json: JsonOpt = False) -> None:
    """List the metric catalogue (seed 003)."""
    rows = [
        {"name": m.name, "type": m.output, "description": m.description} for m in CATALOGUE.values()
    ]
    if as_json:
        write_json(rows)
        return
    table = Table()
    for h in ("metric", "type", "description"):
        table.add_column(h)
    for r in rows:
        table.add_row(r["name"], r["type"], r["description"])
    console.print(table)


@app.command("log")
def log(
    org: OrgOpt,
    env: EnvOpt = "test",
    start: StartOpt = None,
    end: EndOpt = None,
    since: SinceOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="Calls per page (1-1000).")] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of a page.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """The raw call log, newest first, paged by cursor."""
    environment = _environment(env)
    lo, hi = _range(start, end, since, None)

    async def go(engine: Any, settings: Any) -> Any:
        return await read_calls(
            engine,
            org=org,
            environment=environment,
            start=lo,
            end=hi,
            cursor=cursor,
            limit=limit,
        )

    calls_, next_cursor = _with_engine(config, database_url, go)
    if as_json:
        write_json(
            {
                "calls": [
                    {
                        "id": c.id,
                        "time": iso_z(c.time),
                        "key_id": c.key_id,
                        "tenant": c.tenant,
                        "endpoint_group": c.endpoint_group,
                        "method": c.method,
                        "route": c.route,
                        "status": c.status,
                        "duration_ms": c.duration_ms,
                        "labels": c.labels,
                    }
                    for c in calls_
                ],
                "next_cursor": next_cursor,
            }
        )
        return
    table = Table(title=f"calls of {org} ({environment}), newest first")
    for h in ("time (UTC)", "key", "method", "route", "status", "ms"):
        table.add_column(h)
    for c in calls_:
        table.add_row(
            iso_z(c.time),
            c.key_id,
            c.method,
            c.route or "(unmatched)",
            str(c.status),
            f"{c.duration_ms:.1f}",
        )
    if next_cursor:
        table.caption = f"more: --cursor {next_cursor}"
    console.print(table)


@app.command("prune")
def prune_cmd(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Delete usage rows older than the default retention (the server does it hourly)."""

    async def go(engine: Any, settings: Any) -> dict[str, int]:
        return await prune(engine, Retention(), datetime.now(UTC).timestamp())

    deleted = _with_engine(config, database_url, go)
    if as_json:
        write_json(deleted)
        return
    for table_name, n in deleted.items():
        console.print(f"{table_name}: {n} rows deleted")
