"""Time series of API call counts, in total, by label and by scenario: the call-counts
shape (docs/api-shapes.md).

Points are native buckets — minutes for ranges up to about a day, hours up to about two
months, days beyond (the finest rollup with at most 1,500 buckets over the range whose
retention still covers its start) — that overlap ``[start, end]`` and hold data. Up to
100 points are returned as they are (``timestamps`` are the buckets' starts); more are
folded into 100 equal buckets over the range (:func:`tollhouse.analytics.buckets.fold`).
Label endpoints page their series (sorted by key) with an opaque cursor; the timestamps
are computed over every series of the label, so all pages share them.

Label sources: ACCOUNTS — the calling key (key id, with its name as description);
ENDPOINTS — the policy's ``[[endpoint_groups]]`` (``OTHER`` for calls outside any);
DBS, SCENARIOS, RECO_TYPES — the route labels ``db``, ``scenario``, ``reco_type``;
CHAT — active chat sessions (distinct conversations with a ``conversation_started`` or
``message_sent`` event per bucket); LLM — ``llm_call`` events. CHAT and LLM are "per
organization": one series keyed by the org.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Table, distinct, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse import cursors
from tollhouse.analytics.buckets import DAY, HOUR, MINUTE, floor_to, fold, native_step
from tollhouse.analytics.sources import granularity, retention_days
from tollhouse.errors import BadRequest, NotFound, StorageError
from tollhouse.keys.schema import api_keys
from tollhouse.metering.retention import Retention
from tollhouse.metering.schema import ROLLUPS, product_events, usage_dims
from tollhouse.policy.model import EndpointGroup
from tollhouse.storage.dialect import DATABASE_ERRORS

#: The call-counts shape's bounds of ``start_timestamp`` and ``end_timestamp``.
MIN_TIMESTAMP = -150_000_000_000.0
MAX_TIMESTAMP = 3_500_000_000.0
#: Range used when ``start_timestamp`` is not given: the 30 days before the end.
DEFAULT_SPAN = 30 * DAY
DEFAULT_AMT = 64
MAX_AMT = 128
#: The labels of ``/call-counts/historical/{label}/``.
LABELS = ("ACCOUNTS", "ENDPOINTS", "DBS", "SCENARIOS", "RECO_TYPES", "CHAT", "LLM")
#: ENDPOINTS key of calls whose route is in no endpoint group.
OTHER_GROUP = "OTHER"
#: Roles allowed to read call counts (the call-counts shape); the scenario endpoint adds
#: backend.
ROLES = frozenset({"root", "manager"})
SCENARIO_ROLES = frozenset({"root", "manager", "backend"})
_STEPS = (MINUTE, HOUR, DAY)


@dataclass(frozen=True, slots=True)
class Range:
    """A resolved time range and how it is read."""

    start: float
    end: float
    step: int
    """Seconds per native bucket."""
    warnings: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """Start after end: no time in between, nothing to read."""
        return self.start > self.end


def parse_timestamp(raw: str | None, name: str) -> float | None:
    """A query parameter as the call-counts shape's float64 timestamp, or None when absent.

    Raises:
        BadRequest: not a number, or outside [-150000000000.0, 3500000000.0].
    """
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(
            f"{name} must be a number of seconds since the epoch, got {raw!r}."
        ) from None
    if not math.isfinite(value) or not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        raise BadRequest(
            f"{name} must be between {MIN_TIMESTAMP} (year -2786) and {MAX_TIMESTAMP} "
            f"(year 2080), got {raw}."
        )
    return value


def parse_amt(raw: str | None) -> int:
    """``amt``: series per page, 1…128, default 64.

    Raises:
        BadRequest: not an integer in range.
    """
    if raw is None or raw == "":
        return DEFAULT_AMT
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"amt must be an integer from 1 to {MAX_AMT}, got {raw!r}.") from None
    if not 1 <= value <= MAX_AMT:
        raise BadRequest(f"amt must be from 1 to {MAX_AMT}, got {value}.")
    return value


def resolve_range(
    start: float | None,
    end: float | None,
    *,
    now: float,
    retention: Retention,
    days_kept: Mapping[int, float | None] | None = None,
) -> Range:
    """Fill in defaults (end = now, start = end − 30 days) and choose the native bucket.

    Args:
        start: ``start_timestamp`` or None.
        end: ``end_timestamp`` or None.
        now: the current time.
        retention: what the rollups keep (a finer table that no longer covers ``start``
            is skipped, with a warning).
        days_kept: retention per bucket size when reading events (exact times, so the
            bucket size is never coarsened; only deleted data is warned about).

    A ``start`` after ``end`` is a range holding no time (:attr:`Range.empty`): its
    answer is empty, with a warning saying why.
    """
    if end is None:
        end = min(max(now, MIN_TIMESTAMP), MAX_TIMESTAMP)
    if start is None:
        start = max(end - DEFAULT_SPAN, MIN_TIMESTAMP)
    if start > end:
        return Range(
            start, end, MINUTE, (f"start_timestamp ({start}) is after end_timestamp ({end}).",)
        )
    kept = days_kept or {granularity(t): retention_days(retention, t) for t in ROLLUPS}
    step = native_step(end - start, _STEPS)
    warnings: list[str] = []
    # Rollups of a finer grain are kept for less time; events keep exact times.
    while days_kept is None and not retention.covers(kept[step], start, now) and step != DAY:
        coarser = _STEPS[_STEPS.index(step) + 1]
        warnings.append(
            f"{_name(step)} data is kept for {kept[step]:g} days: {_name(coarser)} buckets used."
        )
        step = coarser
    if not retention.covers(kept[step], start, now):
        warnings.append(
            f"data older than {kept[step]:g} days has been deleted: counts before "
            f"{now - (kept[step] or 0) * DAY:.0f} are missing."
        )
    return Range(start, end, step, tuple(warnings))


def _name(step: int) -> str:
    return {MINUTE: "minute", HOUR: "hourly", DAY: "daily"}[step]


def _big(value: int) -> ColumnElement[int]:
    return literal(value, BigInteger)


def _rollup(step: int) -> Table:
    return next(t for t in ROLLUPS if granularity(t) == step)


Series = dict[tuple[Any, ...], dict[int, int]]


async def _rollup_series(
    conn: AsyncConnection,
    org: str,
    environment: str,
    rng: Range,
    keys: Sequence[Any],
    where: Sequence[ColumnElement[bool]] = (),
) -> Series:
    table = _rollup(rng.step)
    r, d = table.c, usage_dims.c
    stmt = (
        select(*keys, r.bucket, func.sum(r["count"]))
        .select_from(table.join(usage_dims, r.dim_id == d.id))
        .where(
            d.org == org,
            d.environment == environment,
            r.bucket >= _big(floor_to(rng.start, rng.step)),
            r.bucket <= _big(math.floor(rng.end)),
            *where,
        )
        .group_by(*keys, r.bucket)
    )
    out: Series = {}
    n = len(keys)
    for row in (await conn.execute(stmt)).all():
        count = int(row[n + 1] or 0)
        if count:
            out.setdefault(tuple(row[:n]), {})[int(row[n])] = count
    return out


async def _event_series(
    conn: AsyncConnection,
    org: str,
    environment: str,
    rng: Range,
    types: tuple[str, ...],
    measure: Any,
) -> dict[int, int]:
    e = product_events.c
    origin = floor_to(rng.start, rng.step)
    stop = floor_to(rng.end, rng.step) + rng.step
    idx = (e.time_us - _big(origin * 1_000_000)) // _big(rng.step * 1_000_000)
    stmt = (
        select(idx.label("i"), measure)
        .where(
            e.org == org,
            e.environment == environment,
            e.type.in_(types),
            e.time_us >= _big(origin * 1_000_000),
            e.time_us < _big(stop * 1_000_000),
        )
        .group_by(idx)
    )
    out: dict[int, int] = {}
    for i, n in (await conn.execute(stmt)).all():
        if n:
            out[origin + int(i) * rng.step] = int(n)
    return out


def encode_cursor(last_key: str) -> str:
    """The ``next_cursor`` of the page after the series ``last_key`` (tollhouse.cursors:
    number 0, the key as text)."""
    return cursors.encode(0, last_key)


def decode_cursor(cursor: str) -> str:
    """The series key a cursor points after: any cursor of the rule is a place in the
    key order (one from another label too).

    Raises:
        BadRequest: not a cursor.
    """
    return cursors.decode(cursor)[1]


async def historical(
    engine: AsyncEngine,
    *,
    org: str,
    environment: str,
    start: float | None,
    end: float | None,
    now: float,
    retention: Retention | None = None,
    reco_type: str | None = None,
    scenario: str | None = None,
) -> dict[str, Any]:
    """``GET /call-counts/historical/`` (and ``…/SCENARIOS/{reco_type}/{name}/`` when
    ``reco_type`` and ``scenario`` are given): ``{"timestamps", "counts", "warnings"}``.

    Raises:
        BadRequest: a bad range.
        StorageError: the database failed.
    """
    rng = resolve_range(start, end, now=now, retention=retention or Retention())
    where = []
    if scenario is not None:
        where = [usage_dims.c.reco_type == (reco_type or ""), usage_dims.c.scenario == scenario]
    try:
        async with engine.connect() as conn:
            series = (
                {} if rng.empty else await _rollup_series(conn, org, environment, rng, (), where)
            )
    except DATABASE_ERRORS as exc:
        raise StorageError(f"could not read call counts: {exc}") from exc
    total = series.get((), {})
    stamps, (counts,) = fold(sorted(total), [total], rng.start, rng.end)
    return {"timestamps": stamps, "counts": counts, "warnings": list(rng.warnings)}


@dataclass(frozen=True, slots=True)
class _Described:
    key: str
    description: str
    extra: dict[str, Any]
    counts: dict[int, int]


async def _label_series(
    conn: AsyncConnection,
    label: str,
    org: str,
    environment: str,
    rng: Range,
    groups: Sequence[EndpointGroup],
) -> list[_Described]:
    d = usage_dims.c
    if label == "ACCOUNTS":
        series = await _rollup_series(conn, org, environment, rng, (d.key_id,))
        ids = [k[0] for k in series]
        names: dict[str, tuple[str, str]] = {}
        if ids:
            rows = await conn.execute(
                select(api_keys.c.id, api_keys.c.name, api_keys.c.prefix).where(
                    api_keys.c.org_id == org, api_keys.c.id.in_(ids)
                )
            )
            names = {r.id: (r.name, r.prefix) for r in rows}
        out = []
        for (key_id,), counts in series.items():
            name, prefix = names.get(key_id, ("", ""))
            out.append(_Described(key_id, name or (f"{prefix}…" if prefix else ""), {}, counts))
        return out
    if label == "ENDPOINTS":
        described = {g.key: g.description for g in groups}
        series = await _rollup_series(conn, org, environment, rng, (d.endpoint_group,))
        return [
            _Described(
                group or OTHER_GROUP,
                described.get(group, "") if group else "calls outside every endpoint group",
                {},
                counts,
            )
            for (group,), counts in series.items()
        ]
    if label == "DBS":
        series = await _rollup_series(conn, org, environment, rng, (d.db,), (d.db != "",))
        return [
            _Described(db, f"calls on database {db}", {"db_id": db}, counts)
            for (db,), counts in series.items()
        ]
    if label == "SCENARIOS":
        series = await _rollup_series(
            conn, org, environment, rng, (d.reco_type, d.scenario), (d.scenario != "",)
        )
        return [
            _Described(
                f"{reco or '-'}/{name}",
                f"scenario {name} of recommendation type {reco or '-'}",
                {"reco_type": reco, "scenario": name},
                counts,
            )
            for (reco, name), counts in series.items()
        ]
    if label == "RECO_TYPES":
        series = await _rollup_series(
            conn, org, environment, rng, (d.reco_type,), (d.reco_type != "",)
        )
        return [
            _Described(reco, f"recommendation type {reco}", {}, counts)
            for (reco,), counts in series.items()
        ]
    e = product_events.c
    if label == "CHAT":
        counts = await _event_series(
            conn,
            org,
            environment,
            rng,
            ("conversation_started", "message_sent"),
            func.count(distinct(e.conversation_id)),
        )
        return [_Described(org, "active chat sessions", {}, counts)] if counts else []
    if label == "LLM":
        counts = await _event_series(conn, org, environment, rng, ("llm_call",), func.count())
        return [_Described(org, "LLM calls", {}, counts)] if counts else []
    raise NotFound(f"Unknown label {label!r}: use one of {', '.join(LABELS)}.")


async def historical_by_label(
    engine: AsyncEngine,
    label: str,
    *,
    org: str,
    environment: str,
    start: float | None,
    end: float | None,
    now: float,
    amt: int = DEFAULT_AMT,
    cursor: str | None = None,
    groups: Sequence[EndpointGroup] = (),
    retention: Retention | None = None,
) -> dict[str, Any]:
    """``GET /call-counts/historical/{label}/``: ``{"timestamps", "series", "has_next",
    "next_cursor", "warnings"}``.

    Raises:
        NotFound: an unknown label.
        BadRequest: a bad range or cursor.
        StorageError: the database failed.
    """
    if label not in LABELS:
        raise NotFound(f"Unknown label {label!r}: use one of {', '.join(LABELS)}.")
    after = decode_cursor(cursor) if cursor is not None else None
    retention = retention or Retention()
    days_kept = None
    if label in ("CHAT", "LLM"):
        days_kept = dict.fromkeys(_STEPS, retention.events_days)
    rng = resolve_range(start, end, now=now, retention=retention, days_kept=days_kept)
    try:
        async with engine.connect() as conn:
            described = (
                [] if rng.empty else await _label_series(conn, label, org, environment, rng, groups)
            )
    except DATABASE_ERRORS as exc:
        raise StorageError(f"could not read call counts: {exc}") from exc
    described.sort(key=lambda s: s.key)
    points = sorted({b for s in described for b in s.counts})
    page = [s for s in described if after is None or s.key > after]
    has_next = len(page) > amt
    page = page[:amt]
    stamps, folded = fold(points, [s.counts for s in page], rng.start, rng.end)
    return {
        "timestamps": stamps,
        "series": [
            {"key": s.key, "description": s.description, "extra_data": s.extra, "counts": c}
            for s, c in zip(page, folded, strict=True)
        ],
        "has_next": has_next,
        "next_cursor": encode_cursor(page[-1].key) if has_next else None,
        "warnings": list(rng.warnings),
    }
