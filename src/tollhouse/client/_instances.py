"""Several base URLs: which instance each attempt goes to (no I/O; the clock is passed in).

Small deployments run a few ``tollhouse serve`` instances on one database with no load
balancer in front. A client given several base URLs sends its requests to them in turn
(round robin). An instance whose attempt got no answer (connection refused, reset,
timeout) or a 502/503/504 *cools down*: it is passed over for :data:`COOL_DOWN` seconds
while another instance is available, and used again after that (or as soon as it
answers something else). When every instance is cooling down, the one that comes back
first is used.

Whether a failed attempt is sent again at all is not decided here: the retry rules
(``_retry.decide``) do that, idempotency included. This module only says where the next
attempt goes and whether an instance other than the failed one is available — in which
case the client sends it there at once instead of waiting out a backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

#: Seconds an instance that failed is passed over (while another one is available).
COOL_DOWN = 5.0
#: Statuses that say the instance (or what is behind it) is failing, not the request.
INSTANCE_FAILURE_STATUSES = frozenset({502, 503, 504})


def parse_base_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """The base URLs of a ``base_url`` argument or ``TOLLHOUSE_URL``.

    Args:
        value: one URL, several separated by commas, or a sequence of URLs.

    Returns:
        The URLs without trailing slashes, in the order given.

    Raises:
        ValueError: none given, or one that is not an ``http(s)://host`` URL.
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls = tuple(u.strip().rstrip("/") for u in parts if u.strip())
    if not urls:
        raise ValueError("base_url: give at least one URL")
    for url in urls:
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError(f"base_url: {url!r} is not an http(s) URL")
    return urls


def choose(start: int, cooling_until: Sequence[float], now: float) -> int:
    """The instance for the next attempt: the first from ``start`` on (wrapping round)
    that is not cooling down at ``now``; if every one is, the one that comes back first.

    Args:
        start: the index the rotation is at.
        cooling_until: per instance, the time its cool-down ends (0: none).
        now: the current time, same clock.
    """
    n = len(cooling_until)
    for i in range(n):
        index = (start + i) % n
        if cooling_until[index] <= now:
            return index
    return min(range(n), key=lambda i: (cooling_until[i], (i - start) % n))


def other_available(index: int, cooling_until: Sequence[float], now: float) -> bool:
    """Whether an instance other than ``index`` is not cooling down at ``now``."""
    return any(until <= now for i, until in enumerate(cooling_until) if i != index)


class Instances:
    """The rotation over a client's base URLs and their cool-downs.

    Thread-safe: the sync client may be shared between threads. ``with_tenant`` copies
    share it, so they agree on which instance is down.

    Args:
        urls: the base URLs (see :func:`parse_base_urls`).
        cool_down: seconds a failed instance is passed over.
    """

    def __init__(self, urls: Sequence[str], cool_down: float = COOL_DOWN) -> None:
        if not urls:
            raise ValueError("at least one base URL is needed")
        self.urls: tuple[str, ...] = tuple(urls)
        self.cool_down = cool_down
        self._cooling_until = [0.0] * len(self.urls)
        self._next = 0
        self._lock = threading.Lock()

    def pick(self, now: float) -> int:
        """The index of the instance the next attempt goes to; the rotation moves on."""
        if len(self.urls) == 1:
            return 0
        with self._lock:
            index = choose(self._next, self._cooling_until, now)
            self._next = (index + 1) % len(self.urls)
            return index

    def failed(self, index: int, now: float) -> None:
        """The attempt sent to ``index`` got no answer, or a 502/503/504: cool it down."""
        if len(self.urls) > 1:
            with self._lock:
                self._cooling_until[index] = now + self.cool_down

    def answered(self, index: int) -> None:
        """The instance at ``index`` answered (anything but a 502/503/504)."""
        if len(self.urls) > 1 and self._cooling_until[index]:
            with self._lock:
                self._cooling_until[index] = 0.0

    def other_available(self, index: int, now: float) -> bool:
        """Whether an instance other than ``index`` is not cooling down at ``now``."""
        if len(self.urls) == 1:
            return False
        with self._lock:
            return other_available(index, self._cooling_until, now)

    def cooling(self, now: float) -> list[str]:
        """The base URLs cooling down at ``now`` (for logs and tests)."""
        with self._lock:
            return [
                u for u, until in zip(self.urls, self._cooling_until, strict=True) if until > now
            ]
