"""Forward-auth's second half: the proxy's access log, joined to the calls tollhouse decided.

In forward-auth mode (:mod:`tollhouse.http.forward_auth`) tollhouse decides a call but
never sees its answer: the proxy sends the request upstream itself. So a call admitted
with 200 waits in :class:`AwaitingLog`, keyed by its request id, until the proxy's
access-log line for that id arrives (:class:`AccessLogReceiver`: JSON lines, syslog over
UDP, as nginx's ``access_log syslog:server=…`` sends them). Then it is metered with the
status the client got and the proxy's request time, and its pool slots are given back.
A call whose line does not come within ``[forward_auth] log_wait`` is metered with
status 0 ("unknown") and the decision's own duration; its pool slots stay taken until
their pool's ``lease`` reclaims them.

A line is one JSON object, after anything before its first ``{`` (the syslog header):
``{"request_id": "req_…", "status": 200, "request_time": 0.012}`` — ``status`` and
``request_time`` (seconds) as numbers or numeric strings, other fields ignored. Lines
from peers outside ``[proxy] trusted_proxies`` are dropped, as are lines for ids not
waiting (refusals, metered when decided; lines that came late).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from tollhouse.http.forwarded import TrustedProxies
from tollhouse.limits.store import Lease, LimitStore
from tollhouse.metering.record import CallRecord, Meter
from tollhouse.policy.load import udp_address

__all__ = ["UNKNOWN_STATUS", "AccessLogReceiver", "AwaitingLog", "listen"]

logger = logging.getLogger(__name__)

#: The status a decided call is metered with when its access-log line never came.
UNKNOWN_STATUS = 0
#: Calls waiting for their line at most; past it the oldest is metered as unknown.
MAX_WAITING = 100_000


class AwaitingLog:
    """Calls admitted by the decision endpoint, waiting for their access-log line.

    Args:
        meter: where each call is recorded once its line came (or did not).
        limits: where pool slots are given back.
        clock: wall clock, epoch seconds.
        wait: seconds a call waits for its line (``[forward_auth] log_wait``).
        cap: calls waiting at most (the oldest is metered as unknown past it).
    """

    def __init__(
        self,
        meter: Meter | None,
        limits: LimitStore,
        clock: Callable[[], float],
        wait: float,
        cap: int = MAX_WAITING,
    ) -> None:
        self.meter = meter
        self.limits = limits
        self.clock = clock
        self.wait = wait
        self.cap = cap
        # Insertion order is deadline order (one wait for all): expiry pops from the front.
        self._waiting: dict[str, tuple[CallRecord | None, tuple[Lease, ...], float]] = {}
        self.joined = 0
        """Calls whose line came."""
        self.unknown = 0
        """Calls metered with status unknown (no line within the wait)."""
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    def hold(
        self, rid: str, call: CallRecord | None, leases: tuple[Lease, ...], now: float
    ) -> None:
        """Keep the admitted call ``rid`` (None: not metered) and its pool slots until its
        line comes."""
        if call is None and not leases:
            return
        waiting = self._waiting
        old = waiting.pop(rid, None)
        if old is not None:
            # A caller that sends one X-Request-Id twice: the earlier call is metered as
            # unknown and its slots are left to their lease (never released early).
            self._unknown(old[0])
        elif len(waiting) >= self.cap:
            first = next(iter(waiting))
            self._unknown(waiting.pop(first)[0])
        waiting[rid] = (call, leases, now + self.wait)

    def arrived(self, request_id: str, status: int, seconds: float | None) -> bool:
        """The access-log line of ``request_id``: meter the call, give its slots back.
        Returns False when no call waited for it."""
        found = self._waiting.pop(request_id, None)
        if found is None:
            return False
        call, leases, _ = found
        self.joined += 1
        if call is not None and self.meter is not None:
            ms = call.duration_ms if seconds is None else seconds * 1000.0
            self.meter.record(call._replace(status=status, duration_ms=ms))
        if leases:
            task = asyncio.ensure_future(self._release(leases))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return True

    async def _release(self, leases: tuple[Lease, ...]) -> None:
        now = self.clock()
        for lease in leases:
            try:
                await self.limits.release(lease, now)
            except Exception:
                # The lease reclaims the slot anyway.
                logger.warning("could not release a pool slot", exc_info=True)

    def expire(self, now: float) -> int:
        """Meter every call whose wait is over as unknown; returns how many."""
        waiting = self._waiting
        done = 0
        while waiting:
            rid = next(iter(waiting))
            call, _, deadline = waiting[rid]
            if deadline > now:
                break
            del waiting[rid]
            self._unknown(call)
            done += 1
        return done

    def close(self) -> None:
        """Meter every waiting call as unknown (shutdown)."""
        for call, _, _ in self._waiting.values():
            self._unknown(call)
        self._waiting.clear()

    def _unknown(self, call: CallRecord | None) -> None:
        self.unknown += 1
        if call is not None and self.meter is not None:
            self.meter.record(call._replace(status=UNKNOWN_STATUS))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.split(",")[-1].strip())
        except ValueError:
            return None
    return None


class AccessLogReceiver(asyncio.DatagramProtocol):
    """Reads access-log datagrams (one or more JSON lines each) into an :class:`AwaitingLog`.

    Args:
        awaiting: the calls waiting for their line.
        trusted: peers whose lines are read (``[proxy] trusted_proxies``); None: loopback.
    """

    def __init__(self, awaiting: AwaitingLog, trusted: TrustedProxies | None) -> None:
        self.awaiting = awaiting
        self.trusted = trusted if trusted else TrustedProxies(["127.0.0.0/8", "::1"])
        self.lines = 0
        """Lines read (joined or not)."""
        self.refused = 0
        """Datagrams from peers not trusted, and lines that are not such JSON objects."""

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not self.trusted.trusts(str(addr[0])):
            self.refused += 1
            return
        for line in data.splitlines():
            start = line.find(b"{")
            if start < 0:
                continue
            try:
                entry = orjson.loads(line[start:])
                rid = entry["request_id"]
                status = _number(entry.get("status"))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.refused += 1
                continue
            if not isinstance(rid, str) or not rid or status is None:
                self.refused += 1
                continue
            self.lines += 1
            self.awaiting.arrived(rid, int(status), _number(entry.get("request_time")))


async def listen(
    url: str, awaiting: AwaitingLog, trusted: TrustedProxies | None
) -> tuple[asyncio.DatagramTransport, AccessLogReceiver]:
    """Bind ``udp://HOST:PORT`` and read access-log lines into ``awaiting``."""
    host, port = udp_address(url)
    receiver = AccessLogReceiver(awaiting, trusted)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: receiver, local_addr=(host, port))
    return transport, receiver
