"""``GET /v1/queue``: the org's counters and jobs, newest first, keyset paging, every 400,
on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from sqlalchemy import inspect

from tests.jobs.conftest import FakeClock, database, run
from tests.jobs.test_jobs_app import SCORE, client_for
from tollhouse.jobs import NewJob, create_job_schema


def _new(org: str = "acme", n: int = 1) -> list[NewJob]:
    return [
        NewJob(org=org, route="POST /v1/score", payload={"jobId": "job_1"}, application_id=f"a{i}")
        for i in range(n)
    ]


async def _all_pages(client: Any, limit: int, **params: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(100):
        query = {"limit": str(limit), **params}
        if cursor is not None:
            query["cursor"] = cursor
        r = await client.get("/v1/queue", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["data"]) <= limit
        seen += body["data"]
        if not body["hasMore"]:
            assert body["nextCursor"] is None
            return seen
        assert isinstance(body["nextCursor"], str)
        cursor = body["nextCursor"]
    raise AssertionError("paging did not end")


def test_counters_and_jobs_newest_first(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(db_url, clock=clock, cap=2) as (client, queue, _):
            empty = (await client.get("/v1/queue")).json()
            assert empty == {
                "queue": {
                    "queued": 0,
                    "running": 0,
                    "cap": 2,
                    "meanProcessingSeconds": None,
                    "estimatedWaitSeconds": 0.0,
                },
                "data": [],
                "hasMore": False,
                "nextCursor": None,
            }
            ids = []
            for i in range(6):
                r = await client.post("/v1/score", json={**SCORE, "applicationId": f"app_{i}"})
                ids.append(r.json()["scoringJobId"])
                clock.advance(1)
            a, b = await queue.claim("w", 2)  # the two oldest
            clock.advance(3)
            await queue.complete(a, {"score": 1})
            await queue.fail(b, {"code": "X", "message": "no"}, retryable=False)
            c, d = await queue.claim("w", 2)
            r = await client.get("/v1/queue")
            assert r.status_code == 200
            body = r.json()
            # Two running at cap 2, mean 3 s measured: a new job would be 3rd in line,
            # (3 ÷ 2) × 3 = 4.5 → 5 s.
            assert body["queue"] == {
                "queued": 2,
                "running": 2,
                "cap": 2,
                "meanProcessingSeconds": 3.0,
                "estimatedWaitSeconds": 5.0,
            }
            assert [j["scoringJobId"] for j in body["data"]] == ids[::-1]
            assert [j["status"] for j in body["data"]] == [
                "queued",
                "queued",
                "running",
                "running",
                "failed",
                "completed",
            ]
            # Exactly what GET /v1/score/{id} answers, queue positions included.
            for job in body["data"]:
                one = await client.get(f"/v1/score/{job['scoringJobId']}")
                assert one.json() == job
            assert body["data"][0]["queuePosition"] == 2
            assert body["data"][1]["queuePosition"] == 1
            assert body["data"][0]["estimatedWaitSeconds"] == 3  # (2 ÷ 2) × 3
            assert (body["hasMore"], body["nextCursor"]) == (False, None)
            for status, expected in [
                ("queued", ids[5:3:-1]),
                ("running", [d.job.id, c.job.id]),
                ("completed", [a.job.id]),
                ("failed", [b.job.id]),
            ]:
                got = (await client.get("/v1/queue", params={"status": status})).json()
                assert [j["scoringJobId"] for j in got["data"]] == expected, status
                assert all(j["status"] == status for j in got["data"])

    run(go())


def test_dead_jobs_list_as_failed(sqlite_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(sqlite_url, clock=clock) as (client, queue, _):
            await queue.enqueue(_new())
            for _ in range(queue.settings.max_attempts):
                [lease] = await queue.claim("w", 1)
                # Retryable failures; the last attempt makes it dead.
                outcome = await queue.fail(lease, {"code": "X"}, retryable=True)
                clock.advance(3600)  # past the backoff
            assert outcome == "dead"
            got = (await client.get("/v1/queue?status=failed")).json()
            assert [j["status"] for j in got["data"]] == ["failed"]

    run(go())


def test_paging_covers_every_job_once(db_url: str) -> None:
    clock = FakeClock()

    async def go() -> None:
        async with client_for(db_url, clock=clock) as (client, queue, _):
            # Batches share one created_at: the id breaks the tie, so pages never skip
            # or repeat a job even where the time is equal.
            made: list[str] = []
            for _ in range(4):
                made += [e.job.id for e in await queue.enqueue(_new(n=5))]
                clock.advance(0.001)
            for limit in (1, 3, 7, 20):
                seen = await _all_pages(client, limit)
                assert sorted(j["scoringJobId"] for j in seen) == sorted(made), limit
                keys = [(j["createdAt"], j["scoringJobId"]) for j in seen]
                assert keys == sorted(keys, reverse=True)
                # Positions of queued jobs are exact on every page.
                positions = sorted(j["queuePosition"] for j in seen)
                assert positions == list(range(1, 21))
            first = (await client.get("/v1/queue?limit=19")).json()
            assert first["hasMore"] is True and len(first["data"]) == 19
            last = (await client.get("/v1/queue", params={"cursor": first["nextCursor"]})).json()
            assert len(last["data"]) == 1 and last["hasMore"] is False
            status_pages = await _all_pages(client, 6, status="queued")
            assert len(status_pages) == 20

    run(go())


def test_other_orgs_jobs_never_appear(db_url: str) -> None:
    async def go() -> None:
        async with client_for(db_url) as (client, queue, _):
            mine = [e.job.id for e in await queue.enqueue(_new("acme", 3))]
            theirs = [e.job.id for e in await queue.enqueue(_new("evil", 2))]
            await queue.claim("w", 5)
            acme = (await client.get("/v1/queue")).json()
            assert sorted(j["scoringJobId"] for j in acme["data"]) == sorted(mine)
            assert acme["queue"]["running"] == 3
            evil_headers = {"x-test-org": "evil"}
            evil = (await client.get("/v1/queue", headers=evil_headers)).json()
            assert sorted(j["scoringJobId"] for j in evil["data"]) == sorted(theirs)
            assert (evil["queue"]["running"], evil["queue"]["queued"]) == (2, 0)
            # A cursor from acme's pages shows evil nothing of acme's.
            page = (await client.get("/v1/queue?limit=1")).json()
            rest = await client.get(
                "/v1/queue", params={"cursor": page["nextCursor"]}, headers=evil_headers
            )
            assert not set(mine) & {j["scoringJobId"] for j in rest.json()["data"]}
            nobody = (await client.get("/v1/queue", headers={"x-test-org": "new"})).json()
            assert nobody["data"] == [] and nobody["queue"]["queued"] == 0

    run(go())


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"status": "dead"}, "status"),
        ({"status": ""}, "status"),
        ({"status": "QUEUED"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"cursor": ""}, "cursor"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "%%%"}, "cursor"),
        ({"cursor": _cursor({"a": 1})}, "cursor"),
        ({"cursor": _cursor(["2026-03-07T12:00:00", "sj_1"])}, "cursor"),  # naive time
        ({"cursor": _cursor(["yesterday", "sj_1"])}, "cursor"),
        ({"cursor": _cursor(["2026-03-07T12:00:00+00:00", ""])}, "cursor"),
        ({"cursor": _cursor(["2026-03-07T12:00:00+00:00", 5])}, "cursor"),
        ({"cursor": "x" * 300}, "cursor"),
    ],
)
def test_bad_parameters_are_400(sqlite_url: str, query: dict[str, str], parameter: str) -> None:
    async def go() -> None:
        async with client_for(sqlite_url) as (client, queue, _):
            await queue.enqueue(_new())
            r = await client.get("/v1/queue", params=query)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "BAD_REQUEST" and error["status"] == 400
            assert f'"{parameter}"' in error["message"]
            assert error["requestId"] == "req_test"
            if parameter == "status":
                assert "queued, running, completed, failed" in error["message"]

    run(go())


@pytest.mark.postgres
def test_bad_parameters_are_400_on_postgres(pg_url: str) -> None:
    async def go() -> None:
        async with client_for(pg_url) as (client, _, _):
            for query in ({"status": "x"}, {"limit": "500"}, {"cursor": "abc"}):
                r = await client.get("/v1/queue", params=query)
                assert r.status_code == 400 and r.json()["error"]["code"] == "BAD_REQUEST"

    run(go())


def test_only_get(sqlite_url: str) -> None:
    async def go() -> None:
        async with client_for(sqlite_url) as (client, _, _):
            r = await client.post("/v1/queue", json={})
            assert r.status_code == 405 and "GET" in r.headers["allow"]

    run(go())


def test_schema_adds_the_paging_index_to_an_existing_database(db_url: str) -> None:
    async def go() -> None:
        async with database(db_url) as engine:
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP INDEX ix_jobs_scope_created")
            await create_job_schema(engine)
            await create_job_schema(engine)  # and again: nothing left to do
            async with engine.connect() as conn:
                names = await conn.run_sync(
                    lambda sync: {ix["name"] for ix in inspect(sync).get_indexes("jobs")}
                )
            assert "ix_jobs_scope_created" in names

    run(go())
