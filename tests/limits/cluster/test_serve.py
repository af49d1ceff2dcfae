"""Two `tollhouse serve` processes on a real six-node Redis Cluster: exact admission
(with an override applied on the way), a reshard of the org's slot under traffic, and
the org's master SIGKILLed under traffic. Never a 5xx, never more admitted than Redis
counted, never more than the limit."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.crc import key_slot

from tests import services
from tests.conftest import serve_in_thread
from tests.ops.support import Process, cli, spawn_serve, wait_for, wait_healthy
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.redis,
    pytest.mark.postgres,
    # A hang guard: servers and a cluster start, fail over and recover on a busy machine.
    pytest.mark.timeout(120),
]

POLICY = """
[upstream]
url = "{upstream}"

[[buckets]]
name = "shared"
limit = {limit}
window = "3650d"
routes = ["GET /things*"]
"""


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@dataclass
class Fleet:
    """Two serve processes on one cluster, one PostgreSQL database, one upstream; an org's
    key."""

    cwd: Path
    env: dict[str, str]
    servers: list[Process]
    org: str
    secret: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    @property
    def counter(self) -> str:
        """The Redis key of the org's ``shared`` bucket (its keys are ``sk_test_``)."""
        return f"{{{self.org}:SANDBOX}}:b:shared"

    @property
    def slot(self) -> int:
        return key_slot(self.counter.encode())

    def status(self, server: Process) -> dict[str, Any]:
        r = httpx.get(server.url + "/v1/rate-limit/status", headers=self.auth, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def shared(self) -> list[dict[str, Any]]:
        """The ``shared`` bucket as each server reports it (read from the cluster)."""
        return [
            self.status(s)["buckets"]["shared"] | {"degraded": self.status(s)["degraded"]}
            for s in self.servers
        ]

    def used(self) -> int:
        """What Redis counted (both servers read the same counter)."""
        [a, b] = self.shared()
        assert not a["degraded"] and not b["degraded"]
        assert a["remaining"] == b["remaining"] and a["limit"] == b["limit"]
        return int(a["limit"] - a["remaining"])

    def override(self, limit: int) -> None:
        cli(
            self.cwd,
            self.env,
            "limits",
            "set",
            "--org",
            self.org,
            "--bucket",
            "shared",
            "--limit",
            str(limit),
        )
        wait_for(
            lambda: True if all(b["limit"] == limit for b in self.shared()) or None else None,
            "the override on both servers",
        )


@pytest.fixture
def fleet_on(tmp_path: Path, postgres_service: services.PostgresServer) -> Iterator[Any]:
    started: list[Process] = []

    def start(cluster: services.RedisClusterNodes, limit: int) -> Fleet:
        database = postgres_service.create_database("cl_" + uuid.uuid4().hex[:8])
        config = tmp_path / "tollhouse.toml"
        config.write_text(POLICY.format(upstream=upstream_url, limit=limit))
        org = "cl-" + uuid.uuid4().hex[:8]

        async def create_key() -> str:
            keys = KeyStore(make_engine(database))
            await create_schema(keys.engine)
            _, secret = await keys.create(org, "test", "root")
            await keys.engine.dispose()
            return secret

        secret = asyncio.run(create_key())
        env = {
            "TOLLHOUSE_CONFIG": str(config),
            "TOLLHOUSE_DATABASE_URL": database,
            "TOLLHOUSE_REDIS_URL": cluster.url,
            "TOLLHOUSE_INSTANCES": "2",
            "TOLLHOUSE_EMBEDDED_WORKERS": "0",
            # Shares of 100 units per server (of the large limits below) for when the
            # org's slot cannot be asked.
            "TOLLHOUSE_LIMITS_RESERVE": "0.0002",
        }
        servers = [spawn_serve(tmp_path, env, name=n) for n in ("a", "b")]
        started.extend(servers)
        return Fleet(tmp_path, env, [wait_healthy(s) for s in servers], org, secret)

    with serve_in_thread(_ok) as upstream_url:
        try:
            yield start
        finally:
            for s in started:
                s.stop()


@dataclass
class Traffic:
    """Threads sending the org's requests round robin over the servers until stopped;
    every answer counted by status (a transport error as 0)."""

    fleet: Fleet
    threads: int = 3
    codes: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)
    running: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.running.append(t)
        return self

    def _run(self, i: int) -> None:
        servers = itertools.cycle(self.fleet.servers[i % 2 :] + self.fleet.servers[: i % 2])
        with httpx.Client(headers=self.fleet.auth, timeout=10) as client:
            while not self.stopping.is_set():
                try:
                    code = client.get(next(servers).url + "/things").status_code
                except httpx.TransportError:
                    code = 0
                with self.lock:
                    self.codes[code] += 1

    def admitted(self) -> int:
        with self.lock:
            return self.codes[200]

    def more(self, n: int, what: str) -> None:
        """Wait until ``n`` more requests were admitted."""
        goal = self.admitted() + n
        wait_for(lambda: True if self.admitted() >= goal else None, what, timeout=60)

    def stop(self) -> Counter[int]:
        self.stopping.set()
        for t in self.running:
            t.join(timeout=30)
        return self.codes


def drain(fleet: Fleet, limit: int, admitted: int) -> None:
    """With the limit lowered to ``limit`` (an override): requests until both servers
    refused ten in a row; in all, at most the limit admitted, and every one Redis
    counted."""
    fleet.override(limit)
    codes: Counter[int] = Counter()
    refused = 0
    with httpx.Client(headers=fleet.auth, timeout=10) as client:
        for server in itertools.cycle(fleet.servers):
            code = client.get(server.url + "/things").status_code
            codes[code] += 1
            refused = refused + 1 if code == 429 else 0
            if refused == 10 or sum(codes.values()) > limit - admitted + 50:
                break
    assert refused == 10 and set(codes) <= {200, 429}, codes
    assert admitted + codes[200] <= limit, (admitted, codes)
    assert fleet.used() >= admitted + codes[200]


def test_two_servers_admit_exactly_the_limit(
    redis_cluster_service: services.RedisClusterNodes, fleet_on: Any
) -> None:
    fleet: Fleet = fleet_on(redis_cluster_service, 7)
    codes = [
        httpx.get(s.url + "/things", headers=fleet.auth, timeout=10).status_code
        for s, _ in zip(itertools.cycle(fleet.servers), range(20), strict=False)
    ]
    assert codes.count(200) == 7 and codes.count(429) == 13, codes
    assert fleet.used() == 7  # the status endpoint, on the cluster, from both servers
    # An override raises the limit in the running window: exactly two more.
    fleet.override(9)
    more = [
        httpx.get(s.url + "/things", headers=fleet.auth, timeout=10).status_code
        for s, _ in zip(itertools.cycle(fleet.servers), range(6), strict=False)
    ]
    assert more.count(200) == 2 and more.count(429) == 4, more
    assert fleet.used() == 9


def test_a_reshard_of_the_orgs_slot_under_traffic(
    redis_cluster_service: services.RedisClusterNodes, fleet_on: Any
) -> None:
    """The org's slot moves to another master while both servers take traffic: keys
    migrated one MIGRATE at a time (ASK meanwhile), then the slot given away (MOVED)."""
    cluster = redis_cluster_service
    fleet: Fleet = fleet_on(cluster, 1_000_000)
    slot = fleet.slot
    source = cluster.master_of(slot)
    target = next(m for _, _, m in cluster.slot_map(source) if m != source)
    src_id, dst_id = cluster.node_id(source), cluster.node_id(target)
    traffic = Traffic(fleet).start()
    try:
        traffic.more(30, "traffic before the reshard")
        assert cluster.call(source, "EXISTS", fleet.counter) == 1  # the slot in use moves
        cluster.call(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
        cluster.call(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)
        traffic.more(20, "traffic while the slot is migrating")
        while keys := cluster.call(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "1"):
            cluster.call(
                source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys
            )
            traffic.more(10, "traffic between two keys migrated")
        for port in cluster.alive():
            if "master" in cluster.call(port, "ROLE")[0]:
                cluster.call(port, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
        traffic.more(30, "traffic after the reshard")
    finally:
        codes = traffic.stop()
    cluster.wait_ok()
    print("reshard:", dict(codes))
    assert cluster.master_of(slot) == target
    assert cluster.call(target, "EXISTS", fleet.counter) == 1
    assert set(codes) <= {200}, codes  # no 5xx, no refusal, no transport error
    admitted = codes[200]
    assert fleet.used() >= admitted  # nothing admitted that Redis did not count
    drain(fleet, admitted + 10, admitted)


def test_the_orgs_master_killed_under_traffic(fleet_on: Any) -> None:
    """SIGKILL of the master serving the org while both servers take traffic: decided
    from shares while the slot is down, shared again once its replica took over."""
    with services.redis_cluster() as cluster:
        fleet: Fleet = fleet_on(cluster, 1_000_000)
        slot = fleet.slot
        master = cluster.master_of(slot)
        traffic = Traffic(fleet).start()
        try:
            traffic.more(50, "traffic before the kill")
            assert cluster.call(master, "EXISTS", fleet.counter) == 1  # the one in use
            cluster.kill(master)
            cluster.wait_failover(master)
            wait_for(
                lambda: True if not any(b["degraded"] for b in fleet.shared()) else None,
                "both servers sharing limits again",
                timeout=60,
            )
            traffic.more(50, "traffic after the failover")
        finally:
            codes = traffic.stop()
        print("master killed:", dict(codes))
        assert cluster.master_of(slot) != master
        assert set(codes) <= {200, 429}, codes  # no 5xx, no transport error
        admitted = codes[200]
        assert fleet.used() >= admitted  # nothing admitted that Redis did not count
        drain(fleet, fleet.used() + 10, admitted)
