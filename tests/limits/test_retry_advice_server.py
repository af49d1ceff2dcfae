"""Retry advice against a real ``tollhouse serve``, limits in memory or in a real
``redis-server``: a client that waits exactly ``Retry-After`` — or until
``X-RateLimit-Reset`` — gets through, for a pair of buckets and for an in-flight pool.

The in-process tests (``test_retry_advice.py``) pin the exact moments with an injected
clock; these follow the advice as a client does, with the server's own clock, sleeping
the whole seconds the headers say. Fixed windows end on whole seconds, so a request sent
after the advised moment is in a new window whatever the machine's speed.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import services
from tests.conftest import Server, start_server, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLICY = """
[upstream]
app = "tests.limits.hold_upstream:app"

[[buckets]]
name = "per_second"
limit = 1
window = "1s"
routes = ["GET /v1/things/{thingId}"]

[[buckets]]
name = "per_window"
limit = 2
window = "3s"
routes = ["GET /v1/things/{thingId}"]

[[buckets]]
name = "probe"
limit = 1000000
window = "1s"
routes = ["GET /entered/{ms}", "GET /hold/{ms}"]

[[pools]]
name = "hold_inflight"
limit = 1
lease = "60s"
routes = ["GET /hold/{ms}"]
"""


@pytest.fixture(
    scope="module",
    params=["memory", pytest.param("redis", marks=[pytest.mark.postgres, pytest.mark.redis])],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`tollhouse serve` with the policy above: SQLite and limits in memory, or PostgreSQL
    and limits in Redis."""
    cwd = tmp_path_factory.mktemp("retry-advice")
    config = cwd / "policy.toml"
    config.write_text(POLICY)
    env: dict[str, str] = {}
    if request.param == "redis":
        pg: services.PostgresServer = request.getfixturevalue("postgres_service")
        redis: services.RedisServer = request.getfixturevalue("redis_service")
        env = {
            "TOLLHOUSE_DATABASE_URL": pg.create_database(f"advice_{secrets.token_hex(4)}"),
            "TOLLHOUSE_REDIS_URL": redis.url,
        }
    started = start_server(cwd, config, env=env)
    yield started
    stop_server(started)


def _client(server: Server) -> httpx.Client:
    secret = server.key(f"advice-{secrets.token_hex(4)}")["key"]
    return httpx.Client(base_url=server.url, headers={"X-API-Key": secret}, timeout=15)


def _spent(r: httpx.Response) -> dict[str, int]:
    """The RateLimit items with nothing remaining: bucket name → their ``t``."""
    out = {}
    for item in r.headers["ratelimit"].split(","):
        name, remaining, t = item.strip().split(";")
        if remaining == "r=0":
            out[name.strip('"')] = int(t.removeprefix("t="))
    return out


def _longer_bucket_out(c: httpx.Client) -> httpx.Response:
    """Call until a 429 comes from the 3 s bucket more than a second before its window
    ends (so the 1 s bucket, out too or not, frees up first), following each earlier
    429's ``Retry-After`` as a client does."""
    for _ in range(30):
        r = c.get("/v1/things/x")
        if r.status_code == 200:
            continue
        assert r.status_code == 429, r.text
        if "per_window" in _spent(r) and int(r.headers["retry-after"]) >= 2:
            return r
        time.sleep(int(r.headers["retry-after"]))
    raise AssertionError("the 3 s bucket never ran out early in its window")


def _assert_one_moment(denied: httpx.Response) -> None:
    """Every header names the moment the 3 s bucket admits again."""
    retry_after = int(denied.headers["retry-after"])
    spent = _spent(denied)
    assert spent["per_window"] == retry_after, denied.headers
    assert max(spent.values()) == retry_after, denied.headers
    assert denied.headers["x-ratelimit-limit"] == "2", denied.headers  # the 3 s bucket
    assert denied.headers["x-ratelimit-remaining"] == "0"
    assert denied.json()["error"]["code"] == "RATE_LIMITED"


def test_waiting_exactly_retry_after_gets_through_a_bucket_pair(server: Server) -> None:
    with _client(server) as c:
        for _ in range(2):
            denied = _longer_bucket_out(c)
            _assert_one_moment(denied)
            time.sleep(int(denied.headers["retry-after"]))
            passed = c.get("/v1/things/x")
            assert passed.status_code == 200, (denied.headers, passed.headers)


def test_waiting_until_x_ratelimit_reset_gets_through_a_bucket_pair(server: Server) -> None:
    """The finding: ``X-RateLimit-Reset`` named the 1 s bucket while ``Retry-After``
    named the other, and a client following the reset got another 429."""
    with _client(server) as c:
        for _ in range(2):
            denied = _longer_bucket_out(c)
            _assert_one_moment(denied)
            time.sleep(max(0.0, int(denied.headers["x-ratelimit-reset"]) - time.time()))
            passed = c.get("/v1/things/x")
            assert passed.status_code == 200, (denied.headers, passed.headers)


def _entered(c: httpx.Client, ms: int) -> int:
    answer: int = c.get(f"/entered/{ms}").json()["entered"]
    return answer


def test_waiting_exactly_retry_after_gets_through_a_pool(server: Server) -> None:
    """The finding: on a pool's 429, waiting ``Retry-After`` still got a 429 while the
    headers showed quota left. Here one request holds the pool's only slot for 2 s (the
    pool's measured hold time), the next holder for 1.5 s: the 429 a caller gets while
    it holds says when the slot is expected free, and the caller gets through then."""
    with _client(server) as c:
        assert c.get("/hold/2000").status_code == 200  # measured: 2 s a request
        before = _entered(c, 1500)
        answers: list[httpx.Response] = []
        holder = threading.Thread(target=lambda: answers.append(c.get("/hold/1500")))
        holder.start()
        try:
            deadline = time.monotonic() + 30
            while _entered(c, 1500) == before:  # the holder has the slot
                assert time.monotonic() < deadline, "the holder never reached the upstream"
                time.sleep(0.01)
            denied = c.get("/hold/0")
            assert denied.status_code == 429, denied.text
            assert denied.json()["error"]["code"] == "CONCURRENCY_LIMITED"
            # The headers describe the pool, not the buckets the request passed.
            assert denied.headers["x-ratelimit-limit"] == "1"
            assert denied.headers["x-ratelimit-remaining"] == "0"
            assert denied.headers["ratelimit-policy"] == '"hold_inflight";q=1'
            retry_after = int(denied.headers["retry-after"])
            assert _spent(denied) == {"hold_inflight": retry_after}
            time.sleep(retry_after)
            passed = c.get("/hold/0")
            assert passed.status_code == 200, (denied.headers, passed.headers)
        finally:
            holder.join(30)
        assert [a.status_code for a in answers] == [200]
