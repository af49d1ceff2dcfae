"""Redis over TLS (``rediss://``, ``rediss+cluster://``) against real TLS-only servers:
the certificate is verified against the CA the URL names, a server that is not trusted
(or a port without TLS) stops the start with a clear error, Redis not answering at start
does not, and ``tollhouse serve`` enforces a limit through a TLS Redis.

The decision round trips themselves run in the limit store contract
(tests/contract/test_limit_stores.py, params ``rediss`` and ``rediss+cluster``).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import Server, free_port, run_cli, start_server, stop_server
from tests.services import PostgresServer, RedisClusterNodes, RedisServer, make_ca
from tollhouse.errors import ConfigError
from tollhouse.limits import BucketCheck, open_store
from tollhouse.limits.cluster import ClusterStore, parse_cluster_url
from tollhouse.limits.redis import RedisStore

pytestmark = pytest.mark.redis

CHECK = (BucketCheck("{acme:SANDBOX}:b:tls", "tls", 5, 60.0, "fixed_window", 1),)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed none of the servers' certificates."""
    return make_ca(tmp_path_factory.mktemp("other-ca"), "some other CA")


def _with_ca(url: str, ca: Path | None) -> str:
    """``url`` with its ``ssl_ca_certs`` replaced (or dropped when ``ca`` is None)."""
    base = url.partition("?")[0]
    return base if ca is None else f"{base}?ssl_ca_certs={ca}"


# ---- the certificate is verified ------------------------------------------------------


def test_a_store_with_the_right_ca_decides_in_the_tls_redis(redis_tls_service: RedisServer) -> None:
    async def main() -> None:
        store = open_store(redis_tls_service.url, failures_to_open=1, timeout=5.0)
        assert isinstance(store, RedisStore)
        try:
            verdict = await store.decide(CHECK, (), 0.0)
            assert verdict.allowed and verdict.outcomes[0].remaining == 4
            assert not store.degraded
        finally:
            await store.aclose()

    with redis.Redis.from_url(redis_tls_service.url) as client:
        client.flushdb()
        asyncio.run(main())
        assert client.exists(CHECK[0].key)  # counted in the TLS Redis, not locally


@pytest.mark.parametrize("ca", ["other", "none"])
def test_a_server_not_signed_by_the_ca_stops_the_start(
    redis_tls_service: RedisServer, other_ca: Path, ca: str
) -> None:
    """Another CA, or none (the system's CAs): refused at open, never local limits."""
    url = _with_ca(redis_tls_service.url, other_ca if ca == "other" else None)
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = str(caught.value)
    assert f"the TLS certificate of 127.0.0.1:{redis_tls_service.port} is not trusted" in message
    assert "ssl_ca_certs=" in message


def test_a_cluster_node_not_signed_by_the_ca_stops_the_start(
    redis_tls_cluster_service: RedisClusterNodes, other_ca: Path
) -> None:
    url = _with_ca(redis_tls_cluster_service.url, other_ca)
    with pytest.raises(
        ConfigError, match=r"the TLS certificate of 127\.0\.0\.1:\d+ is not trusted"
    ):
        open_store(url)


@pytest.fixture
def plain_text_port() -> Iterator[int]:
    """A loopback port whose server answers every connection in plain text at once, as
    a Redis without TLS does to a command (a plain Redis may also just wait for more of
    a TLS hello: then it is one that does not answer, below)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"-ERR unknown command\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    listener.close()


def test_a_port_without_tls_stops_the_start(plain_text_port: int) -> None:
    with pytest.raises(ConfigError, match=f"TLS handshake with 127.0.0.1:{plain_text_port} failed"):
        open_store(f"rediss://127.0.0.1:{plain_text_port}/0")


def test_redis_not_answering_at_start_does_not_stop_it(redis_tls_service: RedisServer) -> None:
    """As without TLS: decisions are made without Redis until it answers."""
    assert redis_tls_service.tls is not None
    url = _with_ca(f"rediss://127.0.0.1:{free_port()}/0", redis_tls_service.tls.ca)

    async def main() -> None:
        store = open_store(url, failures_to_open=1)
        try:
            assert (await store.decide(CHECK, (), 0.0)).allowed
            assert store.degraded
        finally:
            await store.aclose()

    asyncio.run(main())


def test_open_store_picks_the_cluster_store_for_rediss_cluster(
    redis_tls_cluster_service: RedisClusterNodes,
) -> None:
    store = open_store(redis_tls_cluster_service.url)
    assert isinstance(store, ClusterStore)
    asyncio.run(store.aclose())


# ---- the URL's TLS options ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis://127.0.0.1:6379/0?ssl_ca_certs=/x.pem", "needs TLS: use rediss://"),
        ("redis+cluster://127.0.0.1:7000?ssl_ca_certs=/x.pem", "needs TLS"),
        ("rediss://127.0.0.1:6379/0?ssl_ca=/x.pem", "ssl_ca is not a TLS option"),
        ("rediss://127.0.0.1:6379/0?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe'"),
        ("rediss+cluster://127.0.0.1:7000?ssl_check_hostname=sure", "ssl_check_hostname"),
        ("rediss://127.0.0.1:6379/0?ssl_ca_certs=", "ssl_ca_certs needs one value"),
        ("rediss://127.0.0.1:6379/0?ssl_ca_certs=/nonexistent/ca.pem", "not a readable PEM"),
        ("rediss+cluster://127.0.0.1:7000?ssl_ca_certs=/nonexistent/ca.pem", "readable PEM"),
        ("rediss://127.0.0.1:6379/0?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss+cluster://127.0.0.1:7000?db=1", "'db=1' is not a cluster URL option"),
        ("rediss+cluster://127.0.0.1:7000/1", "database 0 only"),
        ("rediss+cluster://127.0.0.1", "is not HOST:PORT .use rediss\\+cluster://"),
    ],
)
def test_bad_tls_options_are_config_errors(url: str, error: str) -> None:
    """Found when the store opens, before anything connects."""
    with pytest.raises(ConfigError, match=error):
        open_store(url)


def test_tls_cluster_url_parts(other_ca: Path) -> None:
    ca = other_ca
    url = f"rediss+cluster://u:p@10.0.0.1:7000,10.0.0.2:7000/0?ssl_ca_certs={ca}"
    nodes, options = parse_cluster_url(url + "&ssl_check_hostname=false")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7000)]
    assert options == {
        "username": "u",
        "password": "p",
        "ssl": True,
        "ssl_ca_certs": str(ca),
        "ssl_check_hostname": False,
    }


# ---- tollhouse serve ------------------------------------------------------------------

POLICY = """
[upstream]
app = "tests.limits.hold_upstream:app"

[[buckets]]
name = "once"
limit = 1
window = "3650d"
routes = ["GET /v1/things/{thingId}"]
"""


@pytest.fixture
def tls_server(
    tmp_path: Path, redis_tls_service: RedisServer, postgres_service: PostgresServer
) -> Iterator[Server]:
    """`tollhouse serve` with PostgreSQL and its limits in the TLS Redis."""
    (tmp_path / "policy.toml").write_text(POLICY)
    env = {
        "TOLLHOUSE_DATABASE_URL": postgres_service.create_database(f"tls_{secrets.token_hex(4)}"),
        "TOLLHOUSE_REDIS_URL": redis_tls_service.url,
    }
    server = start_server(tmp_path, tmp_path / "policy.toml", env=env)
    yield server
    stop_server(server)


@pytest.mark.integration
@pytest.mark.postgres
def test_serve_enforces_a_limit_through_tls_redis(
    tls_server: Server, redis_tls_service: RedisServer
) -> None:
    org = f"tls{secrets.token_hex(4)}"
    headers = {"X-API-Key": tls_server.key(org)["key"]}
    with httpx.Client(base_url=tls_server.url, headers=headers, timeout=15) as c:
        assert c.get("/v1/things/a").status_code == 200
        denied = c.get("/v1/things/a")
        assert denied.status_code == 429, denied.text
        assert denied.json()["error"]["code"] == "RATE_LIMITED"
        status = c.get("/v1/rate-limit/status").json()
    assert not status["degraded"]  # decided in Redis, not from a local share
    assert status["buckets"]["once"]["remaining"] == 0
    with redis.Redis.from_url(redis_tls_service.url) as client:
        assert client.exists(f"{{{org}:SANDBOX}}:b:once")


@pytest.mark.integration
def test_serve_with_an_untrusted_redis_does_not_start(
    tmp_path: Path, redis_tls_service: RedisServer, other_ca: Path
) -> None:
    env = {"TOLLHOUSE_REDIS_URL": _with_ca(redis_tls_service.url, other_ca)}
    proc = run_cli("serve", "--port", str(free_port()), cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "is not trusted" in proc.stdout + proc.stderr
