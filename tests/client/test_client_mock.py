"""The clients' send loop against httpx.MockTransport: retries, waits, errors, headers.

Sleeping is faked (the waits are recorded, not slept), so these tests are instant; the
same body runs for the sync and the async client.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.client.support import open_client
from tollhouse.client import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    Client,
    ClientError,
    Event,
    NotFoundError,
    RateLimitError,
    RetryEvent,
    ServerError,
    TransportError,
    UnexpectedResponse,
    ValidationError,
)
from tollhouse.errors import TollhouseError

URL = "http://api.test"
KEY = "sk_test_mock"
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


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        content=orjson.dumps(body) if body is not None else b"",
        headers={"content-type": "application/json", **(headers or {})},
    )


class Script:
    """A mock server answering from a list, recording the requests."""

    def __init__(
        self, *answers: httpx.Response | Exception | Callable[[httpx.Request], Any]
    ) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)  # type: ignore[no-any-return]
        return answer


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str) -> Iterator[Callable[..., Any]]:
    """Open a client of this kind on a script; the waits land in ``sleeps``."""
    opened: list[Any] = []

    def build(script: Script, **kw: Any) -> Any:
        sleeps: list[float] = kw.pop("sleeps", [])
        kw.setdefault("sleep", sleeps.append)
        kw.setdefault("rng", random.Random(3))
        kw.setdefault("clock", lambda: T0)
        cm = open_client(kind, KEY, URL, transport=httpx.MockTransport(script), **kw)
        opened.append(cm)
        return cm.__enter__()

    yield build
    for cm in reversed(opened):
        cm.__exit__(None, None, None)


def test_429_is_waited_out_and_retried(make: Callable[..., Any]) -> None:
    sleeps: list[float] = []
    events: list[RetryEvent] = []
    script = Script(
        reply(429, envelope(429, "RATE_LIMITED"), {"retry-after": "2", "x-request-id": "req_1"}),
        reply(200, STATUS),
    )
    client = make(script, sleeps=sleeps, on_retry=events.append, throttle=False)
    status = client.rate_limit_status()
    assert status.partner_id == "acme" and status.pools["criteria_ai_inflight"].active == 1
    assert len(script.requests) == 2
    assert len(sleeps) == 1 and 2.0 <= sleeps[0] <= 2.5
    [event] = events
    assert event.status == 429 and event.retry == 1 and event.request_id == "req_1"
    assert event.delay == sleeps[0]


def test_retries_are_bounded_then_a_typed_error(make: Callable[..., Any]) -> None:
    sleeps: list[float] = []
    script = Script(reply(429, envelope(429, "RATE_LIMITED", "req_last"), {"retry-after": "1"}))
    client = make(script, sleeps=sleeps, max_retries=3, throttle=False)
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
    assert len(script.requests) == 4 and len(sleeps) == 3
    # Repeated 429s: Retry-After first, then the exponential backoff when it is longer.
    assert all(s >= 1.0 for s in sleeps) and sleeps[2] >= 1.0
    assert isinstance(err, ApiError) and isinstance(err, ClientError)
    assert isinstance(err, TollhouseError)


def test_connection_errors_back_off_and_retry(make: Callable[..., Any]) -> None:
    sleeps: list[float] = []
    script = Script(
        httpx.ConnectError("refused"), httpx.ConnectError("refused"), reply(200, STATUS)
    )
    client = make(script, sleeps=sleeps)
    assert client.rate_limit_status().partner_id == "acme"
    # Exponential backoff with equal jitter: [0.25, 0.5], then [0.5, 1.0].
    assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_connection_errors_run_out(make: Callable[..., Any]) -> None:
    script = Script(httpx.ConnectError("refused"))
    client = make(script, max_retries=2)
    with pytest.raises(TransportError, match="after 3 attempts") as info:
        client.rate_limit_status()
    assert info.value.attempts == 3 and len(script.requests) == 3


def test_a_call_that_is_not_idempotent_is_not_resent_after_a_read_timeout(
    make: Callable[..., Any],
) -> None:
    script = Script(httpx.ReadTimeout("slow"))
    client = make(script, tenant_id="t")
    with pytest.raises(TransportError):
        client.criteria.add("job_1", "Kafka")
    assert len(script.requests) == 1
    # ... nor after a 502 (the upstream may have done it).
    script2 = Script(reply(502, envelope(502, "UPSTREAM_UNAVAILABLE")))
    client2 = make(script2, tenant_id="t")
    with pytest.raises(ServerError) as info:
        client2.criteria.add("job_1", "Kafka")
    assert info.value.code == "UPSTREAM_UNAVAILABLE" and len(script2.requests) == 1


def test_score_is_retried_with_the_same_idempotency_key(make: Callable[..., Any]) -> None:
    accepted = {
        "scoringJobId": "sj_1",
        "status": "queued",
        "queuePosition": 3,
        "estimatedWaitSeconds": 0,
    }
    script = Script(
        httpx.ReadTimeout("slow"),
        reply(503, envelope(503, "SERVICE_UNAVAILABLE")),
        reply(202, accepted, {"idempotent-replayed": "true"}),
    )
    client = make(script, tenant_id="acme")
    got = client.score("app_1", "job_1", {"name": "Ada", "resume": "Python"})
    assert got.scoring_job_id == "sj_1" and got.queue_position == 3 and got.replayed
    keys = {r.headers["idempotency-key"] for r in script.requests}
    assert len(script.requests) == 3 and len(keys) == 1 and keys.pop().startswith("sdk-")
    body = orjson.loads(script.requests[0].content)
    assert body == {
        "applicationId": "app_1",
        "jobId": "job_1",
        "candidate": {"name": "Ada", "resume": "Python"},
    }


def test_request_headers_and_path_quoting(make: Callable[..., Any]) -> None:
    job = {
        "scoringJobId": "a/b?c",
        "status": "queued",
        "attempts": 0,
        "createdAt": "2027-01-15T08:00:00.000Z",
    }
    script = Script(reply(200, job))
    client = make(script, tenant_id="acme")
    client.get_score("a/b?c")
    [req] = script.requests
    assert req.url.raw_path == b"/v1/score/a%2Fb%3Fc"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["x-tenant-id"] == "acme"
    assert req.headers["user-agent"].startswith("tollhouse-python/")
    other = client.with_tenant("globex")
    other.get_score("x")
    assert script.requests[-1].headers["x-tenant-id"] == "globex"
    assert client.tenant_id == "acme"


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
    make: Callable[..., Any],
    status: int,
    body: Any,
    headers: dict[str, str],
    cls: type[ApiError],
    code: str,
    message: str,
) -> None:
    client = make(Script(reply(status, body, headers)))
    with pytest.raises(cls) as info:
        client.analytics.metric(
            "x", time_start="2027-01-01T00:00:00Z", time_end="2027-01-02T00:00:00Z"
        )
    err = info.value
    assert (err.status, err.code, err.message, err.request_id) == (status, code, message, "req_env")
    assert err.body == body


def test_an_unexpected_body_is_reported_precisely(make: Callable[..., Any]) -> None:
    broken = dict(
        STATUS, buckets={"x": {"limit": "two", "remaining": 1, "resetAt": 1, "resetInSeconds": 1}}
    )
    client = make(Script(reply(200, broken)))
    with pytest.raises(UnexpectedResponse, match=r"buckets\.x\.limit: expected an integer"):
        client.rate_limit_status()
    client2 = make(Script(httpx.Response(200, text="<html>proxy</html>")))
    with pytest.raises(UnexpectedResponse, match="not JSON"):
        client2.rate_limit_status()


def test_throttle_waits_for_the_announced_reset(make: Callable[..., Any]) -> None:
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
    script = Script(reply(200, STATUS, limited))
    client = make(script, sleep=sleep, clock=lambda: now[0])
    client.rate_limit_status()
    assert sleeps == []
    client.rate_limit_status()  # remaining 0: wait for the reset instead of a 429
    assert len(sleeps) == 1 and 0.75 <= sleeps[0] <= 0.8
    assert len(script.requests) == 2


def test_events_are_sent_in_chunks_and_summed(make: Callable[..., Any]) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        n = len(orjson.loads(request.content))
        return reply(200, {"received": n, "inserted": n - 1, "duplicates": 1})

    script = Script(answer)
    client = make(script)
    events = [
        Event(f"e{i}", "flow_run", T0, {"run_id": f"r{i}", "status": "running"})
        for i in range(2500)
    ]
    got = client.events.ingest(events)
    assert [len(orjson.loads(r.content)) for r in script.requests] == [1000, 1000, 500]
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


def test_bad_arguments_fail_before_any_request(make: Callable[..., Any]) -> None:
    script = Script(reply(200, {}))
    client = make(script)
    with pytest.raises(ValueError, match="non-empty"):
        client.get_score("")
    with pytest.raises(ValueError, match="1 to 100"):
        client.score_batch([])
    with pytest.raises(ValueError, match="timezone"):
        client.analytics.metric(
            "flow_runs", time_start=datetime(2027, 1, 1), time_end="2027-01-02T00:00:00Z"
        )
    assert script.requests == []
