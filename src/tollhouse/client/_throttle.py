"""Proactive throttling: stay inside a limit the server has announced instead of
learning about it from a 429.

Every limited answer carries ``X-RateLimit-Limit/Remaining/Reset`` for the tightest bucket
the route hit, and the IETF ``RateLimit``/``RateLimit-Policy`` fields for every bucket.
:class:`Throttle` remembers each bucket's window by name (how many requests are left and
when it resets) and which buckets each route (``"GET /v1/score/{id}"``) hit. Before a
request it reserves one request in every bucket of the route, or says how long to wait for
the reset when one of them has none left (the scoring API shape advises watching
``X-RateLimit-Remaining`` to slow down before a limit is hit). Buckets are shared: routes
that count against one bucket (submissions and status reads against ``scoring``) see each
other's use. An answer without ``RateLimit`` items is kept per route, from the
``X-RateLimit-*`` trio alone.

Requests in flight: every request :meth:`Throttle.acquire` lets go is counted against its
route until its answer is observed or it :meth:`~Throttle.failed`, and each bucket's
count is that of the routes known to hit it. A request sent just before a window's end
may be decided by the server after it, in the next window, so when a fixed window rolls
over the new one starts with ``limit - in_flight`` left, not ``limit`` (a request out at
the boundary may count in either window: it is counted in both). For the same reason a
window first learned from an answer starts with its ``remaining`` less the requests
still out, and an answer about an earlier window than the one already known (it was
decided before the boundary, answered after) changes nothing. Answers then correct the
figures.

The first request on a route the throttle knows nothing about goes alone; the others
wait for its answer, or for the client's own per-attempt timeout (``probe_timeout``) in
case neither an answer nor a failure is ever reported.

The state is plain data with the time passed in; the clients do the waiting.

Clock skew: ``X-RateLimit-Reset`` is an absolute Unix time on the server's clock. The
``RateLimit`` field's ``t`` (whole seconds until reset, rounded up) is relative, so the
reset is kept within ``[now + t - 1, now + t]`` of the local clock: a server clock
ahead of ours cannot stretch a wait, nor one behind shorten it, by more than that second.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass

_ITEM = re.compile(r'\s*"?([^";,]+)"?\s*((?:;\s*[a-z]+\s*=\s*[^;,]+)*)')
_PARAM = re.compile(r";\s*([a-z]+)\s*=\s*([^;,]+)")
#: While the first request on a route is out, others re-check this often (seconds) ...
PROBE_WAIT = 0.02
#: ... for at most ``probe_timeout`` (the clients pass their per-attempt timeout; this,
#: their default one, when none is given); then they go regardless (an answer may never
#: come).
PROBE_TIMEOUT = 30.0


@dataclass(slots=True)
class _Window:
    limit: int
    remaining: int
    reset_at: float  # local clock, Unix seconds
    window: float | None  # length, when RateLimit-Policy named it


def parse_structured(value: str | None) -> dict[str, dict[str, str]]:
    """``"a";r=1;t=2, "b";r=5;t=60`` → ``{"a": {"r": "1", "t": "2"}, "b": {...}}``."""
    out: dict[str, dict[str, str]] = {}
    if not value:
        return out
    for part in value.split(","):
        m = _ITEM.match(part)
        if m is None:
            continue
        out[m.group(1).strip()] = {k: v.strip() for k, v in _PARAM.findall(m.group(2))}
    return out


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None


class Throttle:
    """The server's announced limits, per bucket, and the buckets of each route.

    Every request ``acquire`` lets go must end in exactly one :meth:`observe` or
    :meth:`failed` call for its route: that is how its in-flight count is given back.

    Thread-safe: the sync client may be shared between threads.

    Args:
        probe_timeout: how long (seconds) the first request on an unknown route holds the
            others back at most; the client's per-attempt timeout, after which that
            request has an answer or has failed.
    """

    def __init__(self, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self._probe_timeout = probe_timeout
        #: bucket name (or ``"route:" + route`` without ``RateLimit`` items) → its window.
        self._windows: dict[str, _Window] = {}
        #: route → the windows its requests count against.
        self._routes: dict[str, tuple[str, ...]] = {}
        #: route → when its first request left, while its answer is awaited.
        self._probing: dict[str, float] = {}
        #: routes whose answers carry no rate-limit headers.
        self._unlimited: set[str] = set()
        #: route → requests let go and not yet answered or failed.
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, route: str, now: float) -> float:
        """Reserve one request on ``route`` (one in each of its buckets).

        Returns:
            0 when the request may go now (one request is reserved and counted in flight
            until :meth:`observe` or :meth:`failed` for ``route``), else the seconds to
            wait before asking again.
        """
        with self._lock:
            names = self._routes.get(route)
            if names is None:
                if route not in self._unlimited:
                    # Nothing known yet: let one request find out the limit, and hold the
                    # others rather than send a burst into an unknown window.
                    started = self._probing.get(route)
                    if started is not None and now - started < self._probe_timeout:
                        return PROBE_WAIT
                    self._probing[route] = now
                self._in_flight[route] = self._in_flight.get(route, 0) + 1
                return 0.0
            wait = 0.0
            held: list[_Window] = []
            for name in names:
                w = self._windows.get(name)
                if w is None:
                    continue
                if now >= w.reset_at:
                    if w.window is None:
                        # Window length unknown: forget it and let the next answer teach us.
                        del self._windows[name]
                        continue
                    # Fixed windows follow one another: assume a fresh one, so callers that
                    # waited for the reset do not all rush through at once. Requests still
                    # out may be decided in it: count them in it too.
                    periods = math.floor((now - w.reset_at) / w.window) + 1
                    w.reset_at += periods * w.window
                    w.remaining = max(0, w.limit - self._out(name))
                if w.remaining <= 0:
                    wait = max(wait, w.reset_at - now, 0.001)
                held.append(w)
            if wait:
                return wait
            for w in held:
                w.remaining -= 1
            self._in_flight[route] = self._in_flight.get(route, 0) + 1
            return 0.0

    def _out(self, name: str) -> int:
        """Requests in flight on the routes known to hit bucket ``name``."""
        return sum(
            count for route, count in self._in_flight.items() if name in self._routes.get(route, ())
        )

    def _landed(self, route: str) -> None:
        """One request on ``route`` is no longer in flight."""
        count = self._in_flight.get(route, 0)
        if count > 1:
            self._in_flight[route] = count - 1
        else:
            # Also after forget(): a request let go before it must not go negative.
            self._in_flight.pop(route, None)

    def observe(self, route: str, status: int, headers: Mapping[str, str], now: float) -> None:
        """Learn from an answer's status and rate-limit headers (lower-case names)."""
        limit = _int(headers.get("x-ratelimit-limit"))
        remaining = _int(headers.get("x-ratelimit-remaining"))
        reset = _int(headers.get("x-ratelimit-reset"))
        if limit is None or remaining is None or reset is None:
            with self._lock:
                self._landed(route)
                self._probing.pop(route, None)
                if 200 <= status < 300:
                    self._unlimited.add(route)  # a success without limits: none to keep
            return
        learned: dict[str, _Window] = {}
        # The IETF items: one per bucket the request counted against.
        current = parse_structured(headers.get("ratelimit"))
        policy = parse_structured(headers.get("ratelimit-policy"))
        for name, params in current.items():
            r, t = _int(params.get("r")), _int(params.get("t"))
            quota = _int(policy.get(name, {}).get("q"))
            if r is None or t is None:
                continue
            tightest = r == remaining and quota in (None, limit)
            q = quota if quota is not None else (limit if tightest else None)
            if q is None:
                continue
            # The absolute reset names the tightest bucket's moment; the relative t
            # (whole seconds, rounded up) bounds it against clock skew.
            base = float(reset) if tightest else now + t
            w = _int(policy.get(name, {}).get("w"))
            learned[name] = _Window(
                q, max(r, 0), min(max(base, now + t - 1), now + t), float(w) if w else None
            )
        if not learned:
            reset_at = float(reset)
            if reset_at - now > 3600:
                # Without a relative reset, distrust an absolute one far off (skew).
                reset_at = now + 1
            learned["route:" + route] = _Window(limit, max(remaining, 0), reset_at, None)
        with self._lock:
            self._landed(route)
            self._probing.pop(route, None)
            # A 429 may name only the denying buckets: keep those learned before.
            before = self._routes.get(route, ())
            self._routes[route] = before + tuple(n for n in learned if n not in before)
            for name, window in learned.items():
                known = self._windows.get(name)
                # Resets estimated from whole seconds differ by up to one between answers
                # of one window; windows of a second or two need the tighter reading.
                same = 1.0 if window.window is None or window.window > 2 else 0.5
                if known is not None and abs(known.reset_at - window.reset_at) < same:
                    # Same window: answers arrive out of order, and reservations made
                    # since this request was sent are not in its count; the lower count
                    # is right.
                    window.remaining = min(window.remaining, known.remaining)
                elif known is not None and window.reset_at < known.reset_at:
                    # Decided in a window already over (sent before the boundary,
                    # answered after it): the current one's count stands.
                    continue
                else:
                    # A window new to us: requests still out may be decided in it and
                    # are not in its count.
                    window.remaining = max(0, window.remaining - self._out(name))
                self._windows[name] = window

    def failed(self, route: str) -> None:
        """A request on ``route`` got no answer (it failed, timed out or was abandoned):
        it is no longer in flight, and the next one may probe at once."""
        with self._lock:
            self._landed(route)
            self._probing.pop(route, None)

    def forget(self) -> None:
        """Drop everything learned."""
        with self._lock:
            self._windows.clear()
            self._routes.clear()
            self._probing.clear()
            self._unlimited.clear()
            self._in_flight.clear()
