"""``[proxy] trusted_proxies``: client addresses behind a load balancer, and nothing forged.

The rules as a unit (the same as uvicorn's ``forwarded_allow_ips``), then a real nginx from
Debian in front of tollhouse: callers on different loopback addresses reach a per-IP bucket
through nginx and are told apart by the address nginx forwards, while a caller that talks
to tollhouse directly cannot pick its address with a forged ``X-Forwarded-For``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, serve_in_thread, sqlite_key
from tests.services import missing
from tollhouse import Tollhouse
from tollhouse.errors import ConfigError
from tollhouse.http.forwarded import TrustedProxies


def _scope(peer: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "client": (peer, 5000), "scheme": "http", "headers": headers}


def test_untrusted_peer_keeps_its_own_address() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    scope = _scope("203.0.113.5", [(b"x-forwarded-for", b"198.51.100.1")])
    trusted.resolve(scope)
    assert scope["client"] == ("203.0.113.5", 5000)
    assert "state" not in scope


def test_trusted_peer_gives_the_rightmost_untrusted_address() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "192.0.2.7"])
    scope = _scope(
        "10.1.2.3",
        [
            (b"x-forwarded-for", b"198.51.100.1, 203.0.113.9"),
            (b"x-forwarded-for", b"192.0.2.7"),
            (b"x-forwarded-proto", b"https"),
        ],
    )
    trusted.resolve(scope)
    # 192.0.2.7 is a trusted hop; 203.0.113.9 is the first address nobody vouches past.
    assert scope["client"] == ("203.0.113.9", 0)
    assert scope["scheme"] == "https"
    assert scope["state"]["peer"] == ("10.1.2.3", 5000)


def test_a_chain_of_trusted_hops_only_gives_the_first() -> None:
    trusted = TrustedProxies(["127.0.0.1"])
    scope = _scope("127.0.0.1", [(b"x-forwarded-for", b"127.0.0.1, 127.0.0.1")])
    trusted.resolve(scope)
    assert scope["client"] == ("127.0.0.1", 0)


def test_ipv6_and_bad_entries() -> None:
    trusted = TrustedProxies(["::1", "fd00::/8"])
    scope = _scope("::1", [(b"x-forwarded-for", b"2001:db8::5")])
    trusted.resolve(scope)
    assert scope["client"] == ("2001:db8::5", 0)
    with pytest.raises(ConfigError, match="not an IP network"):
        TrustedProxies(["10.0.0.0/33"])


# -- a real nginx in front -------------------------------------------------------------------

NGINX = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {tollhouse};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""

POLICY = """
[upstream]
url = "{upstream}"

[proxy]
trusted_proxies = ["127.0.0.1/32"]

[storage]
database_url = "sqlite:///{db}"

[[buckets]]
name = "per_address"
limit = 1
window = "3650d"
scope = "ip"
routes = ["GET /headers"]
"""


@pytest.fixture
def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        missing("nginx", "apt-get install nginx-light")
    return found


@pytest.fixture
def stack(tmp_path: Path, nginx_binary: str) -> Iterator[tuple[str, str, str]]:
    """(nginx URL, tollhouse URL, key): nginx → tollhouse → an echo upstream."""
    db = tmp_path / "t.db"

    key = sqlite_key(db)

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        import orjson

        body = orjson.dumps({k.decode(): v.decode() for k, v in scope["headers"]})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with serve_in_thread(echo) as upstream:
        config = tmp_path / "tollhouse.toml"
        config.write_text(POLICY.format(upstream=upstream, db=db))
        with serve_in_thread(Tollhouse(config=config)) as tollhouse:
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (tmp_path / sub).mkdir()
            port = free_port()
            conf = tmp_path / "nginx.conf"
            conf.write_text(NGINX.format(tmp=tmp_path, port=port, tollhouse=tollhouse))
            proc = subprocess.Popen([nginx_binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}"
                for _ in range(200):
                    try:
                        httpx.get(url + "/healthz", timeout=1)
                        break
                    except httpx.TransportError:
                        assert proc.poll() is None, (tmp_path / "error.log").read_text()
                        time.sleep(0.05)
                yield url, tollhouse, key
            finally:
                proc.terminate()
                proc.wait(10)


def _client(base: str, key: str, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(
        base_url=base, transport=transport, headers={"Authorization": f"Bearer {key}"}
    )


def test_nginx_in_front_tells_clients_apart(stack: tuple[str, str, str]) -> None:
    nginx, tollhouse, key = stack
    with _client(nginx, key, "127.0.0.2") as a, _client(nginx, key, "127.0.0.3") as b:
        first_a = a.get("/headers", headers={"X-Forwarded-For": "9.9.9.9"})
        assert first_a.status_code == 200, first_a.text
        seen = first_a.json()
        # nginx said the client is 127.0.0.2; tollhouse keeps that and adds nginx itself.
        assert seen["x-forwarded-for"] == "127.0.0.2, 127.0.0.1"
        assert seen["x-real-ip"] == "127.0.0.2"
        assert seen["x-forwarded-proto"] == "https"
        assert a.get("/headers").status_code == 429  # 127.0.0.2's one call is spent
        assert b.get("/headers").status_code == 200  # 127.0.0.3 has its own

    # Straight to tollhouse from 127.0.0.3 (not a trusted proxy): a forged address is
    # ignored, so the caller cannot claim a fresh bucket.
    with _client(tollhouse, key, "127.0.0.3") as direct:
        forged = direct.get("/headers", headers={"X-Forwarded-For": "198.51.100.77"})
        assert forged.status_code == 429
        with _client(tollhouse, key, "127.0.0.4") as other:
            fresh = other.get("/headers", headers={"X-Forwarded-For": "127.0.0.3"})
            assert fresh.status_code == 200
            assert fresh.json()["x-forwarded-for"] == "127.0.0.4"
