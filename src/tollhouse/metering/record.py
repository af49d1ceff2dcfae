"""What the gateway hands to metering for every call it answered for an authenticated key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One metered call. Made by the gateway after the response ended."""

    time: float
    """When the request arrived, epoch seconds (UTC)."""
    org: str
    environment: str
    """SANDBOX or PRODUCTION."""
    key_id: str
    tenant: str | None
    endpoint_group: str | None
    """The policy's ``[[endpoint_groups]]`` key the route belongs to, if any."""
    method: str
    route: str | None
    """The matched route template (``/v1/score/{scoringJobId}``), never the raw path."""
    status: int
    duration_ms: float
    labels: dict[str, str] = field(default_factory=dict)
    """Route labels (db, scenario, reco_type…) declared in the policy."""


class Meter(Protocol):
    """Takes call records on the hot path: memory only, never blocks, never raises."""

    def record(self, call: CallRecord) -> None:
        """Account one call."""
        ...
