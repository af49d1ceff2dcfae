"""Retention of the fair-use tables: rows the signals no longer read are deleted by age.

The ages are :class:`~tollhouse.metering.retention.Retention`'s ``fair_use_days``
(``fair_use_tallies`` by minute, ``fair_use_jobs`` by first generation) and
``fair_use_flags_days`` (``fair_use_flags`` by last update), each raised to what the
policy's ``[[fair_use]]`` rules need (:func:`needed_days`), so a prune never removes
what a pass or a signal over its window still reads:

* the pass judges each rule over its window ending now; ``regeneration_loop`` slides its
  window over that span (two windows back), ``criteria_without_scoring`` reads the jobs
  generated ``after`` (T) before it (window + T back: 14 days with the defaults);
* a flag row outlives its window: it is what sends the ``fair_use.flagged`` event once
  per window.

Plus :data:`MARGIN_DAYS`. A flag row whose ``throttle`` override is not lifted yet is
kept whatever its age (the pass lifts the override from it); ``fair_use_state`` (one
row) is never pruned.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.fairuse.schema import fair_use_flags, fair_use_jobs, fair_use_tallies
from tollhouse.metering.retention import DAY, Retention
from tollhouse.policy.model import FairUseRule
from tollhouse.storage.transactions import write_transaction

logger = logging.getLogger(__name__)

#: Kept beyond what the rules read: a pass that could not run for a while catches up
#: from its watermark over data still there.
MARGIN_DAYS = 1.0


def needed_days(rules: Sequence[FairUseRule]) -> float:
    """Days of fair-use data the rules' windows read back from now, plus :data:`MARGIN_DAYS`."""
    need = max((r.window + max(r.window, r.after) for r in rules), default=0.0)
    return need / DAY + MARGIN_DAYS


def kept_days(days: float | None, rules: Sequence[FairUseRule]) -> float | None:
    """``days`` (None: forever), never below :func:`needed_days`."""
    return None if days is None else max(days, needed_days(rules))


async def prune_fair_use(
    engine: AsyncEngine, retention: Retention, now: float, rules: Sequence[FairUseRule] = ()
) -> dict[str, int]:
    """Delete fair-use rows older than their retention (see the module's docstring).

    Args:
        engine: the database the meter and the pass write.
        retention: ``fair_use_days`` and ``fair_use_flags_days``.
        now: the current time, epoch seconds.
        rules: the policy's ``[[fair_use]]`` rules, whose windows set the least kept.

    Returns:
        Rows deleted per table name (tables kept forever are left out).

    Raises:
        StorageError: the database failed (nothing is deleted from the failing table on).
    """
    deleted: dict[str, int] = {}
    days = kept_days(retention.fair_use_days, rules)
    if days is not None:
        cutoff_us = round((now - days * DAY) * 1_000_000)
        t, j = fair_use_tallies.c, fair_use_jobs.c
        async with write_transaction(engine, "could not prune fair-use tallies") as conn:
            gone = await conn.execute(
                delete(fair_use_tallies).where(t.minute < cutoff_us // 1_000_000)
            )
            deleted[str(fair_use_tallies.name)] = max(0, gone.rowcount or 0)
        async with write_transaction(engine, "could not prune fair-use jobs") as conn:
            # By first generation (indexed); rows of a score only, by the score.
            generated = await conn.execute(delete(fair_use_jobs).where(j.generated_us < cutoff_us))
            scored = await conn.execute(
                delete(fair_use_jobs).where(j.generated_us.is_(None), j.scored_us < cutoff_us)
            )
            deleted[str(fair_use_jobs.name)] = max(0, generated.rowcount or 0) + max(
                0, scored.rowcount or 0
            )
    days = kept_days(retention.fair_use_flags_days, rules)
    if days is not None:
        cutoff_us = round((now - days * DAY) * 1_000_000)
        f = fair_use_flags.c
        async with write_transaction(engine, "could not prune fair-use flags") as conn:
            gone = await conn.execute(
                delete(fair_use_flags).where(
                    f.updated_us < cutoff_us, f.throttle_until_us.is_(None)
                )
            )
            deleted[str(fair_use_flags.name)] = max(0, gone.rowcount or 0)
    if any(deleted.values()):
        logger.info("pruned fair-use data", extra={"deleted": deleted})
    return deleted
