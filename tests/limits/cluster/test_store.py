"""The limit store on a real six-node Redis Cluster (``redis+cluster://``): exact
decisions over pools and buckets of orgs on every master, one write per master per round
trip, the write-back split per slot, ``ASK`` and ``MOVED`` followed while a slot moves,
and a clear error when no startup node answers."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from redis.crc import key_slot

from tests import services
from tollhouse.errors import ConfigError, StorageError
from tollhouse.limits import cluster as cluster_module
from tollhouse.limits import open_store
from tollhouse.limits.cluster import ClusterStore, _ClusterLink, parse_cluster_url
from tollhouse.limits.store import BucketCheck, PoolCheck

pytestmark = [pytest.mark.integration, pytest.mark.redis]

NOW = 1_800_000_000.0


def bucket(org: str, name: str, limit: int) -> BucketCheck:
    return BucketCheck(f"{{{org}:test}}:b:{name}", name, limit, 3600.0, "fixed_window", 1)


def orgs_on_every_master(cluster: services.RedisClusterNodes, per_master: int = 1) -> list[str]:
    """Fresh org names, ``per_master`` of them served by each master."""
    found: dict[int, list[str]] = {}
    masters = {port for _, _, port in cluster.slot_map(cluster.alive()[0])}
    while any(len(found.get(m, [])) < per_master for m in masters):
        org = "o" + uuid.uuid4().hex[:8]
        master = cluster.master_of(key_slot(f"{{{org}:test}}".encode()))
        if len(found.setdefault(master, [])) < per_master:
            found[master].append(org)
    return [org for orgs in found.values() for org in orgs]


def store_on(cluster: services.RedisClusterNodes) -> ClusterStore:
    """A store deciding at the ``now`` the test passes (as tests/limits/test_redis.py)."""
    assert isinstance(open_store(cluster.url), ClusterStore)  # what the server opens
    return ClusterStore(cluster.url, caller_clock=True)


def test_exact_decisions_on_every_master_one_write_per_master(
    redis_cluster_service: services.RedisClusterNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = redis_cluster_service
    orgs = orgs_on_every_master(cluster)
    writes: Counter[str] = Counter()
    real = cluster_module._exchange

    async def counted(conn: Any, commands: list[bytes], asking: list[bool], wait: bytes) -> Any:
        writes[f"{conn.host}:{conn.port}"] += 1
        return await real(conn, commands, asking, wait)

    monkeypatch.setattr(cluster_module, "_exchange", counted)

    async def scenario() -> None:
        store = store_on(cluster)
        try:
            checks = {
                o: ((bucket(o, "calls", 50),), (PoolCheck(f"{{{o}:test}}:p:run", "run", 3, 30.0),))
                for o in orgs
            }
            # Concurrent calls of every org: pipelined, a write or two per master.
            verdicts = await asyncio.gather(
                *(store.decide((bucket(o, "calls", 50),), (), NOW) for o in orgs for _ in range(80))
            )
            assert sum(v.allowed for v in verdicts) == 50 * len(orgs)
            assert set(writes) == {
                f"127.0.0.1:{p}" for p in {m for _, _, m in cluster.slot_map(cluster.alive()[0])}
            }
            assert max(writes.values()) <= 4, writes  # 80 calls each, not 80 writes
            # Pools: three slots, the fourth refused; a released slot is free again.
            org = orgs[0]
            b, p = checks[org]
            pool_only = ((), p)
            held = [await store.decide(*pool_only, NOW) for _ in range(4)]
            assert [v.allowed for v in held] == [True, True, True, False]
            assert held[3].pool_denied and held[3].denied_by == "run"
            await store.release(held[0].leases[0], NOW)
            assert (await store.decide(*pool_only, NOW)).allowed
            # The status read: used and active as decided.
            stats, pools = await store.peek(b, p, NOW)
            assert stats[0].used == 50 and stats[0].remaining == 0
            assert pools[0].active == 3
            assert store.local_decisions == 0 and not store.degraded
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_admissions_without_redis_are_written_back_one_script_per_slot(
    redis_cluster_service: services.RedisClusterNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone on the cluster: one failed round trip decides from what Redis last said;
    the write-back then covers orgs on several masters, one script per slot (never
    CROSSSLOT), before anything else."""
    cluster = redis_cluster_service
    orgs = orgs_on_every_master(cluster)
    real = _ClusterLink.round_trip
    failures = [1]

    async def once(link: _ClusterLink, commands: list[bytes], slots: list[int]) -> list[Any]:
        if failures and failures.pop():
            raise StorageError("no answer from Redis within 0.1 s")
        return await real(link, commands, slots)

    async def scenario() -> None:
        store = store_on(cluster)
        try:
            checks = [(bucket(o, "calls", 4),) for o in orgs]
            for c in checks:
                assert [(await store.decide(c, (), NOW)).allowed for _ in range(2)] == [True] * 2
            monkeypatch.setattr(_ClusterLink, "round_trip", once)
            local = await asyncio.gather(*(store.decide(c, (), NOW) for c in checks))
            assert all(v.allowed for v in local) and store.local_decisions == len(orgs)
            assert store.unsettled_units() == len(orgs)
            for c in checks:
                assert (await store.decide(c, (), NOW)).allowed  # the write-back first
                assert not (await store.decide(c, (), NOW)).allowed
            assert store.unsettled_units() == 0
            for c in checks:
                stats, _ = await store.peek(c, (), NOW)
                assert stats[0].used == 4
        finally:
            monkeypatch.undo()
            await store.aclose()

    asyncio.run(scenario())


def test_ask_and_moved_are_followed_while_the_slot_moves(
    redis_cluster_service: services.RedisClusterNodes,
) -> None:
    """The org's slot migrates to another master step by step (IMPORTING/MIGRATING,
    MIGRATE, SETSLOT NODE) between decisions: every decision is made in Redis (none
    locally), exactly the limit is admitted, and the store then asks the new master."""
    cluster = redis_cluster_service
    org = orgs_on_every_master(cluster)[0]
    c = (bucket(org, "calls", 10),)
    slot = key_slot(f"{{{org}:test}}".encode())
    source = cluster.master_of(slot)
    target = next(m for _, _, m in cluster.slot_map(source) if m != source)
    src_id, dst_id = cluster.node_id(source), cluster.node_id(target)

    async def scenario() -> None:
        store = store_on(cluster)
        try:
            admitted = [(await store.decide(c, (), NOW)).allowed for _ in range(3)]
            cluster.call(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", src_id)
            cluster.call(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", dst_id)
            admitted += [(await store.decide(c, (), NOW)).allowed for _ in range(2)]
            keys = cluster.call(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100")
            assert c[0].key in keys
            cluster.call(
                source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys
            )
            # The key is on the importing master now: the source answers ASK.
            admitted += [(await store.decide(c, (), NOW)).allowed for _ in range(2)]
            for port in cluster.alive():
                if port in (source, target) or "master" in cluster.call(port, "ROLE")[0]:
                    cluster.call(port, "CLUSTER", "SETSLOT", str(slot), "NODE", dst_id)
            # The source now answers MOVED: the map follows.
            admitted += [(await store.decide(c, (), NOW)).allowed for _ in range(8)]
            assert admitted == [True] * 10 + [False] * 5
            assert store.local_decisions == 0 and not store.degraded
            assert store._topology.table[slot] == f"127.0.0.1:{target}"
            stats, _ = await store.peek(c, (), NOW)
            assert stats[0].used == 10
        finally:
            await store.aclose()

    asyncio.run(scenario())
    cluster.wait_ok()


def test_unreachable_startup_nodes_are_named_at_start(redis_service: services.RedisServer) -> None:
    dead = [services.free_port(), services.free_port()]
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in dead)
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "no startup node answers" in message
    for port in dead:
        assert f"127.0.0.1:{port}" in message
    # A plain Redis is not a cluster node: named too.
    plain = f"redis+cluster://127.0.0.1:{redis_service.port}"
    with pytest.raises(ConfigError, match=f"127.0.0.1:{redis_service.port}.*cluster"):
        open_store(plain)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+cluster://", "is not HOST:PORT"),
        ("redis+cluster://127.0.0.1", "is not HOST:PORT"),
        ("redis+cluster://127.0.0.1:70000", "is not HOST:PORT"),
        ("redis+cluster://127.0.0.1:7000/3", "database 0 only"),
    ],
)
def test_malformed_cluster_urls(url: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_cluster_url(url)


def test_cluster_url_parts() -> None:
    nodes, options = parse_cluster_url("redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001/0")
    assert nodes == [("10.0.0.1", 7000), ("::1", 7001)]
    assert options == {"username": "u", "password": "p@ss"}
