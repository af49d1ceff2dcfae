"""``score_many`` learns outcomes 100 jobs per status read (``GET /v1/score?ids=``),
against a real `tollhouse serve` whose one tight ``scoring`` bucket the batches and the
reads share (tests/data/bulk.toml); and a read costs one unit of the built-in policy's
``scoring`` bucket whatever its number of ids.

Waiting is real here (2 s windows); nothing asserts on time.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.client.support import open_client
from tests.conftest import TESTS, Server, start_server, stop_server
from tollhouse.client import Client

pytestmark = pytest.mark.integration

TITLE = "Backend Engineer"
DESCRIPTION = "Python, PostgreSQL and Redis; 5 years building APIs."
RESUME = "Built Python APIs on PostgreSQL and Redis for 6 years."


@pytest.fixture(scope="module")
def bulk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("bulk"), TESTS / "data" / "bulk.toml")
    yield server
    stop_server(server)


class Traffic:
    """What the client sent and got: 429s, accepted jobs, and each status read's ids
    with the jobs still unfinished when it was sent."""

    def __init__(self, bodies: bool) -> None:
        #: Read the bodies too (a sync hook can; an async client's hook sees an unread
        #: async stream).
        self.bodies = bodies
        self.lock = threading.Lock()
        self.refused = 0
        self.pending: set[str] = set()
        self.reads: list[tuple[list[str], set[str]]] = []

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        with self.lock:
            if response.status_code == 429:
                self.refused += 1
                return
            if request.url.path == "/v1/score/batch" and response.status_code == 202:
                if not self.bodies:
                    return
                response.read()
                for item in orjson.loads(response.content)["results"]:
                    self.pending.add(item["scoringJobId"])
            elif request.url.path == "/v1/score" and request.method == "GET":
                ids = request.url.params["ids"].split(",")
                self.reads.append((ids, set(self.pending)))
                if not self.bodies:
                    return
                response.read()
                for job in orjson.loads(response.content)["data"]:
                    if job["status"] in ("completed", "failed"):
                        self.pending.discard(job["scoringJobId"])


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_outcomes_come_100_per_read_inside_a_shared_tight_bucket(
    kind: str, bulk_server: Server, tmp_path: Path
) -> None:
    key = bulk_server.key(f"bulk-{kind}")["key"]
    cands = [
        {
            "applicationId": f"app_{i}",
            "jobId": "job_1",
            "candidate": {"name": "C", "resume": RESUME},
        }
        for i in range(50)
    ]
    traffic = Traffic(bodies=kind == "sync")
    with open_client(kind, key, bulk_server.url, on_response=traffic) as c:
        c.criteria.generate("job_1", TITLE, DESCRIPTION)
        outcomes = list(c.score_many(cands, chunk_size=10, poll_interval=0.2))
    # Every outcome known, none refused on the way: the reads and the batches shared the
    # 6-per-2-s bucket, and the client held each until the window had room.
    assert sorted(o.key for o in outcomes) == sorted(f"job_1/app_{i}" for i in range(50))
    assert all(o.status == "completed" and o.score is not None for o in outcomes)
    assert traffic.refused == 0
    # One read per poll round (ceil(50 / 100) = 1): each asked for at most 100 jobs, and
    # the sync client, one request at a time, asked for every unfinished job at once.
    assert traffic.reads and all(len(ids) <= 100 for ids, _ in traffic.reads)
    assert len(traffic.reads) < 50
    if kind == "sync":
        assert all(set(ids) == pending for ids, pending in traffic.reads)


def test_a_status_read_costs_one_unit_whatever_its_ids(default_server: Server) -> None:
    """Built-in policy: GET /v1/score counts against "scoring" (and the per-second reads
    bucket) once per request, like one poll of GET /v1/score/{id}."""
    key = default_server.key("bulk-cost")["key"]
    with Client(key, default_server.url, tenant_id="acme") as c:
        c.criteria.generate("job_1", TITLE, DESCRIPTION)
        items = [
            {
                "applicationId": f"a{i}",
                "jobId": "job_1",
                "candidate": {"name": "C", "resume": RESUME},
            }
            for i in range(100)
        ]
        ids = [r.accepted.scoring_job_id for r in c.score_batch(items).results if r.accepted]
    assert len(ids) == 100
    left: list[int] = []
    headers = {"Authorization": f"Bearer {key}", "X-Tenant-Id": "acme"}
    for n in (1, 100, 100):
        r = httpx.get(
            f"{default_server.url}/v1/score", params={"ids": ",".join(ids[:n])}, headers=headers
        )
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == n
        named = dict(item.strip().split(";", 1) for item in r.headers["ratelimit"].split(","))
        assert set(named) == {'"read_and_ops"', '"scoring"'}
        left.append(int(named['"scoring"'].split(";")[0].removeprefix("r=")))
    # Each read took exactly one unit of the 1,000 per minute (or was the first of a new
    # minute: 3 reads cross at most one boundary).
    steps = list(itertools.pairwise(left))
    assert all(b == a - 1 or b == 999 for a, b in steps), left
    assert any(b == a - 1 for a, b in steps), left
    # Another org's key finds none of them.
    other = default_server.key("bulk-cost-other")["key"]
    r = httpx.get(
        f"{default_server.url}/v1/score",
        params={"ids": ",".join(ids[:3])},
        headers={"Authorization": f"Bearer {other}", "X-Tenant-Id": "acme"},
    )
    assert r.json() == {"data": [], "notFound": ids[:3]}
