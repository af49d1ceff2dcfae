"""Every route has a limit: tollhouse's own routes get buckets in the built-in policy (the
OpenAPI document, served without a key, per client address), and failed authentications
are limited per client address (``[limits] failed_auth``): once an address is over, its
unknown keys get 429 without being looked up, while other addresses are unaffected.

Real servers; client addresses are told apart by ``X-Forwarded-For`` from a trusted
loopback peer (``[proxy] trusted_proxies``), as behind a load balancer.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests import services
from tests.conftest import Server, run_cli, start_server, stop_server
from tollhouse.policy.load import load_policy, parse_policy
from tollhouse.policy.match import Router

pytestmark = pytest.mark.integration

POLICY = """
[proxy]
trusted_proxies = ["127.0.0.1"]

[limits]
failed_auth = { limit = 5, window = "3650d" }

[[buckets]]
name = "openapi"
limit = 3
window = "3650d"
scope = "ip"
routes = ["GET /v1/platform/openapi.json"]
"""


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres+redis", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`tollhouse serve` with the policy above: on SQLite with limits in memory, or on
    PostgreSQL with limits (and so failure counts) in Redis."""
    cwd = tmp_path_factory.mktemp("every-route")
    config = cwd / "policy.toml"
    config.write_text(POLICY)
    env: dict[str, str] = {}
    if request.param != "sqlite":
        pg: services.PostgresServer = request.getfixturevalue("postgres_service")
        redis: services.RedisServer = request.getfixturevalue("redis_service")
        env = {
            "TOLLHOUSE_DATABASE_URL": pg.create_database(f"routes_{secrets.token_hex(4)}"),
            "TOLLHOUSE_REDIS_URL": redis.url,
        }
    started = start_server(cwd, config, env=env)
    yield started
    stop_server(started)


def _address() -> str:
    """A client address no other test (or earlier run on the same Redis) used."""
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def _call(server: Server, address: str, secret: str) -> httpx.Response:
    return httpx.get(
        server.url + "/v1/rate-limit/status",
        headers={"Authorization": f"Bearer {secret}", "X-Forwarded-For": address},
    )


def _bad_key() -> str:
    return "sk_test_" + secrets.token_urlsafe(24)[:32]


def test_a_bad_key_flood_is_refused_per_address(server: Server) -> None:
    flood, other = _address(), _address()
    known = server.key("flood-org")["key"]
    assert _call(server, flood, known).status_code == 200  # known valid from then on
    for _ in range(5):
        refused = _call(server, flood, _bad_key())
        assert refused.status_code == 401, refused.text
    for _ in range(3):
        over = _call(server, flood, _bad_key())
        assert over.status_code == 429, over.text
        error = over.json()["error"]
        assert error["code"] == "RATE_LIMITED"
        assert error["requestId"] == over.headers["x-request-id"]
        assert int(over.headers["retry-after"]) >= 1
    # A valid key the server has not seen yet is not even looked up from that address...
    fresh = server.key("flood-org")["key"]
    assert _call(server, flood, fresh).status_code == 429
    # ... while from another address it works, and so do bad keys' plain 401s.
    assert _call(server, other, fresh).status_code == 200
    assert _call(server, other, _bad_key()).status_code == 401
    # A key already known valid keeps working from the flooded address (a client behind
    # the same NAT as the flood).
    assert _call(server, flood, known).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    denied = re.search(
        r'^tollhouse_limit_decisions_total\{bucket="failed_auth",outcome="denied"\} (\d+)',
        metrics,
        re.M,
    )
    assert denied is not None and int(denied.group(1)) >= 4, metrics[-2000:]


def test_requests_without_a_key_are_not_counted(server: Server) -> None:
    address = _address()
    for _ in range(8):
        answer = httpx.get(server.url + "/v1/queue", headers={"X-Forwarded-For": address})
        assert answer.status_code == 401
    assert _call(server, address, server.key("nokey-org")["key"]).status_code == 200


def test_the_openapi_document_is_limited_per_address(server: Server) -> None:
    first, second = _address(), _address()
    url = server.url + "/v1/platform/openapi.json"
    for remaining in (2, 1, 0):
        answer = httpx.get(url, headers={"X-Forwarded-For": first})
        assert answer.status_code == 200
        assert answer.headers["x-ratelimit-remaining"] == str(remaining)
        assert answer.json()["openapi"].startswith("3.1")
    over = httpx.get(url, headers={"X-Forwarded-For": first})
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "RATE_LIMITED"
    assert int(over.headers["retry-after"]) >= 1
    assert httpx.get(url, headers={"X-Forwarded-For": second}).status_code == 200


def _concrete(path: str) -> str:
    """A path of the table with every parameter filled in."""
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_of_the_table_has_a_bucket_in_the_built_in_policy(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`tollhouse routes` walks the route table: every route needing a key hits a bucket
    of the built-in policy; the OpenAPI document, answered without one, a per-address
    bucket. The other keyless routes are probes and static files."""
    rows = json.loads(run_cli("routes", "--json", cwd=tmp_path_factory.mktemp("routes")).stdout)
    policy = load_policy(None)
    router = Router(policy)
    checked = 0
    for row in rows:
        if row["path"].startswith("/v1/platform/authorize"):
            # The forward-auth decision spends the buckets of the request it decides on
            # (tests/http/test_forward_auth_nginx.py), none of its own.
            continue
        path = _concrete(row["path"])
        for method in row["methods"]:
            buckets = router.match(method, path.rstrip("/") or "/").buckets
            if row["key"]:
                assert any(not b.shadow for b in buckets), f"{method} {row['path']}: no bucket"
                checked += 1
            elif row["path"].endswith("openapi.json"):
                assert any(b.scope == "ip" for b in buckets), f"{method} {row['path']}"
                checked += 1
    assert checked >= 20  # every authenticated route (HEAD with GET), and the document
    named = {b.name for b in policy.buckets}
    assert {"events", "queue_reads", "webhook_deliveries", "openapi"} <= named


def test_the_platform_routes_answer_with_their_buckets(default_server: Server) -> None:
    secret = default_server.key("platform-buckets-org")["key"]
    auth = {"Authorization": f"Bearer {secret}"}
    for method, path, bucket in [
        ("GET", "/v1/queue", "queue_reads"),
        ("GET", "/v1/webhooks/deliveries", "webhook_deliveries"),
        ("POST", "/v1/events", "events"),
    ]:
        answer = httpx.request(method, default_server.url + path, headers=auth, json={})
        assert f'"{bucket}"' in answer.headers["ratelimit-policy"], (path, answer.status_code)
    document = httpx.get(default_server.url + "/v1/platform/openapi.json")
    assert '"openapi"' in document.headers["ratelimit-policy"]


def test_failed_auth_is_a_policy_setting() -> None:
    default = parse_policy("", "t.toml").limits.failed_auth
    assert (default.limit, default.window) == (20, 60.0)
    off = parse_policy("[limits]\nfailed_auth = { limit = 0 }\n", "t.toml").limits.failed_auth
    assert off.limit == 0
    with pytest.raises(Exception, match=r"failed_auth\.limt"):
        parse_policy("[limits]\nfailed_auth = { limt = 3 }\n", "t.toml")
