"""The 429s conform too: the fuzz policy's limits are too high to ever answer one, so here
the built-in policy's real limits (status: 2/s, analytics: 20/s) are run into on purpose
and the answers checked against the document the server serves."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Server
from tests.fuzz.conftest import caller

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Bursts sent at most while waiting for a 429, and their size (limits: 2/s and 20/s).
MAX_BURSTS = 10
BURST = 60


def _until_429(client: httpx.Client, path: str, params: dict[str, str]) -> httpx.Response:
    # Concurrent bursts: a 429 comes however slowly each request is answered.
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in range(MAX_BURSTS):
            answers = list(pool.map(lambda _: client.get(path, params=params), range(BURST)))
            assert {a.status_code for a in answers} <= {200, 429}, [a.text for a in answers]
            limited = [a for a in answers if a.status_code == 429]
            if limited:
                return limited[0]
    raise AssertionError(f"no 429 from {path} in {MAX_BURSTS} bursts of {BURST}")


@pytest.mark.parametrize(
    ("path", "params", "body"),
    [
        ("/v1/rate-limit/status", {}, "envelope"),
        (
            "/v1/analytics/{metric}",
            {"time_start": "2026-01-01T00:00:00Z", "time_end": "2026-01-02T00:00:00Z"},
            "detail",
        ),
    ],
)
def test_429_conforms(default_server: Server, path: str, params: dict[str, str], body: str) -> None:
    who = caller(default_server, f"fuzz-429-{body}")
    schema = schemathesis.openapi.from_url(
        default_server.url + "/v1/platform/openapi.json", headers=who.headers, timeout=30
    )
    operation = schema[path]["GET"]
    concrete = path.replace("{metric}", "flow_runs")
    with httpx.Client(base_url=default_server.url, headers=who.headers, timeout=30) as client:
        answer = _until_429(client, concrete, params)
    case = operation.Case(
        path_parameters={"metric": "flow_runs"} if "{metric}" in path else None,
        query=params or None,
        headers=who.headers,
    )
    case.validate_response(answer, checks=CHECKS)
    assert int(answer.headers["Retry-After"]) >= 1
    if body == "detail":
        assert answer.json() == {"detail": "Rate limit exceeded"}
    else:
        assert answer.json()["error"]["code"] == "RATE_LIMITED"
