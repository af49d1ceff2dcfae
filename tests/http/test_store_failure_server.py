"""`[limits] on_store_failure` end to end: a real `tollhouse serve` on a real
`redis-server` that the test then stops. ``deny`` fails closed (429 with `Retry-After`
and the error envelope), ``allow`` fails open (200); and the Redis settings
(`TOLLHOUSE_REDIS_TIMEOUT`, `…_BREAKER_FAILURES`, `…_PROBE_INTERVAL`, `TOLLHOUSE_INSTANCES`,
`TOLLHOUSE_LIMITS_RESERVE`) reach the store the server decides with."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, serve_in_thread, sqlite_key, start_server, stop_server
from tests.services import redis_server
from tollhouse.http.app import Tollhouse
from tollhouse.limits.redis import RedisStore
from tollhouse.settings import load_settings

pytestmark = [pytest.mark.integration, pytest.mark.redis]

#: The fault tests' upstream (``GET /v1/things/{id}`` answers 200) behind one bucket of 3
#: over a window no test crosses (epoch-aligned, ten years). After one request decided in
#: Redis, ``local`` would admit the 2 left and refuse the rest: ``deny`` refuses all six
#: requests sent while Redis is gone, ``allow`` admits all six.
POLICY = """\
[upstream]
app = "tests.faults.upstream:app"

[limits]
on_store_failure = "{failure}"

[[buckets]]
name = "things"
limit = 3
window = "3650d"
routes = ["GET /v1/things/{thingId}"]
"""


def _serve(tmp_path: Path, failure: str, redis_url: str) -> tuple[str, Server]:
    config = tmp_path / "policy.toml"
    config.write_text(POLICY.replace("{failure}", failure))
    db = tmp_path / "t.db"
    key = sqlite_key(db, org="acme")
    server = start_server(
        tmp_path,
        config,
        "--redis-url",
        redis_url,
        env={"TOLLHOUSE_DATABASE_URL": f"sqlite:///{db}"},
    )
    return key, server


@pytest.mark.parametrize("failure", ["deny", "allow"])
def test_on_store_failure_decides_while_redis_is_gone(tmp_path: Path, failure: str) -> None:
    with redis_server() as redis:
        key, server = _serve(tmp_path, failure, redis.url)
        headers = {"Authorization": f"Bearer {key}"}
        try:
            with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
                # Redis answers: admitted, and counted there.
                r = client.get("/v1/things/1")
                assert r.status_code == 200, r.text
                assert r.headers["x-ratelimit-remaining"] == "2"
                redis.stop()
                answers = [client.get(f"/v1/things/{i}") for i in range(6)]
                status = client.get("/v1/rate-limit/status").json()
        finally:
            stop_server(server)
    assert status["degraded"] is True, status
    if failure == "allow":
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        return
    for answer in answers:
        assert answer.status_code == 429, answer.text
        assert answer.headers["retry-after"] == "1"
        error = answer.json()["error"]
        assert error["code"] == "RATE_LIMITED" and error["status"] == 429, error
        assert answer.headers["content-type"].startswith("application/")


def test_redis_settings_reach_the_store(tmp_path: Path) -> None:
    with redis_server() as redis:
        settings = load_settings(
            environ={
                "TOLLHOUSE_DATABASE_URL": f"sqlite:///{tmp_path / 't.db'}",
                "TOLLHOUSE_REDIS_URL": redis.url,
                "TOLLHOUSE_REDIS_TIMEOUT": "0.7",
                "TOLLHOUSE_REDIS_BREAKER_FAILURES": "5",
                "TOLLHOUSE_REDIS_PROBE_INTERVAL": "2.5",
                "TOLLHOUSE_INSTANCES": "3",
                "TOLLHOUSE_LIMITS_RESERVE": "0.2",
            }
        )
        app = Tollhouse(settings=settings)
        with serve_in_thread(app) as url:
            # A limited request decided in Redis: the store is the live one.
            r = httpx.get(url + "/v1/rate-limit/status", headers=_auth(tmp_path))
            assert r.status_code == 200, r.text
            assert r.json()["degraded"] is False
        store = app.limits
        assert isinstance(store, RedisStore)
        assert store.url == redis.url
        assert store._timeout == 0.7
        assert store._breaker.threshold == 5
        assert store._probe_interval == 2.5
        assert (store._local.instances, store._local.reserve) == (3, 0.2)


def _auth(tmp_path: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {sqlite_key(tmp_path / 't.db')}"}
