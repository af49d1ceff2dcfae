"""Proactive throttling: stay inside a limit the server has announced instead of
learning about it from a 429.

Every limited answer carries ``X-RateLimit-Limit/Remaining/Reset`` for the tightest bucket
the route hit, and the IETF ``RateLimit``/``RateLimit-Policy`` fields for every bucket.
:class:`Throttle` remembers, per route (``"GET /v1/score/{id}"``), the tightest window:
how many requests are left and when it resets. Before a request it reserves one of the
remaining requests, or says how long to wait for the reset when none are left (the scoring
API shape advises watching ``X-RateLimit-Remaining`` to slow down before a limit is hit).

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
#: ... for at most this long; then they go regardless (an answer may never come).
PROBE_TIMEOUT = 2.0


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
    """Per-route view of the server's announced limits.

    Thread-safe: the sync client may be shared between threads.
    """

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        #: route → when its first request left, while its answer is awaited.
        self._probing: dict[str, float] = {}
        #: routes whose answers carry no rate-limit headers.
        self._unlimited: set[str] = set()
        self._lock = threading.Lock()

    def acquire(self, route: str, now: float) -> float:
        """Reserve one request on ``route``.

        Returns:
            0 when the request may go now (one request is reserved), else the seconds to
            wait before asking again.
        """
        with self._lock:
            w = self._windows.get(route)
            if w is None:
                if route in self._unlimited:
                    return 0.0
                # Nothing known yet: let one request find out the limit, and hold the
                # others briefly rather than send a burst into an unknown window.
                started = self._probing.get(route)
                if started is not None and now - started < PROBE_TIMEOUT:
                    return PROBE_WAIT
                self._probing[route] = now
                return 0.0
            if now >= w.reset_at:
                if w.window is None:
                    # Window length unknown: forget it and let the next answer teach us.
                    del self._windows[route]
                    return 0.0
                # Fixed windows follow one another: assume a fresh one, so callers that
                # waited for the reset do not all rush through at once.
                periods = math.floor((now - w.reset_at) / w.window) + 1
                w.reset_at += periods * w.window
                w.remaining = w.limit
            if w.remaining > 0:
                w.remaining -= 1
                return 0.0
            return max(w.reset_at - now, 0.001)

    def observe(self, route: str, status: int, headers: Mapping[str, str], now: float) -> None:
        """Learn from an answer's status and rate-limit headers (lower-case names)."""
        limit = _int(headers.get("x-ratelimit-limit"))
        remaining = _int(headers.get("x-ratelimit-remaining"))
        reset = _int(headers.get("x-ratelimit-reset"))
        if limit is None or remaining is None or reset is None:
            with self._lock:
                self._probing.pop(route, None)
                if 200 <= status < 300:
                    self._unlimited.add(route)  # a success without limits: none to keep
            return
        reset_at = float(reset)
        window: float | None = None
        # The tightest bucket's IETF items: the one whose remaining and limit match.
        current = parse_structured(headers.get("ratelimit"))
        policy = parse_structured(headers.get("ratelimit-policy"))
        for name, params in current.items():
            if _int(params.get("r")) != remaining:
                continue
            if _int(policy.get(name, {}).get("q")) not in (None, limit):
                continue
            t = _int(params.get("t"))
            if t is not None:
                reset_at = min(max(reset_at, now + t - 1), now + t)
            w = _int(policy.get(name, {}).get("w"))
            window = float(w) if w else None
            break
        else:
            if reset_at - now > 3600:
                # Without a relative reset, distrust an absolute one far off (skew).
                reset_at = now + 1
        with self._lock:
            self._probing.pop(route, None)
            known = self._windows.get(route)
            if known is not None and abs(known.reset_at - reset_at) < 0.5:
                # Same window: answers arrive out of order, and reservations made since
                # this request was sent are not in its count; the lower count is right.
                remaining = min(remaining, known.remaining)
            self._windows[route] = _Window(limit, max(remaining, 0), reset_at, window)

    def failed(self, route: str) -> None:
        """A request got no answer: let the next one probe at once."""
        with self._lock:
            self._probing.pop(route, None)

    def forget(self) -> None:
        """Drop everything learned."""
        with self._lock:
            self._windows.clear()
            self._probing.clear()
            self._unlimited.clear()
