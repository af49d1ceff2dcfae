"""What the gateway hands to metering for every call it answered for an authenticated key."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple, Protocol

_NO_LABELS: Mapping[str, str] = MappingProxyType({})


class CallRecord(NamedTuple):
    """One metered call. Made by the gateway after the response ended.

    A named tuple, not a frozen dataclass: one is made per request, and a frozen
    dataclass's ``__init__`` costs several times more.
    """

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
    labels: Mapping[str, str] = _NO_LABELS
    """Route labels (db, scenario, reco_type…) declared in the policy."""
    request_id: str = ""
    """The request's ``X-Request-Id``: names the call if the database refuses its data
    (:mod:`tollhouse.metering.deadletters`)."""


class Meter(Protocol):
    """Takes call records on the hot path: memory only, never blocks, never raises."""

    def record(self, call: CallRecord) -> None:
        """Account one call."""
        ...


class ReclassifyingMeter(Meter, Protocol):
    """A :class:`Meter` that can also move a call it recorded with status unknown (0) to
    the status learnt later (forward-auth: an access-log line that came late)."""

    def reclassify(self, call: CallRecord, status: int, duration_ms: float) -> None:
        """Move ``call`` (recorded before, status unknown) to ``status`` and
        ``duration_ms``; its count does not change. Memory only, never raises."""
        ...
