"""Retention of the fair-use tables, on SQLite and PostgreSQL: rows older than their
age are deleted, never what the policy's windows still read, never a flag whose throttle
override is not lifted yet; ``tollhouse usage prune`` does it with the meter's tables."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from tests.conftest import run_cli, start_server, stop_server
from tests.faults.support import wait_until
from tests.storage.support import run_with
from tollhouse.fairuse import FairUseTap
from tollhouse.fairuse.retention import needed_days, prune_fair_use
from tollhouse.fairuse.schema import fair_use_flags, fair_use_jobs, fair_use_tallies
from tollhouse.http.app import Tollhouse
from tollhouse.metering.retention import Retention
from tollhouse.policy.model import FAIR_USE_DEFAULTS
from tollhouse.settings import load_settings

DAY = 86400.0
RULES = tuple(FAIR_USE_DEFAULTS.values())
#: Ages in days of the rows written: inside what the default windows read (14 days
#: back, plus a day), just past it, and past the default retention.
AGES = (2.0, 14.5, 16.0, 100.0)


def write_rows(engine: Any, now: float) -> Any:
    async def go() -> None:
        tap = FairUseTap()
        for age in AGES:
            tap.generation(
                "acme", "SANDBOX", "/v1/criteria/generate", f"job_{age}", now - age * DAY
            )
        await tap.flush(engine)
        async with engine.begin() as conn:
            await conn.execute(
                insert(fair_use_jobs),
                [
                    {
                        "org": "acme",
                        "environment": "SANDBOX",
                        "job_id": f"job_{age}",
                        "generated_us": round((now - age * DAY) * 1e6),
                        "scored_us": None,
                    }
                    for age in AGES
                ]
                + [
                    {  # a score only (its generation not seen): aged by the score
                        "org": "acme",
                        "environment": "SANDBOX",
                        "job_id": "scored_only",
                        "generated_us": None,
                        "scored_us": round((now - 100 * DAY) * 1e6),
                    }
                ],
            )
            flags = [(f"flag_{age}", age, None) for age in (*AGES, 500.0)]
            # Flagged 500 days ago, its throttle override still to lift: kept.
            flags.append(("throttled", 500.0, round((now + DAY) * 1e6)))
            await conn.execute(
                insert(fair_use_flags),
                [
                    {
                        "org": org,
                        "environment": "SANDBOX",
                        "signal": "regeneration_loop",
                        "window_start": int(now - age * DAY),
                        "value": 4.0,
                        "threshold": 3.0,
                        "subjects": "[]",
                        "flagged_us": round((now - age * DAY) * 1e6),
                        "updated_us": round((now - age * DAY) * 1e6),
                        "action": "throttle" if until else "flag",
                        "throttle_bucket": "criteria_ai" if until else None,
                        "throttle_limit": 1 if until else None,
                        "throttle_until_us": until,
                    }
                    for org, age, until in flags
                ],
            )

    return go()


async def left(engine: Any) -> dict[str, list[str]]:
    async with engine.connect() as conn:
        tallies = await conn.execute(select(fair_use_tallies.c.subject))
        jobs = await conn.execute(select(fair_use_jobs.c.job_id))
        flags = await conn.execute(select(fair_use_flags.c.org))
        return {
            "tallies": sorted(r for (r,) in tallies),
            "jobs": sorted(r for (r,) in jobs),
            "flags": sorted(r for (r,) in flags),
        }


def test_the_defaults_keep_the_90_day_range_and_the_windows(database_url: str) -> None:
    now = time.time()
    assert needed_days(RULES) == 15.0  # criteria_without_scoring: 7 d window + 7 d T, + 1

    async def go(engine: Any) -> tuple[dict[str, int], dict[str, list[str]]]:
        await write_rows(engine, now)
        deleted = await prune_fair_use(engine, Retention(), now, RULES)
        return deleted, await left(engine)

    deleted, rows = run_with(database_url, go)
    assert deleted == {"fair_use_tallies": 1, "fair_use_jobs": 2, "fair_use_flags": 1}
    kept = ["job_14.5", "job_16.0", "job_2.0"]
    assert rows == {
        "tallies": kept,
        "jobs": kept,
        "flags": ["flag_100.0", "flag_14.5", "flag_16.0", "flag_2.0", "throttled"],
    }


def test_shorter_ages_never_go_below_what_the_windows_read(database_url: str) -> None:
    now = time.time()
    short = Retention(fair_use_days=1, fair_use_flags_days=1)

    async def go(engine: Any) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        await write_rows(engine, now)
        await prune_fair_use(engine, short, now, RULES)
        with_rules = await left(engine)
        await prune_fair_use(engine, short, now)  # no rules: a day of margin only
        return with_rules, await left(engine)

    with_rules, without = run_with(database_url, go)
    assert with_rules == {
        "tallies": ["job_14.5", "job_2.0"],
        "jobs": ["job_14.5", "job_2.0"],
        "flags": ["flag_14.5", "flag_2.0", "throttled"],
    }
    assert without == {"tallies": [], "jobs": [], "flags": ["throttled"]}


def test_forever_keeps_everything(database_url: str) -> None:
    now = time.time()
    forever = Retention(fair_use_days=None, fair_use_flags_days=None)

    async def go(engine: Any) -> dict[str, int]:
        await write_rows(engine, now)
        return await prune_fair_use(engine, forever, now, RULES)

    assert run_with(database_url, go) == {}


def test_usage_prune_prunes_the_fair_use_tables(database_url: str, tmp_path: Path) -> None:
    now = time.time()
    run_with(database_url, lambda e: write_rows(e, now))
    out = run_cli("usage", "prune", "--json", "--database-url", database_url, cwd=tmp_path)
    deleted = json.loads(out.stdout)
    assert (deleted["fair_use_tallies"], deleted["fair_use_jobs"]) == (1, 2)
    assert deleted["fair_use_flags"] == 1
    assert deleted["usage_rollup_1m"] == 0  # the meter's tables in the same run

    async def go(engine: Any) -> dict[str, list[str]]:
        return await left(engine)

    assert "job_100.0" not in run_with(database_url, go, schema=False)["tallies"]


def test_a_running_server_prunes_by_the_default_ages(database_url: str, tmp_path: Path) -> None:
    """``tollhouse serve`` prunes on its own (``TOLLHOUSE_USAGE_RETENTION`` is on by
    default): the meter's tables and, beside them, the fair-use ones."""
    now = time.time()
    run_with(database_url, lambda e: write_rows(e, now))
    server = start_server(tmp_path, env={"TOLLHOUSE_DATABASE_URL": database_url})
    try:

        def pruned() -> bool:
            return "job_100.0" not in run_with(database_url, left, schema=False)["tallies"]

        wait_until(pruned, "the server's first prune")
    finally:
        stop_server(server)
    rows = run_with(database_url, left, schema=False)
    assert rows["tallies"] == ["job_14.5", "job_16.0", "job_2.0"]
    assert "throttled" in rows["flags"] and "flag_500.0" not in rows["flags"]


def test_retention_off_keeps_everything_in_the_server() -> None:
    on = Tollhouse(settings=load_settings(environ={}))
    assert on.meter.flusher.retention == Retention() and on.meter.flusher.pruners
    off = Tollhouse(settings=load_settings(environ={"TOLLHOUSE_USAGE_RETENTION": "off"}))
    assert off.meter.flusher.retention is None
