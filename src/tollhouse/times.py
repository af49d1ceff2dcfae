"""Time helpers the server and the SDK share (standard library only, so the SDK and
webhook receivers can import them without the server's dependencies).

* :func:`as_utc` — a datetime as timezone-aware UTC, reading a naive one as UTC (SQLite
  hands stored datetimes back naive; they were written as UTC).
* :func:`parse_retry_after` — a ``Retry-After`` header as seconds to wait (RFC 9110
  §10.2.3): what the SDK waits out after a 429 or 503, and what the webhook sender waits
  before retrying a receiver that asked for it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import overload

__all__ = ["as_utc", "parse_retry_after"]


@overload
def as_utc(value: datetime) -> datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` with its timezone, or UTC when it has none; None stays None."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``, or None when it is absent or malformed.

    Either form of RFC 9110 is understood: delta-seconds (ASCII digits only: ``"120"``)
    and an HTTP-date (IMF-fixdate, the obsolete RFC 850 form, or asctime; a date without
    a zone is GMT). A date in the past means "now" (0.0). Anything else — a negative or
    fractional number, words, an impossible date — is None: the caller falls back to its
    own schedule.

    Args:
        value: the header's value, as received.
        now: the current Unix time, for an HTTP-date.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, as_utc(moment).timestamp() - now)
