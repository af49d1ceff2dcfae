"""Limits on a Redis Cluster (``redis+cluster://HOST:PORT[,HOST:PORT…]``, or over TLS
``rediss+cluster://HOST:PORT[,HOST:PORT…][?ssl_ca_certs=/path/ca.pem]``).

:class:`ClusterStore` is :class:`tollhouse.limits.redis.RedisStore` with another way to
the servers: the same scripts, the same batching of concurrent calls, the same degraded
mode (:mod:`.resilient`). What differs:

Routed by slot
    Every key of one decision carries one hash tag (:mod:`.naming`), so each script call
    touches one slot and runs on that slot's master, atomically as on one Redis. The
    slot map is read with redis-py's cluster client (``CLUSTER SLOTS`` through
    :class:`redis.asyncio.cluster.RedisCluster`); a round trip groups its commands by
    master and writes each master's share at once on that master's connection, the
    masters in parallel (pipelined per node). The write-back of what was admitted
    without Redis goes as one script per slot.

Redirections
    ``MOVED`` (the slot has moved: a reshard, a failover) updates the map and sends the
    command again to the master named; ``ASK`` (the slot is being migrated and the
    command's keys are on the importing master) sends it there after ``ASKING``, without
    changing the map. A command follows at most :data:`REDIRECTS` of them in one round
    trip. ``TRYAGAIN`` (keys split across the two masters of a migrating slot) and
    ``CLUSTERDOWN`` fail that command like a timeout: it is decided from this instance's
    share, never admitted beyond it.

A master lost
    Replication is asynchronous: a master killed right after a script ran may take that
    write with it, and the replica that takes over would admit the same units again. So
    each master's part of a round trip ends with ``WAIT 1`` when the master has a
    replica, and its answers count only once a replica holds them: a master that dies
    or a replica that does not confirm within the timeout fails those commands, which
    are then decided from this instance's share (counted twice if the write survived,
    never zero times). A master that does not answer fails the commands sent to it (the
    others are answered) and asks for a new slot map. The breaker counts such round trips as it
    counts a single Redis failing; once open, every decision is made from shares until
    a probe finds the map complete and every master answering (after the cluster
    promoted a replica, when it has one).

Startup nodes
    The URL lists startup nodes: any one that answers gives the whole map. At start each
    is asked for ``CLUSTER INFO``; when none answers as a cluster node, starting fails
    with an error naming each and why (one that does not answer while another does is
    logged). Over TLS, a node whose certificate is not trusted (or that does not speak
    TLS) fails the start whatever the others answer (:mod:`.tls`).

TLS
    ``rediss+cluster://`` speaks TLS to every node (the slot map's nodes as well as the
    startup nodes) with the URL's TLS options (:mod:`.tls`): the certificate of each is
    verified against ``ssl_ca_certs`` (else the system's CAs) and must name the address
    the slot map gives for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import unquote

import redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool, SSLConnection
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisError,
    TryAgainError,
)
from redis.retry import Retry

from tollhouse.errors import ConfigError, StorageError
from tollhouse.limits.redis import (
    STARTUP_TIMEOUT,
    RedisStore,
    _Carrier,
    _command,
    _hang_up,
    _load_scripts,
    _read,
)
from tollhouse.limits.tls import refusal, refused_message, tls_options
from tollhouse.urls import shown_url

__all__ = ["CLUSTER_SCHEME", "TLS_CLUSTER_SCHEME", "ClusterStore", "parse_cluster_url"]

logger = logging.getLogger(__name__)

#: The URL scheme of a Redis Cluster.
CLUSTER_SCHEME = "redis+cluster://"
#: The URL scheme of a Redis Cluster spoken to over TLS.
TLS_CLUSTER_SCHEME = "rediss+cluster://"
#: ``MOVED``/``ASK`` redirections one command follows within one round trip.
REDIRECTS = 3
#: Part of the round-trip timeout a master may wait for a replica to confirm writes.
WAIT_PART = 0.8

_ASKING = _command([b"ASKING"])
_PING = _command([b"PING"])


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The startup nodes of ``redis+cluster://[user:password@]HOST:PORT[,HOST:PORT…][/0]``
    (or ``rediss+cluster://…[?TLS options]``) and the connection options as the sync
    client and redis-py's cluster client take them (username, password; ``ssl=True`` and
    the ``ssl_*`` options over TLS).

    Raises:
        ConfigError: the URL is malformed, or a TLS option is not valid.
    """
    secure = url.startswith(TLS_CLUSTER_SCHEME)
    if not secure and not url.startswith(CLUSTER_SCHEME):
        raise ConfigError(
            f"redis_url {shown_url(url)!r}: a cluster URL starts with {CLUSTER_SCHEME} "
            f"or {TLS_CLUSTER_SCHEME}"
        )
    scheme = TLS_CLUSTER_SCHEME if secure else CLUSTER_SCHEME
    rest, _, query = url[len(scheme) :].partition("?")
    tls = tls_options(url, query, tls=secure)
    others = [part for part in query.split("&") if part and not part.startswith("ssl_")]
    if others:
        raise ConfigError(
            f"redis_url {shown_url(url)!r}: {others[0]!r} is not a cluster URL option "
            f"(a {TLS_CLUSTER_SCHEME} URL takes TLS options only)"
        )
    rest, _, db = rest.partition("/")
    if db not in ("", "0"):
        raise ConfigError(f"redis_url {shown_url(url)!r}: a Redis Cluster has database 0 only")
    userinfo, _, hosts = rest.rpartition("@")
    options: dict[str, Any] = {}
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if colon:
            options["password"] = unquote(password)
        if user:
            options["username"] = unquote(user)
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"redis_url {shown_url(url)!r}: {part!r} is not HOST:PORT "
                f"(use {scheme}HOST:PORT[,HOST:PORT…])"
            )
        nodes.append((host, int(port)))
    if secure:
        options["ssl"] = True
        options.update(tls)
    return nodes, options


def check_startup_nodes(
    url: str, nodes: list[tuple[str, int]], options: dict[str, Any], timeout: float
) -> None:
    """Ask every startup node for ``CLUSTER INFO`` (at start, once).

    Raises:
        ConfigError: no startup node answers as a Redis Cluster node, or one refused TLS
            (its certificate is not trusted); names each and why.
    """
    failed: list[str] = []
    for host, port in nodes:
        client = redis.Redis(
            host=host,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Asked once: a startup node that refuses is named, not retried with backoff.
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        try:
            info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        except RedisError as exc:
            refused = refusal(exc)
            if refused is not None:
                # Every node must be trusted: the slot map sends decisions to each.
                raise ConfigError(refused_message(url, f"{host}:{port}", refused)) from None
            failed.append(f"{host}:{port} ({exc})")
        else:
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:" not in text:
                failed.append(f"{host}:{port} (no cluster state in CLUSTER INFO)")
        finally:
            client.close()
    if len(failed) == len(nodes):
        raise ConfigError(
            f"redis_url {shown_url(url)!r}: no startup node answers as a Redis Cluster node: "
            + "; ".join(failed)
        )
    if failed:
        logger.warning("Redis Cluster startup nodes do not answer", extra={"nodes": failed})


class _Topology:
    """The slot map (slot → its master's ``host:port``) and a connection pool per node."""

    def __init__(
        self, nodes: list[tuple[str, int]], options: dict[str, Any], timeout: float
    ) -> None:
        self.nodes = nodes
        self.options = options
        self.timeout = timeout
        self.client: RedisCluster | None = None
        self.table: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self.pools: dict[str, ConnectionPool] = {}
        #: Master ``host:port`` → how many replicas it has (those not marked failed).
        self.replicas: dict[str, int] = {}
        self._refreshing: asyncio.Task[None] | None = None

    def masters(self) -> set[str]:
        """Every master of the current map (an unserved slot counts as ``None``)."""
        return set(self.table)  # type: ignore[arg-type]

    def pool(self, node: str) -> ConnectionPool:
        pool = self.pools.get(node)
        if pool is None:
            host, _, port = node.rpartition(":")
            options = dict(self.options)
            if options.pop("ssl", False):
                options["connection_class"] = SSLConnection
            # No socket timeout on reads: one deadline covers each whole round trip.
            pool = ConnectionPool(
                host=host,
                port=int(port),
                socket_timeout=None,
                socket_connect_timeout=self.timeout,
                **options,
            )
            self.pools[node] = pool
        return pool

    def moved(self, slot: int, node: str) -> None:
        """``MOVED``: ``slot`` is served by ``node`` now; the rest of the map may have
        changed too (a reshard moves ranges), so it is read again."""
        self.table[slot] = node
        self.request_refresh()

    def request_refresh(self) -> None:
        """Read the map again in the background (one read at a time)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._quiet_refresh())

    async def refresh(self) -> None:
        """Read the map again now (joining a read in flight).

        Raises:
            StorageError: no node gave a map.
        """
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.get_running_loop().create_task(self._read())
        await asyncio.shield(task)

    async def _quiet_refresh(self) -> None:
        try:
            await self._read()
        except StorageError as exc:
            logger.info("Redis Cluster slot map not read", extra={"error": str(exc)})

    async def _read(self) -> None:
        try:
            if self.client is None:
                self.client = RedisCluster(
                    startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
                    require_full_coverage=False,
                    socket_timeout=max(self.timeout, 1.0),
                    socket_connect_timeout=max(self.timeout, 1.0),
                    **self.options,
                )
                await self.client.initialize()
            else:
                await self.client.nodes_manager.initialize()
        except (RedisError, OSError) as exc:
            raise StorageError(f"no Redis Cluster node gave the slot map: {exc!r}") from exc
        table: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        replicas: dict[str, int] = {}
        for slot, nodes in self.client.nodes_manager.slots_cache.items():
            if nodes:
                table[slot] = nodes[0].name
                replicas[nodes[0].name] = len(nodes) - 1
        self.table = table
        self.replicas = replicas

    async def aclose(self) -> None:
        task = self._refreshing
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StorageError):
                await task
        if self.client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.client.aclose()
        for pool in self.pools.values():
            await pool.aclose()


class _ClusterLink:
    """One connection per master carrying whole batches: a round trip writes each
    master's commands at once, the masters in parallel."""

    __slots__ = ("_wait", "conns", "lock", "timeout", "topology")

    def __init__(self, topology: _Topology, timeout: float) -> None:
        self.topology = topology
        self.timeout = timeout
        self.conns: dict[str, AbstractConnection] = {}
        self.lock = asyncio.Lock()
        # WAIT 0 would wait for ever: at least a millisecond, within the round trip.
        wait_ms = max(1, int(timeout * 1000 * WAIT_PART))
        self._wait = _command([b"WAIT", b"1", str(wait_ms).encode()])

    async def round_trip(self, commands: list[bytes], slots: list[int]) -> list[Any]:
        """Send each command to the master of its slot; every reply in order. A command
        whose master failed (or that could not be placed) gets a :class:`StorageError`
        as its reply; error replies are values, as on one Redis."""
        async with self.lock:
            if not any(self.topology.table):
                await self.topology.refresh()
            return await self._route(commands, slots)

    async def _route(self, commands: list[bytes], slots: list[int]) -> list[Any]:
        topology = self.topology
        replies: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        redirected: dict[int, tuple[str, bool]] = {}  # index → (node, after ASKING)
        for _ in range(REDIRECTS + 1):
            by_node: dict[str, list[int]] = {}
            for i in todo:
                target = redirected.get(i)
                node = target[0] if target is not None else topology.table[slots[i]]
                if node is None:
                    replies[i] = StorageError(f"no Redis Cluster master serves slot {slots[i]}")
                    topology.request_refresh()
                    continue
                by_node.setdefault(node, []).append(i)
            results = await asyncio.gather(
                *(
                    self._node_trip(
                        node,
                        [commands[i] for i in idx],
                        [i in redirected and redirected[i][1] for i in idx],
                    )
                    for node, idx in by_node.items()
                ),
                return_exceptions=True,
            )
            todo = []
            for (node, idx), result in zip(by_node.items(), results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, (RedisError, OSError, StorageError)):
                        raise result
                    failure = StorageError(f"Redis Cluster node {node} failed: {result!r}")
                    for i in idx:
                        replies[i] = failure
                    topology.request_refresh()
                    continue
                for i, reply in zip(idx, result, strict=True):
                    if isinstance(reply, AskError):  # MOVED is an AskError too
                        moved = isinstance(reply, MovedError)
                        target_node = f"{reply.host}:{reply.port}"
                        if moved:
                            topology.moved(reply.slot_id, target_node)
                        redirected[i] = (target_node, not moved)
                        replies[i] = StorageError(f"Redis Cluster redirected too often: {reply}")
                        todo.append(i)
                    elif isinstance(reply, (TryAgainError, ClusterDownError)):
                        replies[i] = StorageError(f"Redis Cluster: {reply}")
                    else:
                        replies[i] = reply
            if not todo:
                break
        return replies

    async def _node_trip(
        self, node: str, commands: list[bytes], asking: list[bool], replicated: bool = True
    ) -> list[Any]:
        """One master's part of a round trip: written at once, every reply read; with
        ``replicated``, only once a replica has the writes (when the master has one)."""
        conn = self.conns.get(node)
        wait = self._wait if replicated and self.topology.replicas.get(node, 0) else b""
        try:
            async with asyncio.timeout(self.timeout):
                if conn is None or not conn.is_connected:
                    conn = await self._connect(node)
                replies = await _exchange(conn, commands, asking, wait)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:
                    # The master restarted empty, or is a promoted replica whose script
                    # cache was never filled.
                    await _load_scripts(conn)
                    again = await _exchange(
                        conn, [commands[i] for i in missing], [asking[i] for i in missing], wait
                    )
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except TimeoutError as exc:
            await self._drop(node)
            raise StorageError(f"no answer from {node} within {self.timeout} s") from exc
        except BaseException:
            await self._drop(node)
            raise
        return replies

    async def _connect(self, node: str) -> AbstractConnection:
        conn: AbstractConnection = self.topology.pool(node).make_connection()  # type: ignore[no-untyped-call]
        self.conns[node] = conn
        await conn.connect()  # type: ignore[no-untyped-call]
        await _load_scripts(conn)
        return conn

    async def _drop(self, node: str) -> None:
        conn = self.conns.pop(node, None)
        if conn is not None:
            await _hang_up(conn)

    async def drop(self) -> None:
        """Close every connection (the next round trip opens new ones)."""
        for node in list(self.conns):
            await self._drop(node)

    async def ping_masters(self) -> None:
        """PING every master of the map.

        Raises:
            StorageError: a slot has no master, or a master does not answer.
        """
        masters = self.topology.masters()
        if None in masters:
            raise StorageError("the Redis Cluster slot map has slots without a master")
        async with self.lock:
            for node in masters:
                assert node is not None
                reply = (await self._node_trip(node, [_PING], [False], replicated=False))[0]
                if isinstance(reply, Exception):
                    raise StorageError(f"Redis Cluster node {node}: {reply}")


async def _exchange(
    conn: AbstractConnection, commands: list[bytes], asking: list[bool], wait: bytes
) -> list[Any]:
    """Write ``commands`` at once (each flagged one after ``ASKING``, then ``wait`` when
    given) and read their replies (error replies as values).

    Raises:
        StorageError: no replica confirmed the writes (``WAIT`` counted none).
    """
    if any(asking):
        payload = b"".join(_ASKING + c if a else c for c, a in zip(commands, asking, strict=True))
    else:
        payload = b"".join(commands)
    await conn.send_packed_command(payload + wait, check_health=False)
    replies: list[Any] = []
    for a in asking:
        if a:
            await _read(conn)  # ASKING's OK
        replies.append(await _read(conn))
    if wait and not await _read(conn):
        raise StorageError("no replica confirmed the writes in time")
    return replies


class ClusterStore(RedisStore):
    """Buckets and pools on a Redis Cluster (see the module); the arguments of
    :class:`tollhouse.limits.redis.RedisStore`, with a ``redis+cluster://`` or
    ``rediss+cluster://`` URL.

    Raises:
        ConfigError: the URL is malformed, or no startup node answers as a cluster node.
    """

    _topology: _Topology
    _probe_link: _ClusterLink | None

    def _open(self, url: str, timeout: float) -> None:
        nodes, options = parse_cluster_url(url)
        check_startup_nodes(url, nodes, options, max(timeout, STARTUP_TIMEOUT))
        self._topology = _Topology(nodes, options, timeout)
        self._probe_link = None

    def _link(self) -> _Carrier:
        return _ClusterLink(self._topology, self._timeout)

    def _slot_of(self, key: str) -> int:
        return key_slot(key.encode())

    async def _close(self) -> None:
        if self._probe_link is not None:
            await self._probe_link.drop()
        await self._topology.aclose()

    async def _probe_round_trip(self, command: bytes) -> Any:
        """A fresh slot map, every master answering, and the probe's decision."""
        if self._probe_link is None:
            self._probe_link = _ClusterLink(self._topology, self._timeout)
        await self._topology.refresh()
        await self._probe_link.ping_masters()
        return (await self._probe_link.round_trip([command], [self._probe_shape.slot]))[0]

    def _where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self._topology.nodes)
