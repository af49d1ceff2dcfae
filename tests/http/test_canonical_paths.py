"""One canonical path: spellings a lenient upstream treats alike cannot dodge a bucket or
an access rule, because the gateway matches and forwards the canonical path.

Real servers on loopback: an upstream that routes as leniently as Express's defaults (and
more), and tollhouse in front of it as a reverse proxy, driven with raw request targets.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import posixpath
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from starlette.types import Receive, Scope, Send

from tests.conftest import serve_in_thread
from tollhouse import Tollhouse
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

LIMIT = 2
#: Spellings of GET /v1/expensive that a lenient upstream serves as that route.
EXPENSIVE = [
    "/v1/expensive",
    "/v1/expensive/",
    "/V1/Expensive",
    "//v1/expensive",
    "/v1/expensive//",
    "/v1//expensive",
    "/v1/%65xpensive",
    "/V1/EXPENSIVE/",
    "/v1/%45XPENSIVE",
]
#: Spellings of /v1/admin/purge, with what the upstream receives for each: the pattern's
#: literals (``/v1/admin/``) take its spelling, the rest under ``*`` keeps the caller's.
ADMIN = {
    "/v1/admin/purge": "/v1/admin/purge",
    "/V1/admin/purge": "/v1/admin/purge",
    "/V1/Admin/Purge": "/v1/admin/Purge",
    "/v1/admin/purge/": "/v1/admin/purge",
    "//v1//admin/purge": "/v1/admin/purge",
    "/v1/%61dmin/purge": "/v1/admin/purge",
    "/V1/ADMIN/PURGE//": "/v1/admin/PURGE",
}
#: Spellings with no single meaning: refused before anything else.
REFUSED = [
    "/v1/./expensive",
    "/v1/x/../expensive",
    "/v1/%2e/expensive",
    "/v1/x/%2E%2e/expensive",
    "/v1%2Fexpensive",
    "/v1%2fexpensive",
    "/v1\\expensive",
    "/v1%5Cexpensive",
    "/v1/admin/./purge",
    "/v1/x/../admin/purge",
    "/v1/admin%2Fpurge",
]


def lenient_route(raw_path: str) -> str:
    """How the upstream resolves a path: escapes decoded, ``\\`` read as ``/``, dot
    segments resolved, ``//`` collapsed, trailing slash dropped, case ignored."""
    path = posixpath.normpath("/" + unquote(raw_path).replace("\\", "/"))
    return "/" + "/".join(s for s in path.split("/") if s).lower()


class LenientUpstream:
    """A raw ASGI API with GET /v1/expensive, /v1/admin/purge and GET /v1/score/{id},
    routed leniently; it records every raw path it receives."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        raw = scope["raw_path"].decode("latin-1")
        with self._lock:
            self.seen.append(raw)
        route = lenient_route(raw)
        body: dict[str, str] = {"raw_path": raw}
        if route == "/v1/expensive" and scope["method"] == "GET":
            body["route"] = "expensive"
        elif route == "/v1/admin/purge":
            body["route"] = "purge"
        elif route.startswith("/v1/score/") and route.count("/") == 3:
            body["route"] = "score"
            body["id"] = unquote(raw).rstrip("/").rsplit("/", 1)[1]  # as sent: ids keep case
        status = 200 if "route" in body else 404
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return self.seen[mark:]


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


def send_raw(base: str, target: str, key: str) -> Answer:
    """GET ``target`` exactly as written (httpx would normalise it first)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request("GET", target, headers={"X-API-Key": key})
        resp = conn.getresponse()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class Keys:
    """Creates keys in the gateway's database (a fresh org each, so buckets start full)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.count = 0

    def create(self, role: str) -> str:
        self.count += 1
        org = f"org-{role}-{self.count}"

        async def go() -> str:
            engine = make_engine(self.database_url)
            await create_schema(engine)
            _, secret = await KeyStore(engine).create(org, "test", role)
            await engine.dispose()
            return secret

        return asyncio.run(go())


POLICY = """
[upstream]
url = "{upstream}"

[storage]
database_url = "{database_url}"
{routing}
[[buckets]]
name = "expensive"
limit = {limit}
window = "3650d"
routes = ["GET /v1/expensive"]

[[buckets]]
name = "scores"
limit = 1000
window = "3650d"
routes = ["GET /v1/score/{{scoringJobId}}"]

[[access]]
routes = ["* /v1/admin/*"]
roles = ["root"]
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, LenientUpstream]]:
    app = LenientUpstream()
    with serve_in_thread(app) as url:
        yield url, app


@contextmanager
def gateway(tmp: Path, upstream_url: str, routing: str = "") -> Iterator[tuple[str, Keys]]:
    database_url = f"sqlite:///{tmp}/gateway.db"
    config = tmp / "tollhouse.toml"
    config.write_text(
        POLICY.format(
            upstream=upstream_url, database_url=database_url, routing=routing, limit=LIMIT
        )
    )
    keys = Keys(database_url)
    keys.create("root")  # the schema exists before the server starts
    with serve_in_thread(Tollhouse(config=config)) as url:
        yield url, keys


@pytest.fixture(scope="module")
def lenient_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: tuple[str, LenientUpstream]
) -> Iterator[tuple[str, Keys]]:
    """tollhouse with the default routing (trailing_slash "ignore", case-insensitive)."""
    with gateway(tmp_path_factory.mktemp("canonical"), upstream[0]) as served:
        yield served


def assert_bucket_headers(answer: Answer, remaining: int) -> None:
    h = answer.headers
    assert h["x-ratelimit-limit"] == str(LIMIT)
    assert h["x-ratelimit-remaining"] == str(remaining)
    assert h["ratelimit-policy"] == f'"expensive";q={LIMIT};w=315360000'
    assert h["ratelimit"].startswith(f'"expensive";r={remaining};t=')


@pytest.mark.parametrize("spelling", EXPENSIVE)
def test_every_spelling_takes_the_bucket(
    lenient_gateway: tuple[str, Keys], upstream: tuple[str, LenientUpstream], spelling: str
) -> None:
    url, keys = lenient_gateway
    key = keys.create("root")
    mark = len(upstream[1].seen)
    answers = [send_raw(url, spelling, key) for _ in range(LIMIT + 1)]
    assert [a.status for a in answers] == [200] * LIMIT + [429]
    for i, answer in enumerate(answers[:LIMIT]):
        assert answer.json()["route"] == "expensive"
        assert_bucket_headers(answer, LIMIT - 1 - i)
    assert answers[-1].headers["retry-after"]
    # The upstream received the canonical path, and only for the admitted requests.
    assert upstream[1].since(mark) == ["/v1/expensive"] * LIMIT


def test_spellings_share_one_bucket(
    lenient_gateway: tuple[str, Keys], upstream: tuple[str, LenientUpstream]
) -> None:
    """The attack: every spelling in turn, twice over; the bucket admits LIMIT in all."""
    url, keys = lenient_gateway
    key = keys.create("root")
    mark = len(upstream[1].seen)
    answers = [send_raw(url, s, key) for s in EXPENSIVE + EXPENSIVE]
    admitted = [a for a in answers if a.status == 200]
    assert len(admitted) == LIMIT
    assert all(a.status == 429 for a in answers if a.status != 200)
    for i, answer in enumerate(admitted):
        assert_bucket_headers(answer, LIMIT - 1 - i)
    assert upstream[1].since(mark) == ["/v1/expensive"] * LIMIT


def test_ambiguous_spellings_are_refused_before_anything(
    lenient_gateway: tuple[str, Keys], upstream: tuple[str, LenientUpstream]
) -> None:
    url, keys = lenient_gateway
    key = keys.create("root")
    mark = len(upstream[1].seen)
    for spelling in REFUSED:
        answer = send_raw(url, spelling, key)
        assert answer.status == 400, spelling
        error = answer.json()["error"]
        assert isinstance(error, dict) and error["code"] == "BAD_REQUEST"
    assert upstream[1].since(mark) == []
    # Refused before the key is read: no key at all gets the same answer.
    assert send_raw(url, REFUSED[0], "").status == 400
    # Nothing was counted: the bucket is still full.
    assert_bucket_headers(send_raw(url, "/v1/expensive", key), LIMIT - 1)


def test_member_is_refused_on_every_spelling_of_a_root_route(
    lenient_gateway: tuple[str, Keys], upstream: tuple[str, LenientUpstream]
) -> None:
    url, keys = lenient_gateway
    member = keys.create("member")
    root = keys.create("root")
    mark = len(upstream[1].seen)
    for spelling in ADMIN:
        answer = send_raw(url, spelling, member)
        assert answer.status == 403, spelling
        error = answer.json()["error"]
        assert isinstance(error, dict) and error["code"] == "FORBIDDEN"
    assert upstream[1].since(mark) == []
    for spelling, forwarded in ADMIN.items():
        answer = send_raw(url, spelling, root)
        assert answer.status == 200, spelling
        assert answer.json() == {"raw_path": forwarded, "route": "purge"}


def test_parameters_and_unmatched_paths_keep_the_callers_spelling(
    lenient_gateway: tuple[str, Keys], upstream: tuple[str, LenientUpstream]
) -> None:
    url, keys = lenient_gateway
    key = keys.create("root")
    answer = send_raw(url, "/V1/Score//SJ_AbC/", key)
    assert answer.status == 200
    assert answer.json() == {"raw_path": "/v1/score/SJ_AbC", "route": "score", "id": "SJ_AbC"}
    assert answer.headers["ratelimit-policy"] == '"scores";q=1000;w=315360000'
    # No pattern matches any case spelling of it: passed on as sent, tidied.
    answer = send_raw(url, "/V1/Unknown//Thing/", key)
    assert answer.status == 404
    assert answer.json() == {"raw_path": "/V1/Unknown/Thing"}
    assert "ratelimit-policy" not in answer.headers


def test_strict_and_case_sensitive_routing_match_and_forward_as_written(
    tmp_path: Path, upstream: tuple[str, LenientUpstream]
) -> None:
    """For an upstream that tells ``/x/`` from ``/x`` and ``/X`` from ``/x``: such
    spellings are other paths, each forwarded as it was matched."""
    routing = '[routing]\ntrailing_slash = "strict"\ncase_sensitive = true\n'
    with gateway(tmp_path, upstream[0], routing) as (url, keys):
        key = keys.create("root")
        for spelling in ("/v1/expensive/", "/V1/Expensive"):
            answer = send_raw(url, spelling, key)
            assert answer.json()["raw_path"] == spelling
            assert "ratelimit-policy" not in answer.headers  # not GET /v1/expensive
        # Empty segments are dropped whatever the settings; refusals stay.
        answer = send_raw(url, "//v1//expensive", key)
        assert answer.json()["raw_path"] == "/v1/expensive"
        assert_bucket_headers(answer, LIMIT - 1)
        assert send_raw(url, "/v1/expensive//", key).json()["raw_path"] == "/v1/expensive/"
        assert send_raw(url, "/v1/./expensive", key).status == 400
