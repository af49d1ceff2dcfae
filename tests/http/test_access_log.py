"""The access-log join of forward-auth, on its own: calls decided with 200 wait for their
line, are metered with its status and time, and give their pool slots back; calls whose
line never comes are metered with status 0 and keep their slots until the lease; a line
that comes after that moves its call from unknown to its status, once."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, start_server, stop_server
from tests.faults.support import wait_until
from tests.http.test_forward_auth_nginx import metered_calls
from tests.storage.support import database_url, run_with
from tollhouse.errors import ConfigError, PolicyError
from tollhouse.http.access_log import UNKNOWN_STATUS, AccessLogReceiver, AwaitingLog
from tollhouse.http.forward_auth import AUTHORIZE_PATH
from tollhouse.http.forwarded import TrustedProxies
from tollhouse.keys.store import KeyStore
from tollhouse.limits.memory import MemoryStore
from tollhouse.limits.store import Lease, PoolCheck
from tollhouse.metering.record import CallRecord
from tollhouse.policy.load import parse_policy
from tollhouse.settings import load_settings

__all__ = ["database_url"]  # the fixture, on SQLite and PostgreSQL

POOL = PoolCheck("pool:acme", "held", 1, 300.0)


class Calls:
    def __init__(self) -> None:
        self.recorded: list[CallRecord] = []
        self.moved: list[tuple[str, int, float]] = []

    def record(self, call: CallRecord) -> None:
        self.recorded.append(call)

    def reclassify(self, call: CallRecord, status: int, duration_ms: float) -> None:
        self.moved.append((call.request_id, status, duration_ms))


def _call(rid: str) -> CallRecord:
    return CallRecord(
        1000.0, "acme", "SANDBOX", "key_1", None, "API", "GET", "/v1/x", 0, 0.5, {}, rid
    )


async def _take(store: MemoryStore, now: float) -> tuple[Lease, ...]:
    verdict = await store.decide((), (POOL,), now)
    assert verdict.allowed
    return verdict.leases


async def _active(store: MemoryStore, now: float) -> int:
    _, pools = await store.peek((), (POOL,), now)
    return pools[0].active


def test_a_line_meters_the_call_and_frees_its_slot() -> None:
    async def go() -> None:
        store, calls = MemoryStore(), Calls()
        awaiting = AwaitingLog(calls, store, lambda: 1001.0, wait=60.0)
        awaiting.hold("req_a", _call("req_a"), await _take(store, 1000.0), 1000.0)
        assert not (await store.decide((), (POOL,), 1000.5)).allowed  # the slot is held
        receiver = AccessLogReceiver(awaiting, TrustedProxies(["127.0.0.1"]))
        line = (
            b'<190>Jan  1 00:00:00 nginx: {"request_id":"req_a","status":503,"request_time":0.25}'
        )
        receiver.datagram_received(line, ("127.0.0.1", 5000))
        await asyncio.sleep(0)  # the release runs as a task
        await asyncio.sleep(0)
        assert [(c.status, c.duration_ms) for c in calls.recorded] == [(503, 250.0)]
        assert await _active(store, 1001.0) == 0
        # The same line again, or a line for nobody: nothing more.
        receiver.datagram_received(line, ("127.0.0.1", 5000))
        assert len(calls.recorded) == 1 and receiver.lines == 2

    asyncio.run(go())


def test_untrusted_senders_and_malformed_lines_are_refused() -> None:
    async def go() -> None:
        store, calls = MemoryStore(), Calls()
        awaiting = AwaitingLog(calls, store, lambda: 1001.0, wait=60.0)
        awaiting.hold("req_b", _call("req_b"), (), 1000.0)
        receiver = AccessLogReceiver(awaiting, TrustedProxies(["127.0.0.1"]))
        good = b'{"request_id":"req_b","status":"200","request_time":"0.010"}'
        receiver.datagram_received(good, ("10.0.0.9", 5000))
        receiver.datagram_received(b'{"status":200}\n{not json', ("127.0.0.1", 5000))
        assert (receiver.refused, calls.recorded, len(awaiting)) == (3, [], 1)
        receiver.datagram_received(good, ("127.0.0.1", 5000))
        assert [c.status for c in calls.recorded] == [200] and len(awaiting) == 0

    asyncio.run(go())


def test_calls_without_a_line_are_metered_unknown_and_keep_their_slot() -> None:
    async def go() -> None:
        store, calls = MemoryStore(), Calls()
        awaiting = AwaitingLog(calls, store, lambda: 1000.0, wait=5.0)
        awaiting.hold("req_c", _call("req_c"), await _take(store, 1000.0), 1000.0)
        assert awaiting.expire(1004.0) == 0
        assert awaiting.expire(1005.0) == 1
        assert [(c.status, c.duration_ms) for c in calls.recorded] == [(UNKNOWN_STATUS, 0.5)]
        assert await _active(store, 1005.0) == 1  # left to the pool's lease
        assert await _active(store, 1301.0) == 0

    asyncio.run(go())


def test_a_reused_request_id_does_not_free_the_earlier_slot() -> None:
    async def go() -> None:
        store, calls = MemoryStore(), Calls()
        awaiting = AwaitingLog(calls, store, lambda: 1000.0, wait=60.0, cap=2)
        awaiting.hold("same", _call("same"), await _take(store, 1000.0), 1000.0)
        awaiting.hold("same", _call("same"), (), 1000.0)
        assert [c.status for c in calls.recorded] == [UNKNOWN_STATUS]
        assert awaiting.arrived("same", 200, 0.1)
        await asyncio.sleep(0)
        assert await _active(store, 1000.0) == 1
        # Past the cap, the oldest waiting call is metered as unknown.
        for rid in ("r1", "r2", "r3"):
            awaiting.hold(rid, _call(rid), (), 1000.0)
        assert len(awaiting) == 2 and awaiting.unknown == 2

    asyncio.run(go())


def test_the_forward_auth_table_and_setting_are_checked() -> None:
    for text, field in [
        (
            '[forward_auth]\naccess_log_listen = "tcp://127.0.0.1:5140"',
            "forward_auth.access_log_listen",
        ),
        (
            '[forward_auth]\naccess_log_listen = "udp://127.0.0.1:70000"',
            "forward_auth.access_log_listen",
        ),
        ('[forward_auth]\nlog_wait = "0s"', "forward_auth.log_wait"),
        ("[forward_auth]\nlisten = 1", "forward_auth.listen"),
        ('[forward_auth]\nheaders = "x-original"', "forward_auth.headers"),
    ]:
        with pytest.raises(PolicyError) as caught:
            parse_policy(text, "t.toml")
        assert caught.value.field == field, (text, caught.value)
    policy = parse_policy('[forward_auth]\naccess_log_listen = "udp://[::1]:5140"', "t")
    assert (policy.forward_auth.access_log_listen, policy.forward_auth.log_wait) == (
        "udp://[::1]:5140",
        60.0,
    )
    env = {"TOLLHOUSE_ACCESS_LOG_LISTEN": "udp://127.0.0.1:5141"}
    assert load_settings(environ=env).access_log_listen == "udp://127.0.0.1:5141"
    with pytest.raises(ConfigError, match="TOLLHOUSE_ACCESS_LOG_LISTEN"):
        load_settings(environ={"TOLLHOUSE_ACCESS_LOG_LISTEN": "5140"})


def test_a_late_line_moves_an_unknown_call_once_and_frees_its_slot() -> None:
    async def go() -> None:
        store, calls = MemoryStore(), Calls()
        answered: list[tuple[str | None, int]] = []
        awaiting = AwaitingLog(
            calls,
            store,
            lambda: 1010.0,
            wait=5.0,
            late=100.0,
            answered=lambda group, status: answered.append((group, status)),
        )
        awaiting.hold("req_d", _call("req_d"), await _take(store, 1000.0), 1000.0, "API")
        awaiting.hold("req_e", _call("req_e"), (), 1000.0, "API")
        assert awaiting.expire(1005.0) == 2
        assert [c.status for c in calls.recorded] == [UNKNOWN_STATUS, UNKNOWN_STATUS]
        assert answered == [("API", UNKNOWN_STATUS)] * 2
        receiver = AccessLogReceiver(awaiting, None)
        line = b'<190>nginx: {"request_id":"req_d","status":502,"request_time":75.5}'
        receiver.datagram_received(line, ("127.0.0.1", 5000))
        receiver.datagram_received(line, ("127.0.0.1", 5000))  # a second line: nothing
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert calls.moved == [("req_d", 502, 75500.0)]
        assert len(calls.recorded) == 2 and awaiting.late_joined == 1
        assert answered == [("API", UNKNOWN_STATUS)] * 2  # counters only go up
        assert await _active(store, 1010.0) == 0  # given back before its lease
        # A line past the late window finds nobody; nor does one for a reused id.
        awaiting.hold("req_f", _call("req_f"), (), 1006.0)
        assert awaiting.expire(1106.0) == 1
        assert not awaiting.arrived("req_e", 200, 0.1)  # remembered until 1105
        awaiting.hold("req_f", _call("req_f"), (), 1107.0)  # its id taken again
        assert awaiting.arrived("req_f", 204, 0.1)  # the new call's line
        assert calls.moved == [("req_d", 502, 75500.0)]
        assert [c.status for c in calls.recorded][-1] == 204

    asyncio.run(go())


def test_caddy_json_access_log_lines_are_joined_by_their_answer_request_id() -> None:
    async def go() -> None:
        store, calls = MemoryStore(), Calls()
        awaiting = AwaitingLog(calls, store, lambda: 1001.0, wait=60.0)
        awaiting.hold("req_g", _call("req_g"), (), 1000.0)
        receiver = AccessLogReceiver(awaiting, None)
        # As Caddy 2.6 writes it with `log { output net udp/… format json }`.
        line = (
            b'{"level":"error","ts":1796541067.3,"logger":"http.log.access.log0",'
            b'"msg":"handled request","request":{"remote_ip":"127.0.0.1","method":"GET",'
            b'"uri":"/x","headers":{"Accept":["*/*"]}},"user_id":"","duration":0.25,'
            b'"size":2,"status":503,"resp_headers":{"X-Request-Id":["req_g"],'
            b'"Server":["Caddy"]}}\n'
        )
        for bad in (
            b'{"level":"info","msg":"serving initial configuration"}',  # not an access line
            b'{"status":200,"resp_headers":{"X-Request-Id":[]}}',
            b'{"status":200,"resp_headers":["X-Request-Id"]}',
        ):
            receiver.datagram_received(bad, ("127.0.0.1", 5000))
        assert receiver.refused == 3 and not calls.recorded
        receiver.datagram_received(line, ("127.0.0.1", 5000))
        assert [(c.status, c.duration_ms) for c in calls.recorded] == [(503, 250.0)]

    asyncio.run(go())


@pytest.mark.integration
def test_serve_receives_the_lines_with_its_access_log_listen_flag(
    database_url: str, tmp_path: Path
) -> None:
    database = database_url

    async def make_key(db: Any) -> str:
        return (await KeyStore(db).create("acme", "test", "root"))[1]

    key = run_with(database, make_key)
    config = tmp_path / "tollhouse.toml"
    # No [forward_auth] table: the flag alone makes the server listen; log_wait stays
    # 60 s, so the call is metered within the test only if its line is joined.
    config.write_text(
        f'[storage]\ndatabase_url = "{database}"\n[proxy]\ntrusted_proxies = ["127.0.0.1/32"]\n'
    )
    log_port = free_port()
    server = start_server(tmp_path, config, "--access-log-listen", f"udp://127.0.0.1:{log_port}")
    try:
        asked = httpx.get(
            server.url + AUTHORIZE_PATH,
            headers={
                "Authorization": f"Bearer {key}",
                "X-Original-URI": "/v1/things",
                "X-Original-Method": "GET",
            },
        )
        assert asked.status_code == 200, asked.text
        line = b'<190>nginx: {"request_id":"%s","status":418,"request_time":0.25}' % (
            asked.headers["x-request-id"].encode()
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(line, ("127.0.0.1", log_port))
        wait_until(lambda: bool(metered_calls(database, "acme")), "the call metered")
        calls = metered_calls(database, "acme")
    finally:
        stop_server(server)
    assert [(c.method, c.status) for c in calls] == [("GET", 418)], server.output()
