"""SSRF: webhook targets that resolve to loopback, private, link-local… addresses are
refused at registration and at every delivery attempt (no connection made), unless
private targets are allowed explicitly."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpcore
import httpx
import pytest
from typer.testing import CliRunner

from tests.conftest import run_cli
from tests.jobs.conftest import database
from tollhouse.cli.webhooks import app as webhooks_cli
from tollhouse.jobs.outbox import stage_events
from tollhouse.jobs.schema import webhook_deliveries
from tollhouse.jobs.webhook_sender import WebhookSender
from tollhouse.jobs.webhook_store import WebhookStore
from tollhouse.jobs.webhooks import Delivery
from tollhouse.security.net import (
    HOW_TO_ALLOW,
    GuardedBackend,
    TargetRefused,
    check_address,
    check_target,
    refusal_reason,
)
from tollhouse.storage.transactions import write_transaction

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", ""),
    ("192.0.2.10", ""),  # documentation
    ("198.18.0.1", ""),  # benchmarking
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:100.64.0.1", "CGNAT"),
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("2001:db8::1", ""),  # documentation
]
ALLOWED = ["93.184.215.14", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    import ipaddress

    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found
    with pytest.raises(TargetRefused) as caught:
        check_address("hooks.example", address)
    message = str(caught.value)
    assert "hooks.example" in message and HOW_TO_ALLOW in message
    assert "allow_private_targets = true" in message
    assert "TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1" in message


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    check_address("hooks.example", address)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "https://2130706433/hook",  # decimal 127.0.0.1, resolved by the resolver
        "http://0177.0.0.1/hook",  # octal 127.0.0.1
        "http://0x7f.1/hook",  # hex, short form
        "http://10.0.0.5:9000/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://0/hook",
    ],
)
def test_targets_resolving_to_private_addresses_are_refused(url: str) -> None:
    with pytest.raises(TargetRefused):
        asyncio.run(check_target(url, allow_private=False))
    assert asyncio.run(check_target(url, allow_private=True)) == []


def test_localhost_is_named_with_its_address() -> None:
    with pytest.raises(TargetRefused) as caught:
        asyncio.run(check_target("http://localhost/hook", allow_private=False))
    assert caught.value.host == "localhost"
    assert "localhost resolves to" in str(caught.value)
    assert caught.value.address in ("127.0.0.1", "::1")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x/"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        asyncio.run(check_target(url, allow_private=True))


def test_store_refuses_at_registration(tmp_path: Path) -> None:
    async def body() -> None:
        async with database(f"sqlite:///{tmp_path / 'w.db'}") as engine:
            store = WebhookStore(engine)
            with pytest.raises(TargetRefused):
                await store.add_endpoint("acme", "http://127.0.0.1:9/hook")
            assert await store.list_endpoints() == []

    asyncio.run(body())


def test_cli_refuses_with_a_message_saying_how_to_allow(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    args = ["add", "--org", "acme", "--url", "http://localhost:9000/hook", "--database-url", db]
    refused = CliRunner().invoke(webhooks_cli, args)
    assert refused.exit_code == 2
    text = " ".join(refused.output.split())
    assert "localhost resolves to" in text and "loopback" in text
    assert "allow_private_targets = true" in text and "TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1" in text
    # Allowed through the environment (a real process, so settings are read as in use) …
    env = {"TOLLHOUSE_ALLOW_PRIVATE_TARGETS": "1"}
    run_cli("webhooks", *args, cwd=tmp_path, env=env)
    # … and through the policy's [security] table.
    policy = tmp_path / "dev.toml"
    policy.write_text("[security]\nallow_private_targets = true\n")
    run_cli("webhooks", *args, "--config", str(policy), cwd=tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("[security]\nallow_private_target = true\n")
    typo = run_cli("webhooks", *args, "--config", str(bad), cwd=tmp_path, check=False)
    assert typo.returncode == 2 and "security.allow_private_target" in typo.stderr


class Listener:
    """A TCP listener on loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


async def _deliver_once(store: WebhookStore) -> Delivery:
    async with write_transaction(store.engine, "test") as conn:
        await stage_events(
            conn, [("acme", "PRODUCTION", None, "test.event", {"n": 1})], datetime.now(UTC)
        )
    sender = WebhookSender(store, timeout=5, poll_interval=0.02)
    await sender.start()
    try:
        for _ in range(1000):
            # Settled: delivered, or rescheduled an hour on (not merely leased).
            later = datetime.now(UTC) + timedelta(seconds=600)
            done = [
                d
                for d in await store.deliveries("acme", environment="PRODUCTION")
                if d.attempts
                and (d.status != "pending" or (d.next_attempt_at and d.next_attempt_at > later))
            ]
            if done:
                return done[0]
            await asyncio.sleep(0.02)
    finally:
        await sender.stop()
    raise AssertionError("no attempt was recorded")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_delivery_refused_when_private_targets_are_not_allowed(
    tmp_path: Path, listener: Listener, host: str
) -> None:
    async def body() -> None:
        async with database(f"sqlite:///{tmp_path / 'w.db'}") as engine:
            # Registered while allowed (e.g. the policy changed since, or DNS did).
            allowed = WebhookStore(engine, allow_private_targets=True, schedule=(0.0, 3600.0))
            await allowed.add_endpoint("acme", f"http://{host}:{listener.port}/hook")
            denied = WebhookStore(engine, schedule=(0.0, 3600.0))
            d = await _deliver_once(denied)
            [attempt] = d.attempts
            assert attempt.status_code is None
            assert attempt.error is not None and "loopback" in attempt.error
            assert "TOLLHOUSE_ALLOW_PRIVATE_TARGETS=1" in attempt.error
            assert d.status == "pending"  # retried later, by the schedule
            assert listener.accepted == 0
            # The same delivery path, allowed: it connects (so the check above can fail).
            async with write_transaction(engine, "test") as conn:
                await conn.execute(webhook_deliveries.delete())
            ok = await _deliver_once(allowed)
            assert ok.attempts[0].status_code == 204 and ok.status == "delivered"
            assert listener.accepted == 1

    asyncio.run(body())


class HeadListener(Listener):
    """A listener that keeps the request head it received."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        super().__init__()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                self.heads.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")


def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept() -> None:
    """DNS rebinding: the name is resolved once, by the check, and the connection is made
    to the address the check returned — never to a second answer for the name. Here the
    name does not resolve at all outside the check, so the request only arrives if the
    connection used the checked address; the Host header still names the host."""
    lst = HeadListener()
    resolved: list[str] = []

    async def check(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]  # what a first (checked) DNS answer returned

    async def body() -> int:
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        transport._pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedBackend(resolve=check)
        )
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post(f"http://rebound.invalid:{lst.port}/hook", content=b"{}")
            return r.status_code

    try:
        assert asyncio.run(body()) == 204
    finally:
        lst.close()
    assert resolved == ["rebound.invalid"]  # resolved once, by the check
    assert lst.accepted == 1
    assert b"\r\nhost: rebound.invalid:" in lst.heads[0].lower()


def test_a_refusing_check_means_no_connection() -> None:
    lst = Listener()

    async def refuse(host: str, port: int) -> list[str]:
        raise TargetRefused(host, "127.0.0.1", "loopback")

    async def body() -> str:
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        transport._pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedBackend(resolve=refuse)
        )
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.get(f"http://127.0.0.1:{lst.port}/")
            return str(caught.value)

    try:
        message = asyncio.run(body())
    finally:
        lst.close()
    assert "loopback" in message and lst.accepted == 0
