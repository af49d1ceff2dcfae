"""The pure side of the fair-use signals: statuses, sliding windows, results.

No I/O here: :mod:`tollhouse.fairuse.evaluate` reads the facts, these functions decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: ``ok`` below half the threshold, ``watch`` from there up to it, ``flagged`` above it.
STATUSES = ("ok", "watch", "flagged")
#: Subjects (jobIds, keys) listed per signal at most.
MAX_SUBJECTS = 20


def status(value: float, threshold: float) -> str:
    """``flagged`` above the threshold, ``watch`` above half of it, else ``ok``."""
    if value > threshold:
        return "flagged"
    if value > 0 and value > threshold / 2:
        return "watch"
    return "ok"


@dataclass(frozen=True, slots=True)
class Subject:
    """A jobId or key involved in a signal, with its count."""

    id: str
    count: float


@dataclass(frozen=True, slots=True)
class SignalResult:
    """One signal of one org and environment over a time range."""

    signal: str
    value: float
    threshold: float
    status: str
    action: str
    subjects: tuple[Subject, ...] = ()
    """The jobIds or keys involved, most involved first (at most :data:`MAX_SUBJECTS`)."""
    first_seen_us: int | None = None
    """The first occurrence counted in the value, epoch µs; None when none was."""
    last_seen_us: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    """What the value was computed from (numerator, denominator…)."""
    involved_count: int = 0
    """How many jobIds or keys were involved (``subjects`` lists the first ones)."""

    def to_json(self) -> dict[str, Any]:
        """The result as the CLI's ``--json`` prints it (camelCase, ISO 8601 times)."""
        return {
            "signal": self.signal,
            "value": round(self.value, 4),
            "threshold": self.threshold,
            "status": self.status,
            "action": self.action,
            "involved": [{"id": s.id, "count": s.count} for s in self.subjects],
            "involvedCount": self.involved_count,
            "firstSeen": iso(self.first_seen_us),
            "lastSeen": iso(self.last_seen_us),
            "detail": self.detail,
        }


def iso(t_us: int | None) -> str | None:
    """Epoch µs → ``2026-01-15T10:00:00Z`` (None stays None)."""
    if t_us is None:
        return None
    moment = datetime.fromtimestamp(t_us / 1_000_000, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def top(subjects: Iterable[Subject]) -> tuple[Subject, ...]:
    """Most involved first, then by id; at most :data:`MAX_SUBJECTS`."""
    return tuple(sorted(subjects, key=lambda s: (-s.count, s.id))[:MAX_SUBJECTS])


def sliding_peak(minutes: Sequence[tuple[int, int]], window: float, start: int, end: int) -> int:
    """The most counts inside any ``window``-second span ending within ``[start, end]``.

    Args:
        minutes: ``(minute start, count)`` pairs in increasing minute order.
        window: the span, seconds.
        start: epoch seconds; spans ending before it are not judged.
        end: epoch seconds.
    """
    peak = 0
    total = 0
    lo = 0
    for minute, count in minutes:
        if minute > end:
            break
        total += count
        while minutes[lo][0] <= minute - window:
            total -= minutes[lo][1]
            lo += 1
        if minute + 60 > start:
            peak = max(peak, total)
    return peak


def share(part: float, whole: float) -> float:
    """``part / whole``, 0 when ``whole`` is 0."""
    return part / whole if whole else 0.0
