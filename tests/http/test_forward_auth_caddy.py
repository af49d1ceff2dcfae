"""Forward-auth with a real Caddy from Debian: tollhouse as its ``forward_auth``.

Caddy (started here on loopback with the Caddyfile docs/forward-auth.md gives, on the
test's ports) proxies the upstream of the nginx tests, under their policy, and asks
``/v1/platform/authorize`` about every request, sending the original request in
``X-Forwarded-Method`` and ``X-Forwarded-Uri``. It returns tollhouse's refusals to the
client as they are (status, headers, envelope), and sends its JSON access log to
tollhouse over UDP, which joins each admitted call's status to its metering and frees its
pool slot. Runs on SQLite and on PostgreSQL.
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
from tests.http.test_forward_auth_docs import documented
from tests.http.test_forward_auth_nginx import (
    POLICY,
    Stack,
    Upstream,
    _calls_when_written,
    _decide_directly,
    _envelope,
    _org,
    check_a_forged_original_request_is_not_believed,
    check_a_pool_slot_is_held_until_its_line,
    check_orgs_and_environments_stay_apart,
)
from tests.services import PostgresServer, missing
from tollhouse import Tollhouse
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = pytest.mark.integration


def _caddyfile(tmp: Path, port: int, log_port: int, tollhouse: str, api: str) -> str:
    """The Caddyfile of docs/forward-auth.md as it is written, on the test's ports, with
    its files in ``tmp``."""
    site = documented(
        "caddyfile",
        {
            "api.example.com {": f"http://127.0.0.1:{port} {{",
            "forward_auth 127.0.0.1:8000 {": f"forward_auth {tollhouse} {{",
            "reverse_proxy 127.0.0.1:9000": f"reverse_proxy {api}",
            "udp/127.0.0.1:5140": f"udp/127.0.0.1:{log_port}",
        },
    )
    return f"{{\n\tadmin off\n\tauto_https off\n\tstorage file_system {tmp}/data\n}}\n" + site


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
            _caddyfile(
                tmp, port, log_port, tollhouse.removeprefix("http://"), api.removeprefix("http://")
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


#: The decision's headers Caddy copies to the upstream request on a route with buckets.
_LIMIT_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
_RATELIMIT_HEADERS = ("ratelimit", "ratelimit-policy")


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
    assert (r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) == ("3", "2")
    assert r.headers["ratelimit"].startswith('"limited";r=2;t=')
    # The upstream got the decision's rate-limit headers too, as the client did.
    for name in (*_LIMIT_HEADERS, *_RATELIMIT_HEADERS):
        assert seen[name] == r.headers[name], name
    assert [caddy.get("/v1/limited", key).status_code for _ in range(2)] == [200, 200]
    refused = caddy.get("/v1/limited", key)
    _envelope(refused, 429, "RATE_LIMITED")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining"] == "0"
    _envelope(caddy.get("/v1/limited"), 401, "UNAUTHORIZED")
    _envelope(caddy.get("/v1/admin/x", caddy.key(org, role="member")), 403, "FORBIDDEN")
    _envelope(caddy.get("/v1/a%2Fb", key), 400, "BAD_REQUEST")
    # A route without buckets: no rate-limit header on the answer, and none (not even a
    # placeholder's text) sent upstream.
    other = caddy.get("/v1/open", key)
    assert other.status_code == 200
    assert "x-ratelimit-limit" not in other.headers and "ratelimit" not in other.headers
    upstream = other.json()["headers"]
    assert not {*_LIMIT_HEADERS, *_RATELIMIT_HEADERS} & upstream.keys(), upstream
    assert not [v for v in upstream.values() if "{" in v], upstream
    assert upstream["x-tollhouse-org"] == org


def test_a_forged_original_request_is_not_believed_through_caddy(caddy: Stack) -> None:
    check_a_forged_original_request_is_not_believed(caddy)


def test_a_pool_slot_is_held_until_caddys_access_log_line_comes(caddy: Stack) -> None:
    check_a_pool_slot_is_held_until_its_line(caddy)


def test_orgs_and_environments_stay_apart_through_caddy(caddy: Stack) -> None:
    check_orgs_and_environments_stay_apart(caddy)


def test_metering_joins_the_upstream_status_from_caddys_access_log(caddy: Stack) -> None:
    org = _org()
    key = caddy.key(org)
    got = [caddy.get(f"/v1/status/{code}", key).status_code for code in (201, 404, 503)]
    assert got == [201, 404, 503]
    _decide_directly(caddy, key)  # no line will ever come for this one: status unknown
    calls = _calls_when_written(caddy, org, 4)
    assert sorted(call.status for call in calls) == [0, 201, 404, 503], calls
