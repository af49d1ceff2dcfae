"""Reading the fair-use signals of one org and environment over a time range.

Every read is bounded by the range (and the signal's window before it), never by
history: generations and 429s come from the tap's minute tallies, jobs with generated
criteria and their first score from ``fair_use_jobs`` (folded in by the scheduled pass,
:mod:`tollhouse.fairuse.run`), polls and submissions from the meter's rollups, completed
jobs and webhook endpoints from the job store. :mod:`tollhouse.fairuse.signals` decides.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.fairuse.schema import RATE_LIMITED, fair_use_jobs, fair_use_tallies
from tollhouse.fairuse.signals import (
    SignalResult,
    Subject,
    share,
    sliding_peak,
    status,
    top,
)
from tollhouse.jobs.schema import jobs, webhook_endpoints
from tollhouse.metering.schema import usage_dims, usage_rollup_1h, usage_rollup_1m
from tollhouse.policy.model import FairUseRule
from tollhouse.storage.transactions import read_connection

_T = fair_use_tallies.c
_J = fair_use_jobs.c
#: Job states that count as a completed job for polling.
FINISHED = ("completed", "failed", "dead")
#: Ranges up to this long read minute rollups (kept 7 days); longer ones hourly rollups.
MINUTE_ROLLUPS_UP_TO = 2 * 86400


def route_pairs(routes: Sequence[str]) -> list[tuple[str, str]]:
    """Route patterns → ``(method, template)`` pairs as the meter records them (``GET``
    patterns cover ``HEAD``)."""
    out: list[tuple[str, str]] = []
    for r in routes:
        methods, path = r.split()
        for m in methods.split("/"):
            out.append((m, path))
            if m == "GET":
                out.append(("HEAD", path))
    return out


def generation_kinds(rule: FairUseRule) -> list[str]:
    """The tally kinds of a rule's generation routes (their paths)."""
    return sorted({path for _, path in route_pairs(rule.routes)})


async def evaluate(
    engine: AsyncEngine,
    rules: Sequence[FairUseRule],
    org: str,
    environment: str,
    start: float,
    end: float,
) -> list[SignalResult]:
    """Every rule's signal for ``org`` in ``environment`` over ``[start, end]`` (epoch s).

    Raises:
        StorageError: the database could not be read.
    """
    async with read_connection(engine, "could not read fair-use signals") as conn:
        return [await evaluate_rule(conn, r, org, environment, start, end) for r in rules]


async def evaluate_rule(
    conn: AsyncConnection,
    rule: FairUseRule,
    org: str,
    environment: str,
    start: float,
    end: float,
) -> SignalResult:
    """One rule's signal (see :func:`evaluate`)."""
    read = _READERS[rule.signal]
    return await read(conn, rule, org, environment, start, end)


async def _regeneration_loop(
    conn: AsyncConnection, rule: FairUseRule, org: str, env: str, start: float, end: float
) -> SignalResult:
    since = int(start - rule.window) // 60 * 60
    rows = await conn.execute(
        select(_T.kind, _T.subject, _T.minute, _T.count, _T.first_us, _T.last_us)
        .where(
            _T.org == org,
            _T.environment == env,
            _T.kind.in_(generation_kinds(rule)),
            _T.minute >= since,
            _T.minute <= int(end),
        )
        .order_by(_T.kind, _T.subject, _T.minute)
    )
    per_job: dict[tuple[str, str], list[tuple[int, int, int, int]]] = defaultdict(list)
    for kind, subject, minute, count, first, last in rows:
        per_job[(kind, subject)].append((int(minute), int(count), int(first), int(last)))
    peaks: dict[str, int] = {}
    seen: dict[str, tuple[int, int]] = {}
    for (_, job_id), minutes in per_job.items():
        peak = sliding_peak([(m, c) for m, c, _, _ in minutes], rule.window, int(start), int(end))
        if peak > peaks.get(job_id, 0):
            peaks[job_id] = peak
        inside = [(f, la) for m, _, f, la in minutes if m + 60 > start]
        if inside:
            lo, hi = seen.get(job_id, (inside[0][0], inside[0][1]))
            seen[job_id] = (
                min([lo, *(f for f, _ in inside)]),
                max([hi, *(la for _, la in inside)]),
            )
    value = max(peaks.values(), default=0)
    state = status(value, rule.threshold)
    involved = [
        Subject(j, p)
        for j, p in peaks.items()
        if (p > rule.threshold if state == "flagged" else p > rule.threshold / 2)
    ]
    return _result(rule, value, rule.threshold, involved, seen, {"jobs": len(peaks)})


async def _criteria_without_scoring(
    conn: AsyncConnection, rule: FairUseRule, org: str, env: str, start: float, end: float
) -> SignalResult:
    after_us = round(rule.after * 1_000_000)
    rows = await conn.execute(
        select(_J.job_id, _J.generated_us, _J.scored_us).where(
            _J.org == org,
            _J.environment == env,
            _J.generated_us >= round(start * 1_000_000) - after_us,
            _J.generated_us <= round(end * 1_000_000) - after_us,
        )
    )
    matured = 0
    unscored: list[Subject] = []
    seen: dict[str, tuple[int, int]] = {}
    for job_id, generated, scored in rows:
        matured += 1
        if scored is None or scored > generated + after_us:
            unscored.append(Subject(job_id, 1))
            seen[job_id] = (int(generated), int(generated))
    value = share(len(unscored), matured)
    detail = {"maturedJobs": matured, "unscoredJobs": len(unscored), "afterSeconds": rule.after}
    return _result(rule, value, rule.threshold, unscored, seen, detail)


def _rollup_for(start: float, end: float) -> tuple[object, int]:
    if end - start <= MINUTE_ROLLUPS_UP_TO:
        return usage_rollup_1m, 60
    return usage_rollup_1h, 3600


async def _calls_by_key(
    conn: AsyncConnection,
    routes: Sequence[str],
    org: str,
    env: str,
    start: float,
    end: float,
    step: int | None = None,
) -> list[tuple[str, int, int, int]]:
    """``(key id, bucket, count, throttled)`` of the routes' calls over the range."""
    table, granularity = _rollup_for(start, end)
    if step is not None and step >= 3600:
        table, granularity = usage_rollup_1h, 3600
    r = table.c  # type: ignore[attr-defined]
    d = usage_dims.c
    pairs = route_pairs(routes)
    rows = await conn.execute(
        select(d.key_id, r.bucket, func.sum(r.count), func.sum(r.throttled))
        .select_from(table.join(usage_dims, usage_dims.c.id == r.dim_id))  # type: ignore[attr-defined]
        .where(
            d.org == org,
            d.environment == env,
            or_(*(and_(d.method == m, d.route == p) for m, p in pairs)),
            r.bucket >= int(start) // granularity * granularity,
            r.bucket <= int(end),
        )
        .group_by(d.key_id, r.bucket)
    )
    return [(k, int(b), int(c or 0), int(t or 0)) for k, b, c, t in rows]


async def _polling_instead_of_webhooks(
    conn: AsyncConnection, rule: FairUseRule, org: str, env: str, start: float, end: float
) -> SignalResult:
    polls = await _calls_by_key(conn, rule.routes, org, env, start, end)
    per_key: dict[str, int] = defaultdict(int)
    seen: dict[str, tuple[int, int]] = {}
    for key, bucket, count, _ in polls:
        if not count:
            continue
        per_key[key] += count
        lo, hi = seen.get(key, (bucket, bucket))
        seen[key] = (min(lo, bucket), max(hi, bucket))
    seen = {k: (lo * 1_000_000, hi * 1_000_000) for k, (lo, hi) in seen.items()}
    lo_t = datetime.fromtimestamp(start, UTC)
    hi_t = datetime.fromtimestamp(end, UTC)
    completed = (
        await conn.execute(
            select(func.count()).where(
                jobs.c.org_id == org,
                jobs.c.environment == env,
                jobs.c.status.in_(FINISHED),
                jobs.c.finished_at >= lo_t,
                jobs.c.finished_at <= hi_t,
            )
        )
    ).scalar_one()
    endpoints = (
        await conn.execute(
            select(func.count()).where(
                webhook_endpoints.c.org_id == org,
                webhook_endpoints.c.environment == env,
                webhook_endpoints.c.removed_at.is_(None),
                webhook_endpoints.c.disabled_at.is_(None),
            )
        )
    ).scalar_one()
    total = sum(per_key.values())
    value = total / max(int(completed), 1)
    threshold = 0.0 if endpoints else rule.threshold
    detail = {"polls": total, "completedJobs": int(completed), "webhookEndpoints": int(endpoints)}
    involved = [Subject(k, c) for k, c in per_key.items()]
    return _result(rule, value, threshold, involved, seen, detail)


async def _ignored_retry_after(
    conn: AsyncConnection, rule: FairUseRule, org: str, env: str, start: float, end: float
) -> SignalResult:
    rows = await conn.execute(
        select(
            _T.subject,
            func.sum(_T.count),
            func.sum(_T.hits),
            func.min(_T.first_us),
            func.max(_T.last_us),
        )
        .where(
            _T.org == org,
            _T.environment == env,
            _T.kind == RATE_LIMITED,
            _T.minute >= int(start) // 60 * 60,
            _T.minute <= int(end),
        )
        .group_by(_T.subject)
    )
    refused = hits = 0
    involved: list[Subject] = []
    seen: dict[str, tuple[int, int]] = {}
    for key, count, early, first, last in rows:
        refused += int(count)
        hits += int(early)
        if early:
            involved.append(Subject(key, int(early)))
            seen[key] = (int(first), int(last))
    value = share(hits, refused)
    detail = {"rateLimited": refused, "retriedEarly": hits}
    return _result(rule, value, rule.threshold, involved, seen, detail)


async def _burst_submission(
    conn: AsyncConnection, rule: FairUseRule, org: str, env: str, start: float, end: float
) -> SignalResult:
    step = int(rule.window)
    rows = await _calls_by_key(conn, rule.routes, org, env, start, end, step)
    windows: dict[int, list[tuple[str, int, int, int]]] = defaultdict(list)
    for key, bucket, count, throttled in rows:
        windows[bucket - bucket % step].append((key, bucket, count, throttled))
    best: tuple[float, int] = (0.0, -1)
    for begin, items in windows.items():
        ratio = share(sum(i[3] for i in items), sum(i[2] for i in items))
        if ratio > best[0]:
            best = (ratio, begin)
    value, begin = best
    worst = windows.get(begin, [])
    per_key: dict[str, int] = defaultdict(int)
    seen: dict[str, tuple[int, int]] = {}
    for key, bucket, _, throttled in worst:
        if throttled:
            per_key[key] += throttled
            lo, hi = seen.get(key, (bucket, bucket))
            seen[key] = (min(lo, bucket), max(hi, bucket))
    seen = {k: (lo * 1_000_000, hi * 1_000_000) for k, (lo, hi) in seen.items()}
    detail = {
        "submitted": sum(i[2] for i in worst),
        "rateLimited": sum(i[3] for i in worst),
        "windowStart": begin if begin >= 0 else None,
    }
    involved = [Subject(k, c) for k, c in per_key.items()]
    return _result(rule, value, rule.threshold, involved, seen, detail)


def _result(
    rule: FairUseRule,
    value: float,
    threshold: float,
    involved: list[Subject],
    seen: dict[str, tuple[int, int]],
    detail: Mapping[str, object],
) -> SignalResult:
    state = status(value, threshold)
    shown = top(involved) if state != "ok" else ()
    spans = [seen[s.id] for s in shown if s.id in seen]
    return SignalResult(
        signal=rule.signal,
        value=value,
        threshold=threshold,
        status=state,
        action=rule.action,
        subjects=shown,
        first_seen_us=min((f for f, _ in spans), default=None),
        last_seen_us=max((la for _, la in spans), default=None),
        detail=dict(detail),
        involved_count=len(involved) if state != "ok" else 0,
    )


_READERS = {
    "regeneration_loop": _regeneration_loop,
    "criteria_without_scoring": _criteria_without_scoring,
    "polling_instead_of_webhooks": _polling_instead_of_webhooks,
    "ignored_retry_after": _ignored_retry_after,
    "burst_submission": _burst_submission,
}
