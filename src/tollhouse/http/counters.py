"""The gateway's plain counters, read by ``/metrics`` at scrape time
(:mod:`tollhouse.ops.metrics`): the hot path only adds to ints here."""

from __future__ import annotations

__all__ = ["GatewayCounters"]


class GatewayCounters:
    """What one process's gateway answered and decided (no org, key or tenant in any key
    except the shadow denials', which the rate-limit status reads back per org)."""

    __slots__ = ("admitted", "denied", "responses", "shadow_denials")

    def __init__(self) -> None:
        #: (endpoint group key, status) → answered requests.
        self.responses: dict[tuple[str | None, int], int] = {}
        #: buckets and pools of an admitted request → admitted requests.
        self.admitted: dict[tuple[str, ...], int] = {}
        #: the bucket or pool that denied → denied requests.
        self.denied: dict[str, int] = {}
        #: (org scope, bucket) → requests a shadow bucket would have denied.
        self.shadow_denials: dict[tuple[str, str], int] = {}

    def answered(self, group: str | None, status: int) -> None:
        """Count one answer."""
        key = (group, status)
        self.responses[key] = self.responses.get(key, 0) + 1
