"""``GET /v1/score?ids=``: many jobs' status in one call, scoped to the caller's org and
environment, every 400 naming the parameter, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.jobs.conftest import run
from tests.jobs.test_jobs_app import SCORE, client_for

SANDBOX = {"x-test-env": "SANDBOX"}
OTHER_ORG = {"x-test-org": "globex"}


def test_many_jobs_answered_in_the_order_asked_and_only_the_callers(db_url: str) -> None:
    async def go() -> None:
        async with client_for(db_url, cap=2) as (client, queue, _):
            mine = []
            for i in range(4):
                r = await client.post("/v1/score", json={**SCORE, "applicationId": f"app_{i}"})
                mine.append(r.json()["scoringJobId"])
            first, second = await queue.claim("w", 2)  # the two oldest
            await queue.complete(first, {"score": 71.0})
            await queue.fail(second, {"code": "X", "message": "no"}, retryable=False)
            sandbox = (await client.post("/v1/score", json=SCORE, headers=SANDBOX)).json()
            other = (await client.post("/v1/score", json=SCORE, headers=OTHER_ORG)).json()

            asked = [mine[3], sandbox["scoringJobId"], mine[0], other["scoringJobId"]]
            asked += [mine[1], "sj_unknown", mine[2], mine[0]]  # a repeat counts once
            r = await client.get("/v1/score", params={"ids": ",".join(asked)})
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"data", "notFound"}
            assert [j["scoringJobId"] for j in body["data"]] == [mine[3], mine[0], mine[1], mine[2]]
            # Another environment's job and another org's read as unknown ones.
            assert body["notFound"] == [
                sandbox["scoringJobId"],
                other["scoringJobId"],
                "sj_unknown",
            ]
            # Each job exactly as a poll of it answers (standing of the queued ones too).
            for job in body["data"]:
                alone = (await client.get(f"/v1/score/{job['scoringJobId']}")).json()
                assert job == alone
            by_id = {j["scoringJobId"]: j for j in body["data"]}
            assert by_id[mine[0]]["status"] == "completed"
            assert by_id[mine[0]]["result"] == {"score": 71.0}
            assert by_id[mine[1]]["status"] == "failed"
            assert [by_id[mine[2]]["queuePosition"], by_id[mine[3]]["queuePosition"]] == [1, 2]

            # The parameter may repeat; the sandbox sees its own job only.
            r = await client.get("/v1/score", params=[("ids", mine[0]), ("ids", mine[1])])
            assert [j["scoringJobId"] for j in r.json()["data"]] == [mine[0], mine[1]]
            r = await client.get(
                "/v1/score", params={"ids": f"{mine[0]},{sandbox['scoringJobId']}"}, headers=SANDBOX
            )
            assert r.json() == {
                "data": [r.json()["data"][0]],
                "notFound": [mine[0]],
            }
            assert r.json()["data"][0]["scoringJobId"] == sandbox["scoringJobId"]

    run(go())


def test_a_hundred_ids_in_one_call(db_url: str) -> None:
    async def go() -> None:
        async with client_for(db_url, cap=500) as (client, _, _):
            items = [{**SCORE, "applicationId": f"app_{i}"} for i in range(100)]
            r = await client.post("/v1/score/batch", json={"items": items})
            ids = [x["scoringJobId"] for x in r.json()["results"]]
            r = await client.get("/v1/score", params={"ids": ",".join(ids)})
            assert r.status_code == 200, r.text
            found = r.json()["data"]
            assert [j["scoringJobId"] for j in found] == ids
            assert [j["queuePosition"] for j in found] == list(range(1, 101))

    run(go())


@pytest.mark.parametrize(
    ("ids", "says"),
    [
        (None, "is required"),
        ("", "is required"),
        (",".join(f"sj_{i:020x}" for i in range(101)), "got 101"),
        ("sj_a,,sj_b", "'' is not a scoring job id"),
        ("sj_a,", "'' is not a scoring job id"),
        ("sj a", "'sj a' is not a scoring job id"),
        ("sj_" + "a" * 62, "is not a scoring job id"),
        ("sj_\x00", "is not a scoring job id"),
        ("../sj_a", "is not a scoring job id"),
    ],
)
def test_bad_ids_are_a_400_naming_the_parameter(db_url: str, ids: str | None, says: str) -> None:
    async def go() -> None:
        async with client_for(db_url) as (client, _, _):
            params = {"ids": ids} if ids is not None else None
            r = await client.get("/v1/score", params=params)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "BAD_REQUEST"
            assert 'query parameter "ids"' in error["message"]
            assert says in error["message"]
            assert "1 to 100 scoring job ids" in error["message"]

    run(go())
