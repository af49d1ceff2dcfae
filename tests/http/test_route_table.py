"""The route table: one place for every path tollhouse answers itself, with Starlette's
semantics by construction — HEAD wherever GET, 405 with the path's whole ``Allow`` (and
no bucket spent), ``X-Request-Id`` equal to the body's ``requestId`` on every answer, 400
for malformed JSON and 415 for other bodies on JSON routes — and ``[platform] prefix``,
``[platform] disable`` and the operations listener, on real servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.conftest import run_cli, serve_in_thread
from tollhouse import Tollhouse
from tollhouse.errors import PolicyError
from tollhouse.http.routes import Endpoint, RouteTable
from tollhouse.keys.store import KeyStore
from tollhouse.policy.load import parse_policy
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

#: A policy with the default example upstream, a tight bucket on the status path (any
#: method) and on the OpenAPI document, and one async route that is not a scoring route.
POLICY = """
[storage]
database_url = "sqlite:///{db}"
{platform}
[[buckets]]
name = "status_any"
limit = 100
window = "60s"
routes = ["* /v1/rate-limit/status", "* {prefix}/v1/rate-limit/status"]

[[buckets]]
name = "reads"
limit = 1000
window = "60s"
routes = ["GET /v1/analytics/*", "GET /call-counts/*", "GET /v1/queue"]

[[async_routes]]
route = "POST /v1/render"
id_field = "renderId"
"""


def write_policy(folder: Path, platform: str = "", prefix: str = "") -> Path:
    config = folder / "tollhouse.toml"
    config.write_text(POLICY.format(db=folder / "t.db", platform=platform, prefix=prefix))
    return config


def make_key(folder: Path) -> str:
    async def make() -> str:
        engine = make_engine(f"sqlite:///{folder / 't.db'}")
        try:
            await create_schema(engine)
            return (await KeyStore(engine).create("acme", "test", "root"))[1]
        finally:
            await engine.dispose()

    return asyncio.run(make())


async def upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """An upstream that names the path it was given (lifespan tolerated)."""
    if scope["type"] != "http":
        return
    body = json.dumps({"upstream": scope["path"]}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 299,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Served:
    url: str
    app: Tollhouse
    key: str

    def get(self, path: str, method: str = "GET", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=10, **kw)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("routes")
    config = write_policy(folder)
    key = make_key(folder)
    app = Tollhouse(config=config)  # the bundled example upstream
    with serve_in_thread(app) as url:
        yield Served(url, app, key)


def assert_request_id(r: httpx.Response) -> None:
    """The answer's X-Request-Id is the requestId of its error body (when it has one)."""
    given = r.headers.get("x-request-id", "")
    assert given.startswith("req_"), (r.request.method, r.request.url, r.headers)
    if r.headers.get("content-type", "").startswith("application/json") and r.content:
        body = r.json()
        if isinstance(body, dict) and "error" in body:
            assert body["error"]["requestId"] == given, r.text


# ---- the table on its own -------------------------------------------------------------------


async def _noop(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("not called")


def test_table_semantics() -> None:
    table = RouteTable(
        [
            Endpoint("/v1/x/batch", ("POST",), _noop, "events", "platform"),
            Endpoint("/v1/x/{id}", ("GET",), _noop, "events", "platform"),
            Endpoint("/v1/y", ("GET",), _noop, "queue", "jobs"),
            Endpoint("/v1/y", ("DELETE",), _noop, "queue", "jobs"),
        ],
        prefix="/p",
    )
    assert table.prefixes == ("/p/v1/x/", "/p/v1/y")
    head = table.resolve("HEAD", "/p/v1/x/7")
    assert head.endpoint is not None and head.params == {"id": "7"}
    # A literal path keeps its methods: GET .../batch is a 405, not the item "batch".
    batch = table.resolve("GET", "/p/v1/x/batch")
    assert (batch.endpoint, batch.allow) == (None, "POST")
    # Allow lists every method of every endpoint on the path.
    assert table.resolve("PUT", "/p/v1/y").allow == "DELETE, GET, HEAD"
    # Two literal endpoints of one path each take their own method.
    for method in ("GET", "DELETE"):
        found = table.resolve(method, "/p/v1/y").endpoint
        assert found is not None and found.methods == (method,)
    assert table.resolve("GET", "/v1/y").endpoint is None  # mounted under the prefix
    assert table.resolve("GET", "/p/v1/z").allow is None  # not the table's
    off = RouteTable([Endpoint("/v1/y", ("GET",), _noop, "queue", "jobs")], disable=["queue"])
    assert off.endpoints == () and not off.owns("/v1/y")


# ---- one server, the bundled example upstream ------------------------------------------------


def test_head_goes_wherever_get_goes(served: Served) -> None:
    stamps = {"start_timestamp": 0, "end_timestamp": 1}
    window = {"time_start": "2026-01-01T00:00:00Z", "time_end": "2026-01-02T00:00:00Z"}
    for path, params in [
        ("/v1/platform/openapi.json", {}),
        ("/call-counts/historical/", stamps),
        ("/call-counts/historical/ENDPOINTS/", stamps),
        ("/v1/analytics/flow_runs", window),
        ("/v1/rate-limit/status", {}),
        ("/v1/queue", {}),
        ("/healthz", {}),
        ("/readyz", {}),
        ("/metrics", {}),
        ("/dashboard/", {}),
    ]:
        got = served.get(path, params=params)
        head = served.get(path, "HEAD", params=params)
        assert got.status_code == 200, (path, got.text)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert_request_id(head)


def test_wrong_methods_are_405_with_the_whole_allow(served: Served) -> None:
    for method, path, allow in [
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/v1/rate-limit/status", "GET, HEAD"),
        ("PUT", "/v1/rate-limit/status", "GET, HEAD"),
        ("POST", "/v1/platform/openapi.json", "GET, HEAD"),
        ("PATCH", "/v1/events", "POST"),
        ("DELETE", "/v1/render", "GET, HEAD, POST"),
        ("GET", "/v1/render/batch", "POST"),
        ("POST", "/dashboard/", "GET, HEAD"),
    ]:
        for key in (True, False):
            headers = {} if key else {"Authorization": ""}
            r = served.get(path, method, headers=headers)
            assert r.status_code == 405, (method, path, r.text)
            assert r.headers["allow"] == allow, (method, path)
            assert r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
            assert_request_id(r)
    # The metrics catalogue answers in its own shape.
    r = served.get("/v1/analytics/flow_runs", "POST")
    assert (r.status_code, r.json()) == (405, {"detail": "Method Not Allowed"})
    assert r.headers["allow"] == "GET, HEAD"
    # The example upstream's 405 names every method of the path, with one request id.
    r = served.get("/v1/criteria/job_1", "PUT", headers={"X-Tenant-Id": "t"})
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "DELETE"}
    assert_request_id(r)


def test_a_405_spends_no_rate_limit_unit(served: Served) -> None:
    """The bucket counts every method on the status path; only the GETs spend."""

    def used() -> int:
        r = served.get("/v1/rate-limit/status")
        assert r.status_code == 200, r.text
        [category] = [c for c in r.json()["categories"] if c["category"] == "status_any"]
        return int(category["used"])

    before = used()
    for _ in range(5):
        assert served.get("/v1/rate-limit/status", "DELETE").status_code == 405
    assert used() == before + 1  # the second GET only


def test_every_answer_carries_its_request_id(served: Served) -> None:
    answers = [
        served.get("/v1/anything", headers={"Authorization": ""}),  # 401, gateway
        served.get("/v1/no/such/route"),  # 404, the example upstream
        served.get("/v1/criteria/job_1", "PUT", headers={"X-Tenant-Id": "t"}),  # 405
        served.get("/v1/rate-limit/status", "DELETE"),  # 405, table
        served.get("/v1/events", "POST", content=b"[{"),  # 400
        served.get("/v1/events", "POST", content=b"[]", headers={"content-type": "text/plain"}),
        served.get("/healthz"),
        served.get("/readyz"),
        served.get("/metrics"),
        served.get("/dashboard/"),
        served.get("/dashboard", follow_redirects=False),
        served.get("/v1/platform/openapi.json", headers={"Authorization": ""}),
        served.get("/v1/render/nope"),  # 404, jobs
    ]
    for r in answers:
        assert_request_id(r)
    assert [r.status_code for r in answers] == [
        401, 404, 405, 405, 400, 415, 200, 200, 200, 200, 308, 200, 404
    ]  # fmt: skip
    # A request id the caller sends is kept, on the header and in the body.
    r = served.get("/v1/no/such/route", headers={"X-Request-Id": "trace-42"})
    assert r.headers["x-request-id"] == r.json()["error"]["requestId"] == "trace-42"


def test_json_routes_refuse_malformed_and_non_json_bodies(served: Served) -> None:
    for path in ("/v1/events", "/v1/render", "/v1/render/batch"):
        bad = served.get(path, "POST", content=b'{"a": ')
        assert bad.status_code == 400, (path, bad.text)
        assert bad.json()["error"]["code"] == "BAD_REQUEST"
        for kind in ("text/plain", "application/x-www-form-urlencoded"):
            r = served.get(path, "POST", content=b"{}", headers={"content-type": kind})
            assert r.status_code == 415, (path, kind)
            assert r.json()["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
            assert_request_id(r)


def test_async_routes_use_their_own_validator_and_id_field(served: Served) -> None:
    """``POST /v1/render`` is not a scoring route: any JSON object is a job, found by its
    ``renderId``."""
    r = served.get("/v1/render", "POST", json={"renderId": "r_1", "scene": [1, 2]})
    assert r.status_code == 202, r.text
    job = r.json()["scoringJobId"]
    latest = served.get("/v1/render/application/r_1")
    assert latest.status_code == 200 and latest.json()["scoringJobId"] == job


def test_the_openapi_document_needs_no_key(served: Served) -> None:
    r = httpx.get(served.url + "/v1/platform/openapi.json", timeout=10)
    assert r.status_code == 200 and r.json()["openapi"] == "3.1.0"
    assert "/v1/render/{scoringJobId}" in r.json()["paths"]
    assert "x-ratelimit-limit" not in r.headers  # no bucket was asked


# ---- [platform] prefix and disable ------------------------------------------------------------


def test_prefix_mounts_tollhouse_routes_and_frees_their_paths(tmp_path: Path) -> None:
    config = write_policy(tmp_path, '[platform]\nprefix = "/_th"\n', prefix="/_th")
    key = make_key(tmp_path)
    with serve_in_thread(Tollhouse(upstream, config=config)) as url:
        s = Served(url, Tollhouse(upstream, config=config), key)
        assert s.get("/_th/v1/events", "POST", json=[]).json() == {
            "received": 0,
            "inserted": 0,
            "duplicates": 0,
        }
        assert s.get("/_th/v1/rate-limit/status").status_code == 200
        assert s.get("/_th/v1/queue").status_code == 200
        # The unprefixed paths are the upstream's now.
        for path in ("/v1/events", "/v1/rate-limit/status", "/v1/queue", "/dashboard"):
            r = s.get(path)
            assert (r.status_code, r.json()) == (299, {"upstream": path}), path
        # Async routes and the operations endpoints keep their paths.
        assert s.get("/v1/render", "POST", json={}).status_code == 202
        assert s.get("/healthz").status_code == 200
        # The dashboard moves with the API it reads (its URLs are relative).
        r = s.get("/_th/dashboard", follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (308, "/_th/dashboard/")
        assert s.get("/_th/dashboard/").status_code == 200
        document = httpx.get(url + "/_th/v1/platform/openapi.json", timeout=10).json()
        assert "/_th/v1/events" in document["paths"] and "/v1/events" not in document["paths"]
        assert "/v1/render" in document["paths"]


def test_disabled_groups_go_to_the_upstream(tmp_path: Path) -> None:
    platform = '[platform]\ndisable = ["events", "analytics", "openapi", "rate-limit-status"]\n'
    config = write_policy(tmp_path, platform)
    key = make_key(tmp_path)
    app = Tollhouse(upstream, config=config)
    with serve_in_thread(app) as url:
        s = Served(url, app, key)
        for method, path in [
            ("POST", "/v1/events"),
            ("GET", "/v1/analytics/flow_runs"),
            ("GET", "/v1/analytics/scoring-volume"),
            ("GET", "/v1/rate-limit/status"),
            ("DELETE", "/v1/rate-limit/status"),
            ("GET", "/v1/platform/openapi.json"),
        ]:
            r = s.get(path, method)
            assert (r.status_code, r.json()) == (299, {"upstream": path}), (method, path)
        # The upstream's answers are still admitted: a key is needed.
        assert s.get("/v1/events", "POST", headers={"Authorization": ""}).status_code == 401
        assert s.get("/call-counts/historical/").status_code == 200  # not disabled
    paths = {path for path, *_ in app.routes.rows()}
    assert "/v1/events" not in paths and "/call-counts/historical/" in paths


def test_platform_table_is_checked() -> None:
    for text, field in [
        ('[platform]\nprefix = "api"', "platform.prefix"),
        ('[platform]\nprefix = "/a b"', "platform.prefix"),
        ('[platform]\nprefix = "/a//b"', "platform.prefix"),
        ('[platform]\ndisable = ["jobs"]', "platform.disable[0]"),
        ('[platform]\nmount = "/x"', "platform.mount"),
        ('[[async_routes]]\nroute = "POST /v1/x"\nvalidator = "strict"', "async_routes[0]"),
    ]:
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, "t.toml")
        assert caught.value.field.startswith(field), (text, caught.value)
    policy = parse_policy('[platform]\nprefix = "/_th/"\ndisable = ["events", "events"]', "t")
    assert (policy.platform.prefix, policy.platform.disable) == ("/_th", ("events",))


# ---- the operations listener ------------------------------------------------------------------


def test_ops_listener_serves_probes_and_frees_their_paths(tmp_path: Path) -> None:
    config = write_policy(tmp_path)
    key = make_key(tmp_path)
    app = Tollhouse(upstream, config=config, ops_listener=True)
    with serve_in_thread(app) as url, serve_in_thread(app.ops_app) as ops:
        for path in ("/healthz", "/readyz", "/metrics"):
            r = httpx.get(ops + path, timeout=10)
            assert r.status_code == 200, (path, r.text)
            assert_request_id(r)
            assert httpx.head(ops + path, timeout=10).status_code == 200
            refused = httpx.post(ops + path, timeout=10)
            assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
            assert_request_id(refused)
            # On the main listener these are the upstream's paths (after the key).
            main = httpx.get(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            assert (main.status_code, main.json()) == (299, {"upstream": path})
        missing = httpx.get(ops + "/v1/events", timeout=10)
        assert missing.status_code == 404
        assert_request_id(missing)
        # The main listener's counters show on the ops listener's /metrics.
        metrics = httpx.get(ops + "/metrics", timeout=10).text
        assert 'tollhouse_requests_total{endpoint_group="none",status_class="2xx"}' in metrics
    assert "/healthz" not in {path for path, *_ in app.routes.rows()}


# ---- tollhouse routes ---------------------------------------------------------------------------


def test_routes_command_lists_the_table(tmp_path: Path) -> None:
    config = write_policy(tmp_path, '[platform]\nprefix = "/_th"\ndisable = ["dashboard"]\n')
    listed = json.loads(run_cli("routes", "--config", str(config), "--json", cwd=tmp_path).stdout)
    rows = {(r["path"], tuple(r["methods"]), r["answers"], r["key"]) for r in listed}
    assert ("/healthz", ("GET", "HEAD"), "gateway", False) in rows
    assert ("/_th/v1/rate-limit/status", ("GET", "HEAD"), "gateway", True) in rows
    assert ("/_th/v1/events", ("POST",), "platform", True) in rows
    assert ("/_th/v1/platform/openapi.json", ("GET", "HEAD"), "platform", False) in rows
    assert ("/v1/render", ("POST",), "jobs", True) in rows
    assert ("/v1/render/{scoringJobId}", ("GET", "HEAD"), "jobs", True) in rows
    assert ("/metrics", ("GET", "HEAD"), "ops", False) in rows
    assert not any("dashboard" in path for path, *_ in rows)
    # The table as the server has it, row for row.
    app = Tollhouse(upstream, config=config)
    assert [(r["path"], r["answers"]) for r in listed] == [
        (path, who) for path, _, who, _ in app.routes.rows()
    ]
    without_ops = json.loads(
        run_cli("routes", "--config", str(config), "--json", "--ops-port", cwd=tmp_path).stdout
    )
    assert "/metrics" not in {r["path"] for r in without_ops}
    table = run_cli("routes", "--config", str(config), cwd=tmp_path).stdout
    assert "/_th/v1/events" in table and "platform" in table
