"""Run a catalogue metric and shape its ``AnalyticsResponse`` (the metrics catalogue shape,
docs/api-shapes.md).

``{"type": "simple" | "table" | "barchart" | "horizontal-barchart" | "empty", "value": …}``:

* simple — ``{"value", "prefix", "suffix"}``;
* barchart — ``{"values": [{"name", "values": {series: n}, "value_mapping": null}]}``, one
  item per bucket of the range (hourly up to 3 days, daily beyond), zero-filled;
* table / horizontal-barchart — ``{"headings", "rows", "prefixes", "suffixes"}``;
* paginated table — ``{"headings", "items", "total", "pages", "size", "page"}``;
* empty — ``{}`` when nothing in the range matched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.analytics.buckets import bucket_name, bucket_starts, metric_step
from tollhouse.analytics.catalogue import TIME, Measure, Metric
from tollhouse.analytics.compiler import Compiled, Window, compile_metric
from tollhouse.analytics.events import FIELDS
from tollhouse.analytics.sources import rollup_for
from tollhouse.errors import StorageError
from tollhouse.metering.histogram import BUCKETS, percentile
from tollhouse.metering.retention import Retention
from tollhouse.storage.dialect import DATABASE_ERRORS

#: Shown for a table row whose group field is missing on the events.
UNKNOWN = "unknown"
EMPTY: dict[str, Any] = {"type": "empty", "value": {}}

Row = RowMapping


def _int(value: Any) -> int:
    # PostgreSQL returns SUM(bigint) as numeric (Decimal); SQLite as int; NULL as None.
    return 0 if value is None else int(value)


def _round(value: float, decimals: int | None) -> float | int:
    if decimals is None:
        return round(value, 3)
    return round(value, decimals)


def _unit(metric: Metric, m: Measure) -> tuple[int, int | None]:
    """(divisor to the field's unit, decimals) of a measure over one field."""
    if metric.source == "events" and len(m.fields) == 1:
        spec = FIELDS[m.fields[0]]
        return spec.unit_scale, m.decimals if m.decimals is not None else spec.decimals
    if metric.source == "calls" and m.fields == ("duration_ms",):
        return 1000, m.decimals if m.decimals is not None else 1
    return 1, m.decimals


def _value(metric: Metric, m: Measure, row: Row, prefix: str) -> float | int | None:
    if m.agg in ("count", "count_distinct"):
        return _int(row[f"{prefix}_n"])
    scale, decimals = _unit(metric, m)
    if m.agg == "sum":
        total = _int(row[f"{prefix}_sum"])
        if scale == 1 and decimals is None:
            return total
        return _round(total / scale, decimals)
    if m.agg == "avg":
        n = _int(row[f"{prefix}_n"])
        if n == 0:
            return None
        return _round(_int(row[f"{prefix}_sum"]) / n / scale, decimals)
    if m.agg == "ratio":
        assert m.of is not None
        num = _value(metric, m.of[0], row, f"{prefix}_num")
        den = _value(metric, m.of[1], row, f"{prefix}_den")
        if num is None or not den:
            return None
        return _round(num / den, m.decimals)
    raise ValueError(f"{m.agg} is not read from the aggregate row")


async def _rows(conn: AsyncConnection, stmt: Any) -> list[Row]:
    return [r._mapping for r in (await conn.execute(stmt)).all()]


def _group_key(row: Row | tuple[Any, ...], labels: tuple[str, ...]) -> tuple[Any, ...]:
    if isinstance(row, tuple):
        return row[: len(labels)]
    return tuple(row[g] for g in labels)


async def _collect(
    conn: AsyncConnection, plan: Compiled
) -> tuple[dict[tuple[Any, ...], dict[str, Any]], int]:
    """Every measure's value per group, and the number of rows matched."""
    metric, labels = plan.metric, plan.group_labels
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    matched = 0
    if plan.aggregate is not None:
        for row in await _rows(conn, plan.aggregate):
            key = _group_key(row, labels)
            matched += _int(row["_n"])
            values = groups.setdefault(key, {})
            for i, m in enumerate(metric.measures):
                if m.name in plan.parts:
                    values[m.name] = _value(metric, m, row, f"m{i}")
    # Percentiles sharing a statement (p50/p90/p99 of one field) read it once.
    read: dict[int, tuple[dict[tuple[Any, ...], tuple[list[int], int, int]], int]] = {}
    for name, (scale, stmt) in plan.histograms.items():
        m = next(x for x in metric.measures if x.name == name)
        _, decimals = _unit(metric, m)
        if id(stmt) not in read:
            read[id(stmt)] = await _histograms(conn, metric, labels, stmt)
        hists, count_total = read[id(stmt)]
        for key, (counts, low, high) in hists.items():
            estimate = percentile(counts, m.q or 0.5, low, high)
            groups.setdefault(key, {})[name] = (
                None if estimate is None else _round(estimate / scale, decimals)
            )
        if plan.aggregate is None:
            matched = max(matched, count_total)
    for name, stmt in plan.latest.items():
        row = (await conn.execute(stmt)).one()._mapping
        matched = max(matched, _int(row["_n"]))
        groups.setdefault((), {})[name] = _int(row["hits"])
    return groups, matched


async def _histograms(
    conn: AsyncConnection, metric: Metric, labels: tuple[str, ...], stmt: Any
) -> tuple[dict[tuple[Any, ...], tuple[list[int], int, int]], int]:
    """Merged latency histograms (counts, min, max) per group, and the values counted."""
    hists: dict[tuple[Any, ...], tuple[list[int], int, int]] = {}
    count_total = 0
    for raw in (await conn.execute(stmt)).all():
        values_ = tuple(raw)
        key = _group_key(values_, labels)
        rest = values_[len(labels) :]
        if metric.source == "calls":
            counts = [_int(c) for c in rest[:BUCKETS]]
            low, high = _int(rest[BUCKETS]), _int(rest[BUCKETS + 1])
        else:
            bucket, n, low, high = int(rest[0]), _int(rest[1]), _int(rest[2]), _int(rest[3])
            counts = [0] * BUCKETS
            counts[bucket] = n
        found = hists.get(key)
        if found is None:
            hists[key] = (counts, low, high)
        else:
            merged = [a + b for a, b in zip(found[0], counts, strict=True)]
            hists[key] = (merged, min(found[1], low), max(found[2], high))
        count_total += sum(counts)
    return hists, count_total


def _simple(metric: Metric, groups: Mapping[tuple[Any, ...], Mapping[str, Any]]) -> dict[str, Any]:
    value = groups.get((), {}).get(metric.measures[0].name)
    if value is None:
        return EMPTY
    return {
        "type": "simple",
        "value": {"value": value, "prefix": metric.prefix, "suffix": metric.suffix},
    }


def _barchart(
    metric: Metric, w: Window, groups: Mapping[tuple[Any, ...], Mapping[str, Any]]
) -> dict[str, Any]:
    items = []
    for i, start in enumerate(bucket_starts(w.start, w.end, w.step)):
        found = groups.get((i,), {})
        values = {
            m.name: found.get(m.name, None if m.agg == "percentile" else 0) for m in metric.measures
        }
        items.append({"name": bucket_name(start, w.step), "values": values, "value_mapping": None})
    return {"type": "barchart", "value": {"values": items}}


def _label(value: Any, field: str) -> Any:
    if value is None or value == "":
        return "(unmatched)" if field == "route" else UNKNOWN
    return value


def _table(metric: Metric, groups: Mapping[tuple[Any, ...], Mapping[str, Any]]) -> dict[str, Any]:
    headings = [*metric.headings, *(m.name for m in metric.measures)]
    first = metric.measures[0].name
    rows = []
    for key, values in groups.items():
        row: dict[str, Any] = {
            h: _label(v, f) for h, v, f in zip(metric.headings, key, metric.group_by, strict=True)
        }
        for m in metric.measures:
            row[m.name] = values.get(m.name)
        rows.append(row)

    def order(row: dict[str, Any]) -> tuple[float, tuple[str, ...]]:
        lead = row.get(first)
        return (
            -(lead if lead is not None else -math.inf),
            tuple(str(row[h]) for h in metric.headings),
        )

    rows.sort(key=order)
    return {
        "type": "horizontal-barchart" if metric.output == "horizontal-barchart" else "table",
        "value": {
            "headings": headings,
            "rows": rows,
            "prefixes": dict(metric.prefixes) if metric.prefixes else None,
            "suffixes": dict(metric.suffixes) if metric.suffixes else None,
        },
    }


def _duration(us: int) -> str:
    return f"{round(us / 1000)}ms"


async def _log(conn: AsyncConnection, plan: Compiled, page: int, size: int) -> dict[str, Any]:
    assert plan.log is not None and plan.log_total is not None
    total = _int((await conn.execute(plan.log_total)).scalar())
    if total == 0:
        return EMPTY
    items = []
    for row in await _rows(conn, plan.log):
        item: dict[str, Any] = {}
        for heading, name in plan.metric.columns:
            if name == "duration_ms":
                item[heading] = _duration(_int(row["duration_us"]))
            elif name == "route":
                item[heading] = _label(row["route"], "route")
            else:
                item[heading] = row[name]
        items.append(item)
    return {
        "type": "table",
        "value": {
            "headings": [h for h, _ in plan.metric.columns],
            "items": items,
            "total": total,
            "pages": math.ceil(total / size),
            "size": size,
            "page": page,
        },
    }


async def run_metric(
    engine: AsyncEngine,
    metric: Metric,
    *,
    org: str,
    environment: str,
    start: float,
    end: float,
    now: float,
    retention: Retention | None = None,
    page: int = 1,
    page_size: int = 50,
) -> dict[str, Any]:
    """Answer one metric for one org and environment over ``[start, end]`` (epoch s).

    Returns:
        The metrics catalogue shape's ``AnalyticsResponse`` as a dict.

    Raises:
        StorageError: the database failed.
    """
    window = Window(org, environment, start, end, metric_step(start, end))
    rollup = None
    if metric.source == "calls":
        rollup = rollup_for(window.step, start, now, retention or Retention(), end)
    plan = compile_metric(metric, window, rollup=rollup, page=page, page_size=page_size)
    try:
        async with engine.connect() as conn:
            if metric.source == "call_log":
                return await _log(conn, plan, page, page_size)
            groups, matched = await _collect(conn, plan)
    except DATABASE_ERRORS as exc:
        raise StorageError(f"could not compute {metric.name}: {exc}") from exc
    if matched == 0:
        return EMPTY
    if metric.output == "simple":
        return _simple(metric, groups)
    if metric.group_by == (TIME,):
        return _barchart(metric, window, groups)
    return _table(metric, groups)
