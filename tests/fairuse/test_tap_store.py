"""The tap's tallies in the database (both engines), and the pure sliding window."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tests.conftest import run_cli
from tests.storage.support import run_with
from tollhouse.fairuse import FairUseTap
from tollhouse.fairuse.schema import MAX_SUBJECT, fair_use_flags, fair_use_tallies
from tollhouse.fairuse.signals import sliding_peak, status
from tollhouse.keys.model import Identity
from tollhouse.metering.record import CallRecord


def test_sliding_peak_counts_inside_the_window_only() -> None:
    minutes = [(0, 2), (60, 1), (3600, 2), (7200, 1)]
    assert sliding_peak(minutes, 3600, 0, 7200) == 3  # (60, 3600]: 1 + 2
    assert sliding_peak(minutes, 7201, 0, 7200) == 6
    assert sliding_peak(minutes, 3600, 7200, 7200) == 1  # only spans ending at 7200: (3600, 7200]
    assert status(3, 3) == "watch" and status(4, 3) == "flagged" and status(1, 3) == "ok"
    assert status(1, 0) == "flagged" and status(0, 0) == "ok"


def test_longest_job_id_fits_and_longer_is_skipped(database_url: str) -> None:
    tap = FairUseTap()
    fits = "j" * MAX_SUBJECT
    tap.generation("o" * 64, "PRODUCTION", "/v1/criteria/generate", fits, 1_700_000_000.5)
    tap.generation("o", "SANDBOX", "/v1/criteria/generate", fits + "x", 1_700_000_000.5)
    identity = Identity(key_id="k" * 64, org="o" * 64, environment="PRODUCTION", role="root")
    tap.refused(identity, 1_700_000_001.0, {"retry-after": "30"})
    calls = [
        CallRecord(
            1_700_000_001.0, "o" * 64, "PRODUCTION", "k" * 64, None, None, "GET", "/x", 429, 1.0
        ),
        CallRecord(
            1_700_000_002.0, "o" * 64, "PRODUCTION", "k" * 64, None, None, "GET", "/x", 200, 1.0
        ),
    ]
    tap.observe(calls)

    async def go(engine: Any) -> list[Any]:
        assert await tap.flush(engine) == 2
        tap.generation("o" * 64, "PRODUCTION", "/v1/criteria/generate", fits, 1_700_000_010.0)
        assert await tap.flush(engine) == 1  # added to the same minute
        async with engine.connect() as conn:
            t = fair_use_tallies.c
            rows = await conn.execute(select(t.kind, t.subject, t.count, t.hits).order_by(t.kind))
            return [tuple(r) for r in rows]

    rows = run_with(database_url, go)
    assert rows == [("/v1/criteria/generate", fits, 2, 0), ("429", "k" * 64, 1, 1)]


def test_cli_prints_signals_and_runs_the_pass(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/cli.db"
    tap = FairUseTap()
    now = time.time()
    for i in range(4):
        tap.generation("acme", "SANDBOX", "/v1/criteria/generate", "job_x", now - 60 - i)

    async def seed(engine: Any) -> None:
        await tap.flush(engine)

    async def flags(engine: Any) -> list[tuple[Any, ...]]:
        f = fair_use_flags.c
        async with engine.connect() as conn:
            rows = await conn.execute(select(f.org, f.environment, f.signal, f.value, f.involved))
            return [tuple(r) for r in rows]

    run_with(db, seed)
    args = ("--org", "acme", "--environment", "sandbox", "--json", "--database-url", db)
    run_cli("usage", "fair-use", "--time-range", "24h", *args, cwd=tmp_path)
    assert run_with(db, flags, schema=False) == []  # without --run: read only
    out = run_cli("usage", "fair-use", "--time-range", "24h", "--run", *args, cwd=tmp_path)
    # --run ran the scheduled pass: it recorded the flag.
    assert run_with(db, flags, schema=False) == [("acme", "SANDBOX", "regeneration_loop", 4.0, 1)]
    body = json.loads(out.stdout)
    [entry] = body["orgs"]
    signals = {s["signal"]: s for s in entry["signals"]}
    assert entry["environment"] == "SANDBOX"
    assert len(signals) == 5
    loop = signals["regeneration_loop"]
    assert (loop["value"], loop["threshold"], loop["status"]) == (4, 3, "flagged")
    assert loop["involved"] == [{"id": "job_x", "count": 4}]
    assert loop["firstSeen"] is not None and loop["lastSeen"] is not None
    assert {s["status"] for n, s in signals.items() if n != "regeneration_loop"} == {"ok"}
    bad = run_cli(
        "usage", "fair-use", "--time-range", "3w", "--database-url", db, cwd=tmp_path, check=False
    )
    assert bad.returncode == 2 and "--time-range" in bad.stderr
    table = run_cli(
        "usage",
        "fair-use",
        "--org",
        "acme",
        "--database-url",
        db,
        cwd=tmp_path,
        env={"COLUMNS": "200"},
    )
    assert "regeneration_loop" in table.stdout and "job_x (4)" in table.stdout
    assert "flagged" in table.stdout
