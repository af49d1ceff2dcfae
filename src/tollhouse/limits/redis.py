"""Limits in Redis, shared by every instance and process (``redis://``, ``rediss://``).

One decision, one script
    Every bucket and pool a request hits is decided by one ``EVALSHA`` of
    ``lua/decide.lua``, all or nothing, with the formulas of :mod:`.maths` (fixed window
    and GCRA in integer microseconds) and the pool rules of :mod:`.memory`. All keys of a
    request share one hash tag (:mod:`.naming`), so the script is Cluster safe (on a
    cluster, :mod:`.cluster` sends each command to the master of its keys' slot). Every
    key has a TTL (the end of its state plus a second), so memory is bounded by the
    callers active in one window. ``lua/peek.lua`` reads for the status endpoint,
    ``lua/release.lua`` gives a pool slot back. A pool is a sorted set of slots scored by
    lease expiry (expired ones are removed before counting); a slot's member is
    ``acquired_at|token``, which gives the retry estimate the age of the oldest slot, and
    a ``:hold`` key beside it keeps the average hold time, as the memory store does.
    Needs Redis ≥ 6.0 (``SET … KEEPTTL``). Give it ``maxmemory-policy noeviction``: an
    evicted counter would start over.

One clock
    The scripts read Redis ``TIME``: every instance decides against the same clock, so
    windows and leases agree even when hosts' clocks drift. The ``now`` that callers pass
    is therefore ignored — except with ``caller_clock=True``, where it is sent to the
    script instead; tests and the memory-vs-Redis property test replay call sequences
    that way without sleeping. ``Outcome.state`` is always None here: the state lives in
    Redis (the gateway reads only ``remaining``, ``reset_at`` and ``retry_after``).

Few round trips
    Concurrent calls are pipelined: calls made in the same turn of the event loop, or
    while round trips are in flight, go out together as one write of many ``EVALSHA``.
    Two connections keep two such round trips in flight, so Redis runs one batch while
    this process reads the replies of the other. The constant part of each request's
    command is packed once per check tuple (the gateway reuses them). Denials are
    remembered per bucket until the time Redis said to retry, so
    :meth:`RedisStore.decide_nowait` answers a hot over-limit caller without Redis;
    otherwise it returns None and the gateway awaits :meth:`RedisStore.decide`.

Degraded mode
    Round trips time out after ``timeout`` seconds (100 ms by default); a decision whose
    round trip failed is made at once without Redis, from this instance's share
    (:mod:`.resilient`: never a fresh local window). If the script did run in Redis
    after all, that request counted twice, never zero times. One failed round trip (or
    several in flight together) does not open the breaker: after ``failures_to_open``
    (3 by default) consecutive failed attempts (:class:`.resilient.Breaker`) it opens,
    Redis is not asked at all, :attr:`RedisStore.degraded` is True, and a probe runs a
    real decision against Redis every ``probe_interval`` seconds; the first that succeeds
    closes the breaker. What was admitted without Redis and not already counted there
    is written back (``lua/settle.lua``) ahead of the first decisions sent once Redis
    answers; decisions wait while a write-back is in flight (on another connection they
    could overtake it). No method raises because Redis is away. A Redis that restarted
    empty simply starts its counters over; scripts are loaded again on every new
    connection and on ``NOSCRIPT``. Slots taken in Redis but released while it was away
    are released once it is back (or expire by their lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import os
import time
from collections import deque
from importlib import resources
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from tollhouse.errors import ConfigError, StorageError
from tollhouse.limits.maths import Outcome
from tollhouse.limits.memory import DEFAULT_HOLD, HOLD_EWMA_ALPHA
from tollhouse.limits.resilient import DEFAULT_RESERVE, Breaker, Fallback, Unsettled
from tollhouse.limits.store import (
    BucketCheck,
    BucketStatus,
    Lease,
    PoolCheck,
    PoolStatus,
    Verdict,
)
from tollhouse.limits.tls import refusal, refused_message, tls_options
from tollhouse.memo import remember
from tollhouse.urls import shown_url

logger = logging.getLogger(__name__)

#: Seconds one round trip to Redis may take before it counts as failed.
DEFAULT_TIMEOUT = 0.1
#: Seconds the server gets at start to answer a TLS check (at least; more when the
#: timeout is longer).
STARTUP_TIMEOUT = 2.0
#: Seconds between two probes while the breaker is open.
PROBE_INTERVAL = 0.25
#: Consecutive failed round trips that open the breaker.
FAILURES_TO_OPEN = 3
#: Round trips in flight at once, one connection each: while Redis runs one batch, this
#: process reads the replies of the last.
CONNECTIONS = 2
#: Most commands written in one round trip (the rest go into the next).
MAX_BATCH = 512
#: Fewest commands worth a round trip of their own when splitting a batch over links.
MIN_SPLIT = 8
#: Milliseconds a key outlives its state (server clock): a late reader still finds it.
KEY_SLACK_MS = 1000
#: With the caller's clock, Redis expiry (real time) and the state's time are unrelated:
#: keep keys an hour past their state's end so a slow test never loses one.
CALLER_CLOCK_SLACK_MS = 3_600_000
#: Milliseconds a pool's average hold time is kept after its last release.
HOLD_TTL_MS = 3_600_000
#: Suffix of a pool's hold-time key. Appended to the tagged pool key, so it keeps the
#: pool's hash tag (and slot).
HOLD_SUFFIX = ":hold"
#: Request shapes whose packed commands are remembered.
SHAPES = 4096
#: Bucket keys whose last denial is remembered.
DENIALS = 65536
#: Slots to release once Redis is back (older ones expire by lease anyway).
ORPHANS = 10000
#: The probe's own bucket (its own hash tag, a limit it never reaches).
PROBE_KEY = "{tollhouse:probe}:b:probe"

_new = tuple.__new__

#: A command queued for the next round trip: its bytes, the future of its reply and the
#: Cluster slot of its keys (what a cluster routes it by; a single Redis ignores it).
_Queued = tuple[bytes, asyncio.Future[Any], int]


class _Script:
    """A Lua file of ``lua/`` and its SHA-1 (what ``EVALSHA`` names it by)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (
            resources.files("tollhouse.limits").joinpath("lua", f"{name}.lua").read_bytes()
        )
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


DECIDE = _Script("decide")
PEEK = _Script("peek")
RELEASE = _Script("release")
SETTLE = _Script("settle")
#: Suffix of the key naming, per bucket and window, the instances that wrote back a
#: local window (settle.lua); the bucket key's hash tag keeps it in the same slot.
SETTLED_SUFFIX = b":settled"
_SCRIPTS = (DECIDE, PEEK, RELEASE, SETTLE)


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _num(value: float) -> bytes:
    """A float as the shortest string that reads back as the same double."""
    return repr(float(value)).encode()


def _command(head: list[bytes], *args: bytes) -> bytes:
    parts = [*head, *args]
    return b"*%d\r\n" % len(parts) + b"".join(_bulk(p) for p in parts)


class _Shape:
    """The constant parts of one request's ``EVALSHA`` of decide.lua, packed once.

    The command is ``head`` + now + ``middle`` + one token per pool + the shares asked
    for or given back (nearly always empty); ``whole`` is all of it when nothing varies
    (server clock, no pool, no share). ``shares`` is the size of this instance's share
    per bucket (empty when it keeps none).
    """

    __slots__ = ("buckets", "head", "middle", "pools", "shares", "slot", "whole")

    def __init__(
        self,
        buckets: tuple[BucketCheck, ...],
        pools: tuple[PoolCheck, ...],
        slack_ms: int,
        caller_clock: bool,
        shares: tuple[int, ...] = (),
    ) -> None:
        self.buckets = buckets
        self.pools = pools
        self.shares = shares if any(shares) else ()
        keys = [c.key.encode() for c in buckets]
        # Every key of a request shares one hash tag (naming.py), so the first names the
        # slot of all.
        self.slot = key_slot(keys[0] if keys else pools[0].key.encode())
        for p in pools:
            keys += [p.key.encode(), (p.key + HOLD_SUFFIX).encode()]
        argv = [str(len(buckets)).encode(), str(len(pools)).encode()]
        argv += [str(slack_ms).encode(), _num(DEFAULT_HOLD)]
        for c in buckets:
            # As the memory store decides: fixed window, or else GCRA.
            algorithm = b"f" if c.algorithm == "fixed_window" else b"g"
            argv += [str(c.limit).encode(), _num(c.window), algorithm, str(c.cost).encode()]
        for p in pools:
            argv += [str(p.limit).encode(), _num(p.lease)]
        parts = 3 + len(keys) + 1 + len(argv) + len(pools) + 1
        self.head = b"*%d\r\n" % parts + b"".join(
            _bulk(x) for x in [b"EVALSHA", DECIDE.sha, str(len(keys)).encode(), *keys]
        )
        self.middle = b"".join(_bulk(x) for x in argv)
        self.whole = (
            None if caller_clock or pools else self.head + _bulk(b"") + self.middle + _bulk(b"")
        )


class _Carrier(Protocol):
    """What carries batches of commands: :class:`_Link` (one Redis), or a cluster's link
    to every master (:mod:`.cluster`)."""

    async def round_trip(self, commands: list[bytes], slots: list[int]) -> list[Any]: ...

    async def drop(self) -> None: ...


class _Denial(NamedTuple):
    """What Redis last said about a bucket in a denied request."""

    check: BucketCheck
    until: float
    """Caller-clock time until which this bucket denies; 0 when it admitted."""
    outcome: Outcome


def _verdict(raw: bytes, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...]) -> Verdict:
    """decide.lua's reply (space-separated fields) as a :class:`Verdict`."""
    reply = raw.split(b" ")
    outcomes: list[Outcome] = []
    i = 5
    for _ in buckets:
        outcomes.append(
            _new(
                Outcome,
                (
                    reply[i] == b"1",
                    None,
                    int(reply[i + 1]),
                    float(reply[i + 2]),
                    float(reply[i + 3]),
                ),
            )
        )
        i += 4
    if reply[0] == b"1":
        if not pools:
            return _new(Verdict, (True, outcomes, None, 0.0, (), False))
        at = float(reply[4])
        leases = tuple(
            Lease(p.key, member.decode(), at)
            for p, member in zip(pools, reply[i : i + len(pools)], strict=True)
        )
        return Verdict(True, outcomes, None, 0.0, leases)
    denied = int(reply[1])
    if reply[2] == b"1":
        return Verdict(
            False, outcomes, pools[denied - len(buckets) - 1].name, float(reply[3]), (), True
        )
    return _new(Verdict, (False, outcomes, buckets[denied - 1].name, float(reply[3]), (), False))


def _is_local(lease: Lease) -> bool:
    """Slots taken in Redis are named ``acquired_at|token``; local ones are plain numbers."""
    return "|" not in lease.token


class RedisStore:
    """Buckets and pools in Redis (see :class:`tollhouse.limits.store.LimitStore`).

    Connects lazily, on the first call (over TLS, a PING at construction checks the
    server's certificate first); use it from one event loop.

    Args:
        url: ``redis://[user:password@]host:port/db`` or, over TLS,
            ``rediss://…[?ssl_ca_certs=/path/ca.pem]`` (the options of :mod:`.tls`).
        instances: how many tollhouse instances share these limits (the server passes
            workers × replicas). Only used while Redis is away: each instance then
            enforces ``limit // instances`` locally.
        timeout: seconds a round trip (or connecting) may take before it counts as failed.
        failures_to_open: consecutive failed round trips that switch to local limits.
        probe_interval: seconds between two probes of Redis while local.
        connections: round trips in flight at once (one connection each).
        caller_clock: decide at the ``now`` callers pass instead of Redis ``TIME``; for
            tests and replays only (instances with different clocks would disagree).
        on_store_failure: ``local`` (admit from this instance's share), ``deny`` or
            ``allow`` while Redis cannot be asked (:mod:`.resilient`).
        reserve: fraction of each limit the fleet keeps as shares (``instances > 1``).

    Raises:
        ConfigError: the URL or an argument is not valid, or over TLS the server's
            certificate is not trusted (or it does not speak TLS).
    """

    degraded: bool
    """True while Redis is unreachable and limits are enforced locally."""
    local_decisions: int
    """Decisions made locally because Redis could not be reached (for metrics)."""

    def __init__(
        self,
        url: str,
        *,
        instances: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        failures_to_open: int = FAILURES_TO_OPEN,
        probe_interval: float = PROBE_INTERVAL,
        connections: int = CONNECTIONS,
        caller_clock: bool = False,
        on_store_failure: str = "local",
        reserve: float = DEFAULT_RESERVE,
    ) -> None:
        if timeout <= 0 or probe_interval <= 0 or connections < 1:
            raise ConfigError("timeout, probe_interval and connections must be positive")
        self.url = url
        self._open(url, timeout)
        self.degraded = False
        self.local_decisions = 0
        self._timeout = timeout
        self._probe_interval = probe_interval
        self._caller_clock = caller_clock
        self._slack_ms = CALLER_CLOCK_SLACK_MS if caller_clock else KEY_SLACK_MS
        self._breaker = Breaker(failures_to_open)
        self._local = Fallback(instances, on_store_failure, reserve)
        self._alone = self._local.alone and on_store_failure == "local"
        self._links = [self._link() for _ in range(connections)]
        self._idle = list(self._links)
        self._pending: list[_Queued] = []
        self._dispatching = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._prober: asyncio.Task[None] | None = None
        self._closed = False
        self._shapes: dict[tuple[int, int], _Shape] = {}
        self._denials: dict[str, _Denial] = {}
        self._orphans: deque[Lease] = deque(maxlen=ORPHANS)
        # Slot tokens: unique across processes (random prefix), cheap within one.
        self._token_prefix = os.urandom(6).hex().encode()
        self._tokens = itertools.count(1)
        probe = BucketCheck(PROBE_KEY, "probe", 2**31, 1.0, "fixed_window", 1)
        self._probe_shape = _Shape((probe,), (), KEY_SLACK_MS, False)
        #: The write-backs in flight (kept to be restored if their round trip fails).
        self._settling: list[Unsettled] = []
        #: Bucket keys whose share is being given back (a round trip in flight).
        self._giving_back: set[str] = set()
        self._now = 0.0

    # ---- the LimitStore protocol -------------------------------------------------------

    async def decide(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        """Check every bucket and pool in one script; consume all if all admit, else
        nothing. Decided from this instance's share while Redis cannot be asked."""
        if self.degraded:
            return self._decide_locally(buckets, pools, now)
        if not buckets and not pools:
            return _new(Verdict, (True, [], None, 0.0, (), False))
        if self._caller_clock:
            self._now = now
        shape = self._shape(buckets, pools)
        spec = self._wanted(shape, now) if shape.shares else b""
        command = shape.whole
        if command is None or spec:
            command = self._command(shape, now, spec)
        try:
            reply = await self._call(command, shape.slot)
        except StorageError:
            return self._decide_locally(buckets, pools, now)
        verdict = _verdict(reply, buckets, pools)
        if spec:
            self._granted(shape, reply, verdict)
        if self._alone:
            self._local.observe(buckets, verdict.outcomes)
        if not verdict.allowed and not verdict.pool_denied:
            if shape.shares:
                if any(c.key in self._giving_back for c in buckets):
                    # Denied before a share of this instance went back: room may be
                    # free again, so do not answer the next ones from the cache.
                    return verdict
                verdict = await self._give_back(shape, verdict, now)
                if verdict.allowed or verdict.pool_denied:
                    return verdict
            self._remember_denial(buckets, verdict.outcomes, now)
        return verdict

    def _command(self, shape: _Shape, now: float, spec: bytes) -> bytes:
        command = shape.head + _bulk(_num(now) if self._caller_clock else b"") + shape.middle
        for _ in shape.pools:
            command += _bulk(b"%s.%d" % (self._token_prefix, next(self._tokens)))
        return command + _bulk(spec)

    def _wanted(self, shape: _Shape, now: float) -> bytes:
        """The share spec asking for a share of each bucket this instance holds none of
        in the current window (b"" when it holds them all)."""
        local = self._local
        wanted = None
        for i, c in enumerate(shape.buckets):
            size = shape.shares[i]
            if size and local.wants(c.key, now):
                if wanted is None:
                    wanted = [0] * len(shape.buckets)
                wanted[i] = size
                # Asked once: concurrent requests do not ask again meanwhile.
                local.pending(c, now + self._timeout)
        if wanted is None:
            return b""
        return " ".join(f"{w} 0" for w in wanted).encode()

    def _granted(self, shape: _Shape, reply: bytes, verdict: Verdict) -> None:
        """Keep the shares Redis set aside (the fields after the slots)."""
        if not verdict.allowed:
            return  # nothing set aside; asked again with the next request
        fields = reply.split(b" ")
        first = 5 + len(shape.buckets) * 4 + len(shape.pools)
        for i, c in enumerate(shape.buckets):
            if shape.shares[i]:
                units = int(fields[first + i])
                self._local.granted(c, units, verdict.outcomes[i].reset_at)

    async def _give_back(self, shape: _Shape, verdict: Verdict, now: float) -> Verdict:
        """Denied by buckets of which this instance holds a share: give the share back
        (the busy instance uses its own units, the fleet admits its whole limit) and
        decide again, once."""
        backs = [0] * len(shape.buckets)
        for i, (c, o) in enumerate(zip(shape.buckets, verdict.outcomes, strict=True)):
            if not o.allowed:
                backs[i] = self._local.give_back(c, now)
        if not any(backs):
            return verdict
        spec = " ".join(f"0 {b}" for b in backs).encode()
        keys = [c.key for c, b in zip(shape.buckets, backs, strict=True) if b]
        self._giving_back.update(keys)
        try:
            reply = await self._call(self._command(shape, now, spec), shape.slot)
        except StorageError:
            return verdict  # what was given back may be free again: never spend it twice
        finally:
            self._giving_back.difference_update(keys)
        return _verdict(reply, shape.buckets, shape.pools)

    def decide_nowait(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict | None:
        """A denial from the local cache (or a local decision while degraded) without
        I/O; None when Redis must be asked."""
        if self.degraded:
            return self._decide_locally(buckets, pools, now)
        denials = self._denials
        if not denials:
            return None
        outcomes: list[Outcome] = []
        denied_by: str | None = None
        retry = 0.0
        for c in buckets:
            d = denials.get(c.key)
            if d is None or (d.check is not c and d.check != c):
                return None
            o = d.outcome
            if d.until > now:
                wait = d.until - now
                outcomes.append(_new(Outcome, (False, None, o.remaining, o.reset_at, wait)))
                if denied_by is None:
                    denied_by = c.name
                if wait > retry:
                    retry = wait
            elif o.allowed and o.reset_at > now:
                # A bucket that admitted in the remembered denial: its numbers are the
                # best estimate for the headers (a denied request consumes nothing).
                outcomes.append(o)
            else:
                return None
        if denied_by is None:
            return None
        return _new(Verdict, (False, outcomes, denied_by, retry, (), False))

    def unsettled_units(self) -> int:
        """Units admitted without Redis that are not yet counted there (for metrics)."""
        return sum(u.units for u in self._local.unsettled.values()) + sum(
            u.units for u in self._settling
        )

    async def release(self, lease: Lease, now: float) -> None:
        """Give a pool slot back (idempotent). A Redis slot released while Redis is away
        is released once it is back."""
        if _is_local(lease):
            await self._local.release(lease, now)
            return
        if self.degraded:
            self._orphans.append(lease)
            return
        command = _command(
            [b"EVALSHA", RELEASE.sha, b"2"],
            lease.key.encode(),
            (lease.key + HOLD_SUFFIX).encode(),
            _num(now) if self._caller_clock else b"",
            lease.token.encode(),
            _num(lease.acquired_at),
            _num(HOLD_EWMA_ALPHA),
            _num(DEFAULT_HOLD),
            str(HOLD_TTL_MS).encode(),
        )
        try:
            await self._call(command, key_slot(lease.key.encode()))
        except StorageError:
            self._orphans.append(lease)

    async def peek(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> tuple[list[BucketStatus], list[PoolStatus]]:
        """Read buckets and pools without consuming anything (local counters while
        degraded)."""
        if self.degraded or (not buckets and not pools):
            return await self._local.peek(buckets, pools, now)
        keys = [c.key.encode() for c in buckets]
        for p in pools:
            keys += [p.key.encode(), (p.key + HOLD_SUFFIX).encode()]
        argv = [
            _num(now) if self._caller_clock else b"",
            str(len(buckets)).encode(),
            str(len(pools)).encode(),
            _num(DEFAULT_HOLD),
        ]
        for c in buckets:
            # As the memory store peeks: GCRA, or else fixed window.
            algorithm = b"g" if c.algorithm == "gcra" else b"f"
            argv += [str(c.limit).encode(), _num(c.window), algorithm]
        for p in pools:
            argv += [str(p.limit).encode(), _num(p.lease)]
        command = _command([b"EVALSHA", PEEK.sha, str(len(keys)).encode()], *keys, *argv)
        try:
            reply = await self._call(command, key_slot(keys[0]))
        except StorageError:
            return await self._local.peek(buckets, pools, now)
        stats: list[BucketStatus] = []
        i = 1
        for c in buckets:
            used = int(reply[i])
            stats.append(
                BucketStatus(used, max(0, c.limit - used), float(reply[i + 1]), reply[i + 2] == 1)
            )
            i += 3
        pool_stats = [
            PoolStatus(int(reply[i + 2 * j]), float(reply[i + 2 * j + 1]))
            for j in range(len(pools))
        ]
        return stats, pool_stats

    async def aclose(self) -> None:
        """Stop probing, fail what is queued over to local limits, close the connections."""
        self._closed = True
        for task in (self._prober, *self._in_flight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_pending()
        for link in self._links:
            await link.drop()
        await self._close()

    # ---- the connections (a cluster has its own: .cluster) -----------------------------

    def _open(self, url: str, timeout: float) -> None:
        """Check the URL and make the connection pool; with TLS, check the server's
        certificate once (otherwise nothing connects yet)."""
        secure = url.startswith("rediss://")
        tls_options(url, urlsplit(url).query, tls=secure)
        try:
            # No socket timeout on reads: one deadline covers each whole round trip.
            self._pool = ConnectionPool.from_url(
                url, socket_timeout=None, socket_connect_timeout=timeout
            )
        except ValueError as exc:
            raise ConfigError(f"redis_url {shown_url(url)!r}: {exc}") from None
        if secure:
            self._check_certificate(url, max(timeout, STARTUP_TIMEOUT))

    def _check_certificate(self, url: str, timeout: float) -> None:
        """One PING over TLS at start. A refused certificate (or a port without TLS) is a
        configuration error; Redis not answering is not: as without TLS, decisions are
        then made without it until it answers.

        Raises:
            ConfigError: the server's certificate is not trusted, or it does not speak TLS.
        """
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # Asked once: a refusal is reported, not retried with backoff.
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
        except RedisError as exc:
            refused = refusal(exc)
            if refused is not None:
                raise ConfigError(refused_message(url, self._where(), refused)) from None
            logger.warning(
                "Redis does not answer at start", extra={"redis": self._where(), "error": str(exc)}
            )
        finally:
            client.close()

    def _link(self) -> _Carrier:
        """One more connection carrying whole batches."""
        return _Link(self._pool, self._timeout)

    async def _close(self) -> None:
        await self._pool.aclose()

    async def _probe_round_trip(self, command: bytes) -> Any:
        """The probe's decision (its reply or error reply); raises when Redis fails."""
        return (await self._links[0].round_trip([command], [0]))[0]

    # ---- round trips ------------------------------------------------------------------

    def _shape(self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...]) -> _Shape:
        key = (id(buckets), id(pools))
        shape = self._shapes.get(key)
        if shape is not None and shape.buckets is buckets and shape.pools is pools:
            return shape
        sizes = tuple(self._local.share_size(c) for c in buckets)
        shape = _Shape(buckets, pools, self._slack_ms, self._caller_clock, sizes)
        return remember(self._shapes, SHAPES, key, shape)

    def _call(self, command: bytes, slot: int) -> asyncio.Future[Any]:
        """Queue one command (over keys of Cluster ``slot``) for the next round trip; its
        future holds the reply, or :class:`StorageError`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            future.set_exception(StorageError("the Redis limit store is closed"))
            return future
        self._pending.append((command, future, slot))
        if not self._dispatching:
            # After every task woken in this turn of the loop has queued its call.
            self._dispatching = True
            loop.call_soon(self._dispatch)
        return future

    def _dispatch(self) -> None:
        """Send what is queued over the idle links, split so that several round trips
        are in flight at once: Redis runs one batch while this process reads the last."""
        self._dispatching = False
        pending = self._pending
        if self.degraded:
            self._fail_pending()
            return
        if self._settling:
            # Nothing is decided before the write-back in flight has been counted (on
            # another link a decision could overtake it): it dispatches when it ends.
            return
        idle = self._idle
        if not idle or not pending:
            return  # a round trip in flight dispatches again when it ends
        parts = min(len(idle), max(1, len(pending) // MIN_SPLIT))
        if self._local.unsettled and not self._settling:
            # Written back before any decision: one round trip, the write-back first.
            pending[:0] = self._settle()
            parts = 1
        size = min(MAX_BATCH, -(-len(pending) // parts))
        loop = asyncio.get_running_loop()
        for _ in range(parts):
            batch = pending[:size]
            del pending[:size]
            task = loop.create_task(self._send(idle.pop(), batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            if not pending:
                break

    async def _send(self, link: _Carrier, batch: list[_Queued]) -> None:
        """One round trip: the batch's replies into its futures."""
        started = time.monotonic()
        try:
            replies = await link.round_trip(
                [command for command, _, _ in batch], [slot for _, _, slot in batch]
            )
        except (RedisError, OSError, StorageError) as exc:
            self._idle.append(link)
            self._failed(exc, started)
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(StorageError(f"Redis failed: {exc!r}"))
        except BaseException:
            self._idle.append(link)
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(StorageError("the Redis limit store is closed"))
            raise
        else:
            self._idle.append(link)
            # A cluster answers per node: the commands of a node that failed get the
            # failure as their reply, the others their answers.
            failure = next((r for r in replies if isinstance(r, StorageError)), None)
            if failure is None:
                self._breaker.success()
            else:
                self._failed(failure, started)
            for (_, future, _), reply in zip(batch, replies, strict=True):
                if future.done():
                    continue  # the caller went away
                if isinstance(reply, StorageError):
                    future.set_exception(reply)
                elif isinstance(reply, ResponseError):
                    logger.error("Redis script error", extra={"error": str(reply)})
                    future.set_exception(StorageError(f"Redis script error: {reply}"))
                else:
                    future.set_result(reply)
        if self._pending:
            self._dispatch()

    def _fail_pending(self) -> None:
        pending, self._pending = self._pending, []
        for _, future, _ in pending:
            if not future.done():
                future.set_exception(StorageError("Redis is unreachable"))

    # ---- degraded mode ----------------------------------------------------------------

    def _decide_locally(
        self, buckets: tuple[BucketCheck, ...], pools: tuple[PoolCheck, ...], now: float
    ) -> Verdict:
        self.local_decisions += 1
        return self._local.decide(buckets, pools, now)

    def _settle(self) -> list[_Queued]:
        """The commands writing back what was admitted without Redis (settle.lua), one
        per Cluster slot (a single Redis: one), and their futures: what a failed one
        carried is restored to be written back later."""
        local = self._local
        self._settling = list(local.unsettled.values())
        local.unsettled.clear()
        by_slot: dict[int, list[Unsettled]] = {}
        for u in self._settling:
            by_slot.setdefault(self._slot_of(u.check.key), []).append(u)
        loop = asyncio.get_running_loop()
        queued: list[_Queued] = []
        others = local.instances - 1
        for slot, group in by_slot.items():
            keys: list[bytes] = []
            # With the caller's clock: the time of the last decision (tests replay a clock).
            argv = [
                _num(self._now) if self._caller_clock else b"",
                str(self._slack_ms).encode(),
                self._token_prefix,
            ]
            for u in group:
                c = u.check
                keys.append(c.key.encode())
                algorithm = b"f" if c.algorithm == "fixed_window" else b"g"
                # A local window's size is what each other instance may have admitted
                # from its own, unknown to Redis until it writes back (settle.lua).
                share = c.limit // local.instances if u.local_window else 0
                argv += [algorithm, str(c.limit).encode(), _num(c.window)]
                argv += [_num(u.window_end), str(u.units).encode(), str(share).encode()]
                argv.append(str(share * others).encode())
            keys += [k + SETTLED_SUFFIX for k in keys]
            command = _command([b"EVALSHA", SETTLE.sha, str(len(keys)).encode()], *keys, *argv)
            future: asyncio.Future[Any] = loop.create_future()
            future.add_done_callback(functools.partial(self._settled, settling=group))
            queued.append((command, future, slot))
        return queued

    def _slot_of(self, key: str) -> int:
        """The slot commands over ``key`` are grouped by (one Redis: all in one)."""
        return 0

    def _settled(self, future: asyncio.Future[Any], settling: list[Unsettled]) -> None:
        done = {id(u) for u in settling}
        self._settling = [u for u in self._settling if id(u) not in done]
        if not self._settling and self._pending and not self._dispatching:
            # What waited for the write-back goes now (its round trip has ended).
            self._dispatching = True
            asyncio.get_running_loop().call_soon(self._dispatch)
        if future.cancelled() or future.exception() is not None:
            local = self._local
            for u in settling:
                old = local.unsettled.get(u.check.key)
                if old is not None and old.window_end == u.window_end:
                    u = u._replace(units=u.units + old.units)
                local.unsettled[u.check.key] = u
        else:
            logger.info(
                "admissions made without Redis written back", extra={"buckets": len(settling)}
            )

    def _failed(self, exc: BaseException, started: float) -> None:
        if self._breaker.failure(started, time.monotonic()):
            self.degraded = True
            logger.warning(
                "Redis unreachable: enforcing limits locally",
                extra={"redis": self._where(), "error": repr(exc)},
            )
            self._fail_pending()
            if not self._closed:
                self._prober = asyncio.get_running_loop().create_task(self._probe())
        else:
            logger.info("Redis round trip failed", extra={"error": repr(exc)})

    async def _probe(self) -> None:
        """While degraded: try one real decision every ``probe_interval``; the first that
        succeeds brings Redis back."""
        command = self._probe_shape.whole
        assert command is not None
        try:
            await self._probe_until_back(command)
        finally:
            self._prober = None

    async def _probe_until_back(self, command: bytes) -> None:
        while not self._closed:
            await asyncio.sleep(self._probe_interval)
            try:
                reply = await self._probe_round_trip(command)
            except (RedisError, OSError, StorageError) as exc:
                logger.debug("Redis probe failed", extra={"error": repr(exc)})
                continue
            if isinstance(reply, (ResponseError, StorageError)):
                logger.debug("Redis probe failed", extra={"error": str(reply)})
                continue
            break
        else:
            return
        self._breaker.close()
        self.degraded = False
        logger.warning("Redis is back: limits are shared again", extra={"redis": self._where()})
        orphans = list(self._orphans)
        self._orphans.clear()
        for lease in orphans:
            await self.release(lease, time.time())

    def _remember_denial(
        self, buckets: tuple[BucketCheck, ...], outcomes: list[Outcome], now: float
    ) -> None:
        denials = self._denials
        if len(denials) >= DENIALS:
            denials.clear()
        for c, o in zip(buckets, outcomes, strict=True):
            # Until `retry_after` nothing but consumption happens to this bucket (a
            # changed limit or cost is another check and does not match), so the same
            # request is denied again without asking.
            denials[c.key] = _Denial(c, 0.0 if o.allowed else now + o.retry_after, o)

    def _where(self) -> str:
        kwargs = self._pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"


class _Link:
    """One connection to Redis that carries whole batches of commands."""

    __slots__ = ("conn", "lock", "pool", "timeout")

    def __init__(self, pool: ConnectionPool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self.conn: AbstractConnection | None = None
        # The probe uses link 0 while a last batch may still be in flight on it.
        self.lock = asyncio.Lock()

    async def round_trip(self, commands: list[bytes], slots: list[int]) -> list[Any]:
        """Write ``commands`` at once and read every reply (error replies as values);
        ``slots`` (their keys' Cluster slots) routes them on a cluster only.

        Raises:
            StorageError: no complete answer within the timeout.
            redis.RedisError, OSError: the connection failed.
        """
        async with self.lock:
            conn = self.conn
            try:
                async with asyncio.timeout(self.timeout):
                    if conn is None or not conn.is_connected:
                        conn = await self._connect()
                    await conn.send_packed_command(b"".join(commands), check_health=False)
                    replies: list[Any] = []
                    for _ in commands:
                        try:
                            replies.append(await conn.read_response())
                        except ResponseError as exc:
                            replies.append(exc)  # one command's error: read on
                    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                    if missing:
                        # Redis restarted empty or its scripts were flushed.
                        await _load_scripts(conn)
                        again = b"".join(commands[i] for i in missing)
                        await conn.send_packed_command(again, check_health=False)
                        for i in missing:
                            replies[i] = await _read(conn)
            except TimeoutError as exc:
                # Replies may still be on their way: this connection is out of step.
                await self.drop()
                raise StorageError(f"no answer from Redis within {self.timeout} s") from exc
            except BaseException:
                await self.drop()
                raise
        return replies

    async def _connect(self) -> AbstractConnection:
        conn = self.pool.make_connection()  # type: ignore[no-untyped-call]
        self.conn = conn
        await conn.connect()
        await _load_scripts(conn)
        return conn  # type: ignore[no-any-return]

    async def drop(self) -> None:
        """Close the connection (the next round trip opens a new one)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            await _hang_up(conn)


async def _hang_up(conn: AbstractConnection) -> None:
    """Close ``conn`` now: its socket is closed by the next turn of the event loop.

    Closing a TLS stream only starts the TLS goodbye, which holds the socket until the
    server answers it (or 30 s pass) — for ever if the loop ends first. A dropped
    connection is out of step anyway, so its transport is aborted instead.
    """
    writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
    with contextlib.suppress(RedisError, OSError):
        await conn.disconnect(nowait=True)
    if writer is not None:
        writer.transport.abort()


async def _read(conn: AbstractConnection) -> Any:
    """One reply; an error reply is returned, not raised, so the rest can still be read."""
    try:
        return await conn.read_response()
    except ResponseError as exc:
        return exc


async def _load_scripts(conn: AbstractConnection) -> None:
    await conn.send_packed_command(
        b"".join(_command([b"SCRIPT", b"LOAD", s.source]) for s in _SCRIPTS), check_health=False
    )
    for script in _SCRIPTS:
        sha = await conn.read_response()
        if sha != script.sha:
            raise StorageError(f"Redis named {script.name}.lua {sha!r}, not {script.sha!r}")
