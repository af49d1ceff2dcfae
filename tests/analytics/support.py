"""Helpers of the analytics tests: the platform app with a caller in scope, realistic
product events, and a reference evaluator of the metric catalogue in plain Python."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.analytics.buckets import bucket_name, bucket_starts, metric_step
from tollhouse.analytics.catalogue import TIME, Cond, Measure, Metric
from tollhouse.http.platform import create_platform_app
from tollhouse.keys.model import Identity
from tollhouse.metering.histogram import BUCKETS, bucket_of, percentile
from tollhouse.metering.meter import UsageMeter
from tollhouse.metering.record import CallRecord
from tollhouse.ops.logs import request_id_var
from tollhouse.policy.model import EndpointGroup

DAY = 86400
DAY0 = 1_767_225_600  # 2026-01-01T00:00:00Z
GROUPS = (
    EndpointGroup("SCORING", "submit and read scoring jobs", ("POST /v1/score*",)),
    EndpointGroup("CRITERIA", "read and write criteria", ("* /v1/criteria/*",)),
)


def who(org: str = "acme", role: str = "root", environment: str = "SANDBOX") -> Identity:
    return Identity(f"key_{org}_{role}", org, environment, role)  # type: ignore[arg-type]


@asynccontextmanager
async def platform(
    engine: AsyncEngine,
    identity: Identity | None,
    *,
    meter: UsageMeter | None = None,
    now: float = DAY0 + 10 * DAY,
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the platform app, with ``identity`` put in scope as the gateway
    does (None: no identity)."""
    app = create_platform_app(engine=engine, policy=GROUPS, meter=meter, clock=lambda: now)

    async def gateway(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            state = scope.setdefault("state", {})
            state["request_id"] = "req_test"
            request_id_var.set("req_test")  # as the gateway does: log lines carry it
            if identity is not None:
                state["identity"] = identity
        await app(scope, receive, send)

    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://platform") as client:
        yield client


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def record(
    meter: UsageMeter,
    t: float,
    *,
    org: str = "acme",
    env: str = "SANDBOX",
    key: str = "key_a",
    group: str | None = "SCORING",
    method: str = "POST",
    route: str | None = "/v1/score",
    status: int = 200,
    ms: float = 12.0,
    labels: dict[str, str] | None = None,
) -> None:
    meter.record(CallRecord(t, org, env, key, None, group, method, route, status, ms, labels or {}))


# ---- realistic product events ---------------------------------------------------------------

USERS = ["ann@acme.io", "bob@acme.io", "cho@acme.io", "dee@acme.io", "eli@acme.io"]
WORKFLOWS = ["invoice-triage", "lead-scoring", "support-digest"]
MODELS = {"gpt-4o": (2.5, 10.0), "claude-3-5-sonnet": (3.0, 15.0), "gpt-4o-mini": (0.15, 0.6)}


def realistic_events(seed: int, start: float, days: float, scale: int = 1) -> list[dict[str, Any]]:
    """A workspace's product events over ``days`` from ``start``: flow runs (a
    ``running`` event then usually a terminal one), LLM calls inside flows and chats,
    trigger toggles, conversations with messages, knowledge-base uploads; some optional
    fields missing, as in real traffic."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    seq = 0

    def add(kind: str, t: float, data: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        events.append({"id": f"{kind}-{seed}-{seq}", "type": kind, "time": iso(t), "data": data})

    def llm(t: float, **extra: Any) -> None:
        model = rng.choice(list(MODELS))
        tin, tout = rng.randint(200, 6000), rng.randint(50, 1500)
        cached = rng.random() < 0.2
        pin, pout = MODELS[model]
        cost = round((tin * pin + tout * pout) / 1e6, 6)
        data = {"model": model, "tokens_in": tin, "tokens_out": tout, "cached": cached}
        data["cost"] = cost
        data.update(extra)
        add("llm_call", t, data)

    span = days * DAY
    for i in range(60 * scale):
        t = start + rng.uniform(0, span)
        run = f"run-{seed}-{i}"
        base: dict[str, Any] = {"run_id": run, "source": rng.choice(["manual", "trigger", "agent"])}
        if rng.random() < 0.9:
            base["user"] = rng.choice(USERS)
        base["workflow"] = rng.choice(WORKFLOWS)
        add("flow_run", t, {**base, "status": "running"})
        for k in range(rng.randint(0, 3)):
            llm(
                t + k,
                tool="flow",
                workflow=base["workflow"],
                node=f"node-{rng.randint(1, 4)}",
                **({"user": base["user"]} if "user" in base else {}),
            )
        if rng.random() < 0.92:  # the rest are still running
            ms = round(rng.lognormvariate(8, 1.2), 3)
            status = "failed" if rng.random() < 0.15 else "succeeded"
            add("flow_run", t + ms / 1000, {**base, "status": status, "duration_ms": ms})
    for i in range(6):
        trigger = f"trigger-{seed}-{i}"
        t = start + rng.uniform(0, span / 2)
        for _ in range(rng.randint(1, 4)):
            add("trigger", t, {"trigger_id": trigger, "enabled": rng.random() < 0.6})
            t += rng.uniform(60, span / 4)
    for i in range(25 * scale):
        conv = f"conv-{seed}-{i}"
        user = rng.choice(USERS)
        t = start + rng.uniform(0, span)
        add("conversation_started", t, {"conversation_id": conv, "user": user})
        for k in range(rng.randint(1, 8)):
            role = "user" if k % 2 == 0 else "agent"
            add("message_sent", t + 20 * k, {"conversation_id": conv, "user": user, "role": role})
            if role == "agent":
                llm(t + 20 * k, tool="agent", user=user, conversation_id=conv)
    for i in range(40 * scale):
        t = start + rng.uniform(0, span)
        doc: dict[str, Any] = {
            "kb": rng.choice(["handbook", "contracts", "support-faq"]),
            "document_id": f"doc-{seed}-{i}",
            "file_type": rng.choice(["pdf", "docx", "xlsx", "pdf"]),
        }
        if rng.random() < 0.85:
            doc["user"] = rng.choice(USERS)
        add("kb_document", t, doc)
        if rng.random() < 0.8:
            status = "failed" if rng.random() < 0.2 else "processed"
            add("kb_document", t + 30, {**doc, "status": status})
        if rng.random() < 0.3:
            llm(t + 31, tool="kb")
    rng.shuffle(events)
    return events


# ---- a reference evaluator, in plain Python --------------------------------------------------

_SCALE = {"duration_ms": (1000, 1000, 1), "cost": (1_000_000, 1_000_000, 6)}


def _stored(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _SCALE:
        return round(value * _SCALE[name][0])
    return value


def _t_us(event: dict[str, Any]) -> int:
    moment = datetime.fromisoformat(event["time"]).astimezone(UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _holds(cond: Cond, row: dict[str, Any]) -> bool:
    v = row.get(cond.field)
    if cond.op == "=":
        return v is not None and v == cond.value
    if cond.op == "!=":
        return v is None or v != cond.value
    if cond.op == "in":
        return v in (cond.value if isinstance(cond.value, tuple) else (cond.value,))
    if cond.op == "present":
        return v is not None
    if cond.op == "true":
        return v is True
    if cond.op == "not_true":
        return v is not True
    raise AssertionError(cond.op)


def _unit(m: Measure) -> tuple[int, int | None]:
    if len(m.fields) == 1 and m.fields[0] in _SCALE:
        _, unit, decimals = _SCALE[m.fields[0]]
        return unit, m.decimals if m.decimals is not None else decimals
    return 1, m.decimals


def _rnd(x: float, d: int | None) -> float | int:
    return round(x, 3 if d is None else d)


def _measure(m: Measure, rows: list[dict[str, Any]]) -> Any:
    mine = [
        r
        for r in rows
        if (m.event_type is None or r["type"] == m.event_type)
        and all(_holds(c, r) for c in m.where)
    ]
    unit, decimals = _unit(m)
    if m.agg == "count":
        return len(mine)
    if m.agg == "count_distinct":
        return len({r.get(m.fields[0]) for r in mine} - {None})
    if m.agg == "sum":
        total = sum(sum(r.get(f) or 0 for f in m.fields) for r in mine)
        return total if unit == 1 and decimals is None else _rnd(total / unit, decimals)
    if m.agg == "avg":
        vals = [r[m.fields[0]] for r in mine if r.get(m.fields[0]) is not None]
        return _rnd(sum(vals) / len(vals) / unit, decimals) if vals else None
    if m.agg == "ratio":
        assert m.of is not None
        num, den = _measure(m.of[0], rows), _measure(m.of[1], rows)
        return None if num is None or not den else _rnd(num / den, m.decimals)
    if m.agg == "percentile":
        vals = [r[m.fields[0]] for r in mine if r.get(m.fields[0]) is not None]
        if not vals:
            return None
        hist = [0] * BUCKETS
        for v in vals:
            hist[bucket_of(v)] += 1
        p = percentile(hist, m.q or 0.5, min(vals), max(vals))
        assert p is not None
        return _rnd(p / unit, decimals)
    raise AssertionError(m.agg)


def evaluate(
    metric: Metric,
    events: list[dict[str, Any]],
    start: float,
    end: float,
    calls: list[CallRecord] = (),  # type: ignore[assignment]
    page: int = 1,
    size: int = 50,
    granularity: int = 60,
) -> dict[str, Any]:
    """What ``GET /v1/analytics/{metric}`` must answer for one org's events and calls
    (``granularity``: seconds per bucket of the rollup the calls metrics read)."""
    empty = {"type": "empty", "value": {}}
    step = metric_step(start, end)
    origin = math.floor(start / step) * step
    lo, hi = round(start * 1e6), round(end * 1e6)
    if metric.source == "call_log":
        mine = sorted(
            (c for c in calls if lo <= round(c.time * 1e6) <= hi),
            key=lambda c: c.time,
            reverse=True,
        )
        if not mine:
            return empty
        items = [
            {
                "Endpoint": c.route or "(unmatched)",
                "Method": c.method,
                "Status": c.status,
                "Duration": f"{round(max(0, round(c.duration_ms * 1000)) / 1000)}ms",
            }
            for c in mine[(page - 1) * size : page * size]
        ]
        return {
            "type": "table",
            "value": {
                "headings": ["Endpoint", "Method", "Status", "Duration"],
                "items": items,
                "total": len(mine),
                "pages": math.ceil(len(mine) / size),
                "size": size,
                "page": page,
            },
        }
    rows: list[dict[str, Any]] = []
    if metric.source == "calls":
        for c in calls:
            b = math.floor(c.time / granularity) * granularity  # whole rollup buckets
            if b < math.floor(start / granularity) * granularity or b > end:
                continue
            rows.append(
                {
                    "time_us": b * 1_000_000,
                    "calls": 1,
                    "route": c.route,
                    "method": c.method,
                    f"status_{min(max(c.status // 100, 2), 5)}xx": 1,
                    "duration_ms": max(0, round(c.duration_ms * 1000)),  # stored: µs
                }
            )
    else:
        for seq, e in enumerate(events):
            row = {k: _stored(k, v) for k, v in e["data"].items()}
            row.update(type=e["type"], time_us=_t_us(e), seq=seq)
            rows.append(row)
    if any(m.agg == "latest_count" for m in metric.measures):
        (m,) = metric.measures
        latest: dict[Any, dict[str, Any]] = {}
        for r in rows:
            if r["type"] not in metric.event_types or r["time_us"] > hi:
                continue
            if not all(_holds(c, r) for c in metric.where) or r.get(m.fields[0]) is None:
                continue
            k = r[m.fields[0]]
            if k not in latest or (r["time_us"], r["seq"]) > (
                latest[k]["time_us"],
                latest[k]["seq"],
            ):
                latest[k] = r
        if not latest:
            return empty
        hits = sum(1 for r in latest.values() if all(_holds(c, r) for c in m.where))
        return {
            "type": "simple",
            "value": {"value": hits, "prefix": metric.prefix, "suffix": metric.suffix},
        }
    in_range = [
        r
        for r in rows
        if (metric.source == "calls" or r["type"] in metric.event_types)
        and (metric.source == "calls" or lo <= r["time_us"] <= hi)
        and all(_holds(c, r) for c in metric.where)
    ]
    if not in_range:
        return empty
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in in_range:
        key = tuple(
            (r["time_us"] - origin * 1_000_000) // (step * 1_000_000) if g == TIME else r.get(g)
            for g in metric.group_by
        )
        groups[key].append(r)
    if metric.output == "simple":
        value = _measure(metric.measures[0], in_range)
        if value is None:
            return empty
        return {
            "type": "simple",
            "value": {"value": value, "prefix": metric.prefix, "suffix": metric.suffix},
        }
    if metric.group_by == (TIME,):
        items = []
        for i, b in enumerate(bucket_starts(start, end, step)):
            mine = groups.get((i,), [])
            values = {}
            for m in metric.measures:
                v = _measure(m, mine) if mine else None
                values[m.name] = v if v is not None or m.agg == "percentile" else 0
            items.append({"name": bucket_name(b, step), "values": values, "value_mapping": None})
        return {"type": "barchart", "value": {"values": items}}
    table = []
    for key, mine in groups.items():
        row = {
            h: (v if v not in (None, "") else ("(unmatched)" if g == "route" else "unknown"))
            for h, v, g in zip(metric.headings, key, metric.group_by, strict=True)
        }
        for m in metric.measures:
            row[m.name] = _measure(m, mine)
        table.append(row)
    first = metric.measures[0].name
    table.sort(
        key=lambda r: (
            -(r[first] if r[first] is not None else -math.inf),
            tuple(str(r[h]) for h in metric.headings),
        )
    )
    return {
        "type": "table",
        "value": {
            "headings": [*metric.headings, *(m.name for m in metric.measures)],
            "rows": table,
            "prefixes": metric.prefixes,
            "suffixes": metric.suffixes,
        },
    }
