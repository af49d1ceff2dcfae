"""The clients' send loop against a real HTTP server on loopback that answers from a
script: retries, waits, errors, headers.

Waiting is injected (the waits are recorded, not slept) and so is the clock, so these
tests are quick; the same body runs for the sync and the async client.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

from tests.client.scripted import Answer, Late, Scripted, Seen, refusing_port, reply, slow
from tests.client.support import open_client
from tests.conftest import serve_in_thread
from tollhouse.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    ClientError,
    Event,
    NotFoundError,
    RateLimitError,
    RetryEvent,
    RetryPolicy,
    ServerError,
    TollhouseAPIError,
    TransportError,
    UnexpectedResponse,
    ValidationError,
)
from tollhouse.errors import TollhouseError

KEY = "sk_test_scripted"
T0 = 1_800_000_000.0

STATUS = {
    "partnerId": "acme",
    "environment": "SANDBOX",
    "generatedAt": "2027-01-15T08:00:00.000Z",
    "degraded": False,
    "buckets": {
        "rate_limit_status": {"limit": 2, "remaining": 1, "resetAt": 1, "resetInSeconds": 1}
    },
    "criteria_ai_inflight": {"limit": 4, "active": 1, "retryAfterSeconds": 0},
    "categories": [],
    "timestamp": "2027-01-15T08:00:00.000Z",
}


def envelope(status: int, code: str, request_id: str = "req_abc") -> dict[str, Any]:
    return {
        "error": {
            "type": f"https://tollhouse.dev/errors/{code.lower()}",
            "code": code,
            "status": status,
            "message": f"{code} happened",
            "requestId": request_id,
        }
    }


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[Scripted, str]]:
    """One scripted server for the module; each test plays its own script."""
    app = Scripted()
    with serve_in_thread(app) as url:  # type: ignore[arg-type]
        yield app, url


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str) -> Iterator[Callable[..., Any]]:
    """Open a client of this kind on ``url``; the waits land in ``sleeps``."""
    opened: list[Any] = []

    def build(url: str, **kw: Any) -> Any:
        sleeps: list[float] = kw.pop("sleeps", [])
        kw.setdefault("sleep", sleeps.append)
        kw.setdefault("rng", random.Random(3))
        kw.setdefault("clock", lambda: T0)
        cm = open_client(kind, KEY, url, **kw)
        opened.append(cm)
        return cm.__enter__()

    yield build
    for cm in reversed(opened):
        cm.__exit__(None, None, None)


@pytest.fixture
def server(scripted: tuple[Scripted, str], make: Callable[..., Any]) -> Callable[..., Any]:
    """``server(*steps, **client_options)`` → (the scripted app, a client on it)."""
    app, url = scripted

    def start(*steps: Answer | Callable[[Seen], Answer], **kw: Any) -> tuple[Scripted, Any]:
        return app.play(*steps), make(url, **kw)

    return start


def test_429_is_waited_out_and_retried(server: Callable[..., Any]) -> None:
    sleeps: list[float] = []
    events: list[RetryEvent] = []
    app, client = server(
        reply(429, envelope(429, "RATE_LIMITED"), {"retry-after": "2", "x-request-id": "req_1"}),
        reply(200, STATUS),
        sleeps=sleeps,
        on_retry=events.append,
        throttle=False,
    )
    status = client.rate_limit_status()
    assert status.partner_id == "acme" and status.pools["criteria_ai_inflight"].active == 1
    assert len(app.requests) == 2
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 2.5
    [event] = events
    assert event.status == 429 and event.retry == 1 and event.request_id == "req_1"
    assert event.delay == sleeps[0]


def test_retries_are_bounded_then_a_typed_error(server: Callable[..., Any]) -> None:
    sleeps: list[float] = []
    app, client = server(
        reply(429, envelope(429, "RATE_LIMITED", "req_last"), {"retry-after": "1"}),
        sleeps=sleeps,
        max_retries=3,
        throttle=False,
    )
    with pytest.raises(RateLimitError) as info:
        client.rate_limit_status()
    err = info.value
    assert (err.status, err.code, err.request_id, err.attempts) == (
        429,
        "RATE_LIMITED",
        "req_last",
        4,
    )
    assert err.retry_after == 1.0 and err.body["error"]["code"] == "RATE_LIMITED"
    assert len(app.requests) == 4 and len(sleeps) == 3
    # Repeated 429s: Retry-After first, then the exponential backoff when it is longer.
    assert all(s >= 1.0 for s in sleeps) and sleeps[2] >= 1.0
    assert isinstance(err, TollhouseAPIError) and isinstance(err, ClientError)
    assert isinstance(err, TollhouseError)


def test_503_and_502_back_off_for_reads(server: Callable[..., Any]) -> None:
    sleeps: list[float] = []
    app, client = server(
        reply(503, envelope(503, "SERVICE_UNAVAILABLE")),
        reply(502, envelope(502, "UPSTREAM_UNAVAILABLE")),
        reply(504, envelope(504, "UPSTREAM_TIMEOUT")),
        reply(200, STATUS),
        sleeps=sleeps,
        throttle=False,
    )
    assert client.rate_limit_status().partner_id == "acme"
    assert len(app.requests) == 4
    # Exponential backoff with equal jitter: [0.25, 0.5], [0.5, 1.0], [1.0, 2.0].
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0 and 1.0 <= sleeps[2] <= 2.0


def test_connection_refused_backs_off_until_the_server_listens(
    scripted: tuple[Scripted, str], make: Callable[..., Any]
) -> None:
    app = scripted[0].play(reply(200, STATUS))
    sleeps: list[float] = []
    with refusing_port() as (sock, url):
        late = Late(app, sock)

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 2:  # two refusals, then the server comes up
                late.start()

        try:
            client = make(url, sleep=sleep)
            assert client.rate_limit_status().partner_id == "acme"
        finally:
            late.stop()
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0
    assert len(app.requests) == 1  # the refused attempts never reached a server


def test_connection_errors_run_out(make: Callable[..., Any]) -> None:
    sleeps: list[float] = []
    with refusing_port() as (_, url):
        client = make(url, max_retries=2, sleeps=sleeps)
        with pytest.raises(TransportError, match="after 3 attempts") as info:
            client.rate_limit_status()
    assert info.value.attempts == 3 and len(sleeps) == 2


def test_a_call_that_is_not_idempotent_is_not_resent_after_a_read_timeout(
    server: Callable[..., Any],
) -> None:
    app, client = server(slow(5), tenant_id="t", timeout=0.3)
    with pytest.raises(TransportError, match="ReadTimeout"):
        client.criteria.add("job_1", "Kafka")
    assert len(app.requests) == 1
    # ... nor after a 502 (the upstream may have done it).
    app2, client2 = server(reply(502, envelope(502, "UPSTREAM_UNAVAILABLE")), tenant_id="t")
    with pytest.raises(ServerError) as info:
        client2.criteria.add("job_1", "Kafka")
    assert info.value.code == "UPSTREAM_UNAVAILABLE" and len(app2.requests) == 1


def test_score_is_retried_with_the_same_idempotency_key(server: Callable[..., Any]) -> None:
    accepted = {
        "scoringJobId": "sj_1",
        "status": "queued",
        "queuePosition": 3,
        "estimatedWaitSeconds": 0,
    }
    app, client = server(
        slow(5),
        reply(503, envelope(503, "SERVICE_UNAVAILABLE")),
        reply(202, accepted, {"idempotent-replayed": "true"}),
        tenant_id="acme",
        timeout=0.3,
    )
    got = client.score("app_1", "job_1", {"name": "Ada", "resume": "Python"})
    assert got.scoring_job_id == "sj_1" and got.queue_position == 3 and got.replayed
    keys = {seen.headers["idempotency-key"] for seen in app.requests}
    assert len(app.requests) == 3 and len(keys) == 1 and keys.pop().startswith("sdk-")
    assert app.requests[0].json() == {
        "applicationId": "app_1",
        "jobId": "job_1",
        "candidate": {"name": "Ada", "resume": "Python"},
    }


def test_request_headers_and_path_quoting(server: Callable[..., Any]) -> None:
    job = {
        "scoringJobId": "a/b?c",
        "status": "queued",
        "attempts": 0,
        "createdAt": "2027-01-15T08:00:00.000Z",
    }
    app, client = server(reply(200, job), tenant_id="acme")
    client.get_score("a/b?c")
    [seen] = app.requests
    assert seen.method == "GET" and seen.raw_path == b"/v1/score/a%2Fb%3Fc"
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["x-tenant-id"] == "acme"
    assert seen.headers["user-agent"].startswith("tollhouse-python/")
    other = client.with_tenant("globex")
    other.get_score("x")
    assert app.requests[-1].headers["x-tenant-id"] == "globex"
    assert client.tenant_id == "acme" and other.tenant_id == "globex"


def test_requests_in_flight_are_capped(kind: str, server: Callable[..., Any]) -> None:
    job = {"scoringJobId": "sj_1", "status": "queued", "attempts": 0}
    # Slow answers keep requests in flight; callers beyond the cap wait for a slot.
    app, client = server(Answer(200, job, delay=0.3), max_concurrency=2, throttle=False)
    if kind == "sync":
        with ThreadPoolExecutor(max_workers=6) as pool:
            found = list(pool.map(lambda _: client.get_score("sj_1"), range(6)))
    else:

        async def burst() -> list[Any]:
            return await asyncio.gather(*(client.raw.get_score("sj_1") for _ in range(6)))

        found = client.run(burst())
    assert [j.scoring_job_id for j in found] == ["sj_1"] * 6
    assert len(app.requests) == 6 and 1 <= app.peak <= 2


def test_queue_query_and_pages(server: Callable[..., Any]) -> None:
    def page(seen: Seen) -> Answer:
        more = b"cursor=c2" not in seen.query
        job = {
            "scoringJobId": "sj_2" if more else "sj_1",
            "status": "failed",
            "attempts": 3,
            "createdAt": "2027-01-15T08:00:00Z",
            "error": {"code": "X", "message": "no"},
        }
        return reply(
            200,
            {
                "queue": {
                    "queued": 1,
                    "running": 2,
                    "cap": 500,
                    "meanProcessingSeconds": None,
                    "estimatedWaitSeconds": 0.5,
                },
                "data": [job],
                "hasMore": more,
                "nextCursor": "c2" if more else None,
            },
        )

    app, client = server(page)
    pages = list(client.iter_queue(status="failed", limit=1))
    assert [p.data[0].scoring_job_id for p in pages] == ["sj_2", "sj_1"]
    assert pages[0].queue.mean_processing_seconds is None and pages[0].queue.running == 2
    assert pages[1].data[0].error is not None and pages[1].data[0].error.code == "X"
    assert [s.query for s in app.requests] == [
        b"status=failed&limit=1",
        b"status=failed&limit=1&cursor=c2",
    ]


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code", "message"),
    [
        (
            401,
            envelope(401, "UNAUTHORIZED", "req_env"),
            {},
            AuthenticationError,
            "UNAUTHORIZED",
            "UNAUTHORIZED happened",
        ),
        (
            400,
            {"detail": "time_start must be before time_end"},
            {"x-request-id": "req_env"},
            BadRequestError,
            "BAD_REQUEST",
            "time_start must be before time_end",
        ),
        (
            422,
            {
                "detail": [
                    {
                        "loc": ["query", "page_size"],
                        "msg": "ensure this value is less than or equal to 200",
                        "type": "value_error.number.not_le",
                    }
                ]
            },
            {"x-request-id": "req_env"},
            ValidationError,
            "VALIDATION_FAILED",
            "page_size: ensure this value is less than or equal to 200",
        ),
        (
            404,
            {"detail": "Unknown metric 'x'"},
            {"x-request-id": "req_env"},
            NotFoundError,
            "NOT_FOUND",
            "Unknown metric 'x'",
        ),
        (500, None, {"x-request-id": "req_env"}, ServerError, "INTERNAL", "Internal Server Error"),
    ],
)
def test_both_error_shapes_are_parsed(
    server: Callable[..., Any],
    status: int,
    body: Any,
    headers: dict[str, str],
    cls: type[TollhouseAPIError],
    code: str,
    message: str,
) -> None:
    app, client = server(reply(status, body, headers))
    with pytest.raises(cls) as info:
        client.analytics.metric(
            "x", time_start="2027-01-01T00:00:00Z", time_end="2027-01-02T00:00:00Z"
        )
    err = info.value
    assert (err.status, err.code, err.message, err.request_id) == (status, code, message, "req_env")
    assert err.body == body and len(app.requests) == 1


def test_an_unexpected_body_is_reported_precisely(server: Callable[..., Any]) -> None:
    broken = dict(
        STATUS, buckets={"x": {"limit": "two", "remaining": 1, "resetAt": 1, "resetInSeconds": 1}}
    )
    _, client = server(reply(200, broken))
    with pytest.raises(UnexpectedResponse, match=r"buckets\.x\.limit: expected an integer"):
        client.rate_limit_status()
    _, client2 = server(reply(200, b"<html>proxy</html>"))
    with pytest.raises(UnexpectedResponse, match="not JSON"):
        client2.rate_limit_status()


def test_throttle_waits_for_the_announced_reset(server: Callable[..., Any]) -> None:
    now = [T0 + 0.25]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    limited = {
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(int(T0) + 1),
        "ratelimit-policy": '"rate_limit_status";q=2;w=1',
        "ratelimit": '"rate_limit_status";r=0;t=1',
    }
    app, client = server(reply(200, STATUS, limited), sleep=sleep, clock=lambda: now[0])
    client.rate_limit_status()
    assert sleeps == []
    client.rate_limit_status()  # remaining 0: wait for the reset instead of a 429
    assert len(sleeps) == 1 and 0.75 <= sleeps[0] <= 0.8
    assert len(app.requests) == 2


def test_events_are_sent_in_chunks_and_summed(server: Callable[..., Any]) -> None:
    def answer(seen: Seen) -> Answer:
        n = len(seen.json())
        return reply(200, {"received": n, "inserted": n - 1, "duplicates": 1})

    app, client = server(answer)
    events = [
        Event(f"e{i}", "flow_run", T0, {"run_id": f"r{i}", "status": "running"})
        for i in range(2500)
    ]
    got = client.events.ingest(events)
    assert [len(seen.json()) for seen in app.requests] == [1000, 1000, 500]
    assert (got.received, got.inserted, got.duplicates) == (2500, 2497, 3)
    assert client.events.ingest([]).received == 0


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLHOUSE_API_KEY", "sk_test_env")
    monkeypatch.setenv("TOLLHOUSE_URL", "http://env.test/")
    with Client() as client:
        assert client.base_url == "http://env.test"
    monkeypatch.delenv("TOLLHOUSE_API_KEY")
    with pytest.raises(ClientError, match="TOLLHOUSE_API_KEY"):
        Client()
    with pytest.raises(ValueError, match="max_concurrency"):
        Client("sk_test_x", max_concurrency=0)


@pytest.mark.parametrize("timeout", [-5, 0, "x", float("nan"), float("inf"), True])
def test_timeout_must_be_a_positive_number_of_seconds(timeout: Any) -> None:
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds above 0"):
        Client("sk_test_x", timeout=timeout)
    with pytest.raises(ValueError, match=r"^timeout must be a number of seconds above 0"):
        AsyncClient("sk_test_x", timeout=timeout)


@pytest.mark.parametrize("max_retries", [1.5, -1, "3", True])
def test_max_retries_must_be_a_whole_number(max_retries: Any) -> None:
    with pytest.raises(ValueError, match=r"^max_retries must be an integer of at least 0"):
        Client("sk_test_x", max_retries=max_retries)
    with pytest.raises(ValueError, match=r"^max_retries must be an integer of at least 0"):
        RetryPolicy(max_retries=max_retries)


def test_bad_arguments_fail_before_any_request(server: Callable[..., Any]) -> None:
    app, client = server(reply(200, {}))
    with pytest.raises(ValueError, match="non-empty"):
        client.get_score("")
    with pytest.raises(ValueError, match="1 to 100"):
        client.score_batch([])
    with pytest.raises(ValueError, match="timezone"):
        client.analytics.metric(
            "flow_runs", time_start=datetime(2027, 1, 1), time_end="2027-01-02T00:00:00Z"
        )
    assert app.requests == []


def test_a_cancelled_call_does_not_hold_its_route(scripted: tuple[Scripted, str]) -> None:
    """The first call on a route is the throttle's probe: the others wait for its answer.
    Cancelled before one came, it must let them go at once, not leave them waiting."""
    app, url = scripted
    app.play(slow(2.0), reply(200, STATUS))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) > 50:  # the clock stands still: a held call would wait forever
            raise AssertionError("the next call was held by the cancelled call's probe")
        await asyncio.sleep(0)

    async def go() -> None:
        async with AsyncClient(KEY, url, sleep=sleep, clock=lambda: T0, timeout=30) as c:
            first = asyncio.create_task(c.rate_limit_status())
            # The server runs in another thread: no event of this loop can say it saw it.
            while not app.requests:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            await c.rate_limit_status()

    asyncio.run(go())
    assert waits == [] and len(app.requests) == 2
