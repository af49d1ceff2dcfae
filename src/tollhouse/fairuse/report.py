"""The fair-use answer of one org and environment over a ``timeRange`` ending now.

One function for both routes that show it: the org's own ``GET /v1/analytics/fair-use``
(:mod:`tollhouse.http.platform`) and the provider's ``GET
/v1/admin/orgs/{orgId}/fair-use`` (:mod:`tollhouse.http.admin`), so the two never differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import StorageError
from tollhouse.fairuse.evaluate import evaluate
from tollhouse.fairuse.signals import iso
from tollhouse.jobs.volume import TIME_RANGES
from tollhouse.metering.meter import UsageMeter
from tollhouse.policy.model import FairUseRule

logger = logging.getLogger(__name__)


async def fair_use_report(
    engine: AsyncEngine,
    rules: Sequence[FairUseRule],
    org: str,
    environment: str,
    time_range: str,
    now: float,
    meter: UsageMeter | None = None,
) -> dict[str, Any]:
    """Every signal of ``rules`` for ``org`` in ``environment`` over ``time_range``.

    Args:
        engine: the database (usage rollups, the fair-use tallies, jobs).
        rules: the policy's ``[[fair_use]]`` rules.
        org: the org.
        environment: ``SANDBOX`` or ``PRODUCTION``.
        time_range: a checked ``timeRange`` (:func:`~tollhouse.jobs.volume.check_time_range`).
        now: the range's end, Unix seconds.
        meter: this process's meter: flushed first (with the fair-use tap's counts), so a
            caller sees its own calls; other processes lag by a flush interval.

    Returns:
        The JSON body: ``timeRange``, ``period``, ``environment`` and ``signals``.
    """
    start = now - TIME_RANGES[time_range][0].total_seconds()
    if meter is not None:
        if meter.has_pending:
            try:
                await meter.flush()
            except StorageError:
                logger.warning("could not flush usage before a read", exc_info=True)
        try:
            await meter.flusher.flush_companions()  # the fair-use tap's counts
        except StorageError:
            logger.warning("could not flush fair-use counts before a read", exc_info=True)
    found = await evaluate(engine, rules, org, environment, start, now)
    return {
        "timeRange": time_range,
        "period": {"start": _time(start), "end": _time(now)},
        "environment": environment,
        "signals": [r.to_json() for r in found],
    }


def _time(t: float) -> str | None:
    return iso(round(t * 1_000_000))
