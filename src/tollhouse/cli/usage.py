"""``tollhouse usage calls | metric | log | volume | metrics | prune | fair-use`` —
analytics in the terminal, read from a running server through the SDK.

Every view but ``prune`` and ``fair-use`` is an HTTP client of the public API, exactly as
an integrator's script would be: the key decides the org and environment, ``--json``
prints the body the API answered, and the tables carry bar charts scaled to the
terminal's width (``#`` bars when the output is not a terminal). ``prune`` is the
operator's maintenance step on the database the server writes; ``fair-use`` is the
provider's view of every org's fair-use signals, read from that database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

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
from tollhouse.cli.status import ApiKeyOpt, UrlOpt, resolve_api_key
from tollhouse.client import (
    DEFAULT_BASE_URL,
    CallCounts,
    Client,
    ClientError,
    LabelCounts,
    MetricResult,
    RetryPolicy,
    ScoringVolume,
    TimeRange,
)

T = TypeVar("T")

app = typer.Typer(
    help="Usage analytics from a running server: call counts, catalogue metrics, the call log, "
    "scoring volume.",
    no_args_is_help=True,
)

#: The call-counts shape's labels (the server checks them too; listed here for --help).
LABELS = ("ACCOUNTS", "ENDPOINTS", "DBS", "SCENARIOS", "RECO_TYPES", "CHAT", "LLM")
#: The scoring-volume shape's lookback windows (docs/api-shapes.md).
RANGES = ("1h", "24h", "7d", "30d", "90d")
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Series per page of a label (the call-counts shape allows 1–128).
MAX_AMT = 128

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


# --- options to values -------------------------------------------------------------------


def _moment(raw: str, flag: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        fail(f"{flag} {raw!r}: use ISO 8601 with an offset (2027-01-15T08:00:00Z) or epoch", 2)
    if moment.tzinfo is None:
        fail(f"{flag} {raw!r}: add an offset (Z or +01:00) so the moment is unambiguous", 2)
    return moment.timestamp()


def _range(
    start: str | None, end: str | None, since: str | None, default_span: float | None
) -> tuple[float | None, float | None]:
    """--start/--end/--since as epoch seconds (None where the API's default applies)."""
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
        lo = _moment(start, "--start")
    elif default_span is not None:
        lo = (stop if stop is not None else time.time()) - default_span
    else:
        return None, stop
    if lo >= (stop if stop is not None else time.time()):
        fail("the range start must be before its end", 2)
    return lo, stop


def _from_epoch(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _stamp(ts: float) -> str:
    try:
        return _from_epoch(ts).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f}"


@dataclass(frozen=True, slots=True)
class Remote:
    """Where and as whom to ask."""

    api_key: str | None
    url: str

    def ask(self, call: Callable[[Client], T]) -> T:
        """Run ``call`` with a client; an SDK error exits 1 with the server's message."""
        key = resolve_api_key(self.api_key, self.url)
        # Analytics buckets are per minute: a short Retry-After is worth waiting for, a
        # long one is reported at once.
        retry = RetryPolicy(max_retries=3, max_retry_after=10)
        try:
            with Client(key, self.url, retry=retry, timeout=30) as client:
                return call(client)
        except ClientError as exc:
            fail(str(exc))


# --- bar charts --------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _shown(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.2f}"


def bar_chart(
    out: Console,
    headings: Sequence[str],
    rows: Sequence[tuple[Sequence[str], Sequence[float]]],
    *,
    title: str | None = None,
    caption: str | None = None,
) -> Table:
    """A table whose last column is a horizontal bar per row, scaled to the terminal.

    Args:
        out: the console it is printed on (its width and whether it is a terminal).
        headings: the text columns' headings.
        rows: per row, its cells and the parts of its bar (stacked: e.g. completed and
            failed); the bar is their sum.
        title: the table's title.
        caption: the table's caption.

    Returns:
        The table: full-block bars in colour on a terminal, ``#`` (and ``x`` for a second
        part) otherwise.
    """
    table = Table(title=title, caption=caption, box=None, padding=(0, 1), expand=False)
    for i, heading in enumerate(headings):
        table.add_column(heading, justify="left" if i == 0 else "right", no_wrap=True)
    table.add_column("", no_wrap=True, overflow="crop")
    widths = [len(h) for h in headings]
    for cells, _ in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
    # Each column is padded by one space on either side; keep a little room at the end.
    room = max(10, out.width - sum(widths) - 2 * (len(headings) + 1) - 1)
    top = max((sum(parts) for _, parts in rows), default=0.0)
    fancy = out.is_terminal
    chars, styles = ("█", "█"), ("cyan", "red")
    if not fancy:
        chars = ("#", "x")
    for cells, parts in rows:
        bar = Text(no_wrap=True, overflow="crop")
        used = 0
        total = sum(parts)
        if top > 0 and total > 0:
            length = max(1, round(total / top * room))
            for i, part in enumerate(parts):
                n = round(part / total * length) if i < len(parts) - 1 else length - used
                n = max(0, min(n, length - used))
                bar.append(chars[min(i, 1)] * n, style=styles[min(i, 1)] if fancy else None)
                used += n
        table.add_row(*cells, bar)
    return table


# --- call counts (the call-counts shape) --------------------------------------------------


@app.command("calls")
def calls(
    label: Annotated[
        str | None,
        typer.Option("--label", help=f"Series by label: {', '.join(LABELS)}."),
    ] = None,
    scenario: Annotated[
        str | None, typer.Option("--scenario", help="One scenario's counts (with --reco-type).")
    ] = None,
    reco_type: Annotated[
        str | None, typer.Option("--reco-type", help="The scenario's reco_type.")
    ] = None,
    start: StartOpt = None,
    end: EndOpt = None,
    since: SinceOpt = None,
    amt: Annotated[int, typer.Option("--amt", help=f"Series per page (1-{MAX_AMT}).")] = 64,
    cursor: Annotated[
        str | None,
        typer.Option("--cursor", help="next_cursor of a page: show that page only."),
    ] = None,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
    url: UrlOpt = DEFAULT_BASE_URL,
) -> None:
    """Call counts over time (the call-counts shape): in total, by label, or for one scenario.

    By label, the table follows every page; --json prints one page's body (the first, or
    --cursor's).
    """
    lo, hi = _range(start, end, since, None)
    if label is not None and scenario is not None:
        fail("give --label or --scenario, not both", 2)
    if (scenario is None) != (reco_type is None):
        fail("--scenario and --reco-type go together", 2)
    if not 1 <= amt <= MAX_AMT:
        fail(f"--amt must be from 1 to {MAX_AMT}", 2)
    remote = Remote(api_key, url)
    if label is None:
        if scenario is not None and reco_type is not None:
            rt, name = reco_type, scenario
            found: CallCounts = remote.ask(
                lambda c: c.call_counts.by_scenario(rt, name, start=lo, end=hi)
            )
            what = f"scenario {reco_type}/{scenario}"
        else:
            found = remote.ask(lambda c: c.call_counts.historical(start=lo, end=hi))
            what = "all endpoints"
        if as_json:
            write_json(dict(found.raw))
            return
        _warn(found.warnings)
        rows = [
            ([_stamp(ts), _shown(n)], [n])
            for ts, n in zip(found.timestamps, found.counts, strict=True)
        ]
        total = sum(found.counts)
        console.print(
            bar_chart(
                console,
                ["time (UTC)", "calls"],
                rows,
                title=f"API calls: {what}",
                caption=f"total {_shown(total)}" if rows else "no calls in this range",
            )
        )
        return

    chosen = label.upper()
    if as_json or cursor is not None:
        page: LabelCounts = remote.ask(
            lambda c: c.call_counts.by_label(chosen, start=lo, end=hi, amt=amt, cursor=cursor)
        )
        pages = [page]
        if as_json:
            write_json(dict(page.raw))
            return
    else:
        pages = remote.ask(
            lambda c: list(c.call_counts.iter_by_label(chosen, start=lo, end=hi, amt=amt))
        )
    _warn(tuple(w for p in pages[:1] for w in p.warnings))
    series = [s for p in pages for s in p.series]
    last = pages[-1]
    console.print(
        bar_chart(
            console,
            [chosen.lower(), "description", "calls"],
            [([s.key, s.description, _shown(sum(s.counts))], [sum(s.counts)]) for s in series],
            title=f"API calls by {chosen}",
            caption=(
                f"more: --cursor {last.next_cursor}"
                if last.has_next and last.next_cursor
                else (None if series else "no calls in this range")
            ),
        )
    )


def _warn(warnings: Sequence[str]) -> None:
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


# --- metrics (the metrics catalogue shape) ------------------------------------------------


def _metric_range(
    start: str | None, end: str | None, since: str | None
) -> tuple[datetime, datetime]:
    lo, hi = _range(start, end, since, 7 * 86400)
    assert lo is not None
    return _from_epoch(lo), _from_epoch(hi if hi is not None else time.time())


@app.command("metric")
def metric(
    name: Annotated[str, typer.Argument(help="A metric of `tollhouse usage metrics`.")],
    start: StartOpt = None,
    end: EndOpt = None,
    since: SinceOpt = None,
    page: Annotated[int, typer.Option("--page", min=1, help="Page (api_calls_log).")] = 1,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=200, help="Rows per page, ≤ 200.")
    ] = 50,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
    url: UrlOpt = DEFAULT_BASE_URL,
) -> None:
    """One metric of the analytics catalogue (default range: the last 7 days)."""
    lo, hi = _metric_range(start, end, since)
    found: MetricResult = Remote(api_key, url).ask(
        lambda c: c.analytics.metric(
            name, time_start=lo, time_end=hi, page=page, page_size=page_size
        )
    )
    if as_json:
        write_json(dict(found.raw))
        return
    show_metric(name, found)


def show_metric(name: str, found: MetricResult) -> None:
    """Print a metric: a line, a table, or a table with bars."""
    kind, value = found.type, found.value
    if kind == "empty":
        console.print(f"{name}: no data in this range.")
        return
    if kind == "simple":
        shown = f"{value.get('prefix') or ''}{value.get('value')}{value.get('suffix') or ''}"
        console.print(f"{name}: [bold]{shown}[/]", highlight=False)
        return
    if kind == "barchart":
        items = found.bars
        series = list(items[0]["values"]) if items else []
        rows = []
        for item in items:
            values = item["values"]
            total = sum(_number(values.get(s)) or 0.0 for s in series)
            rows.append(([str(item["name"]), *(_cell(values.get(s)) for s in series)], [total]))
        console.print(bar_chart(console, ["bucket", *series], rows, title=name))
        return
    headings = [str(h) for h in value.get("headings", [])]
    prefixes = value.get("prefixes") or {}
    suffixes = value.get("suffixes") or {}
    table_rows = found.rows

    def cells(row: Any) -> list[str]:
        return [
            f"{prefixes.get(h, '')}{_cell(row.get(h))}{suffixes.get(h, '')}"
            if row.get(h) is not None
            else ""
            for h in headings
        ]

    caption = None
    if found.total is not None:
        caption = f"page {found.page} of {found.pages} ({found.total} calls)"
    # A table's bar measures its first all-numeric column (a call log is not charted).
    numeric = [h for h in headings[1:] if all(_number(r.get(h)) is not None for r in table_rows)]
    measured = numeric[0] if numeric and table_rows else None
    if measured is not None and found.total is None:
        rows = [(cells(r), [_number(r.get(measured)) or 0.0]) for r in table_rows]
        console.print(bar_chart(console, headings, rows, title=name, caption=caption))
        return
    table = Table(title=name, caption=caption)
    for h in headings:
        table.add_column(h)
    for row in table_rows:
        table.add_row(*cells(row))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    number = _number(value)
    return _shown(number) if number is not None else str(value)


@app.command("metrics")
def metrics(as_json: JsonOpt = False) -> None:
    """List the metric catalogue this version of tollhouse ships."""
    from tollhouse.analytics.catalogue import CATALOGUE

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
    start: StartOpt = None,
    end: EndOpt = None,
    since: SinceOpt = None,
    page: Annotated[int, typer.Option("--page", min=1, help="Page, newest first.")] = 1,
    page_size: Annotated[
        int, typer.Option("--page-size", "--limit", min=1, max=200, help="Calls per page.")
    ] = 50,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
    url: UrlOpt = DEFAULT_BASE_URL,
) -> None:
    """The raw call log, newest first (the ``api_calls_log`` metric; last 7 days)."""
    metric("api_calls_log", start, end, since, page, page_size, as_json, api_key, url)


# --- scoring volume (the scoring-volume shape) --------------------------------------------


@app.command("volume")
def volume(
    time_range: Annotated[
        str, typer.Option("--range", help=f"Lookback: {', '.join(RANGES)}.")
    ] = "24h",
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
    url: UrlOpt = DEFAULT_BASE_URL,
) -> None:
    """Scoring jobs completed and failed over a lookback window."""
    if time_range not in RANGES:
        fail(f"--range {time_range!r}: use one of {', '.join(RANGES)}", 2)
    found: ScoringVolume = Remote(api_key, url).ask(
        lambda c: c.analytics.scoring_volume(cast(TimeRange, time_range))
    )
    if as_json:
        write_json(dict(found.raw))
        return
    layout = {"minute": "%H:%M", "hour": "%m-%d %H:00", "day": "%Y-%m-%d"}
    shape = layout.get(found.granularity, "%Y-%m-%d %H:%M")
    rows = [
        (
            [p.timestamp.strftime(shape), str(p.total), str(p.completed), str(p.failed)],
            [float(p.completed), float(p.failed)],
        )
        for p in found.data
    ]
    completed = sum(p.completed for p in found.data)
    failed = sum(p.failed for p in found.data)
    legend = "bars: completed, then failed" + ("" if console.is_terminal else " (x)")
    console.print(
        bar_chart(
            console,
            [f"{found.granularity} (UTC)", "total", "completed", "failed"],
            rows,
            title=f"scoring volume, last {time_range}",
            caption=f"{completed} completed, {failed} failed; {legend}",
        )
    )


# --- maintenance (the database, not the API) ----------------------------------------------


@app.command("prune")
def prune_cmd(
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Delete usage rows older than the default retention, in the database the server
    writes: the meter's tables and the fair-use tables (never less than the policy's
    fair-use windows read). The server does it hourly unless TOLLHOUSE_USAGE_RETENTION is
    off."""
    from tollhouse.fairuse.retention import prune_fair_use
    from tollhouse.metering.retention import Retention, prune

    settings = settings_from(config, database_url)
    rules = settings.policy.fair_use

    async def prune_all(engine: Any) -> dict[str, int]:
        now, kept = time.time(), Retention()
        return {**await prune(engine, kept, now), **await prune_fair_use(engine, kept, now, rules)}

    deleted = with_database(settings, prune_all)
    if as_json:
        write_json(deleted)
        return
    for table_name, n in deleted.items():
        console.print(f"{table_name}: {n} rows deleted")


@app.command("fair-use")
def fair_use_cmd(
    org: Annotated[str | None, typer.Option("--org", help="One org (default: every org).")] = None,
    environment: Annotated[
        str | None,
        typer.Option("--environment", help="SANDBOX or PRODUCTION (default: both)."),
    ] = None,
    time_range: Annotated[
        str, typer.Option("--time-range", help=f"Lookback: {', '.join(RANGES)}.")
    ] = "7d",
    run: Annotated[
        bool, typer.Option("--run", help="Run the scheduled fair-use pass once first.")
    ] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Fair-use signals per org and environment, from the database the server writes:
    value, threshold, status (ok / watch / flagged), the jobIds or keys involved, first
    and last seen."""
    from tollhouse.fairuse import evaluate, run_pass
    from tollhouse.jobs.volume import TIME_RANGES

    if time_range not in TIME_RANGES:
        fail(f"--time-range {time_range!r}: use one of {', '.join(TIME_RANGES)}", 2)
    env = environment.upper() if environment else None
    if env is not None and env not in ("SANDBOX", "PRODUCTION"):
        fail(f"--environment {environment!r}: use SANDBOX or PRODUCTION", 2)
    settings = settings_from(config, database_url)
    rules = settings.policy.fair_use
    if not rules:
        fail("the policy has no [[fair_use]] signals", 2)
    end = time.time()
    start = end - TIME_RANGES[time_range][0].total_seconds()

    async def read(engine: Any) -> list[dict[str, Any]]:
        from sqlalchemy import select

        from tollhouse.metering.schema import usage_dims

        if run:
            await run_pass(
                engine, rules, now=end, webhook_org=settings.fair_use_webhook_org or None
            )
        query = select(usage_dims.c.org, usage_dims.c.environment).distinct()
        if org is not None:
            query = query.where(usage_dims.c.org == org)
        if env is not None:
            query = query.where(usage_dims.c.environment == env)
        async with engine.connect() as conn:
            pairs = sorted((o, e) for o, e in await conn.execute(query))
        if org is not None and not pairs:
            pairs = [(org, e) for e in ([env] if env else ["SANDBOX", "PRODUCTION"])]
        out = []
        for o, e in pairs:
            found = await evaluate(engine, rules, o, e, start, end)
            out.append({"org": o, "environment": e, "signals": [r.to_json() for r in found]})
        return out

    results = with_database(settings, read)
    if as_json:
        write_json({"timeRange": time_range, "orgs": results})
        return
    if not results:
        console.print("no usage recorded")
        return
    styles = {"ok": "green", "watch": "yellow", "flagged": "bold red"}
    for entry in results:
        table = Table(title=f"{entry['org']} · {entry['environment']} · last {time_range}")
        for name in (
            "signal",
            "value",
            "threshold",
            "status",
            "involved",
            "first seen",
            "last seen",
        ):
            table.add_column(name)
        for sig in entry["signals"]:
            involved = ", ".join(f"{s['id']} ({_shown(s['count'])})" for s in sig["involved"])
            table.add_row(
                sig["signal"],
                _shown(sig["value"]),
                _shown(sig["threshold"]),
                Text(sig["status"], style=styles[sig["status"]]),
                involved or "—",
                sig["firstSeen"] or "—",
                sig["lastSeen"] or "—",
            )
        console.print(table)
