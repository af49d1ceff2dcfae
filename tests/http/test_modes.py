"""The two ways to put tollhouse in front of an API: `serve` as a reverse proxy to a real
upstream server, and `Tollhouse(app)` wrapping an ASGI app in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.conftest import (
    DEFAULT_POLICY,
    Server,
    free_port,
    serve_in_thread,
    start_server,
    stop_server,
)
from tollhouse import Tollhouse, load_settings
from tollhouse.example import create_app
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

GEN = {"jobId": "job_9", "title": "Data Engineer", "description": "Spark, SQL and Airflow."}


def proxy_policy(tmp: Path, upstream_url: str, timeout: str = "30s") -> Path:
    text = DEFAULT_POLICY.read_text().replace(
        "[upstream]\n", f'[upstream]\nurl = "{upstream_url}"\ntimeout = "{timeout}"\n', 1
    )
    text = text.replace('timeout = "30s"\n\n[storage]', "\n[storage]", 1)
    path = tmp / "proxy.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example scoring API as a separate HTTP server: the 'API written in anything'
    (on a database of its own, which its lifespan opens and closes)."""
    database = tmp_path_factory.mktemp("upstream") / "example.db"
    with serve_in_thread(create_app(f"sqlite:///{database}")) as url:
        yield url


@pytest.fixture(scope="module")
def proxy_server(tmp_path_factory: pytest.TempPathFactory, upstream: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("proxy")
    server = start_server(tmp, proxy_policy(tmp, upstream, timeout="2s"))
    yield server
    stop_server(server)


def test_proxy_mode_forwards_with_identity_and_limits(proxy_server: Server) -> None:
    a = proxy_server.key("proxy-a")
    b = proxy_server.key("proxy-b")
    ha = {"Authorization": f"Bearer {a['key']}", "X-Tenant-Id": "t1"}
    hb = {"Authorization": f"Bearer {b['key']}", "X-Tenant-Id": "t1"}
    resp = httpx.post(proxy_server.url + "/v1/criteria/generate", json=GEN, headers=ha)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-ratelimit-limit"] == "5"
    assert resp.json()["criteria"]
    # The upstream scoped the stored criteria by the org the gateway forwarded.
    assert httpx.get(proxy_server.url + "/v1/jobs/job_9/criteria", headers=ha).status_code == 200
    assert httpx.get(proxy_server.url + "/v1/jobs/job_9/criteria", headers=hb).status_code == 404


def test_proxy_mode_slow_upstream_is_504(proxy_server: Server) -> None:
    key = proxy_server.key("proxy-slow")
    headers = {
        "Authorization": f"Bearer {key['key']}",
        "X-Tenant-Id": "t1",
        "x-example-delay-ms": "5000",
    }
    resp = httpx.get(proxy_server.url + "/v1/jobs/j/criteria", headers=headers, timeout=30)
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "UPSTREAM_TIMEOUT"


def test_proxy_mode_upstream_down_is_502(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_server(tmp_path, proxy_policy(tmp_path, dead))
    try:
        key = server.key("proxy-down")
        headers = {"Authorization": f"Bearer {key['key']}", "X-Tenant-Id": "t1"}
        resp = httpx.get(server.url + "/v1/jobs/j/criteria", headers=headers)
        assert resp.status_code == 502
        err = resp.json()["error"]
        assert err["code"] == "UPSTREAM_UNAVAILABLE"
        assert err["requestId"] == resp.headers["x-request-id"]
        # The gateway itself stays up.
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        stop_server(server)


# ---- in-process -------------------------------------------------------------------------


def inner_app(events: list[str]) -> ASGIApp:
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse(
            {"org": request.headers.get("x-tollhouse-org"), "path": request.url.path}
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    starlette = Starlette(routes=[Route("/v1/score/{id}", hello)], lifespan=lifespan)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # A raw ASGI app that fails before answering: the gateway must answer for it.
        if scope["type"] == "http" and scope["path"] == "/boom":
            raise RuntimeError("inner failure")
        await starlette(scope, receive, send)

    return app


def root_key(database: Path, org: str) -> str:
    """A root key of ``org`` in the SQLite database at ``database`` (schema made first)."""

    async def make() -> str:
        engine = make_engine(f"sqlite:///{database}")
        await create_schema(engine)
        _, secret = await KeyStore(engine).create(org, "test", "root")
        await engine.dispose()
        return secret

    return asyncio.run(make())


def test_in_process_wrapping(tmp_path: Path) -> None:
    config = tmp_path / "tollhouse.toml"
    config.write_text(
        f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/t.db"\n'
        '[[buckets]]\nname = "small"\nlimit = 2\nwindow = "3650d"\n'
        'routes = ["GET /v1/score/{id}"]\n'
    )

    secret = root_key(tmp_path / "t.db", "inproc")
    events: list[str] = []
    app = Tollhouse(inner_app(events), config=config)
    headers = {"X-API-Key": secret}
    with serve_in_thread(app) as url:
        assert events == ["startup"]
        first = httpx.get(url + "/v1/score/abc", headers=headers)
        assert first.status_code == 200
        assert first.json() == {"org": None, "path": "/v1/score/abc"}  # in-process: no proxy
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert httpx.get(url + "/v1/score/abc", headers=headers).status_code == 200
        assert httpx.get(url + "/v1/score/abc", headers=headers).status_code == 429
        assert httpx.get(url + "/v1/score/abc").status_code == 401
        boom = httpx.get(url + "/boom", headers=headers)
        assert boom.status_code == 500
        assert boom.json()["error"]["code"] == "INTERNAL"
        assert "inner failure" not in boom.text
        assert "Traceback" not in boom.text
    assert events == ["startup", "shutdown"]
    assert load_settings(config).database_url.endswith("t.db")


def test_an_app_sending_one_prebuilt_start_message_gets_the_headers_once(tmp_path: Path) -> None:
    """Raw ASGI apps often send the same start message every time: the gateway adds its
    headers to a copy, never to the app's own message."""
    config = tmp_path / "tollhouse.toml"
    config.write_text(
        f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/t.db"\n'
        '[[buckets]]\nname = "roomy"\nlimit = 100\nwindow = "1d"\nroutes = ["GET /ping"]\n'
    )

    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}
    body = {"type": "http.response.body", "body": b"pong"}

    async def ping(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send(start)
        await send(body)

    secret = root_key(tmp_path / "t.db", "prebuilt")
    with serve_in_thread(Tollhouse(ping, config=config)) as url:
        for _ in range(3):
            answer = httpx.get(url + "/ping", headers={"X-API-Key": secret})
            assert answer.status_code == 200 and answer.text == "pong"
            names = [name.lower() for name, _ in answer.headers.raw]
            assert names.count(b"x-ratelimit-remaining") == 1
            assert names.count(b"x-request-id") == 1
    assert start["headers"] == [(b"x-app", b"1")]
