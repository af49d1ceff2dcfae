"""The query compiler: any :class:`~tollhouse.analytics.catalogue.Metric` → SQL.

Pure: it builds SQLAlchemy Core statements from a metric and a :class:`Window` (org,
environment, range, bucket size) and executes nothing. Every statement is scoped to the
window's org and environment — the only way the runner gets rows.

Statements per metric (only those it needs):

* ``aggregate`` — one row per group with a column per measure part (conditional
  aggregation: ``COUNT(DISTINCT CASE WHEN … THEN run_id END)``, ``SUM(CASE …)``) and
  ``_n``, the rows matched (0 → the ``empty`` response);
* ``histogram`` — per group and latency bucket, counts with min and max, for percentiles
  (events are bucketed by a ``CASE`` over :data:`~tollhouse.metering.histogram.BOUNDS_US`;
  rollups already hold ``h00``…``h39``);
* ``latest`` — entities whose latest event is in a state (``ROW_NUMBER() OVER``);
* ``log`` / ``log_total`` — a page of the raw call log and its size.

Fair-use metrics (source ``fair_use``) aggregate ``fair_use_flags``: the rows of the
window's org and environment whose flagged span (first flagged → last updated) overlaps
the range.

Integer division of integer columns renders as ``/`` on both engines and, with the
origin at or before every row, truncates the same way: time buckets agree everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    case,
    distinct,
    false,
    func,
    literal,
    or_,
    select,
    true,
)

from tollhouse.analytics.catalogue import TIME, Cond, Measure, Metric
from tollhouse.analytics.events import FIELDS
from tollhouse.fairuse.schema import fair_use_flags
from tollhouse.metering.histogram import BOUNDS_US
from tollhouse.metering.histogram import COLUMNS as HIST
from tollhouse.metering.schema import product_events, usage_calls, usage_dims

#: Counter fields of the call rollups, by the name metrics use: each is a signed sum of
#: rollup columns. The ``status_*`` fields split calls by status class (every call is in
#: exactly one): 5xx are the errors, 4xx the client errors and the throttled (429), 3xx
#: the redirects, unknown the calls metered with status 0 (a forward-auth call whose
#: access-log line never came), and 2xx everything else (status 100–299).
CALL_COUNTERS: dict[str, tuple[tuple[str, int], ...]] = {
    "calls": (("count", 1),),
    "errors": (("errors", 1),),
    "client_errors": (("client_errors", 1),),
    "throttled": (("throttled", 1),),
    "redirects": (("redirects", 1),),
    "unknown": (("unknown", 1),),
    "status_2xx": (
        ("count", 1),
        ("redirects", -1),
        ("client_errors", -1),
        ("throttled", -1),
        ("errors", -1),
        ("unknown", -1),
    ),
    "status_3xx": (("redirects", 1),),
    "status_4xx": (("client_errors", 1), ("throttled", 1)),
    "status_5xx": (("errors", 1),),
    "status_unknown": (("unknown", 1),),
}
#: Dimension fields calls can be grouped or filtered by.
CALL_DIMENSIONS = (
    "key_id",
    "tenant",
    "endpoint_group",
    "method",
    "route",
    "db",
    "scenario",
    "reco_type",
)


#: A compiled statement (any number of columns).
Query = Select[*tuple[Any, ...]]


class CompileError(ValueError):
    """A metric definition the compiler cannot turn into SQL (a catalogue bug)."""


@dataclass(frozen=True, slots=True)
class Window:
    """What one query reads: whose data, which range, what bucket size.

    Args:
        org: the caller's org; every statement filters on it.
        environment: SANDBOX or PRODUCTION; every statement filters on it.
        start: range start, epoch seconds (inclusive).
        end: range end, epoch seconds (inclusive).
        step: seconds per time bucket for ``group_by=("time",)``.
    """

    org: str
    environment: str
    start: float
    end: float
    step: int

    @property
    def origin(self) -> int:
        """Start of the first time bucket (aligned to ``step``, UTC)."""
        return int(self.start // self.step) * self.step

    @property
    def start_us(self) -> int:
        """``start`` in microseconds."""
        return round(self.start * 1_000_000)

    @property
    def end_us(self) -> int:
        """``end`` in microseconds."""
        return round(self.end * 1_000_000)


def _big(value: int) -> ColumnElement[int]:
    # Explicit BIGINT binds: microsecond values overflow PostgreSQL's default int4.
    return literal(value, BigInteger)


@dataclass(slots=True)
class Compiled:
    """The statements of one metric and how to read their columns back."""

    metric: Metric
    window: Window
    group_labels: tuple[str, ...] = ()
    """Result column names of the group-by fields, in order."""
    aggregate: Query | None = None
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per measure name: its result columns in ``aggregate``."""
    histograms: dict[str, tuple[int, Query]] = field(default_factory=dict)
    """Per percentile measure name: (unit scale, statement)."""
    latest: dict[str, Query] = field(default_factory=dict)
    """Per latest-count measure name: its statement."""
    log: Query | None = None
    log_total: Query | None = None


# ---- events ----------------------------------------------------------------------------------


def _event_column(name: str) -> Any:
    spec = FIELDS.get(name)
    if spec is None:
        raise CompileError(f"unknown event field {name!r}")
    return product_events.c[spec.column]


def _condition(cond: Cond, column_of: Any) -> ColumnElement[bool]:
    col = column_of(cond.field)
    if cond.op == "=":
        return col == cond.value  # type: ignore[no-any-return]
    if cond.op == "!=":
        return or_(col.is_(None), col != cond.value)
    if cond.op == "in":
        values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
        return col.in_(values)  # type: ignore[no-any-return]
    if cond.op == "present":
        return col.is_not(None)  # type: ignore[no-any-return]
    if cond.op == "true":
        return col.is_(true())  # type: ignore[no-any-return]
    if cond.op == "not_true":
        return or_(col.is_(None), col.is_(false()))
    raise CompileError(f"unknown operator {cond.op!r}")


def _all(conds: Sequence[ColumnElement[bool]]) -> ColumnElement[bool] | None:
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else and_(*conds)


def _event_measure_cond(m: Measure) -> ColumnElement[bool] | None:
    conds = [_condition(c, _event_column) for c in m.where]
    if m.event_type is not None:
        conds.insert(0, product_events.c.type == m.event_type)
    return _all(conds)


def _when(cond: ColumnElement[bool] | None, value: Any) -> Any:
    return value if cond is None else case((cond, value))


def _event_parts(m: Measure) -> list[tuple[str, ColumnElement[Any]]]:
    cond = _event_measure_cond(m)
    if m.agg == "count":
        return [("n", func.count() if cond is None else func.count(case((cond, 1))))]
    if m.agg == "count_distinct":
        col = _event_column(_one(m))
        return [("n", func.count(distinct(_when(cond, col))))]
    if m.agg == "sum":
        total: Any = None
        for name in m.fields:
            term = func.coalesce(_event_column(name), 0)
            total = term if total is None else total + term
        if total is None:
            raise CompileError(f"measure {m.name!r}: sum needs fields")
        return [("sum", func.sum(_when(cond, total)))]
    if m.agg == "avg":
        col = _event_column(_one(m))
        return [("sum", func.sum(_when(cond, col))), ("n", func.count(_when(cond, col)))]
    if m.agg == "ratio":
        num, den = _pair(m)
        return [(f"num_{k}", e) for k, e in _event_parts(num)] + [
            (f"den_{k}", e) for k, e in _event_parts(den)
        ]
    raise CompileError(f"measure {m.name!r}: {m.agg} is not a plain aggregate")


def _one(m: Measure) -> str:
    if len(m.fields) != 1:
        raise CompileError(f"measure {m.name!r}: {m.agg} takes exactly one field")
    return m.fields[0]


def _pair(m: Measure) -> tuple[Measure, Measure]:
    if m.of is None:
        raise CompileError(f"measure {m.name!r}: a ratio needs `of`")
    return m.of


def _event_scope(metric: Metric, w: Window) -> list[ColumnElement[bool]]:
    t = product_events.c
    conds: list[ColumnElement[bool]] = [t.org == w.org, t.environment == w.environment]
    if metric.event_types:
        conds.append(t.type.in_(metric.event_types))
    conds.extend(_condition(c, _event_column) for c in metric.where)
    return conds


def _event_groups(metric: Metric, w: Window) -> list[ColumnElement[Any]]:
    out: list[ColumnElement[Any]] = []
    for i, name in enumerate(metric.group_by):
        if name == TIME:
            expr = (product_events.c.time_us - _big(w.origin * 1_000_000)) // _big(
                w.step * 1_000_000
            )
        else:
            expr = _event_column(name)
        out.append(expr.label(f"g{i}"))
    return out


def _histogram_index(col: Any) -> ColumnElement[int]:
    return case(*((col < bound, i) for i, bound in enumerate(BOUNDS_US)), else_=len(BOUNDS_US))


def _compile_events(metric: Metric, w: Window, out: Compiled) -> None:
    t = product_events.c
    ranged = [*_event_scope(metric, w), t.time_us >= _big(w.start_us), t.time_us <= _big(w.end_us)]
    groups = _event_groups(metric, w)
    out.group_labels = tuple(g.name for g in groups)
    columns: list[ColumnElement[Any]] = [*groups, func.count().label("_n")]
    for i, m in enumerate(metric.measures):
        if m.agg == "percentile":
            col = _event_column(_one(m))
            hidx = _histogram_index(col).label("h")
            cond = _event_measure_cond(m)
            where = [*ranged, col.is_not(None)] + ([cond] if cond is not None else [])
            stmt = (
                select(*groups, hidx, func.count(), func.min(col), func.max(col))
                .where(*where)
                .group_by(*groups, hidx)
            )
            out.histograms[m.name] = (FIELDS[_one(m)].unit_scale, stmt)
        elif m.agg == "latest_count":
            out.latest[m.name] = _latest(metric, m, w)
        else:
            parts = _event_parts(m)
            out.parts[m.name] = tuple(f"m{i}_{k}" for k, _ in parts)
            columns.extend(e.label(f"m{i}_{k}") for k, e in parts)
    if out.parts or not (out.histograms or out.latest):
        out.aggregate = select(*columns).where(*ranged).group_by(*groups)


def _latest(metric: Metric, m: Measure, w: Window) -> Query:
    t = product_events.c
    entity = _event_column(_one(m))
    state = _all([_condition(c, _event_column) for c in m.where])
    hit = case((state, 1), else_=0) if state is not None else literal(1)
    ranked = (
        select(
            entity.label("entity"),
            hit.label("hit"),
            func.row_number()
            .over(partition_by=entity, order_by=(t.time_us.desc(), t.seq.desc()))
            .label("rn"),
        )
        .where(*_event_scope(metric, w), t.time_us <= _big(w.end_us), entity.is_not(None))
        .subquery("latest")
    )
    return select(func.count().label("_n"), func.sum(ranked.c.hit).label("hits")).where(
        ranked.c.rn == 1
    )


# ---- call rollups ----------------------------------------------------------------------------


def _compile_calls(metric: Metric, w: Window, rollup: Table, out: Compiled) -> None:
    r, d = rollup.c, usage_dims.c
    granularity = _granularity(rollup)

    def column_of(name: str) -> Any:
        if name in CALL_DIMENSIONS:
            return d[name]
        raise CompileError(f"calls cannot be filtered or grouped by {name!r}")

    first = int(w.start // granularity) * granularity
    where: list[ColumnElement[bool]] = [
        d.org == w.org,
        d.environment == w.environment,
        r.bucket >= _big(first),
        r.bucket <= _big(int(w.end)),
        *(_condition(c, column_of) for c in metric.where),
    ]
    groups: list[ColumnElement[Any]] = []
    for i, name in enumerate(metric.group_by):
        if name == TIME:
            # A coarser rollup's bucket may start before the range: it counts in the first.
            expr = case(
                (r.bucket < _big(w.origin), 0),
                else_=(r.bucket - _big(w.origin)) // _big(w.step),
            )
        else:
            expr = column_of(name)
        groups.append(expr.label(f"g{i}"))
    out.group_labels = tuple(g.name for g in groups)
    source = rollup.join(usage_dims, r.dim_id == d.id)
    columns: list[ColumnElement[Any]] = [*groups, func.sum(r["count"]).label("_n")]
    hist_stmt: Query | None = None
    for i, m in enumerate(metric.measures):
        if m.where or m.event_type:
            raise CompileError(f"measure {m.name!r}: call measures take no conditions")
        if m.agg == "percentile":
            if m.fields != ("duration_ms",):
                raise CompileError(f"measure {m.name!r}: percentiles of calls are of duration_ms")
            # Every percentile of a metric reads the same merged histograms: one statement.
            stmt = (
                hist_stmt
                if hist_stmt is not None
                else (
                    select(
                        *groups,
                        *(func.sum(r[h]) for h in HIST),
                        func.min(r.dur_min_us),
                        func.max(r.dur_max_us),
                    )
                    .select_from(source)
                    .where(*where)
                    .group_by(*groups)
                )
            )
            out.histograms[m.name] = (1000, stmt)
            hist_stmt = stmt
            continue
        parts: list[tuple[str, ColumnElement[Any]]]
        if m.agg in ("sum", "count"):
            parts = [("sum", func.sum(_counter_sum(rollup, m)))]
        elif m.agg == "avg" and m.fields == ("duration_ms",):
            parts = [("sum", func.sum(r.dur_sum_us)), ("n", func.sum(r["count"]))]
        elif m.agg == "count_distinct":
            parts = [("n", func.count(distinct(column_of(_one(m)))))]
        else:
            raise CompileError(f"measure {m.name!r}: {m.agg} is not available for calls")
        out.parts[m.name] = tuple(f"m{i}_{k}" for k, _ in parts)
        columns.extend(e.label(f"m{i}_{k}") for k, e in parts)
    out.aggregate = select(*columns).select_from(source).where(*where).group_by(*groups)


def _counter_sum(rollup: Table, m: Measure) -> ColumnElement[Any]:
    """Per rollup row, the sum of the measure's counters (``count``: the calls)."""
    names = ("calls",) if m.agg == "count" else m.fields
    if not names:
        raise CompileError(f"measure {m.name!r}: sum needs fields")
    total: Any = None
    for name in names:
        terms = CALL_COUNTERS.get(name)
        if terms is None:
            raise CompileError(f"measure {m.name!r}: calls have no counter {name!r}")
        for column, sign in terms:
            col = rollup.c[column]
            if total is None:
                total = col if sign > 0 else -col
            else:
                total = total + col if sign > 0 else total - col
    return total  # type: ignore[no-any-return]


def _granularity(rollup: Table) -> int:
    from tollhouse.metering.schema import GRANULARITY

    return GRANULARITY[rollup.name]


# ---- fair-use flags ---------------------------------------------------------------------------

#: Fields fair-use metrics group or filter by, and the ones they sum.
FLAG_DIMENSIONS = ("signal", "action")
FLAG_COUNTERS = ("involved",)


def _compile_fair_use(metric: Metric, w: Window, out: Compiled) -> None:
    f = fair_use_flags.c

    def column_of(name: str) -> Any:
        if name in FLAG_DIMENSIONS:
            return f[name]
        raise CompileError(f"fair-use flags cannot be filtered or grouped by {name!r}")

    where: list[ColumnElement[bool]] = [
        f.org == w.org,
        f.environment == w.environment,
        f.flagged_us <= _big(w.end_us),
        f.updated_us >= _big(w.start_us),
        *(_condition(c, column_of) for c in metric.where),
    ]
    groups = [column_of(name).label(f"g{i}") for i, name in enumerate(metric.group_by)]
    out.group_labels = tuple(g.name for g in groups)
    columns: list[ColumnElement[Any]] = [*groups, func.count().label("_n")]
    for i, m in enumerate(metric.measures):
        if m.where or m.event_type:
            raise CompileError(f"measure {m.name!r}: fair-use measures take no conditions")
        parts: list[tuple[str, ColumnElement[Any]]]
        if m.agg == "count":
            parts = [("n", func.count())]
        elif m.agg == "sum" and len(m.fields) == 1 and m.fields[0] in FLAG_COUNTERS:
            parts = [("sum", func.sum(f[m.fields[0]]))]
        else:
            raise CompileError(f"measure {m.name!r}: {m.agg} is not available for fair use")
        out.parts[m.name] = tuple(f"m{i}_{k}" for k, _ in parts)
        columns.extend(e.label(f"m{i}_{k}") for k, e in parts)
    out.aggregate = select(*columns).where(*where).group_by(*groups)


# ---- raw call log ----------------------------------------------------------------------------


def _compile_log(w: Window, page: int, size: int, out: Compiled) -> None:
    c = usage_calls.c
    where = (
        c.org == w.org,
        c.environment == w.environment,
        c.time_us >= _big(w.start_us),
        c.time_us <= _big(w.end_us),
    )
    out.log = (
        select(c.time_us, c.id, c.route, c.method, c.status, c.duration_us)
        .where(*where)
        .order_by(c.time_us.desc(), c.id.desc())
        .limit(size)
        .offset((page - 1) * size)
    )
    out.log_total = select(func.count()).select_from(usage_calls).where(*where)


def compile_metric(
    metric: Metric,
    window: Window,
    *,
    rollup: Table | None = None,
    page: int = 1,
    page_size: int = 50,
) -> Compiled:
    """Build the statements answering ``metric`` over ``window``.

    Args:
        metric: the definition.
        window: org, environment, range and bucket size.
        rollup: the rollup table to read (``calls`` metrics only).
        page: 1-based page (paginated metrics only).
        page_size: rows per page (paginated metrics only).

    Raises:
        CompileError: the definition cannot be compiled.
    """
    out = Compiled(metric, window)
    if metric.source == "events":
        _compile_events(metric, window, out)
    elif metric.source == "calls":
        if rollup is None:
            raise CompileError(f"metric {metric.name!r} reads rollups: pass one")
        _compile_calls(metric, window, rollup, out)
    elif metric.source == "call_log":
        _compile_log(window, page, page_size, out)
    elif metric.source == "fair_use":
        _compile_fair_use(metric, window, out)
    else:
        raise CompileError(f"metric {metric.name!r}: unknown source {metric.source!r}")
    return out
