"""Fair-use signals from real HTTP traffic against a real server, on SQLite and PostgreSQL.

Each test serves a :class:`~tollhouse.http.app.Tollhouse` (the bundled example upstream)
on a fresh database, makes the pattern with real calls, then runs the fair-use pass on
the server's own event loop (its tap and meter live there) with an injected clock, and
checks the signal flips above its threshold and not before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import DEFAULT_POLICY, serve_in_thread
from tests.storage.support import run_with
from tollhouse.fairuse import SignalResult, evaluate, run_pass
from tollhouse.fairuse.evaluate import FINISHED
from tollhouse.http.app import Tollhouse
from tollhouse.jobs.schema import jobs
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.keys.store import KeyStore
from tollhouse.settings import load_settings

T = TypeVar("T")
DAY = 86400.0
ENV = "SANDBOX"

#: The built-in policy with tighter limits and thresholds the tests can reach.
FAIR_USE = """
[[buckets]]
name = "submissions_per_day"
limit = 4
window = "1d"
routes = ["POST /v1/score"]

[[buckets]]
name = "criteria_reads_per_day"
limit = 1
window = "1d"
routes = ["GET /v1/jobs/{jobId}/criteria"]

[[fair_use]]
signal = "regeneration_loop"
threshold = 3
window = "24h"

[[fair_use]]
signal = "criteria_without_scoring"
threshold = 0.5
after = "7d"

[[fair_use]]
signal = "polling_instead_of_webhooks"
threshold = 5

[[fair_use]]
signal = "ignored_retry_after"
threshold = 0.5

[[fair_use]]
signal = "burst_submission"
threshold = 0.2
"""


def policy_file(tmp_path: Path, fair_use: str = FAIR_USE) -> Path:
    base = DEFAULT_POLICY.read_text().split("# ---- fair use")[0]
    path = tmp_path / "fair.toml"
    path.write_text(base + fair_use)
    return path


class Running:
    """A served Tollhouse, its URL and a way to run coroutines on its event loop."""

    def __init__(self, app: Tollhouse, url: str, key: str) -> None:
        self.app = app
        self.url = url
        self.key = key
        task = app.meter.flusher._task
        assert task is not None
        self.loop = task.get_loop()

    def on_server(self, make: Callable[[], Awaitable[T]]) -> T:
        async def go() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(go(), self.loop)
        return future.result(timeout=60)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", "X-Tenant-Id": "acme"}

    def fair_use_pass(self, now: float) -> Any:
        """Flush the meter (the tap watches its passes) and run one pass at ``now``."""
        app = self.app

        async def go() -> Any:
            await app.meter.flush()
            return await run_pass(
                app.engine, app.settings.policy.fair_use, now=now, tap=app.fair_use_tap
            )

        return self.on_server(go)

    def signals(self, now: float | None = None, span: float = DAY) -> dict[str, SignalResult]:
        end = time.time() + 1 if now is None else now
        app = self.app

        async def go() -> list[SignalResult]:
            await app.meter.flush()
            await app.fair_use_tap.flush(app.engine)
            return await evaluate(
                app.engine, app.settings.policy.fair_use, "acme", ENV, end - span, end
            )

        return {r.signal: r for r in self.on_server(go)}


@contextmanager
def running(
    url: str,
    tmp_path: Path,
    fair_use: str = FAIR_USE,
    environ: dict[str, str] | None = None,
) -> Iterator[Running]:
    async def make_key(engine: Any) -> str:
        _, secret = await KeyStore(engine).create("acme", "test", "root")
        return secret

    key = run_with(url, make_key)
    settings = load_settings(
        policy_file(tmp_path, fair_use),
        database_url=url,
        environ={"TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "1", **(environ or {})},
    )
    app = Tollhouse(settings=settings)
    with serve_in_thread(app) as base:
        yield Running(app, base, key)


def generate(run: Running, job_id: str, route: str = "/v1/criteria/generate") -> None:
    """One generation of ``job_id`` on ``route``, paced as the built-in ``criteria_ai``
    bucket (5 per second) requires: a 429 is waited out for its ``Retry-After``."""
    while True:
        resp = httpx.post(
            run.url + route,
            headers=run.headers(),
            json={
                "jobId": job_id,
                "title": "Backend Engineer",
                "description": "Python and SQL, 5 years.",
            },
            timeout=30,
        )
        if resp.status_code != 429:
            assert resp.status_code == 200, resp.text
            return
        time.sleep(float(resp.headers["Retry-After"]))


def questions(run: Running, job_id: str) -> None:
    generate(run, job_id, "/v1/criteria/questions")


def submit(run: Running, job_id: str, application: str) -> httpx.Response:
    return httpx.post(
        run.url + "/v1/score",
        headers=run.headers(),
        json={
            "applicationId": application,
            "jobId": job_id,
            "candidate": {"name": "Ada", "resume": "Python and SQL for 6 years."},
        },
        timeout=30,
    )


def wait_finished(run: Running, count: int) -> None:
    """Wait (reading the job store, not polling the API) until ``count`` jobs finished."""

    async def finished(engine: Any) -> int:
        async with engine.connect() as conn:
            rows = await conn.execute(select(jobs.c.id).where(jobs.c.status.in_(FINISHED)))
            return len(rows.all())

    deadline = time.monotonic() + 30
    while run_with(run.app.settings.database_url, finished, schema=False) < count:
        assert time.monotonic() < deadline, "jobs did not finish"
        time.sleep(0.05)


@pytest.fixture
def run(database_url: str, tmp_path: Path) -> Iterator[Running]:
    with running(database_url, tmp_path) as r:
        yield r


def test_regeneration_loop_flags_above_n(run: Running) -> None:
    for _ in range(3):
        generate(run, "job_loop")
    generate(run, "job_once")
    found = run.signals()["regeneration_loop"]
    assert (found.value, found.status) == (3, "watch")  # N times is not more than N

    generate(run, "job_loop")
    found = run.signals()["regeneration_loop"]
    assert (found.value, found.status) == (4, "flagged")
    assert [s.id for s in found.subjects] == ["job_loop"]
    assert found.first_seen_us is not None and found.last_seen_us is not None
    assert found.first_seen_us <= found.last_seen_us
    result = run.fair_use_pass(time.time() + 1)
    assert [(o, r.signal) for o, _, r in result.flagged] == [("acme", "regeneration_loop")]


def test_regeneration_loop_on_the_questions_route(run: Running) -> None:
    # Once per route per job is the expected use: criteria and questions 3 times each
    # for one job count per route, so the job is at 3, not 6.
    for _ in range(3):
        generate(run, "job_q")
        questions(run, "job_q")
    found = run.signals()["regeneration_loop"]
    assert (found.value, found.status) == (3, "watch")
    assert [(s.id, s.count) for s in found.subjects] == [("job_q", 3)]

    questions(run, "job_q")  # a fourth set of questions: a loop on that route
    found = run.signals()["regeneration_loop"]
    assert (found.value, found.status) == (4, "flagged")
    assert [(s.id, s.count) for s in found.subjects] == [("job_q", 4)]
    result = run.fair_use_pass(time.time() + 1)
    assert [(o, r.signal) for o, _, r in result.flagged] == [("acme", "regeneration_loop")]


def test_criteria_without_scoring_flags_after_t(run: Running) -> None:
    for job in ("job_a", "job_b"):
        generate(run, job)
    assert submit(run, "job_a", "app_1").status_code == 202
    t = time.time()
    run.fair_use_pass(t + 1)  # the server's pass folds generations and scores in

    before = run.signals(t + 6 * DAY, span=7 * DAY)["criteria_without_scoring"]
    assert (before.value, before.status) == (0, "ok")  # not unscored before T
    at_t = run.signals(t + 8 * DAY, span=7 * DAY)["criteria_without_scoring"]
    assert (at_t.value, at_t.status) == (0.5, "watch")  # half: not above the threshold

    generate(run, "job_c")
    run.fair_use_pass(t + 2)
    after = run.signals(t + 8 * DAY, span=7 * DAY)["criteria_without_scoring"]
    assert after.status == "flagged"
    assert sorted(s.id for s in after.subjects) == ["job_b", "job_c"]
    result = run.fair_use_pass(t + 8 * DAY)
    assert "criteria_without_scoring" in {r.signal for _, _, r in result.flagged}


def test_polling_without_webhooks_flags_above_r(run: Running) -> None:
    generate(run, "job_p")
    job = submit(run, "job_p", "app_p").json()["scoringJobId"]
    wait_finished(run, 1)
    for _ in range(5):
        assert httpx.get(f"{run.url}/v1/score/{job}", headers=run.headers()).status_code == 200
    found = run.signals()["polling_instead_of_webhooks"]
    assert (found.value, found.threshold, found.status) == (5, 5, "watch")

    httpx.get(f"{run.url}/v1/score/{job}", headers=run.headers())
    found = run.signals()["polling_instead_of_webhooks"]
    assert (found.value, found.status) == (6, "flagged")
    assert found.detail["completedJobs"] == 1
    assert len(found.subjects) == 1  # the polling key


def test_any_poll_with_webhooks_is_flagged(run: Running) -> None:
    async def add(engine: Any) -> None:
        await WebhookStore(engine, allow_private_targets=True).add_endpoint(
            "acme", "http://127.0.0.1:9/hook", environment="SANDBOX"
        )

    run_with(run.app.settings.database_url, add, schema=False)
    generate(run, "job_w")
    job = submit(run, "job_w", "app_w").json()["scoringJobId"]
    wait_finished(run, 1)
    assert run.signals()["polling_instead_of_webhooks"].status == "ok"
    httpx.get(f"{run.url}/v1/score/{job}", headers=run.headers())
    found = run.signals()["polling_instead_of_webhooks"]
    assert (found.threshold, found.status) == (0, "flagged")


def test_retrying_before_retry_after_flags_above_share(run: Running) -> None:
    url = run.url + "/v1/jobs/job_r/criteria"
    codes = [httpx.get(url, headers=run.headers()).status_code for _ in range(3)]
    assert codes[1:] == [429, 429]  # one a day; Retry-After is hours away
    found = run.signals()["ignored_retry_after"]
    # The second 429 came before the first one's Retry-After; the last has no successor.
    assert (found.value, found.status) == (0.5, "watch")

    assert httpx.get(url, headers=run.headers()).status_code == 429
    found = run.signals()["ignored_retry_after"]
    assert found.status == "flagged"
    assert found.detail == {"rateLimited": 3, "retriedEarly": 2}
    assert len(found.subjects) == 1


def test_burst_submission_flags_above_share(run: Running) -> None:
    codes = [submit(run, "job_s", f"app_{i}").status_code for i in range(5)]
    assert codes.count(429) == 1
    found = run.signals()["burst_submission"]
    assert (found.value, found.status) == (0.2, "watch")

    assert submit(run, "job_s", "app_6").status_code == 429
    found = run.signals()["burst_submission"]
    assert found.status == "flagged"
    assert found.detail["rateLimited"] == 2


def test_clean_integration_raises_nothing(run: Running) -> None:
    async def add(engine: Any) -> None:
        await WebhookStore(engine, allow_private_targets=True).add_endpoint(
            "acme", "http://127.0.0.1:9/hook", environment="SANDBOX"
        )

    run_with(run.app.settings.database_url, add, schema=False)
    for i, job in enumerate(("job_1", "job_2")):
        generate(run, job)
        questions(run, job)  # once per job, as expected
        assert submit(run, job, f"app_{i}").status_code == 202
    wait_finished(run, 2)
    t = time.time()
    run.fair_use_pass(t + 1)
    now = run.signals()
    later = run.signals(t + 8 * DAY, span=8 * DAY)
    assert {r.status for r in now.values()} == {"ok"}, now
    assert later["criteria_without_scoring"].status == "ok"
    assert later["criteria_without_scoring"].detail["maturedJobs"] == 2
    assert now["regeneration_loop"].value == 1  # per route: criteria + questions are not 2
    assert run.fair_use_pass(t + 8 * DAY).flagged == []
