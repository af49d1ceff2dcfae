"""One caller's bad data never stops metering for everyone, nor reads as an outage
(`tollhouse serve` on PostgreSQL).

A 300-character ``X-Tenant-Id`` (PostgreSQL's ``tenant`` columns hold 200) once stopped
every org's metering; its rule now refuses it at the door (400), and the call is counted
as the caller's without it. For a value the rules admit but the database still refuses,
a CHECK constraint the test adds on ``tenant`` stands in (any value a column cannot hold
goes the same way): the flush that carries it is split, the other orgs' calls are
written, the refused call is set aside as a dead letter (``/metrics``, the log with its
request id, ``tollhouse dead-letters``). A read of call counts flushes first, so "counted
within a flush interval" is checked without waiting for the background flush. The same
tenant on a job submission is a 400, not a 503 the SDK would retry.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import run_cli, stop_server
from tests.faults.support import Deployment, auth, call_counts
from tollhouse.storage.engine import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(150)]

LONG_TENANT = "t" * 300
#: Within the tenant rule; refused by the database through the test's CHECK constraints.
POISON = "poison-tenant"


async def _refuse_tenant(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            for table in ("usage_dims", "jobs"):
                await conn.execute(
                    text(
                        f"ALTER TABLE {table} ADD CONSTRAINT refused_tenant_{table} "
                        f"CHECK (tenant IS NULL OR tenant <> '{POISON}')"
                    )
                )
    finally:
        await engine.dispose()


def test_a_refused_tenant_does_not_stop_metering_for_other_orgs(
    tmp_path: Path, pg_database: str
) -> None:
    since = time.time()
    deploy = Deployment(tmp_path, pg_database)
    evil, other = deploy.key("evil-org"), deploy.key("other-org")
    asyncio.run(_refuse_tenant(pg_database))
    server = deploy.serve()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            long = client.get("/v1/things/1", headers={**auth(other), "X-Tenant-Id": LONG_TENANT})
            assert long.status_code == 400, long.text
            assert "X-Tenant-Id" in long.json()["error"]["message"]
            r = client.get("/v1/things/1", headers={**auth(evil), "X-Tenant-Id": POISON})
            assert r.status_code == 200, r.text
            refused_request = r.headers["x-request-id"]
            # This read flushes the refused call: it is set aside, not counted (the reads
            # themselves are the org's calls in OTHER).
            assert "THINGS" not in call_counts(server.url, evil, since)
            for i in range(15):
                assert client.get(f"/v1/things/{i}", headers=auth(other)).status_code == 200
            # Counted by the next flush (the read's own), not held behind the refused call;
            # the call refused at the door is counted too, without its tenant.
            assert call_counts(server.url, other, since) == {"THINGS": 16}
            task = client.post("/v1/tasks", json={}, headers={**auth(evil), "X-Tenant-Id": POISON})
            assert task.status_code == 400, task.text
            error = task.json()["error"]
            assert error["code"] == "BAD_REQUEST" and "refused_tenant" in error["message"]
            # The refused submission was a call too: metered, then set aside by this read.
            assert call_counts(server.url, evil, since) == {"OTHER": 1}
            metrics = client.get("/metrics").text
        assert 'tollhouse_dead_letters_total{kind="usage"} 2.0' in metrics
        refused = {refused_request: "GET", task.headers["x-request-id"]: "POST"}
        listed = run_cli("dead-letters", "--json", "--database-url", pg_database, cwd=tmp_path)
        letters = json.loads(listed.stdout)
        assert {d["requestId"]: d["payload"]["dimensions"]["method"] for d in letters} == refused
        for letter in letters:
            assert (letter["kind"], letter["org"], letter["rows"]) == ("usage", "evil-org", 1)
            assert letter["payload"]["dimensions"]["tenant"] == POISON
            assert "refused_tenant" in letter["error"]
        wide = {"COLUMNS": "250"}  # rich wraps cells to the terminal's width
        table = run_cli("dead-letters", "--database-url", pg_database, cwd=tmp_path, env=wide)
        assert refused_request in table.stdout and "evil-org" in table.stdout
    finally:
        stop_server(server)
    output = (tmp_path / "serve-1.log").read_text()
    lines = [line for line in output.splitlines() if "dead letter" in line]
    assert sorted(line.split("request_id=")[1].split()[0] for line in lines) == sorted(refused)
