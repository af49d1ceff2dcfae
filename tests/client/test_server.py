"""The SDK against a real `tollhouse serve` (built-in policy, example upstream).

Every test runs with the sync and the async client and uses its own org. Waiting is
real here (the 2 req/s status bucket); nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.client.conftest import KeyMaker
from tests.client.support import open_client
from tests.conftest import Server, serve_in_thread
from tollhouse.client import (
    AuthenticationError,
    BadRequestError,
    Client,
    Event,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryEvent,
    ScoreJob,
    ScoreRequest,
    ThrottleEvent,
    ValidationError,
)
from tollhouse.webhooks import WebhookVerificationError, verify

KINDS = ("sync", "async")
TITLE = "Backend Engineer"
DESCRIPTION = "Python, PostgreSQL and Redis; 5 years building APIs."
RESUME = "Built Python APIs on PostgreSQL and Redis for 6 years."
TENANT = "acme"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys(make_keys: KeyMaker) -> dict[tuple[str, str], dict[str, str]]:
    specs = [(f"status-{k}-{t}", "root") for k in KINDS for t in ("on", "off")]
    for k in KINDS:
        specs += [(f"errors-{k}", "root"), (f"errors-{k}", "member")]
        specs += [(f"counts-{k}", "root"), (f"counts-{k}", "manager")]
        specs += [(f"api-{k}", "root"), (f"bulk-{k}", "root")]
        specs += [(f"queue-{k}", "root"), (f"log-{k}", "root"), (f"hook-many-{k}", "root")]
    specs += [("replay", "root"), ("hooks", "root"), ("queue-other", "root")]
    return make_keys(specs)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def candidate(i: int, job_id: str) -> dict[str, Any]:
    return {
        "applicationId": f"app_{i:02d}",
        "jobId": job_id,
        "candidate": {"name": f"Candidate {i}", "resume": RESUME},
    }


def wait_for(check: Callable[[], Any], what: str, attempts: int = 400) -> Any:
    """Poll ``check`` until it returns something truthy (bounded; not a timing assertion)."""
    for _ in range(attempts):
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def finished(client: Any, scoring_job_id: str) -> ScoreJob:
    def done() -> ScoreJob | None:
        job: ScoreJob = client.get_score(scoring_job_id)
        return job if job.done else None

    found: ScoreJob = wait_for(done, f"job {scoring_job_id}")
    return found


# --- rate limits ---------------------------------------------------------------------------

N_STATUS = 6


@pytest.mark.parametrize("throttle", [True, False], ids=["throttled", "429s"])
def test_status_loop_at_the_limit_waits_instead_of_failing(
    kind: str, throttle: bool, keys: dict[tuple[str, str], dict[str, str]], default_server: Server
) -> None:
    key = keys[(f"status-{kind}-{'on' if throttle else 'off'}", "root")]
    statuses: list[int] = []
    retries: list[RetryEvent] = []
    waits: list[ThrottleEvent] = []
    with open_client(
        kind,
        key["key"],
        default_server.url,
        throttle=throttle,
        on_throttle=waits.append,
        # Generous: concurrent callers refused in one window may be refused in the next.
        max_retries=10,
        on_retry=retries.append,
        on_response=lambda r: statuses.append(r.status_code),
    ) as client:
        if kind == "sync":
            results = [client.rate_limit_status() for _ in range(N_STATUS)]
        else:

            async def burst() -> list[Any]:
                return await asyncio.gather(
                    *(client.raw.rate_limit_status() for _ in range(N_STATUS))
                )

            results = client.run(burst())
    assert [r.partner_id for r in results] == [key["org"]] * N_STATUS
    assert all(r.buckets["rate_limit_status"].limit == 2 for r in results)
    refused = statuses.count(429)
    assert statuses.count(200) == N_STATUS and len(statuses) == N_STATUS + refused
    # Every 429 was waited out (Retry-After is at least 1 s), never retried at once.
    assert len(retries) == refused
    assert all(e.status == 429 and e.delay >= 1.0 for e in retries)
    if throttle:
        # Remaining 0 → wait for the reset: at most a boundary race costs one 429.
        assert refused <= 1 and any(w.delay > 0.05 for w in waits)
    else:
        assert 1 <= refused <= 3 * N_STATUS and waits == []


def test_typed_errors_carry_code_and_request_id(
    kind: str, keys: dict[tuple[str, str], dict[str, str]], default_server: Server
) -> None:
    url = default_server.url
    root, member = keys[(f"errors-{kind}", "root")], keys[(f"errors-{kind}", "member")]
    with (
        open_client(kind, "sk_test_not_a_real_key", url) as stranger,
        pytest.raises(AuthenticationError) as e401,
    ):
        stranger.rate_limit_status()
    err = e401.value
    assert (err.status, err.code) == (401, "UNAUTHORIZED")
    assert err.request_id and err.request_id.startswith("req_")
    assert err.body["error"]["requestId"] == err.request_id == err.headers["x-request-id"]

    with (
        open_client(kind, member["key"], url, tenant_id=TENANT) as client,
        pytest.raises(PermissionDeniedError) as e403,
    ):
        client.call_counts.historical()
    assert (e403.value.status, e403.value.code) == (403, "FORBIDDEN")
    assert "member" in e403.value.message and e403.value.request_id

    with open_client(kind, root["key"], url, tenant_id=TENANT) as client:
        with pytest.raises(NotFoundError) as e404:
            client.get_score("sj_does_not_exist")
        assert (e404.value.code, e404.value.status) == ("NOT_FOUND", 404)
        assert e404.value.request_id

        with pytest.raises(ValidationError) as e422:
            client.score("app_1", "job_1", {"name": "Ada"})
        assert e422.value.code == "VALIDATION_FAILED" and "candidate.resume" in e422.value.message
        assert e422.value.request_id

        # The metrics catalogue shape's own bodies: {"detail": [...]} and {"detail": "..."},
        # request id from the X-Request-Id header.
        now = datetime.now(UTC)
        with pytest.raises(ValidationError) as e422b:
            client.analytics.metric(
                "flow_runs", time_start=now - timedelta(days=1), time_end=now, page_size=500
            )
        assert e422b.value.code == "VALIDATION_FAILED" and "page_size" in e422b.value.message
        assert e422b.value.request_id and e422b.value.request_id.startswith("req_")
        with pytest.raises(BadRequestError, match="time_start must be before time_end"):
            client.analytics.metric("flow_runs", time_start=now, time_end=now - timedelta(days=1))
        with pytest.raises(NotFoundError, match="Unknown metric"):
            client.analytics.metric(
                "no_such_metric", time_start=now - timedelta(days=1), time_end=now
            )

    with open_client(kind, root["key"], url) as untenanted, pytest.raises(BadRequestError) as e400:
        untenanted.criteria.get("job_1")
    assert e400.value.code == "TENANT_REQUIRED"

    # No retries allowed: the 429 itself comes back, typed.
    def hammer(client: Any) -> None:
        for _ in range(20):
            client.rate_limit_status()

    with (
        open_client(kind, root["key"], url, max_retries=0, throttle=False) as impatient,
        pytest.raises(RateLimitError) as e429,
    ):
        hammer(impatient)
    err429 = e429.value
    assert (err429.code, err429.attempts) == ("RATE_LIMITED", 1)
    assert err429.retry_after is not None and err429.retry_after >= 1
    assert err429.request_id


# --- call counts (the call-counts shape) ---------------------------------------------------


def test_call_count_pages_follow_the_cursor(
    kind: str, keys: dict[tuple[str, str], dict[str, str]], default_server: Server
) -> None:
    root, manager = keys[(f"counts-{kind}", "root")], keys[(f"counts-{kind}", "manager")]
    url = default_server.url
    with (
        open_client(kind, root["key"], url, tenant_id=TENANT) as a,
        open_client(kind, manager["key"], url, tenant_id=TENANT) as b,
    ):
        a.rate_limit_status()  # RATE_LIMIT_STATUS
        a.analytics.scoring_volume("1h")  # ANALYTICS
        a.criteria.generate("job_counts", TITLE, DESCRIPTION)  # CRITERIA_AI
        with pytest.raises(NotFoundError):
            b.get_score("sj_missing")  # SCORING, by the other key

        pages = list(b.call_counts.iter_by_label("ENDPOINTS", amt=1))
        assert all(len(p.series) == 1 for p in pages)
        groups = [p.series[0].key for p in pages]
        assert groups == sorted(groups) and len(set(groups)) == len(groups)
        assert {"ANALYTICS", "CRITERIA_AI", "RATE_LIMIT_STATUS", "SCORING"} <= set(groups)
        assert [p.has_next for p in pages] == [True] * (len(pages) - 1) + [False]
        assert pages[-1].next_cursor is None
        assert all(p.timestamps == pages[0].timestamps for p in pages)

        accounts = list(a.call_counts.iter_by_label("ACCOUNTS", amt=1))
        assert {p.series[0].key for p in accounts} == {root["id"], manager["id"]}
        assert len(accounts) == 2

        one_page = a.call_counts.by_label("ENDPOINTS", amt=128)
        assert [s.key for s in one_page.series] == groups and not one_page.has_next
        total = a.call_counts.historical()
        assert sum(total.counts) >= 4 and len(total.counts) == len(total.timestamps)
        scenario = b.call_counts.by_scenario("similar", "home")
        assert scenario.counts == () and scenario.warnings == ()


# --- every endpoint ------------------------------------------------------------------------


def test_every_endpoint_round_trips(
    kind: str, keys: dict[tuple[str, str], dict[str, str]], default_server: Server
) -> None:
    key = keys[(f"api-{kind}", "root")]
    with open_client(kind, key["key"], default_server.url, tenant_id=TENANT) as c:
        status = c.rate_limit_status()
        assert status.partner_id == key["org"] and status.environment == "SANDBOX"
        assert not status.degraded and status.pools["criteria_ai_inflight"].limit == 4
        assert {cat.category for cat in status.categories} == set(status.buckets)

        made = c.criteria.generate("job_api", TITLE, DESCRIPTION)
        assert made.job_id == "job_api" and made.criteria
        assert abs(sum(x.weight for x in made.criteria) - 1.0) < 1e-6
        questions = c.criteria.questions("job_api", TITLE, DESCRIPTION)
        assert questions.job_id == "job_api" and questions.questions
        got = c.criteria.get("job_api")
        assert got.criteria == made.criteria and not got.archived

        added = c.criteria.add("job_api", "Kafka", description="Event streaming", weight=0.1)
        assert (added.name, added.weight) == ("Kafka", 0.1)
        assert c.criteria.update("job_api", added.id, weight=0.2).weight == 0.2
        renamed = c.criteria.update_many("job_api", [{"id": added.id, "name": "Apache Kafka"}])
        assert any(x.id == added.id and x.name == "Apache Kafka" for x in renamed.criteria)
        c.criteria.delete("job_api", added.id)
        assert added.id not in {x.id for x in c.criteria.get("job_api").criteria}

        first = c.score(
            "app_1", "job_api", {"name": "Ada", "resume": RESUME}, idempotency_key="k-1"
        )
        again = c.score(
            "app_1", "job_api", {"name": "Ada", "resume": RESUME}, idempotency_key="k-1"
        )
        assert (
            again.scoring_job_id == first.scoring_job_id and again.replayed and not first.replayed
        )
        job = finished(c, first.scoring_job_id)
        assert job.status == "completed" and job.score is not None and job.score > 0
        assert (job.application_id, job.job_id) == ("app_1", "job_api")
        assert job.completed_at is not None and job.result is not None
        assert c.get_score_by_application("app_1").scoring_job_id == first.scoring_job_id

        batch = c.score_batch(
            [
                ScoreRequest("app_2", "job_api", {"name": "Bo", "resume": RESUME}),
                {"applicationId": "app_3", "jobId": "job_api", "candidate": {"name": "Cy"}},
            ]
        )
        assert (batch.accepted, batch.rejected) == (1, 1)
        assert batch.results[0].ok and batch.results[0].accepted is not None
        assert batch.results[1].error is not None
        assert batch.results[1].error.code == "VALIDATION_FAILED"

        archived = c.criteria.archive("job_api")
        assert archived.archived and archived.archived_at is not None
        assert c.criteria.get("job_api").archived

        volume = c.analytics.scoring_volume("1h")
        assert volume.granularity == "minute" and len(volume.data) >= 60
        assert sum(p.completed for p in volume.data) >= 1

        now = datetime.now(UTC)
        run = Event(
            "ev_1", "flow_run", now, {"run_id": "r1", "status": "succeeded", "source": "manual"}
        )
        assert c.events.ingest([run]).inserted == 1
        assert c.events.ingest([run]).duplicates == 1
        runs = c.analytics.metric(
            "flow_runs", time_start=now - timedelta(hours=1), time_end=now + timedelta(hours=1)
        )
        assert runs.type == "simple" and runs.scalar == 1

        assert c.webhook_deliveries(first.scoring_job_id) == []  # no endpoint registered
        c.criteria.delete("job_api")
        with pytest.raises(NotFoundError):
            c.criteria.get("job_api")


def test_queue_pages_follow_the_cursor_within_the_org(
    kind: str, keys: dict[tuple[str, str], dict[str, str]], default_server: Server
) -> None:
    key, other = keys[(f"queue-{kind}", "root")], keys[("queue-other", "root")]
    url = default_server.url
    with (
        open_client(kind, key["key"], url, tenant_id=TENANT) as c,
        open_client(kind, other["key"], url, tenant_id=TENANT) as stranger,
    ):
        assert c.health().ok
        c.criteria.generate("job_q", TITLE, DESCRIPTION)
        batch = c.score_batch([candidate(i, "job_q") for i in range(5)])
        submitted = [item.accepted.scoring_job_id for item in batch.results if item.accepted]
        assert len(submitted) == 5
        for job_id in submitted:
            finished(c, job_id)

        first = c.queue(limit=2)
        assert len(first.data) == 2 and first.has_more and first.next_cursor
        assert first.queue.cap == 500 and (first.queue.queued, first.queue.running) == (0, 0)
        assert first.queue.estimated_wait_seconds >= 0
        pages = list(c.iter_queue(limit=2))
        assert [len(p.data) for p in pages] == [2, 2, 1]
        assert [p.has_more for p in pages] == [True, True, False] and pages[-1].next_cursor is None
        seen = [job.scoring_job_id for p in pages for job in p.data]
        assert sorted(seen) == sorted(submitted)  # each job once
        created = [job.created_at for p in pages for job in p.data]
        assert created == sorted(created, reverse=True)  # newest first
        assert all(job.status == "completed" and job.result for p in pages for job in p.data)
        assert pages[0].data[0] == c.get_score(pages[0].data[0].scoring_job_id)

        done = c.queue(status="completed", limit=100)
        assert len(done.data) == 5 and not done.has_more
        assert c.queue(status="failed").data == ()
        assert stranger.queue(limit=100).data == ()  # another org's jobs never appear

        with pytest.raises(BadRequestError, match="status"):
            c.queue(status="finished")
        with pytest.raises(BadRequestError, match="limit"):
            c.queue(limit=101)
        with pytest.raises(BadRequestError, match="cursor"):
            c.queue(cursor="not-a-cursor")


def test_the_call_log_pages_through_every_call(
    kind: str, keys: dict[tuple[str, str], dict[str, str]], default_server: Server
) -> None:
    key = keys[(f"log-{kind}", "root")]
    with open_client(kind, key["key"], default_server.url) as c:
        start = datetime.now(UTC) - timedelta(seconds=1)
        for _ in range(5):
            c.call_counts.historical()
        end = datetime.now(UTC)  # the log's own reads below come later: not in the range

        def logged() -> Any:
            page = c.analytics.metric("api_calls_log", time_start=start, time_end=end, page_size=2)
            return page if page.total == 5 else None

        wait_for(logged, "the five calls in the log")  # the meter flushes every second
        pages = list(
            c.analytics.iter_metric("api_calls_log", time_start=start, time_end=end, page_size=2)
        )
    assert [p.page for p in pages] == [1, 2, 3] and all(p.pages == 3 for p in pages)
    assert [len(p.rows) for p in pages] == [2, 2, 1]
    assert all(row["Endpoint"] == "/call-counts/*" for p in pages for row in p.rows)


# --- bulk scoring --------------------------------------------------------------------------


class Submissions:
    """Application ids in batches the server accepted as new (not idempotent replays)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.new: list[str] = []
        self.replayed: list[str] = []
        self.batches = 0

    def __call__(self, response: httpx.Response) -> None:
        request = response.request
        if request.url.path != "/v1/score/batch":
            return
        with self.lock:
            self.batches += 1
            if response.status_code != 202:
                return
            apps = [i["applicationId"] for i in orjson.loads(request.content)["items"]]
            replay = response.headers.get("idempotent-replayed") == "true"
            (self.replayed if replay else self.new).extend(apps)


def test_bulk_scoring_resumes_without_submitting_twice(
    kind: str,
    keys: dict[tuple[str, str], dict[str, str]],
    default_server: Server,
    tmp_path: Path,
) -> None:
    key = keys[(f"bulk-{kind}", "root")]
    cands = [candidate(i, "job_bulk") for i in range(30)]
    every = {f"job_bulk/{c['applicationId']}" for c in cands}
    state = str(tmp_path / "bulk.state")
    seen = Submissions()
    pace = {"chunk_size": 6, "max_pending": 12, "poll_interval": 0.2}
    with open_client(kind, key["key"], default_server.url, tenant_id=TENANT, on_response=seen) as c:
        c.criteria.generate("job_bulk", TITLE, DESCRIPTION)

        # A first run, stopped after 8 results (as a crash or Ctrl-C would stop it).
        first = []
        run = c.score_many(cands, state=state, **pace)
        for outcome in run:
            first.append(outcome)
            if len(first) == 8:
                break
        run.close()
        submitted_first = len(seen.new)
        assert 8 <= submitted_first < 30

        progress: list[Any] = []
        second = list(c.score_many(cands, state=state, on_progress=progress.append, **pace))
        third = list(c.score_many(cands, state=state, **pace))
        batches_before_third = seen.batches

        # The 8th result was yielded but the loop stopped before taking the next: it is
        # handed out again (at least once); the 7 before it are not.
        handed_out = {o.key for o in first[:7]}
        assert {o.key for o in second} == every - handed_out
        assert third == [] and seen.batches == batches_before_third
        outcomes = first + second
        assert all(o.status == "completed" and o.score is not None for o in outcomes)
        assert all(o.index is not None for o in first)

        # Nothing was scored twice: every application was accepted as new once, and its
        # latest job on the server is the one the run reported. A batch cut off in flight
        # by the stop (its answer not yet applied) is replayed by the resumed run under the
        # same Idempotency-Key, not queued again.
        assert len(seen.new) == len(set(seen.new))
        assert set(seen.new) | set(seen.replayed) == {c["applicationId"] for c in cands}
        jobs = {o.key: o.scoring_job_id for o in outcomes}
        assert len(set(jobs.values())) == 30
        for cand in cands:
            latest = c.get_score_by_application(cand["applicationId"])
            assert latest.scoring_job_id == jobs[f"job_bulk/{cand['applicationId']}"]
        last = progress[-1]
        assert last.skipped == 7 and last.accepted == 30 - submitted_first
        assert last.completed == len(second) and last.pending == 0


def test_a_batch_accepted_but_not_journaled_is_replayed_not_rescored(
    keys: dict[tuple[str, str], dict[str, str]], default_server: Server, tmp_path: Path
) -> None:
    key = keys[("replay", "root")]
    cands = [candidate(i, "job_replay") for i in range(10)]
    state = tmp_path / "replay.state"
    seen = Submissions()
    with open_client(
        "sync", key["key"], default_server.url, tenant_id=TENANT, on_response=seen
    ) as c:
        c.criteria.generate("job_replay", TITLE, DESCRIPTION)
        first = list(c.score_many(cands, state=str(state), chunk_size=5, max_pending=5, wait=False))
        assert [o.status for o in first] == ["queued"] * 10
        # Crash between the server's 202 and the journal write of the second batch:
        # drop its lines from the state file.
        lines = state.read_bytes().splitlines(keepends=True)
        lost = {f"job_replay/app_{i:02d}" for i in range(5, 10)}
        state.write_bytes(b"".join(x for x in lines if orjson.loads(x).get("k") not in lost))

        second = list(
            c.score_many(cands, state=str(state), chunk_size=5, max_pending=5, wait=False)
        )
    assert {o.key for o in second} == lost
    before = {o.key: o.scoring_job_id for o in first}
    assert all(o.scoring_job_id == before[o.key] for o in second)  # the same jobs
    assert sorted(seen.new) == sorted(c["applicationId"] for c in cands)
    assert sorted(seen.replayed) == sorted(f"app_{i:02d}" for i in range(5, 10))


# --- webhooks end to end -------------------------------------------------------------------


class Receiver:
    """A raw ASGI webhook receiver recording every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = message["type"] == "lifespan.shutdown"
                await send({"type": message["type"] + ".complete"})
                if done:
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self.lock:
            self.calls.append((headers, b"".join(chunks)))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver()
    with serve_in_thread(r) as url:  # type: ignore[arg-type]
        yield r, url


def test_a_delivered_webhook_verifies_and_shows_in_deliveries(
    keys: dict[tuple[str, str], dict[str, str]],
    default_server: Server,
    receiver: tuple[Receiver, str],
) -> None:
    key = keys[("hooks", "root")]
    recorder, url = receiver
    added = default_server.cli(
        "webhooks",
        "add",
        "--org",
        key["org"],
        "--url",
        url + "/hook",
        "--json",
        "--environment",
        "SANDBOX",  # the key's environment (sk_test_)
    )
    secret = orjson.loads(added.stdout)["secret"]
    with Client(key["key"], default_server.url, tenant_id=TENANT) as c:
        c.criteria.generate("job_hook", TITLE, DESCRIPTION)
        accepted = c.score("app_h", "job_hook", {"name": "Ada", "resume": RESUME})
        wait_for(lambda: recorder.calls, "the webhook")
        headers, body = recorder.calls[0]
        event = verify(body, headers, secret)
        assert event["type"] == "score.completed"
        assert event["data"]["scoringJobId"] == accepted.scoring_job_id
        with pytest.raises(WebhookVerificationError):
            verify(body.replace(b"completed", b"failed"), headers, secret)

        def delivered() -> Any:
            found = c.webhook_deliveries(accepted.scoring_job_id)
            return found if found and found[0].status == "delivered" else None

        [delivery] = wait_for(delivered, "the delivery record")
    assert delivery.message_id == headers["webhook-id"]
    assert delivery.event_type == "score.completed" and delivery.url == url + "/hook"
    assert delivery.attempts[0].status_code == 200 and delivery.attempts[0].error is None


def test_score_many_with_a_webhook_only_submits(
    kind: str,
    keys: dict[tuple[str, str], dict[str, str]],
    default_server: Server,
    receiver: tuple[Receiver, str],
) -> None:
    key = keys[(f"hook-many-{kind}", "root")]
    recorder, url = receiver
    added = default_server.cli(
        "webhooks", "add", "--org", key["org"], "--url", url + "/hook", "--json",
        "--environment", "SANDBOX",
    )  # fmt: skip
    secret = orjson.loads(added.stdout)["secret"]
    cands = [candidate(i, "job_hooks") for i in range(12)]
    cands.append({"applicationId": "app_bad", "jobId": "job_hooks", "candidate": {"name": "N"}})
    sent: list[str] = []
    progress: list[Any] = []

    def record(request: httpx.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    with open_client(
        kind, key["key"], default_server.url, tenant_id=TENANT, on_request=record
    ) as c:
        c.criteria.generate("job_hooks", TITLE, DESCRIPTION)
        sent.clear()
        outcomes = list(
            c.score_many(cands, webhook=True, chunk_size=5, on_progress=progress.append)
        )

    # Only submissions: no status read (GET /v1/score?ids= or /v1/score/{id}) at all.
    assert sent and set(sent) == {"POST /v1/score/batch"}
    queued = [o for o in outcomes if o.status == "queued"]
    assert sorted(o.key for o in queued) == sorted(
        f"job_hooks/{c['applicationId']}" for c in cands[:12]
    )
    assert all(o.scoring_job_id and o.job is None and o.error is None and o.ok for o in queued)
    [bad] = [o for o in outcomes if o.status == "rejected"]
    assert (
        bad.key == "job_hooks/app_bad" and bad.error is not None and "resume" in bad.error.message
    )
    last = progress[-1]
    assert (last.accepted, last.rejected, last.completed, last.failed) == (12, 1, 0, 0)

    # The results come to the receiver instead: one signed score event per queued job.
    jobs = {o.scoring_job_id for o in queued}

    def delivered() -> set[str] | None:
        with recorder.lock:
            calls = list(recorder.calls)
        seen = {verify(body, headers, secret)["data"]["scoringJobId"] for headers, body in calls}
        return seen if seen >= jobs else None

    assert wait_for(delivered, "a webhook per job") == jobs
    with recorder.lock:
        types = {verify(body, headers, secret)["type"] for headers, body in recorder.calls}
    assert types == {"score.completed"}
