"""The ``[cors]`` table: defaults, values as written, and errors that name the field."""

from __future__ import annotations

import pytest

from tollhouse.errors import PolicyError
from tollhouse.policy.load import load_policy, parse_policy
from tollhouse.policy.model import (
    CORS_ALLOW_HEADERS,
    CORS_EXPOSE_HEADERS,
    CORS_METHODS,
    Cors,
)


def test_cors_is_off_by_default() -> None:
    assert load_policy().cors == Cors()
    assert parse_policy("", "t").cors == Cors()
    off = parse_policy("[cors]\nallow_credentials = true", "t").cors
    assert not off.enabled
    assert not Cors().enabled


def test_defaults_when_only_origins_are_given() -> None:
    cors = parse_policy('[cors]\nallow_origins = ["https://app.example.com"]', "t").cors
    assert cors.enabled
    assert cors.allow_origins == ("https://app.example.com",)
    assert cors.allow_methods == CORS_METHODS == ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    assert cors.allow_headers == CORS_ALLOW_HEADERS
    assert {"Authorization", "X-API-Key", "Content-Type", "X-Tenant-Id"} <= set(cors.allow_headers)
    assert {"Idempotency-Key", "X-Request-Id"} <= set(cors.allow_headers)
    assert cors.expose_headers == CORS_EXPOSE_HEADERS
    assert {"RateLimit", "RateLimit-Policy", "Retry-After", "X-Request-Id"} <= set(
        cors.expose_headers
    )
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(
        cors.expose_headers
    )
    assert cors.allow_credentials is False
    assert cors.max_age == 600.0


def test_values_as_written() -> None:
    cors = parse_policy(
        """
[cors]
allow_origins = ["https://App.Example.com:443", "http://localhost:5173", "http://[::1]:80",
                 "https://app.example.com", "capacitor://localhost"]
allow_methods = ["get", "POST"]
allow_headers = ["X-API-Key", "x-api-key", "X-Custom"]
expose_headers = ["Retry-After"]
allow_credentials = true
max_age = "1h"
""",
        "t",
    ).cors
    # Lower case, default ports dropped (as browsers send them), duplicates dropped.
    assert cors.allow_origins == (
        "https://app.example.com",
        "http://localhost:5173",
        "http://[::1]",
        "capacitor://localhost",
    )
    assert cors.allow_methods == ("GET", "POST")
    assert cors.allow_headers == ("X-API-Key", "X-Custom")
    assert cors.expose_headers == ("Retry-After",)
    assert cors.allow_credentials is True
    assert cors.max_age == 3600.0


def test_wildcards() -> None:
    cors = parse_policy(
        '[cors]\nallow_origins = ["*"]\nallow_methods = ["*"]\nallow_headers = ["*"]\n'
        'expose_headers = ["*"]\nmax_age = 0',
        "t",
    ).cors
    assert cors.allow_origins == ("*",)
    assert cors.allow_methods == ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    assert cors.allow_headers == ("*",)
    assert cors.expose_headers == ("*",)
    assert cors.max_age == 0.0
    # Empty lists are allowed: nothing beyond the safelisted headers, nothing exposed.
    bare = parse_policy(
        '[cors]\nallow_origins = ["https://a.test"]\nallow_headers = []\nexpose_headers = []',
        "t",
    ).cors
    assert bare.allow_headers == ()
    assert bare.expose_headers == ()


def test_cors_objects_are_frozen() -> None:
    cors = parse_policy('[cors]\nallow_origins = ["https://a.test"]', "t").cors
    with pytest.raises(AttributeError):
        cors.allow_credentials = True  # type: ignore[misc]


ORIGIN = 'allow_origins = ["https://a.test"]\n'


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        (
            'allow_origins = ["*"]\nallow_credentials = true',
            "cors.allow_credentials",
            "Fetch standard forbids credentials with a wildcard origin",
        ),
        ('allow_origins = ["*", "https://a.test"]', "cors.allow_origins[0]", "list it alone"),
        ('allow_origins = ["https://a.test/"]', "cors.allow_origins[0]", 'no trailing "/"'),
        ('allow_origins = ["https://a.test/app"]', "cors.allow_origins[0]", "no path"),
        ('allow_origins = ["a.test"]', "cors.allow_origins[0]", "scheme://host[:port]"),
        ('allow_origins = ["https://a.test:https"]', "cors.allow_origins[0]", "must be an origin"),
        ('allow_origins = ["https://a.test", "null"]', "cors.allow_origins[1]", '"null" origin'),
        ('allow_origins = ["https://*.a.test"]', "cors.allow_origins[0]", "patterns"),
        ('allow_origins = "https://a.test"', "cors.allow_origins", "must be list"),
        ("allow_origins = [1]", "cors.allow_origins[0]", "must be a string"),
        (ORIGIN + 'allow_methods = ["GET", "FETCH"]', "cors.allow_methods[1]", "must be one of"),
        (ORIGIN + 'allow_headers = ["X-API-Key", "X Key"]', "cors.allow_headers[1]", "not a"),
        (ORIGIN + 'allow_headers = ["*", "X-API-Key"]', "cors.allow_headers[0]", "alone"),
        (ORIGIN + 'expose_headers = ["Retry-After:"]', "cors.expose_headers[0]", "not a header"),
        (
            ORIGIN + 'expose_headers = ["*"]\nallow_credentials = true',
            "cors.expose_headers[0]",
            "list the header names",
        ),
        (ORIGIN + 'allow_credentials = "yes"', "cors.allow_credentials", "must be bool"),
        (ORIGIN + 'max_age = "forever"', "cors.max_age", "not a duration"),
        (ORIGIN + "max_age = -5", "cors.max_age", "greater than zero"),
        (ORIGIN + "origins = []", "cors.origins", "unknown field"),
    ],
)
def test_bad_cors_names_the_field(text: str, field: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("[cors]\n" + text, "my.toml")
    assert info.value.field == field
    assert problem in info.value.problem
    assert str(info.value).startswith(f"my.toml: {field}: ")


def test_cors_must_be_a_table() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy('cors = ["https://a.test"]', "my.toml")
    assert info.value.field == "cors"
