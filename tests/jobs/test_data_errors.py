"""A value the job store cannot hold is the caller's mistake: 400 in the error envelope,
never the 503 "job store unavailable" that tells clients (and the SDK) to retry.

PostgreSQL enforces the columns' lengths (``jobs.tenant`` is ``varchar(200)``); SQLite
does not, and stores the value.
"""

from __future__ import annotations

import pytest

from tests.jobs.conftest import run
from tests.jobs.test_jobs_app import SCORE, client_for


@pytest.mark.postgres
def test_a_tenant_longer_than_its_column_is_a_400_on_postgres(pg_url: str) -> None:
    async def go() -> None:
        async with client_for(pg_url) as (client, queue, _):
            r = await client.post("/v1/score", json=SCORE, headers={"X-Tenant-Id": "t" * 300})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "BAD_REQUEST" and error["requestId"] == "req_test"
            assert "too long" in error["message"]
            assert "Retry-After" not in r.headers
            # Neither the statement nor the value reaches the caller.
            assert "INSERT" not in error["message"] and "ttttt" not in error["message"]
            assert [c.queued for c in await queue.counters()] in ([], [0])
            ok = await client.post("/v1/score", json=SCORE, headers={"X-Tenant-Id": "t" * 200})
            assert ok.status_code == 202

    run(go())
