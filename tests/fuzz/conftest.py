"""Fixtures of the fuzz tests: a real `tollhouse serve` on tests/data/fuzz.toml, a root
key, some data (criteria, a scored job, product events) so that the fuzzer's requests
reach the routes' real answers, and the OpenAPI document the server serves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests import services
from tests.conftest import TESTS, Server, start_server, stop_server

FUZZ_POLICY = TESTS / "data" / "fuzz.toml"
TENANT = "fuzz-tenant"
#: The fuzz servers' admin token: the provider API's operations are fuzzed with it.
ADMIN_TOKEN = "adm_" + "f" * 40
ADMIN_ENV = {"TOLLHOUSE_ADMIN_TOKEN": ADMIN_TOKEN}


@dataclass(frozen=True)
class Caller:
    """A server and the headers of a root key of one org on it."""

    server: Server
    org: str
    headers: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=30, **kwargs)

    def post(self, path: str, json: Any) -> httpx.Response:
        return httpx.post(self.url + path, headers=self.headers, json=json, timeout=30)


def caller(server: Server, org: str) -> Caller:
    key = server.key(org, role="root")["key"]
    return Caller(server, org, {"Authorization": f"Bearer {key}", "X-Tenant-Id": TENANT})


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`tollhouse serve --config tests/data/fuzz.toml` (high limits, example upstream)."""
    server = start_server(tmp_path_factory.mktemp("fuzz"), FUZZ_POLICY, env=ADMIN_ENV)
    yield server
    stop_server(server)


def seeded(server: Server, org: str = "fuzz") -> Caller:
    """A root key of ``org``, with data behind the routes the fuzzer reads."""
    c = caller(server, org)
    posting = {"jobId": "job_1", "title": "Backend Engineer", "description": "Python and Redis."}
    assert c.post("/v1/criteria/generate", posting).status_code == 200
    score = {
        "applicationId": "app_1",
        "jobId": "job_1",
        "candidate": {"name": "Ada", "resume": "Built Python APIs on Redis for 6 years."},
    }
    assert c.post("/v1/score", score).status_code == 202
    events = [
        {
            "id": f"ev_{i}",
            "type": "llm_call",
            "time": "2026-01-02T00:00:00Z",
            "data": {"model": "m1", "tokens_in": 10, "tokens_out": 5, "cost": 0.01, "user": "u1"},
        }
        for i in range(3)
    ]
    answer = c.post("/v1/events", events)
    assert answer.status_code == 200, answer.text
    return c


@pytest.fixture(scope="session")
def fuzz_caller(fuzz_server: Server) -> Caller:
    """A root key of org ``fuzz`` on the SQLite-backed fuzz server, with data."""
    return seeded(fuzz_server)


@pytest.fixture(scope="session")
def pg_fuzz_caller(
    tmp_path_factory: pytest.TempPathFactory, postgres_service: services.PostgresServer
) -> Iterator[Caller]:
    """The same on a server whose database is PostgreSQL (stricter about text than SQLite)."""
    url = postgres_service.create_database("fuzz")
    server = start_server(
        tmp_path_factory.mktemp("fuzz-pg"),
        FUZZ_POLICY,
        env={"TOLLHOUSE_DATABASE_URL": url, **ADMIN_ENV},
    )
    yield seeded(server)
    stop_server(server)
