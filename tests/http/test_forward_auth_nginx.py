"""Forward-auth with a real nginx from Debian: tollhouse as its ``auth_request``.

nginx (started here on loopback with the configuration docs/forward-auth.md gives, on
the test's ports) proxies a small upstream and asks tollhouse's ``/v1/platform/authorize`` about
every request; refusals come back through ``error_page`` with the envelope and headers a
direct call gets, and nginx's JSON access log reaches tollhouse over syslog (UDP), which
joins each decided call's upstream status to its metering and frees its pool slot.

Every test runs on SQLite and on PostgreSQL (keys and metering live there).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson
import pytest
from sqlalchemy import select

from tests.conftest import free_port, serve_in_thread
from tests.http.test_forward_auth_docs import documented
from tests.services import PostgresServer, missing
from tollhouse import Tollhouse
from tollhouse.analytics.catalogue import CATALOGUE
from tollhouse.analytics.metrics import run_metric
from tollhouse.keys.store import KeyStore
from tollhouse.metering.schema import usage_calls
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.integration

POLICY = """
[upstream]
url = "http://127.0.0.1:9"   # never used: nginx sends the requests upstream

[proxy]
trusted_proxies = ["127.0.0.1/32"]

[forward_auth]
access_log_listen = "udp://127.0.0.1:{log_port}"
log_wait = "1s"

[storage]
database_url = "{db}"

[[buckets]]
name = "limited"
limit = 3
window = "3650d"
scope = "key"
routes = ["GET /v1/limited"]

[[pools]]
name = "held"
limit = 1
routes = ["GET /v1/hold"]

[[access]]
routes = ["* /v1/admin/*"]
roles = ["root"]

[[endpoint_groups]]
key = "API"
description = "the upstream"
routes = ["* /v1/*"]
"""

_TEMP = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def _nginx_conf(tmp: Path, port: int, log_port: int, tollhouse: str, api: str) -> str:
    """The configuration of docs/forward-auth.md as it is written, on the test's ports,
    with its files in ``tmp``."""
    temp = "".join(f"    {kind}_temp_path {tmp}/{kind};\n" for kind in _TEMP)
    http = documented(
        "nginx",
        {
            "http {\n": "http {\n" + temp,
            "listen 80;": f"listen 127.0.0.1:{port};",
            "server 127.0.0.1:8000;": f"server {tollhouse};",
            "server 127.0.0.1:9000;": f"server {api};",
            "syslog:server=127.0.0.1:5140": f"syslog:server=127.0.0.1:{log_port}",
        },
    )
    head = (
        f"worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
    )
    return head + "events { worker_connections 256; }\n" + http


class Upstream:
    """The API behind nginx: echoes what it was sent; ``/v1/status/N`` answers N;
    ``/v1/hold`` answers once :attr:`release` is set (``?status=N``: with N)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append({"path": scope["path"], **headers})
        path: str = scope["path"]
        status = 200
        if path.startswith("/v1/status/"):
            status = int(path.rsplit("/", 1)[1])
        elif path == "/v1/hold":
            query = scope["query_string"].decode()
            if query.startswith("status="):
                status = int(query.removeprefix("status="))
            self.holding.set()
            # Held until the test lets it go (a thread's event: the test is not async).
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 30)
        body = orjson.dumps({"path": path, "headers": headers})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Call(NamedTuple):
    """A metered call, as the call log stores it."""

    environment: str
    key_id: str
    method: str
    route: str
    status: int
    tenant: str | None
    endpoint_group: str | None


@dataclass
class Stack:
    nginx: str
    tollhouse: str
    upstream: Upstream
    app: Tollhouse
    database: str
    log_port: int

    def key(self, org: str, role: str = "root", env: str = "test") -> str:
        async def make() -> str:
            engine = make_engine(self.database)
            try:
                return (await KeyStore(engine).create(org, env, role))[1]
            finally:
                await engine.dispose()

        return asyncio.run(make())

    def get(self, path: str, key: str | None = None, **headers: str) -> httpx.Response:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.get(self.nginx + path, headers=headers, timeout=10)

    def calls(self, org: str) -> list[Call]:
        """Every metered call of ``org`` the meter has written, oldest first."""
        self.app.meter.aggregator.absorb()
        return metered_calls(self.database, org)


def metered_calls(database: str, org: str) -> list[Call]:
    """Every call of ``org`` in the call log of ``database``, oldest first."""

    async def read() -> list[Call]:
        engine = make_engine(database)
        try:
            async with engine.connect() as conn:
                c = usage_calls.c
                rows = await conn.execute(
                    select(*(getattr(c, name) for name in Call._fields))
                    .where(c.org == org)
                    .order_by(c.time_us, c.id)
                )
                return [Call(*r) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        missing("nginx", "apt-get install nginx-light")
    return found


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """nginx (auth_request → tollhouse) in front of :class:`Upstream`."""
    nginx_binary = _nginx_binary()
    tmp = tmp_path_factory.mktemp("forward-auth")
    if request.param == "sqlite":
        database = f"sqlite:///{tmp / 't.db'}"
    else:
        pg: PostgresServer = request.getfixturevalue("postgres_service")
        database = pg.create_database(f"fwdauth_{secrets.token_hex(4)}")

    async def schema() -> None:
        engine = make_engine(database)
        await create_schema(engine)
        await engine.dispose()

    asyncio.run(schema())
    log_port = free_port()
    config = tmp / "tollhouse.toml"
    config.write_text(POLICY.format(db=database, log_port=log_port))
    upstream = Upstream()
    app = Tollhouse(config=config)
    with serve_in_thread(upstream) as api, serve_in_thread(app) as tollhouse:
        for kind in _TEMP:
            (tmp / kind).mkdir()
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(
            _nginx_conf(
                tmp, port, log_port, tollhouse.removeprefix("http://"), api.removeprefix("http://")
            )
        )
        proc = subprocess.Popen([nginx_binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    httpx.get(url + "/", timeout=1)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp / "error.log").read_text()
                    time.sleep(0.05)
            yield Stack(url, tollhouse, upstream, app, database, log_port)
        finally:
            proc.terminate()
            proc.wait(10)


def _org() -> str:
    return "org_" + secrets.token_hex(4)


def _envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    error: dict[str, Any] = r.json()["error"]
    assert (error["status"], error["code"]) == (status, code), error
    assert error["requestId"] == r.headers["x-request-id"]
    assert error["type"] == "https://tollhouse.dev/errors/" + code.lower().replace("_", "-")
    return error


def test_admitted_calls_reach_the_upstream_with_the_decision_headers(stack: Stack) -> None:
    org = _org()
    key = stack.key(org)
    r = stack.get("/v1/limited?x=1", key, **{"X-Tollhouse-Org": "forged", "X-Tenant-Id": "t1"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    # What the upstream got: the caller's identity from tollhouse (not the forged one),
    # tollhouse's request id, the tenant as sent, and no credential.
    assert seen["x-tollhouse-org"] == org
    assert seen["x-tollhouse-environment"] == "SANDBOX"
    assert seen["x-tollhouse-key-id"].startswith("key_")
    assert seen["x-tollhouse-role"] == "root"
    assert seen["x-tenant-id"] == "t1"
    assert "authorization" not in seen
    # What the client got: the rate-limit headers and the same request id.
    assert r.headers["x-request-id"] == seen["x-request-id"]
    assert r.headers["x-request-id"].startswith("req_")
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("3", "2")
    assert int(r.headers["x-ratelimit-reset"]) > time.time()
    assert r.headers["ratelimit-policy"] == '"limited";q=3;w=315360000'
    assert r.headers["ratelimit"].startswith('"limited";r=2;t=')
    # A route without buckets: no rate-limit headers at all.
    other = stack.get("/v1/open", key)
    assert other.status_code == 200
    assert "x-ratelimit-limit" not in other.headers and "ratelimit" not in other.headers


def test_unauthenticated_calls_get_401_from_nginx(stack: Stack) -> None:
    before = len(stack.upstream.seen)
    _envelope(stack.get("/v1/limited"), 401, "UNAUTHORIZED")
    _envelope(stack.get("/v1/limited", "sk_test_" + "0" * 40), 401, "UNAUTHORIZED")
    assert len(stack.upstream.seen) == before  # nothing reached the upstream


def test_past_the_limit_nginx_answers_429_with_retry_after(stack: Stack) -> None:
    key = stack.key(_org())
    for remaining in ("2", "1", "0"):
        assert stack.get("/v1/limited", key).headers["x-ratelimit-remaining"] == remaining
    before = len(stack.upstream.seen)
    refused = stack.get("/v1/limited", key)
    _envelope(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["ratelimit"].startswith('"limited";r=0;t=')
    assert len(stack.upstream.seen) == before
    # Every spelling of the route is the same route: the same bucket refuses it.
    _envelope(stack.get("/V1//Limited/", key), 429, "RATE_LIMITED")


def test_role_rules_hold_through_nginx(stack: Stack) -> None:
    org = _org()
    member = stack.key(org, role="member")
    error = _envelope(stack.get("/v1/admin/purge", member), 403, "FORBIDDEN")
    assert "'member'" in error["message"]
    assert stack.get("/v1/admin/purge", stack.key(org)).status_code == 200


#: A caller's own original request, in both proxies' ways: a path any role may call and
#: no bucket counts.
FORGED = {
    "X-Original-URI": "/v1/open",
    "X-Original-Method": "GET",
    "X-Forwarded-Uri": "/v1/open",
    "X-Forwarded-Method": "GET",
}


def test_a_forged_original_request_is_not_believed_through_nginx(stack: Stack) -> None:
    check_a_forged_original_request_is_not_believed(stack)


def check_a_forged_original_request_is_not_believed(stack: Stack) -> None:
    """A caller sends :data:`FORGED` to be asked about another request than its own. The
    proxy sets its own way and clears the other, so the decision is about the real
    request: the role rule and the bucket hold."""
    org = _org()
    before = len(stack.upstream.seen)
    member = stack.key(org, role="member")
    error = _envelope(stack.get("/v1/admin/purge", member, **FORGED), 403, "FORBIDDEN")
    assert "'member'" in error["message"]
    key = stack.key(org)
    spent = [stack.get("/v1/limited", key, **FORGED) for _ in range(3)]
    assert [r.headers.get("x-ratelimit-remaining") for r in spent] == ["2", "1", "0"]
    _envelope(stack.get("/v1/limited", key, **FORGED), 429, "RATE_LIMITED")
    assert [seen["path"] for seen in stack.upstream.seen[before:]] == ["/v1/limited"] * 3


def test_paths_without_one_canonical_form_are_refused(stack: Stack) -> None:
    key = stack.key(_org())
    error = _envelope(stack.get("/v1/a%2Fb", key), 400, "BAD_REQUEST")
    assert "%2F" in error["message"]


def _bad_request(r: httpx.Response) -> str:
    message: str = _envelope(r, 400, "BAD_REQUEST")["message"]
    return message


def test_the_decision_endpoint_refuses_bad_input_directly(stack: Stack) -> None:
    org = _org()
    key = stack.key(org)
    auth = {"Authorization": f"Bearer {key}"}
    url = stack.tollhouse + "/v1/platform/authorize"
    missing_both = _bad_request(httpx.get(url, headers=auth))
    assert "X-Original-URI" in missing_both and "X-Forwarded-Uri" in missing_both
    # A method without its path, or the reverse: the missing one is named, alone.
    missing_uri = _bad_request(httpx.get(url, headers={**auth, "X-Original-Method": "GET"}))
    assert "X-Original-URI" in missing_uri
    assert "Method" not in missing_uri and "Forwarded" not in missing_uri
    missing_method = _bad_request(httpx.get(url, headers={**auth, "X-Forwarded-Uri": "/v1/open"}))
    assert "X-Forwarded-Method" in missing_method
    assert "Uri" not in missing_method and "Original" not in missing_method
    # More than one way at once (a proxy sets one; the caller added the other), or one
    # header twice: refused, naming the headers, and no bucket is spent.
    mixed = {"X-Original-URI": "/v1/open", "X-Forwarded-Method": "GET"}
    both = _bad_request(httpx.get(url, headers={**auth, **mixed, "X-Forwarded-Uri": "/v1/limited"}))
    for name in ("X-Original-URI", "X-Forwarded-Method", "X-Forwarded-Uri"):
        assert name in both, both
    envoy_mixed = _bad_request(
        httpx.get(url + "/v1/limited", headers={**auth, "X-Forwarded-Uri": "/v1/open"})
    )
    assert "X-Forwarded-Uri" in envoy_mixed and "/v1/platform/authorize" in envoy_mixed
    twice = [("X-Original-URI", "/v1/open"), ("X-Original-URI", "/v1/limited")]
    twice_sent = httpx.get(url, headers=[*auth.items(), *twice, ("X-Original-Method", "GET")])
    assert "X-Original-URI" in _bad_request(twice_sent)
    dots = httpx.get(
        url, headers={**auth, "X-Original-URI": "/v1/../admin/x", "X-Original-Method": "GET"}
    )
    _envelope(dots, 400, "BAD_REQUEST")
    # Traefik and Caddy's headers, and Envoy's prefixed path, decide alike.
    forwarded = {"X-Forwarded-Uri": "/v1/limited", "X-Forwarded-Method": "GET"}
    ok = httpx.get(url, headers={**auth, **forwarded, "X-Forwarded-Host": "api.example"})
    assert (ok.status_code, ok.headers["x-ratelimit-remaining"]) == (200, "2"), ok.text
    envoy = httpx.get(url + "/v1/limited", headers=auth)
    assert (envoy.status_code, envoy.headers["x-ratelimit-remaining"]) == (200, "1")
    # Envoy's way takes the request's own method and query: a POST is not the GET the
    # bucket counts, and the query is not part of the path.
    posted = httpx.post(url + "/v1/limited?page=2", headers=auth, content=b"ignored")
    assert posted.status_code == 200, posted.text
    assert "x-ratelimit-remaining" not in posted.headers
    queried = httpx.get(url + "/v1/limited?page=2", headers=auth)
    assert (queried.status_code, queried.headers["x-ratelimit-remaining"]) == (200, "0")
    # Only trusted proxies are answered: 127.0.0.2 is not one.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport) as stranger:
        refused = stranger.get(url, headers={**auth, **forwarded})
    assert "trusted_proxies" in _envelope(refused, 403, "FORBIDDEN")["message"]
    # The admitted ones are metered with the methods asked about (status unknown: no
    # access-log line comes for a call asked directly).
    calls = _calls_when_written(stack, org, 4)
    assert sorted((c.method, c.status) for c in calls) == [("GET", 0)] * 3 + [("POST", 0)], calls


def _pool_active(stack: Stack, key: str) -> int:
    status = httpx.get(
        stack.tollhouse + "/v1/rate-limit/status", headers={"Authorization": f"Bearer {key}"}
    )
    assert status.status_code == 200, status.text
    return int(status.json()["held"]["active"])


def test_a_pool_slot_is_held_until_the_access_log_line_comes(stack: Stack) -> None:
    check_a_pool_slot_is_held_until_its_line(stack)


def check_a_pool_slot_is_held_until_its_line(stack: Stack) -> None:
    """``held`` (limit 1): a second call while the first is upstream is refused; the
    proxy's access-log line for the first gives its slot back (the lease is 300 s)."""
    key = stack.key(_org())
    stack.upstream.holding.clear()
    stack.upstream.release.clear()
    first: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: first.append(stack.get("/v1/hold", key)))
    thread.start()
    try:
        assert stack.upstream.holding.wait(10)
        refused = stack.get("/v1/hold", key)
        error = _envelope(refused, 429, "CONCURRENCY_LIMITED")
        assert "held" in error["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert _pool_active(stack, key) == 1
    finally:
        stack.upstream.release.set()
        thread.join(10)
    assert first[0].status_code == 200
    # The proxy logs the finished request; its line frees the slot.
    deadline = time.monotonic() + 10
    while _pool_active(stack, key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pool_active(stack, key) == 0
    assert stack.get("/v1/hold", key).status_code == 200


def _calls_when_written(stack: Stack, org: str, count: int) -> list[Call]:
    deadline = time.monotonic() + 15
    calls = stack.calls(org)
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        calls = stack.calls(org)
    return calls


def test_metering_joins_the_upstream_status_from_the_access_log(stack: Stack) -> None:
    org = _org()
    key = stack.key(org)
    tenant = {"X-Tenant-Id": "tenant-7"}
    got = [stack.get(f"/v1/status/{code}", key, **tenant).status_code for code in (200, 404)]
    assert got == [200, 404]
    assert stack.get("/v1/status/503", key).status_code == 503
    _envelope(stack.get("/v1/admin/x", stack.key(org, role="member")), 403, "FORBIDDEN")
    # Asked directly, without nginx: no log line will ever come for this call.
    direct = httpx.get(
        stack.tollhouse + "/v1/platform/authorize",
        headers={
            "Authorization": f"Bearer {key}",
            "X-Original-URI": "/v1/status/201",
            "X-Original-Method": "GET",
        },
    )
    assert direct.status_code == 200
    calls = _calls_when_written(stack, org, 5)
    # The upstream's statuses as the client got them, the refusal as decided, and the
    # call whose line never came with status 0 (unknown) after [forward_auth] log_wait;
    # each with its tenant (X-Tenant-Id as the caller sent it) and route group.
    by_status = {call.status: call for call in calls}
    assert sorted(by_status) == [0, 200, 403, 404, 503], calls
    assert [by_status[n].tenant for n in (200, 404)] == ["tenant-7", "tenant-7"]
    assert [by_status[n].tenant or None for n in (0, 403, 503)] == [None, None, None]
    assert {call.endpoint_group for call in calls} == {"API"}
    assert {call.route for call in calls} == {"/v1/*", "/v1/admin/*"}
    assert {call.environment for call in calls} == {"SANDBOX"}


def test_orgs_and_environments_stay_apart_through_nginx(stack: Stack) -> None:
    check_orgs_and_environments_stay_apart(stack)


def check_orgs_and_environments_stay_apart(stack: Stack) -> None:
    """A sandbox key's spent bucket holds for it alone: not for the org's production key,
    nor another org's key forging the first org's header; each call is metered as its
    own key's."""
    a_org, b_org = _org(), _org()
    a_test, a_live, b_test = stack.key(a_org), stack.key(a_org, env="live"), stack.key(b_org)
    for _ in range(3):
        assert stack.get("/v1/limited", a_test).status_code == 200
    _envelope(stack.get("/v1/limited", a_test), 429, "RATE_LIMITED")
    # A's spent bucket is A's sandbox key's alone.
    for key, org, env in ((a_live, a_org, "PRODUCTION"), (b_test, b_org, "SANDBOX")):
        r = stack.get("/v1/limited", key, **{"X-Tollhouse-Org": a_org})
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-remaining"] == "2"
        seen = r.json()["headers"]
        assert (seen["x-tollhouse-org"], seen["x-tollhouse-environment"]) == (org, env)
    a_calls = _calls_when_written(stack, a_org, 5)
    b_calls = _calls_when_written(stack, b_org, 1)
    assert sorted(call.environment for call in a_calls) == ["PRODUCTION"] + ["SANDBOX"] * 4
    assert [call.environment for call in b_calls] == ["SANDBOX"]
    assert not {call.key_id for call in b_calls} & {call.key_id for call in a_calls}


def _status_classes(stack: Stack, org: str) -> dict[str, int]:
    """The org's sandbox calls per status class over the last hour, as the analytics
    metric answers them from the rollups (read here, not over HTTP: a read through the
    API would be a metered call of the org itself)."""

    async def read() -> dict[str, Any]:
        engine = make_engine(stack.database)
        try:
            now = time.time()
            return await run_metric(
                engine,
                CATALOGUE["api_calls_by_status_class"],
                org=org,
                environment="SANDBOX",
                start=now - 3600,
                end=now,
                now=now,
            )
        finally:
            await engine.dispose()

    body = asyncio.run(read())
    totals: dict[str, int] = {}
    if body["type"] == "empty":  # no call in the range yet
        return totals
    for bar in body["value"]["values"]:
        for name, n in bar["values"].items():
            totals[name] = totals.get(name, 0) + int(n or 0)
    return totals


def _classes_when(stack: Stack, org: str, **want: int) -> dict[str, int]:
    """The status classes once ``want`` holds (the wait, the line and the meter's flush
    each take a moment), or as they are after 15 s."""
    deadline = time.monotonic() + 15
    got = _status_classes(stack, org)
    while any(got.get(k) != v for k, v in want.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
        got = _status_classes(stack, org)
    return got


def _decide_directly(stack: Stack, key: str) -> str:
    """A call decided without nginx (no line will come for it); returns its request id."""
    direct = httpx.get(
        stack.tollhouse + "/v1/platform/authorize",
        headers={
            "Authorization": f"Bearer {key}",
            "X-Original-URI": "/v1/status/201",
            "X-Original-Method": "GET",
        },
    )
    assert direct.status_code == 200, direct.text
    return direct.headers["x-request-id"]


def _send_line(stack: Stack, line: dict[str, Any]) -> None:
    """An access-log line as nginx sends it (syslog over UDP), from this process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"<190>nginx: " + orjson.dumps(line), ("127.0.0.1", stack.log_port))


def test_a_late_line_moves_its_call_from_unknown_to_its_class_once(stack: Stack) -> None:
    org = _org()
    key = stack.key(org)
    none = {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}
    never = _decide_directly(stack, key)  # no line will ever come for this one
    # A call through nginx that outlasts [forward_auth] log_wait (1 s): the upstream holds
    # it until both calls are metered as unknown, so its line comes late.
    stack.upstream.holding.clear()
    stack.upstream.release.clear()
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(stack.get("/v1/hold?status=503", key)))
    thread.start()
    try:
        assert stack.upstream.holding.wait(10)
        assert _classes_when(stack, org, unknown=2) == {**none, "unknown": 2}
        assert _pool_active(stack, key) == 1
    finally:
        stack.upstream.release.set()
        thread.join(10)
    held = answers[0]
    assert held.status_code == 503
    late = held.headers["x-request-id"]
    assert late != never
    # nginx's line for it comes now: the call moves from unknown to 5xx, its pool slot
    # is given back (the pool's lease is 300 s), and the raw call log says 503. (Each
    # rate-limit status read is a 2xx call of the org's own.)
    after = _classes_when(stack, org, unknown=1, **{"2xx": 1})
    assert after == {**none, "2xx": 1, "5xx": 1, "unknown": 1}
    assert _pool_active(stack, key) == 0
    # The same line again moves nothing: a marker sent after it (a call decided now
    # and its line) shows it was read.
    _send_line(stack, {"request_id": late, "status": 200, "request_time": 0.5})
    marker = _decide_directly(stack, key)
    _send_line(stack, {"request_id": marker, "status": 404, "request_time": 0.01})
    got = _classes_when(stack, org, **{"4xx": 1, "2xx": 2})
    assert got == {**none, "2xx": 2, "4xx": 1, "5xx": 1, "unknown": 1}
    statuses = sorted(call.status for call in _calls_when_written(stack, org, 5))
    assert statuses == [0, 200, 200, 404, 503]
