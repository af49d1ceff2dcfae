"""Forward-auth with a real Caddy from Debian: tollhouse as its ``forward_auth``.

Caddy (started here on loopback with the Caddyfile docs/forward-auth.md gives) proxies
the upstream of the nginx tests and asks ``/v1/platform/authorize`` about every request,
sending the original request in ``X-Forwarded-Method`` and ``X-Forwarded-Uri``. It returns
tollhouse's refusals to the client as they are (status, headers, envelope), and sends its
JSON access log to tollhouse over UDP, which joins each admitted call's status to its
metering. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, serve_in_thread
from tests.http.test_forward_auth_nginx import (
    Stack,
    Upstream,
    _calls_when_written,
    _decide_directly,
    _envelope,
    _org,
)
from tests.services import PostgresServer, missing
from tollhouse import Tollhouse
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.integration

POLICY = """
[upstream]
url = "http://127.0.0.1:9"   # never used: Caddy sends the requests upstream

[proxy]
trusted_proxies = ["127.0.0.1/32"]

[forward_auth]
access_log_listen = "udp://127.0.0.1:{log_port}"
log_wait = "1s"

[storage]
database_url = "{db}"

[[buckets]]
name = "limited"
limit = 2
window = "3650d"
scope = "key"
routes = ["GET /v1/limited"]

[[access]]
routes = ["* /v1/admin/*"]
roles = ["root"]
"""

#: The Caddyfile of docs/forward-auth.md, with the test's ports.
CADDYFILE = r"""
{{
	admin off
	auto_https off
	storage file_system {tmp}/data
}}
http://127.0.0.1:{port} {{
	# The JSON access log tollhouse joins to its decisions (see Metering below).
	log {{
		output net udp/127.0.0.1:{log_port}
		format json
	}}
	# Caddy 2.6 copies a header the decision lacks (a route without buckets) as its
	# placeholder's text: those are dropped; the others are set on the answer.
	@no_limits header_regexp X-RateLimit-Limit ^\{{
	@limits header_regexp X-RateLimit-Limit ^[0-9]
	route {{
		forward_auth {tollhouse} {{
			uri /v1/platform/authorize
			copy_headers {{
				X-Tollhouse-Org
				X-Tollhouse-Environment
				X-Tollhouse-Key-Id
				X-Tollhouse-Role
				X-Request-Id
				X-RateLimit-Limit
				X-RateLimit-Remaining
				X-RateLimit-Reset
				RateLimit
				RateLimit-Policy
			}}
		}}
		request_header @no_limits -X-RateLimit-Limit
		request_header @no_limits -X-RateLimit-Remaining
		request_header @no_limits -X-RateLimit-Reset
		request_header @no_limits -RateLimit
		request_header @no_limits -RateLimit-Policy
		request_header -Authorization
		request_header -X-API-Key
		header X-Request-Id {{http.request.header.X-Request-Id}}
		header @limits X-RateLimit-Limit {{http.request.header.X-RateLimit-Limit}}
		header @limits X-RateLimit-Remaining {{http.request.header.X-RateLimit-Remaining}}
		header @limits X-RateLimit-Reset {{http.request.header.X-RateLimit-Reset}}
		header @limits RateLimit {{http.request.header.RateLimit}}
		header @limits RateLimit-Policy {{http.request.header.RateLimit-Policy}}
		reverse_proxy {api}
	}}
}}
"""


def _caddy_binary() -> str:
    found = shutil.which("caddy") or ("/usr/bin/caddy" if Path("/usr/bin/caddy").exists() else "")
    if not found:
        missing("caddy", "apt-get install caddy")
    return found


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def caddy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Caddy (forward_auth → tollhouse) in front of :class:`Upstream`."""
    binary = _caddy_binary()
    tmp = tmp_path_factory.mktemp("caddy")
    if request.param == "sqlite":
        database = f"sqlite:///{tmp / 't.db'}"
    else:
        pg: PostgresServer = request.getfixturevalue("postgres_service")
        database = pg.create_database(f"caddy_{secrets.token_hex(4)}")

    async def schema() -> None:
        engine = make_engine(database)
        await create_schema(engine)
        await engine.dispose()

    asyncio.run(schema())
    config = tmp / "tollhouse.toml"
    log_port = free_port()
    config.write_text(POLICY.format(db=database, log_port=log_port))
    upstream = Upstream()
    app = Tollhouse(config=config)
    with serve_in_thread(upstream) as api, serve_in_thread(app) as tollhouse:
        port = free_port()
        caddyfile = tmp / "Caddyfile"
        caddyfile.write_text(
            CADDYFILE.format(
                tmp=tmp,
                port=port,
                log_port=log_port,
                tollhouse=tollhouse.removeprefix("http://"),
                api=api.removeprefix("http://"),
            )
        )
        log = (tmp / "caddy.log").open("w")
        proc = subprocess.Popen(
            [binary, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"HOME": str(tmp), "XDG_DATA_HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp)},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    httpx.get(url + "/", timeout=1)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp / "caddy.log").read_text()
                    time.sleep(0.05)
            yield Stack(url, tollhouse, upstream, app, database, log_port)
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()


def test_caddy_copies_the_decision_and_returns_refusals(caddy: Stack) -> None:
    org = _org()
    key = caddy.key(org)
    r = caddy.get("/v1/limited", key, **{"X-Tollhouse-Org": "forged"})
    assert r.status_code == 200, r.text
    seen = r.json()["headers"]
    assert (seen["x-tollhouse-org"], seen["x-tollhouse-environment"]) == (org, "SANDBOX")
    assert seen["x-tollhouse-role"] == "root"
    assert "authorization" not in seen
    assert r.headers["x-request-id"] == seen["x-request-id"]
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("2", "1")
    assert r.headers["ratelimit"].startswith('"limited";r=1;t=')
    assert caddy.get("/v1/limited", key).status_code == 200
    refused = caddy.get("/v1/limited", key)
    _envelope(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining"] == "0"
    _envelope(caddy.get("/v1/limited"), 401, "UNAUTHORIZED")
    _envelope(caddy.get("/v1/admin/x", caddy.key(org, role="member")), 403, "FORBIDDEN")
    _envelope(caddy.get("/v1/a%2Fb", key), 400, "BAD_REQUEST")
    # A route without buckets: no rate-limit header, not even an empty one.
    other = caddy.get("/v1/open", key)
    assert other.status_code == 200
    assert "x-ratelimit-limit" not in other.headers and "ratelimit" not in other.headers


def test_metering_joins_the_upstream_status_from_caddys_access_log(caddy: Stack) -> None:
    org = _org()
    key = caddy.key(org)
    got = [caddy.get(f"/v1/status/{code}", key).status_code for code in (201, 404, 503)]
    assert got == [201, 404, 503]
    _decide_directly(caddy, key)  # no line will ever come for this one: status unknown
    calls = _calls_when_written(caddy, org, 4)
    assert sorted(status for *_, status in calls) == [0, 201, 404, 503], calls
