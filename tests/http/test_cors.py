"""CORS: the header logic of :mod:`tollhouse.http.cors`, then a real server answering
preflights without a key or a bucket, and putting the CORS headers on every answer to an
allowed origin — the upstream's and the gateway's own (401, 403, 404, 429, 502)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from tests.conftest import serve_in_thread
from tollhouse import Tollhouse
from tollhouse.http.cors import CorsHeaders, find_header
from tollhouse.keys.store import KeyStore
from tollhouse.policy.model import Cors
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

APP = "http://app.test"
EVIL = "http://evil.test"

# ---- the header logic ---------------------------------------------------------------------


def headers_of(pairs: Any) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        out.setdefault(name, []).append(value)
    return out


def test_answers_to_listed_origins_reflect_the_origin() -> None:
    cors = CorsHeaders(Cors(allow_origins=(APP, "https://other.test")))
    allowed = headers_of(cors.response_headers(APP.encode()))
    assert allowed[b"access-control-allow-origin"] == [APP.encode()]
    assert allowed[b"vary"] == [b"Origin"]
    assert allowed[b"access-control-expose-headers"] == [
        b"X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, RateLimit, "
        b"RateLimit-Policy, Retry-After, X-Request-Id"
    ]
    assert b"access-control-allow-credentials" not in allowed
    # Another origin, or none: only Vary, so a cache keeps the answers apart.
    assert cors.response_headers(EVIL.encode()) == ((b"vary", b"Origin"),)
    assert cors.response_headers(None) == ((b"vary", b"Origin"),)
    # Origins are compared as browsers send them, byte for byte.
    assert cors.response_headers(b"HTTP://APP.TEST") == ((b"vary", b"Origin"),)
    assert cors.allows(APP.encode()) and not cors.allows(EVIL.encode())


def test_any_origin_answers_star_unless_credentials() -> None:
    star = CorsHeaders(Cors(allow_origins=("*",)))
    answer = headers_of(star.response_headers(EVIL.encode()))
    assert answer[b"access-control-allow-origin"] == [b"*"]
    assert star.response_headers(APP.encode()) is star.response_headers(EVIL.encode())
    assert star.response_headers(None) == ((b"vary", b"Origin"),)
    preflight, refused = star.preflight(EVIL.encode(), b"PUT", None)
    assert refused is None
    assert headers_of(preflight)[b"access-control-allow-origin"] == [b"*"]

    # With credentials (only possible with listed origins) the origin is reflected.
    creds = CorsHeaders(Cors(allow_origins=(APP,), allow_credentials=True))
    answer = headers_of(creds.response_headers(APP.encode()))
    assert answer[b"access-control-allow-origin"] == [APP.encode()]
    assert answer[b"access-control-allow-credentials"] == [b"true"]
    preflight, refused = creds.preflight(APP.encode(), b"GET", None)
    assert refused is None
    assert headers_of(preflight)[b"access-control-allow-credentials"] == [b"true"]


def test_preflight_headers_and_refusals() -> None:
    cors = CorsHeaders(Cors(allow_origins=(APP,), max_age=3600.0))
    headers, refused = cors.preflight(APP.encode(), b"POST", b"X-API-Key, content-type")
    assert refused is None
    got = headers_of(headers)
    assert got[b"access-control-allow-origin"] == [APP.encode()]
    assert got[b"access-control-allow-methods"] == [b"GET, HEAD, POST, PUT, PATCH, DELETE"]
    assert got[b"access-control-max-age"] == [b"3600"]
    assert got[b"vary"] == [
        b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    ]
    allow = got[b"access-control-allow-headers"][0].decode().split(", ")
    assert allow[:6] == [
        "Authorization",
        "X-API-Key",
        "Content-Type",
        "X-Tenant-Id",
        "Idempotency-Key",
        "X-Request-Id",
    ]
    assert {"Accept", "Accept-Language", "Content-Language"} <= set(allow)
    assert b"access-control-expose-headers" not in got  # not a preflight header

    # Safelisted headers are always allowed, and listed in the answer.
    narrow = CorsHeaders(Cors(allow_origins=(APP,), allow_headers=()))
    headers, refused = narrow.preflight(APP.encode(), b"POST", b"content-type")
    assert refused is None
    assert b"Content-Type" in headers_of(headers)[b"access-control-allow-headers"][0]
    _, refused = narrow.preflight(APP.encode(), b"GET", b"x-api-key")
    assert refused is not None and "x-api-key" in refused

    _, refused = cors.preflight(APP.encode(), b"OPTIONS", None)
    assert refused is not None and "'OPTIONS'" in refused
    headers, refused = cors.preflight(APP.encode(), b"GET", b"x-api-key,x-secret, x-other")
    assert refused is not None and "x-secret, x-other" in refused
    assert headers_of(headers)[b"access-control-allow-origin"] == [APP.encode()]
    headers, refused = cors.preflight(EVIL.encode(), b"GET", None)
    assert refused is not None and EVIL in refused
    assert b"access-control-allow-origin" not in headers_of(headers)

    # "*" headers: whatever the preflight asks for is allowed, by name.
    anything = CorsHeaders(Cors(allow_origins=(APP,), allow_headers=("*",)))
    headers, refused = anything.preflight(APP.encode(), b"GET", b"x-whatever, x-api-key")
    assert refused is None
    assert headers_of(headers)[b"access-control-allow-headers"] == [b"x-whatever, x-api-key"]


def test_wrap_replaces_the_apps_cors_headers() -> None:
    cors = CorsHeaders(Cors(allow_origins=(APP,), expose_headers=("Retry-After",)))
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def answer(origin: bytes | None) -> dict[bytes, list[bytes]]:
        sent.clear()
        wrapped = cors.wrap(send, origin)
        await wrapped(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"access-control-allow-origin", b"*"),
                    (b"access-control-allow-credentials", b"true"),
                    (b"vary", b"Accept-Encoding"),
                ],
            }
        )
        await wrapped({"type": "http.response.body", "body": b"{}"})
        assert sent[1] == {"type": "http.response.body", "body": b"{}"}
        return headers_of(sent[0]["headers"])

    allowed = asyncio.run(answer(APP.encode()))
    assert allowed[b"access-control-allow-origin"] == [APP.encode()]
    assert b"access-control-allow-credentials" not in allowed
    assert allowed[b"access-control-expose-headers"] == [b"Retry-After"]
    assert allowed[b"vary"] == [b"Accept-Encoding", b"Origin"]
    assert allowed[b"content-type"] == [b"application/json"]
    for origin in (EVIL.encode(), None):
        other = asyncio.run(answer(origin))
        assert not any(name.startswith(b"access-control-") for name in other)
        assert other[b"vary"] == [b"Accept-Encoding", b"Origin"]

    # Headers given as any iterable of pairs (not only a list) are read once, in order.
    async def from_generator() -> list[Any]:
        sent.clear()
        pairs = [(b"content-type", b"text/plain"), (b"access-control-max-age", b"9")]
        wrapped = cors.wrap(send, APP.encode())
        await wrapped({"type": "http.response.start", "status": 204, "headers": iter(pairs)})
        return list(sent[0]["headers"])

    assert asyncio.run(from_generator()) == [
        (b"content-type", b"text/plain"),
        *cors.response_headers(APP.encode()),
    ]


def test_listed_origins_headers_are_built_once() -> None:
    cors = CorsHeaders(Cors(allow_origins=(APP,)))
    assert cors.response_headers(APP.encode()) is cors.response_headers(APP.encode())
    # "*" with credentials (which the policy file refuses, but a Cors built in code may
    # say) reflects any origin, as Starlette does: built per request.
    anyone = CorsHeaders(Cors(allow_origins=("*",), allow_credentials=True))
    got = headers_of(anyone.response_headers(EVIL.encode()))
    assert got[b"access-control-allow-origin"] == [EVIL.encode()]


def test_find_header() -> None:
    headers = [(b"host", b"x"), (b"origin", APP.encode()), (b"origin", EVIL.encode())]
    assert find_header(headers, b"origin") == APP.encode()
    assert find_header(headers, b"access-control-request-method") is None


# ---- a real server ------------------------------------------------------------------------


def inner() -> ASGIApp:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["id"]})

    async def loose(request: Request) -> JSONResponse:
        # An upstream with a CORS policy of its own.
        return JSONResponse(
            {"loose": True},
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Credentials": "true",
                "Access-Control-Expose-Headers": "X-Secret",
                "Vary": "Accept-Encoding",
            },
        )

    return Starlette(
        routes=[
            Route("/v1/items/{id}", item),
            Route("/v1/admin/{id}", item),
            Route("/v1/loose", loose),
        ]
    )


POLICY = """
[storage]
database_url = "sqlite:///{db}"
{upstream}
{cors}

[[buckets]]
name = "items"
limit = 2
window = "3650d"
routes = ["GET /v1/items/{{id}}", "GET /v1/loose"]

[[access]]
routes = ["GET /v1/admin/*"]
roles = ["root"]
"""
CORS = f'[cors]\nallow_origins = ["{APP}", "http://other.test"]'


def write_policy(folder: Path, *, cors: str = CORS, upstream: str = "") -> Path:
    config = folder / "tollhouse.toml"
    config.write_text(POLICY.format(db=folder / "t.db", cors=cors, upstream=upstream))
    return config


def make_keys(folder: Path, *specs: tuple[str, str]) -> list[str]:
    """Keys for (org, role) pairs, made in the policy's database before the server starts."""

    async def make() -> list[str]:
        engine = make_engine(f"sqlite:///{folder / 't.db'}")
        try:
            await create_schema(engine)
            store = KeyStore(engine)
            return [(await store.create(org, "test", role))[1] for org, role in specs]
        finally:
            await engine.dispose()

    return asyncio.run(make())


@dataclass
class Served:
    url: str
    app: Tollhouse
    keys: list[str]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("cors")
    config = write_policy(folder)
    keys = make_keys(
        folder,
        ("cors-preflight", "root"),
        ("cors-answers", "root"),
        ("cors-answers-member", "member"),
        ("cors-evil", "root"),
        ("cors-loose", "root"),
    )
    app = Tollhouse(inner(), config=config)
    with serve_in_thread(app) as url:
        yield Served(url, app, keys)


def preflight(
    url: str, origin: str = APP, method: str = "GET", asked: str | None = "x-api-key"
) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": method}
    if asked is not None:
        headers["Access-Control-Request-Headers"] = asked
    return httpx.options(url, headers=headers)


def assert_cors(resp: httpx.Response, origin: str = APP) -> None:
    """The answer lets a page on ``origin`` read it, rate-limit headers included."""
    assert resp.headers.get_list("access-control-allow-origin") == [origin], resp.headers
    assert "Origin" in ", ".join(resp.headers.get_list("vary"))
    exposed = resp.headers["access-control-expose-headers"].lower().split(", ")
    assert {"retry-after", "ratelimit", "ratelimit-policy", "x-request-id"} <= set(exposed)
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= set(exposed)
    assert "access-control-allow-credentials" not in resp.headers


def assert_no_cors(resp: httpx.Response) -> None:
    assert not any(name.startswith("access-control-") for name in resp.headers), resp.headers


def items_remaining(url: str, key: str) -> int:
    status = httpx.get(url + "/v1/rate-limit/status", headers={"X-API-Key": key})
    assert status.status_code == 200, status.text
    remaining: int = status.json()["buckets"]["items"]["remaining"]
    return remaining


def test_preflight_needs_no_key_and_spends_nothing(served: Served) -> None:
    url, key = served.url, served.keys[0]
    before = served.app.counters.responses.get((None, 204), 0)
    for _ in range(5):  # more than the bucket's limit of 2
        resp = preflight(url + "/v1/items/a", asked="x-api-key, content-type, x-tenant-id")
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        assert resp.headers["access-control-allow-origin"] == APP
        assert resp.headers["access-control-allow-methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE"
        assert "X-API-Key" in resp.headers["access-control-allow-headers"].split(", ")
        assert resp.headers["access-control-max-age"] == "600"
        assert resp.headers["vary"] == (
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        )
        assert resp.headers["x-request-id"].startswith("req_")
        assert "x-ratelimit-remaining" not in resp.headers  # no bucket was asked
    assert served.app.counters.responses[(None, 204)] == before + 5
    # Nothing was spent: the whole bucket is left, and the first real call takes one.
    assert items_remaining(url, key) == 2
    first = httpx.get(url + "/v1/items/a", headers={"X-API-Key": key, "Origin": APP})
    assert first.status_code == 200
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert_cors(first)
    # A preflight to a path no route names, or with a key, is answered the same way.
    assert preflight(url + "/nowhere/at/all").status_code == 204
    assert items_remaining(url, key) == 1


def test_every_answer_to_an_allowed_origin_carries_cors(served: Served) -> None:
    url = served.url
    key, member = served.keys[1], served.keys[2]
    origin = {"Origin": APP}
    ok = [httpx.get(url + "/v1/items/b", headers={**origin, "X-API-Key": key}) for _ in range(2)]
    for resp in ok:
        assert resp.status_code == 200
        assert_cors(resp)
        assert resp.headers["ratelimit"].startswith('"items";r=')
    limited = httpx.get(url + "/v1/items/b", headers={**origin, "X-API-Key": key})
    assert limited.status_code == 429
    assert_cors(limited)
    assert int(limited.headers["retry-after"]) > 0
    assert limited.headers["ratelimit"].startswith('"items";r=0;t=')
    assert limited.json()["error"]["code"] == "RATE_LIMITED"

    unauthorized = httpx.get(url + "/v1/items/b", headers=origin)
    assert unauthorized.status_code == 401
    assert_cors(unauthorized)
    forbidden = httpx.get(url + "/v1/admin/x", headers={**origin, "X-API-Key": member})
    assert forbidden.status_code == 403
    assert_cors(forbidden)
    missing = httpx.get(url + "/v1/nothing-here", headers={**origin, "X-API-Key": key})
    assert missing.status_code == 404
    assert_cors(missing)
    bad_path = httpx.get(url + "/v1/items/%2Fetc", headers={**origin, "X-API-Key": key})
    assert bad_path.status_code == 400
    assert_cors(bad_path)
    status = httpx.get(url + "/v1/rate-limit/status", headers={**origin, "X-API-Key": key})
    assert status.status_code == 200
    assert_cors(status)
    health = httpx.get(url + "/healthz", headers={"Origin": "http://other.test"})
    assert_cors(health, "http://other.test")


def test_other_origins_get_no_cors(served: Served) -> None:
    url, key = served.url, served.keys[3]
    refused = preflight(url + "/v1/items/c", origin=EVIL)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "FORBIDDEN"
    assert EVIL in error["message"]
    assert error["requestId"] == refused.headers["x-request-id"]
    assert_no_cors(refused)
    assert "Origin" in refused.headers["vary"]

    # A simple request is answered (the browser, not the server, withholds it from the
    # page) without any CORS header, and counts like any other call.
    answered = httpx.get(url + "/v1/items/c", headers={"Origin": EVIL, "X-API-Key": key})
    assert answered.status_code == 200
    assert_no_cors(answered)
    assert answered.headers["vary"] == "Origin"
    assert answered.headers["x-ratelimit-remaining"] == "1"
    plain = httpx.get(url + "/v1/items/c", headers={"X-API-Key": key})
    assert plain.status_code == 200
    assert_no_cors(plain)
    assert plain.headers["vary"] == "Origin"
    assert items_remaining(url, key) == 0

    # From an allowed origin: a method or a header not allowed is refused, saying which.
    method = preflight(url + "/v1/items/c", method="OPTIONS")
    assert method.status_code == 403
    assert "'OPTIONS'" in method.json()["error"]["message"]
    header = preflight(url + "/v1/items/c", asked="x-api-key, x-secret")
    assert header.status_code == 403
    assert "x-secret" in header.json()["error"]["message"]
    # An OPTIONS request that is not a preflight goes through the gateway as usual.
    assert httpx.options(url + "/v1/items/c", headers={"Origin": APP}).status_code == 401


def test_the_upstreams_cors_headers_give_way(served: Served) -> None:
    url, key = served.url, served.keys[4]
    resp = httpx.get(url + "/v1/loose", headers={"Origin": APP, "X-API-Key": key})
    assert resp.status_code == 200
    assert_cors(resp)
    assert "x-secret" not in resp.headers["access-control-expose-headers"].lower()
    assert resp.headers.get_list("vary") == ["Accept-Encoding", "Origin"]
    plain = httpx.get(url + "/v1/loose", headers={"X-API-Key": key})
    assert_no_cors(plain)


def test_cors_off_changes_nothing(tmp_path: Path) -> None:
    config = write_policy(tmp_path, cors="")
    (key,) = make_keys(tmp_path, ("cors-off", "root"))
    app = Tollhouse(inner(), config=config)
    assert app.gateway.cors is None
    with serve_in_thread(app) as url:
        # The preflight is a request like any other: no key, 401.
        resp = preflight(url + "/v1/items/a")
        assert resp.status_code == 401
        assert_no_cors(resp)
        assert "vary" not in resp.headers
        loose = httpx.get(url + "/v1/loose", headers={"Origin": APP, "X-API-Key": key})
        assert loose.headers["access-control-allow-origin"] == "*"  # the upstream's own
        assert loose.headers["access-control-expose-headers"] == "X-Secret"
        assert loose.headers.get_list("vary") == ["Accept-Encoding"]


def test_reverse_proxy_answers_and_its_502(tmp_path: Path) -> None:
    """Through the reverse proxy: the upstream's CORS headers are replaced, and the 502
    the gateway writes when the upstream is gone carries the CORS headers too."""
    with contextlib.ExitStack() as upstream:
        upstream_url = upstream.enter_context(serve_in_thread(inner()))
        config = write_policy(tmp_path, upstream=f'[upstream]\nurl = "{upstream_url}"')
        (key,) = make_keys(tmp_path, ("cors-proxy", "root"))
        headers = {"Origin": APP, "X-API-Key": key}
        with serve_in_thread(Tollhouse(config=config)) as url:
            resp = httpx.get(url + "/v1/loose", headers=headers)
            assert resp.status_code == 200
            assert resp.json() == {"loose": True}
            assert_cors(resp)
            assert resp.headers.get_list("vary") == ["Accept-Encoding", "Origin"]
            upstream.close()  # the upstream goes away
            gone = httpx.get(url + "/v1/loose", headers=headers)
            assert gone.status_code == 502
            assert gone.json()["error"]["code"] == "UPSTREAM_UNAVAILABLE"
            assert_cors(gone)
