"""tollhouse.times: the one ``Retry-After`` parser (SDK and webhook sender) and ``as_utc``."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tollhouse.times import as_utc, parse_retry_after

NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 5 ", 5.0),  # surrounding whitespace is not part of the value
        ("007", 7.0),
        # HTTP-date, all three forms RFC 9110 requires a recipient to read.
        ("Fri, 15 Jan 2027 08:01:00 GMT", 60.0),  # IMF-fixdate
        ("Friday, 15-Jan-27 08:00:30 GMT", 30.0),  # obsolete RFC 850
        ("Fri Jan 15 08:00:10 2027", 10.0),  # asctime: no zone, so GMT (not local time)
        ("Fri, 15 Jan 2027 09:00:10 +0100", 10.0),  # an explicit offset is honoured
        ("Fri, 15 Jan 2027 07:00:00 GMT", 0.0),  # a date in the past: now
    ],
)
def test_retry_after_forms(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "-3",  # negative
        "+3",
        "1.5",  # delay-seconds are whole
        "1e3",
        "nan",
        "inf",
        "soon",
        "٣",  # a digit, but not an ASCII one
        "²",
        "Fri, 32 Jan 2027 08:00:00 GMT",  # no such day
        "Fri, 15 Jan 99999 08:00:00 GMT",
        "15 Jan",
    ],
)
def test_malformed_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_a_huge_delay_is_still_a_number() -> None:
    assert parse_retry_after("9" * 400, NOW) == float("inf")


def test_as_utc() -> None:
    naive = datetime(2027, 1, 15, 8, 0)
    assert as_utc(naive) == datetime(2027, 1, 15, 8, 0, tzinfo=UTC)
    other = datetime(2027, 1, 15, 9, 0, tzinfo=timezone(timedelta(hours=1)))
    assert as_utc(other) is other  # an aware value is kept as it is
    assert as_utc(None) is None


def test_the_sdk_shares_the_parser_without_server_modules() -> None:
    """The SDK and the webhook sender use this one parser, and importing the SDK loads
    none of the server's dependencies."""
    from tollhouse.client import _errors, _retry
    from tollhouse.jobs import webhook_sender

    assert _retry.parse_retry_after is parse_retry_after
    assert _errors.parse_retry_after is parse_retry_after
    assert webhook_sender.parse_retry_after is parse_retry_after
    code = (
        "import sys, tollhouse.client, tollhouse.webhooks, tollhouse.times\n"
        "heavy = {'sqlalchemy', 'starlette', 'fastapi', 'uvicorn', 'redis'}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "    or m.startswith(('tollhouse.http', 'tollhouse.jobs', 'tollhouse.storage')))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
