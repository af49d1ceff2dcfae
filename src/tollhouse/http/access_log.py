"""Forward-auth's second half: the proxy's access log, joined to the calls tollhouse decided.

In forward-auth mode (:mod:`tollhouse.http.forward_auth`) tollhouse decides a call but
never sees its answer: the proxy sends the request upstream itself. So a call admitted
with 200 waits in :class:`AwaitingLog`, keyed by its request id, until the proxy's
access-log line for that id arrives (:class:`AccessLogReceiver`: JSON lines over UDP, as
nginx's ``access_log syslog:server=…`` and Caddy's ``log { output net udp/… }`` send
them). Then it is metered with the
status the client got and the proxy's request time, and its pool slots are given back.
A call whose line does not come within ``[forward_auth] log_wait`` is metered with
status 0 ("unknown", its own status class in the rollups) and the decision's own
duration; its pool slots stay taken until their pool's ``lease`` reclaims them. If its
line still comes within :data:`LATE_WINDOW` after that, the call is moved, once, from
unknown to the class of the line's status (``UsageMeter.reclassify``: the rollups'
counts and latency and the raw call-log row), and its pool slots are given back.

A line is one JSON object, after anything before its first ``{`` (the syslog header), in
one of two formats:

* nginx (the ``escape=json`` format docs/forward-auth.md gives):
  ``{"request_id": "req_…", "status": 200, "request_time": 0.012}``;
* Caddy's JSON access log: the id is the answer's ``X-Request-Id``
  (``"resp_headers": {"X-Request-Id": ["req_…"]}``, which the Caddyfile sets from the
  decision), with ``"status"`` and ``"duration"`` (seconds).

``status`` and the time as numbers or numeric strings; other fields ignored. Lines
from peers outside ``[proxy] trusted_proxies`` are dropped, as are lines for ids not
waiting (refusals, metered when decided; a second line for one id; lines later than
:data:`LATE_WINDOW`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from tollhouse.http.forwarded import TrustedProxies
from tollhouse.limits.store import Lease, LimitStore
from tollhouse.metering.record import CallRecord, ReclassifyingMeter
from tollhouse.policy.load import udp_address

__all__ = ["LATE_WINDOW", "UNKNOWN_STATUS", "AccessLogReceiver", "AwaitingLog", "listen"]

logger = logging.getLogger(__name__)

#: The status a decided call is metered with when its access-log line never came.
UNKNOWN_STATUS = 0
#: Calls waiting for their line at most; past it the oldest is metered as unknown. Calls
#: metered as unknown are remembered for a late line at most as many again.
MAX_WAITING = 100_000
#: Seconds after a call was metered as unknown during which its line still moves it to
#: its real status class (a request that ran longer than ``log_wait``).
LATE_WINDOW = 3600.0
#: What :class:`AwaitingLog` keeps per call: the record (None: not metered), its pool
#: slots, the deadline of its wait (epoch s) and its endpoint group (for the counters).
_Held = tuple[CallRecord | None, tuple[Lease, ...], float, str | None]


class AwaitingLog:
    """Calls admitted by the decision endpoint, waiting for their access-log line.

    Args:
        meter: where each call is recorded once its line came (or did not), and moved
            from unknown to its status when the line comes late.
        limits: where pool slots are given back.
        clock: wall clock, epoch seconds.
        wait: seconds a call waits for its line (``[forward_auth] log_wait``).
        cap: calls waiting at most (the oldest is metered as unknown past it), and calls
            remembered for a late line at most.
        late: seconds a call metered as unknown is remembered for a late line.
        answered: told ``(endpoint group, status)`` once per call when its status is known
            or its wait is over (status 0) — the gateway's answer counters; a late line
            does not count again.
    """

    def __init__(
        self,
        meter: ReclassifyingMeter | None,
        limits: LimitStore,
        clock: Callable[[], float],
        wait: float,
        cap: int = MAX_WAITING,
        late: float = LATE_WINDOW,
        answered: Callable[[str | None, int], None] | None = None,
    ) -> None:
        self.meter = meter
        self.limits = limits
        self.clock = clock
        self.wait = wait
        self.cap = cap
        self.late = late
        self.answered = answered
        # Insertion order is deadline order (one wait for all): expiry pops from the front.
        self._waiting: dict[str, _Held] = {}
        # Calls metered as unknown whose line may still come: (record, pool slots, until).
        # Insertion order is expiry order, so ``until`` grows too.
        self._late: dict[str, tuple[CallRecord | None, tuple[Lease, ...], float]] = {}
        self.joined = 0
        """Calls whose line came in time."""
        self.unknown = 0
        """Calls metered with status unknown (no line within the wait)."""
        self.late_joined = 0
        """Calls metered as unknown whose line came later: moved to their status."""
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._waiting)

    def hold(
        self,
        rid: str,
        call: CallRecord | None,
        leases: tuple[Lease, ...],
        now: float,
        group: str | None = None,
    ) -> None:
        """Keep the admitted call ``rid`` (None: not metered), its pool slots and its
        endpoint group until its line comes."""
        if call is None and not leases and self.answered is None:
            return
        self._late.pop(rid, None)  # the id is this call's now: a later line is its line
        waiting = self._waiting
        old = waiting.pop(rid, None)
        if old is not None:
            # A caller that sends one X-Request-Id twice: the earlier call is metered as
            # unknown and its slots are left to their lease (never released early).
            self._unknown(old)
        elif len(waiting) >= self.cap:
            first = next(iter(waiting))
            self._expired(first, waiting.pop(first))
        waiting[rid] = (call, leases, now + self.wait, group)

    def arrived(self, request_id: str, status: int, seconds: float | None) -> bool:
        """The access-log line of ``request_id``: meter the call (or move it from unknown
        to ``status`` if its wait was over), give its slots back. Returns False when no
        call waits for it (a line for one id moves its call once: it is forgotten then)."""
        found = self._waiting.pop(request_id, None)
        if found is not None:
            call, leases, _, group = found
            self.joined += 1
            if call is not None and self.meter is not None:
                ms = call.duration_ms if seconds is None else seconds * 1000.0
                self.meter.record(call._replace(status=status, duration_ms=ms))
            if self.answered is not None:
                self.answered(group, status)
        else:
            late = self._late.pop(request_id, None)
            if late is None:
                return False
            call, leases, _ = late
            self.late_joined += 1
            if call is not None and self.meter is not None:
                ms = call.duration_ms if seconds is None else seconds * 1000.0
                self.meter.reclassify(call, status, ms)
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
        """Meter every call whose wait is over as unknown (remembered for a late line);
        forget those remembered past :attr:`late`. Returns how many were metered."""
        waiting = self._waiting
        done = 0
        while waiting:
            rid = next(iter(waiting))
            held = waiting[rid]
            if held[2] > now:
                break
            del waiting[rid]
            self._expired(rid, held)
            done += 1
        late = self._late
        while late:
            rid = next(iter(late))
            if late[rid][2] > now:
                break
            del late[rid]
        return done

    def close(self) -> None:
        """Meter every waiting call as unknown (shutdown); forget the late ones."""
        for held in self._waiting.values():
            self._unknown(held)
        self._waiting.clear()
        self._late.clear()

    def _expired(self, rid: str, held: _Held) -> None:
        """``held``'s wait is over: meter it as unknown and remember it for a late line."""
        self._unknown(held)
        call, leases, deadline, _ = held
        if self.late <= 0 or (call is None and not leases):
            return
        late = self._late
        if len(late) >= self.cap:
            del late[next(iter(late))]
        late[rid] = (call, leases, deadline + self.late)

    def _unknown(self, held: _Held) -> None:
        call, _, _, group = held
        self.unknown += 1
        if call is not None and self.meter is not None:
            self.meter.record(call._replace(status=UNKNOWN_STATUS))
        if self.answered is not None:
            self.answered(group, UNKNOWN_STATUS)


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
                rid = entry.get("request_id")
                if rid is not None:  # nginx
                    seconds = _number(entry.get("request_time"))
                else:  # Caddy
                    rid = entry["resp_headers"]["X-Request-Id"][0]
                    seconds = _number(entry.get("duration"))
                status = _number(entry.get("status"))
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
                self.refused += 1
                continue
            if not isinstance(rid, str) or not rid or status is None:
                self.refused += 1
                continue
            self.lines += 1
            self.awaiting.arrived(rid, int(status), seconds)


async def listen(
    url: str, awaiting: AwaitingLog, trusted: TrustedProxies | None
) -> tuple[asyncio.DatagramTransport, AccessLogReceiver]:
    """Bind ``udp://HOST:PORT`` and read access-log lines into ``awaiting``."""
    host, port = udp_address(url)
    receiver = AccessLogReceiver(awaiting, trusted)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: receiver, local_addr=(host, port))
    return transport, receiver
