"""The scheduled fair-use pass: fold the last interval in, judge the orgs active in it.

Each pass claims the interval since the stored watermark (``fair_use_state``; a
compare-and-set, so with several processes on one database each interval is passed
once), then

1. folds what is new into ``fair_use_jobs``: the first generation of each ``jobId``
   (from the tap's tallies) and its first ``POST /v1/score`` (from the job store: jobs
   of the scoring routes created in the interval, one indexed read per org);
2. evaluates every signal, over its window ending now, for the org and environment
   pairs active in the interval (calls in the minute rollups, tallies) and for those
   whose generated jobs reach their ``after`` (T) in it;
3. records the flagged ones in ``fair_use_flags``, one row per signal, org,
   environment and window (its epoch-aligned start), updated while the window lasts;
4. the first time a row is flagged, stages one ``fair_use.flagged`` event to the
   webhook endpoints of the provider's own org (``TOLLHOUSE_FAIR_USE_WEBHOOK_ORG``), in
   the flagged environment, through the same outbox as job events (signed and retried
   by the same sender): once per signal, org, environment and window, never per call;
5. for a ``throttle`` rule, the first time a row is flagged, sets the rule's bucket
   override for the org in the flagged environment only (``limit_overrides``, as
   ``tollhouse limits set --environment`` does: sandbox traffic never throttles
   production, nor the reverse) unless the org already has an override of that bucket
   for that environment or for every environment, and lifts the overrides whose window
   has ended (only if the override still holds the limit the pass set).

Nothing is scanned beyond the interval, the rules' windows and the orgs involved.
:class:`FairUsePass` runs it every ``interval`` seconds inside ``tollhouse serve``;
``tollhouse usage fair-use --run`` runs it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import delete, func, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.fairuse.evaluate import evaluate_rule, generation_kinds
from tollhouse.fairuse.schema import (
    MAX_SUBJECT,
    fair_use_flags,
    fair_use_jobs,
    fair_use_state,
    fair_use_tallies,
)
from tollhouse.fairuse.signals import SignalResult, iso
from tollhouse.fairuse.tap import FairUseTap
from tollhouse.jobs.outbox import stage_events
from tollhouse.jobs.schema import job_orgs, jobs
from tollhouse.limits.overrides import limit_overrides
from tollhouse.metering.schema import usage_dims, usage_rollup_1m
from tollhouse.policy.model import FairUseRule
from tollhouse.security import audit
from tollhouse.storage import dialect
from tollhouse.storage.transactions import write_transaction

logger = logging.getLogger(__name__)

#: Seconds between two passes inside the server (``TOLLHOUSE_FAIR_USE_INTERVAL``).
DEFAULT_INTERVAL = 300.0
#: How far back the first pass on a database starts.
FIRST_LOOKBACK = 86400.0
#: Re-read this much before the watermark: rows flushed late for the last minutes.
OVERLAP = 120.0
_WATERMARK = "pass"
#: The webhook event of a newly flagged signal.
FLAGGED_EVENT = "fair_use.flagged"
#: Who the audit log says set and lifted a throttle override.
ACTOR = "fair-use"


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did."""

    since: float
    until: float
    pairs: int
    """Org and environment pairs evaluated."""
    flagged: list[tuple[str, str, SignalResult]] = field(default_factory=list)
    """``(org, environment, result)`` of every flagged signal."""
    notified: int = 0
    """``fair_use.flagged`` events staged (rows newly flagged, with a webhook org)."""
    throttled: list[tuple[str, str, str]] = field(default_factory=list)
    """``(org, environment, bucket)`` of every override set by this pass."""
    lifted: list[tuple[str, str, str]] = field(default_factory=list)
    """``(org, environment, bucket)`` of every override lifted by this pass."""


async def _claim(engine: AsyncEngine, now: float) -> float | None:
    """Move the watermark to ``now``; the previous one, or None if another process
    moved it meanwhile (or it is already past ``now``)."""
    now_us = round(now * 1_000_000)
    s = fair_use_state.c
    async with write_transaction(engine, "could not claim a fair-use pass") as conn:
        found = (
            await conn.execute(select(s.watermark_us).where(s.name == _WATERMARK))
        ).scalar_one_or_none()
        if found is None:
            ins = dialect.insert(conn.dialect.name, fair_use_state).on_conflict_do_nothing(
                index_elements=[s.name]
            )
            done = await conn.execute(ins, {"name": _WATERMARK, "watermark_us": now_us})
            return now - FIRST_LOOKBACK if done.rowcount == 1 else None
        if found >= now_us:
            return None
        moved = await conn.execute(
            update(fair_use_state)
            .where(s.name == _WATERMARK, s.watermark_us == found)
            .values(watermark_us=now_us)
        )
        return found / 1_000_000 if moved.rowcount == 1 else None


def _min_into(conn: AsyncConnection, column: str) -> Any:
    ins = dialect.insert(conn.dialect.name, fair_use_jobs)
    mine, theirs = fair_use_jobs.c[column], ins.excluded[column]
    return ins.on_conflict_do_update(
        index_elements=[fair_use_jobs.c.org, fair_use_jobs.c.environment, fair_use_jobs.c.job_id],
        set_={column: dialect.least(conn.dialect.name, func.coalesce(mine, theirs), theirs)},
    )


def _score_job_id(payload: str) -> str | None:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    found = body.get("jobId") if isinstance(body, dict) else None
    if isinstance(found, str) and found and len(found) <= MAX_SUBJECT:
        return found
    return None


async def _fold(
    conn: AsyncConnection, rules: Sequence[FairUseRule], since: float, until: float
) -> None:
    """Step 1: first generations and first scores into ``fair_use_jobs``."""
    gen = next((r for r in rules if r.signal == "regeneration_loop"), None)
    scoring = next((r for r in rules if r.signal == "criteria_without_scoring"), None)
    if scoring is None:
        return
    kinds = generation_kinds(gen) if gen is not None else ["/v1/criteria/generate"]
    t = fair_use_tallies.c
    rows = await conn.execute(
        select(t.org, t.environment, t.subject, func.min(t.first_us))
        .where(t.kind.in_(kinds), t.minute >= int(since - OVERLAP) // 60 * 60)
        .group_by(t.org, t.environment, t.subject)
    )
    generated = [
        {"org": o, "environment": e, "job_id": j, "generated_us": int(f), "scored_us": None}
        for o, e, j, f in rows
    ]
    if generated:
        await conn.execute(_min_into(conn, "generated_us"), generated)
    lo = datetime.fromtimestamp(since - OVERLAP, UTC)
    hi = datetime.fromtimestamp(until, UTC)
    orgs = [o for (o,) in await conn.execute(select(job_orgs.c.org_id))]
    scored: dict[tuple[str, str, str], int] = {}
    for org in orgs:
        found = await conn.execute(
            select(jobs.c.environment, jobs.c.payload, jobs.c.created_at).where(
                jobs.c.org_id == org,
                jobs.c.created_at >= lo,
                jobs.c.created_at <= hi,
                jobs.c.route.in_(scoring.routes),
            )
        )
        for env, payload, created in found:
            job_id = _score_job_id(payload)
            if job_id is None:
                continue
            moment = created if created.tzinfo else created.replace(tzinfo=UTC)
            t_us = round(moment.timestamp() * 1_000_000)
            key = (org, env or "", job_id)
            scored[key] = min(scored.get(key, t_us), t_us)
    if scored:
        await conn.execute(
            _min_into(conn, "scored_us"),
            [
                {"org": o, "environment": e, "job_id": j, "generated_us": None, "scored_us": s}
                for (o, e, j), s in scored.items()
            ],
        )


async def _active_pairs(
    conn: AsyncConnection, rules: Sequence[FairUseRule], since: float, until: float
) -> list[tuple[str, str]]:
    """Step 2's org and environment pairs."""
    minute = int(since - OVERLAP) // 60 * 60
    r, d, t, j = usage_rollup_1m.c, usage_dims.c, fair_use_tallies.c, fair_use_jobs.c
    parts = [
        select(d.org, d.environment)
        .select_from(usage_rollup_1m.join(usage_dims, d.id == r.dim_id))
        .where(r.bucket >= minute),
        select(t.org, t.environment).where(t.minute >= minute),
    ]
    for rule in rules:
        if rule.signal == "criteria_without_scoring":
            after_us = round(rule.after * 1_000_000)
            parts.append(
                select(j.org, j.environment).where(
                    j.generated_us >= round((since - OVERLAP) * 1_000_000) - after_us,
                    j.generated_us <= round(until * 1_000_000) - after_us,
                )
            )
    rows = await conn.execute(union(*parts))
    return sorted((o, e) for o, e in rows)


async def _record_flag(
    conn: AsyncConnection, org: str, env: str, rule: FairUseRule, res: SignalResult, now: float
) -> int:
    """Upsert the flag's row; returns its window start."""
    now_us = round(now * 1_000_000)
    window_start = int(now // rule.window * rule.window)
    f = fair_use_flags.c
    ins = dialect.insert(conn.dialect.name, fair_use_flags)
    ex = ins.excluded
    subjects = orjson.dumps([{"id": s.id, "count": s.count} for s in res.subjects]).decode()
    await conn.execute(
        ins.on_conflict_do_update(
            index_elements=[f.org, f.environment, f.signal, f.window_start],
            set_={
                "value": ex.value,
                "threshold": ex.threshold,
                "subjects": ex.subjects,
                "first_us": ex.first_us,
                "last_us": ex.last_us,
                "updated_us": ex.updated_us,
                "action": ex.action,
                "involved": ex.involved,
            },
        ),
        {
            "org": org,
            "environment": env,
            "signal": rule.signal,
            "window_start": window_start,
            "value": res.value,
            "threshold": res.threshold,
            "subjects": subjects,
            "first_us": res.first_seen_us,
            "last_us": res.last_seen_us,
            "flagged_us": now_us,
            "updated_us": now_us,
            "action": rule.action,
            "involved": res.involved_count,
        },
    )
    return window_start


def _flag_row(org: str, env: str, signal: str, window_start: int) -> list[Any]:
    f = fair_use_flags.c
    return [
        f.org == org,
        f.environment == env,
        f.signal == signal,
        f.window_start == window_start,
    ]


async def _notify(
    conn: AsyncConnection,
    webhook_org: str,
    org: str,
    env: str,
    rule: FairUseRule,
    res: SignalResult,
    window_start: int,
    now: float,
) -> bool:
    """Stage the ``fair_use.flagged`` event of a flag row not yet notified (claimed with
    ``notified_us``, in the pass's transaction: once per row)."""
    claimed = await conn.execute(
        update(fair_use_flags)
        .where(
            *_flag_row(org, env, rule.signal, window_start),
            fair_use_flags.c.notified_us.is_(None),
        )
        .values(notified_us=round(now * 1_000_000))
    )
    if claimed.rowcount != 1:
        return False
    window_end = window_start + rule.window
    data = {
        "org": org,
        "environment": env,
        **res.to_json(),
        "window": {
            "start": iso(window_start * 1_000_000),
            "end": iso(round(window_end * 1_000_000)),
        },
    }
    moment = datetime.fromtimestamp(now, UTC)
    await stage_events(conn, [(webhook_org, env, None, FLAGGED_EVENT, data)], moment)
    return True


async def _throttle(
    conn: AsyncConnection, org: str, env: str, rule: FairUseRule, window_start: int, now: float
) -> bool:
    """Set a ``throttle`` rule's override for the org in the flag row's environment, once
    per flag row, unless the org already has an override of that bucket for that
    environment or for every environment (an operator's: never replaced)."""
    if rule.bucket is None or rule.limit is None:
        return False
    f = fair_use_flags.c
    row = _flag_row(org, env, rule.signal, window_start)
    done = (await conn.execute(select(f.throttle_bucket).where(*row))).scalar_one_or_none()
    if done is not None:
        return False
    moment = datetime.fromtimestamp(now, UTC)
    o = limit_overrides.c
    every = await conn.execute(
        select(o.limit).where(
            o.org_id == org, o.environment == "", o.key_id == "", o.bucket == rule.bucket
        )
    )
    ins = dialect.insert(conn.dialect.name, limit_overrides).on_conflict_do_nothing(
        index_elements=[o.org_id, o.environment, o.key_id, o.bucket]
    )
    values = {
        "org_id": org,
        "environment": env,
        "key_id": "",
        "bucket": rule.bucket,
        "limit": rule.limit,
        "updated_at": moment,
    }
    if every.first() is not None or (await conn.execute(ins, values)).rowcount != 1:
        logger.info(
            "fair-use throttle skipped: the org has an override of the bucket",
            extra={"org": org, "environment": env, "bucket": rule.bucket, "signal": rule.signal},
        )
        return False
    until = window_start + rule.window
    await conn.execute(
        update(fair_use_flags)
        .where(*row)
        .values(
            throttle_bucket=rule.bucket,
            throttle_limit=rule.limit,
            throttle_until_us=round(until * 1_000_000),
        )
    )
    await audit.record(
        conn,
        actor=ACTOR,
        action="limit.set",
        org=org,
        target_id=rule.bucket,
        details={
            "bucket": rule.bucket,
            "key": None,
            "limit": rule.limit,
            "signal": rule.signal,
            "environment": env,
            "until": iso(round(until * 1_000_000)),
        },
        at=moment,
    )
    return True


async def _lift(conn: AsyncConnection, now: float) -> list[tuple[str, str, str]]:
    """Remove the overrides set by ``throttle`` rules whose window has ended — each the
    flag row's environment's, and only while it holds the limit the pass set (one an
    operator changed since is theirs now)."""
    f = fair_use_flags.c
    now_us = round(now * 1_000_000)
    due = (
        await conn.execute(
            select(
                f.org, f.environment, f.signal, f.window_start, f.throttle_bucket, f.throttle_limit
            ).where(f.throttle_until_us.is_not(None), f.throttle_until_us <= now_us)
        )
    ).all()
    lifted: list[tuple[str, str, str]] = []
    o = limit_overrides.c
    moment = datetime.fromtimestamp(now, UTC)
    for org, env, signal, window_start, bucket, limit in due:
        await conn.execute(
            update(fair_use_flags)
            .where(*_flag_row(org, env, signal, window_start))
            .values(throttle_until_us=None)
        )
        gone = await conn.execute(
            delete(limit_overrides).where(
                o.org_id == org,
                o.environment == env,
                o.key_id == "",
                o.bucket == bucket,
                o.limit == limit,
            )
        )
        if gone.rowcount:
            lifted.append((org, env, bucket))
            await audit.record(
                conn,
                actor=ACTOR,
                action="limit.cleared",
                org=org,
                target_id=bucket,
                details={"bucket": bucket, "key": None, "environment": env, "signal": signal},
                at=moment,
            )
    return lifted


async def run_pass(
    engine: AsyncEngine,
    rules: Sequence[FairUseRule],
    *,
    now: float | None = None,
    tap: FairUseTap | None = None,
    webhook_org: str | None = None,
) -> PassResult | None:
    """One pass over the interval since the watermark (see the module's docstring).

    Args:
        engine: the database the meter and the job store write.
        rules: the policy's ``[[fair_use]]`` signals.
        now: the pass's clock (epoch s); injected by tests to reach ``after`` (T).
        tap: this process's tap, flushed first so its counts are included.
        webhook_org: the provider's own org, whose webhook endpoints get the
            ``fair_use.flagged`` events; None: no events.

    Returns:
        What the pass did; None when there was nothing to claim (another process
        passed this interval, or there are no rules).

    Raises:
        StorageError: the database failed; the watermark stays where it was.
    """
    if not rules:
        return None
    until = time.time() if now is None else now
    if tap is not None:
        await tap.flush(engine)
    since = await _claim(engine, until)
    if since is None:
        return None
    try:
        async with write_transaction(engine, "could not run the fair-use pass") as conn:
            await _fold(conn, rules, since, until)
            pairs = await _active_pairs(conn, rules, since, until)
            flagged: list[tuple[str, str, SignalResult]] = []
            notified = 0
            throttled: list[tuple[str, str, str]] = []
            lifted = await _lift(conn, until)
            for org, env in pairs:
                for rule in rules:
                    res = await evaluate_rule(conn, rule, org, env, until - rule.window, until)
                    if res.status != "flagged":
                        continue
                    window_start = await _record_flag(conn, org, env, rule, res, until)
                    flagged.append((org, env, res))
                    if webhook_org and await _notify(
                        conn, webhook_org, org, env, rule, res, window_start, until
                    ):
                        notified += 1
                    if rule.action == "throttle" and await _throttle(
                        conn, org, env, rule, window_start, until
                    ):
                        throttled.append((org, env, str(rule.bucket)))
    except StorageError:
        await _unclaim(engine, since, until)
        raise
    if flagged:
        logger.info("fair-use signals flagged", extra={"flags": len(flagged)})
    return PassResult(since, until, len(pairs), flagged, notified, throttled, lifted)


async def _unclaim(engine: AsyncEngine, since: float, until: float) -> None:
    """Put the watermark back after a failed pass (best effort)."""
    s = fair_use_state.c
    with contextlib.suppress(StorageError):
        async with write_transaction(engine, "could not reset the fair-use watermark") as conn:
            await conn.execute(
                update(fair_use_state)
                .where(s.name == _WATERMARK, s.watermark_us == round(until * 1_000_000))
                .values(watermark_us=round(since * 1_000_000))
            )


class FairUsePass:
    """Runs :func:`run_pass` every ``interval`` seconds in the background.

    Args:
        engine: the database.
        rules: the policy's ``[[fair_use]]`` signals (none: the task does nothing).
        tap: this process's tap.
        interval: seconds between passes.
        clock: wall clock, epoch seconds.
        webhook_org: the provider's own org, whose endpoints get ``fair_use.flagged``.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        rules: Sequence[FairUseRule],
        *,
        tap: FairUseTap | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
        webhook_org: str | None = None,
    ) -> None:
        self.engine = engine
        self.webhook_org = webhook_org or None
        self.rules = tuple(rules)
        self.tap = tap
        self.interval = interval
        self.clock = clock
        self.last: PassResult | None = None
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> PassResult | None:
        """One pass now."""
        result = await run_pass(
            self.engine,
            self.rules,
            now=self.clock(),
            tap=self.tap,
            webhook_org=self.webhook_org,
        )
        if result is not None:
            self.last = result
        return result

    async def start(self) -> None:
        """Start passing in the background (idempotent; nothing without rules)."""
        if self.rules and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._loop(), name="tollhouse-fair-use")

    async def stop(self) -> None:
        """Stop the background task."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except StorageError:
                logger.warning("fair-use pass failed; retrying next interval", exc_info=True)
            except Exception:
                logger.exception("fair-use pass crashed; retrying next interval")
