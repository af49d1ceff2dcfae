"""The scheduled pass inside a real ``tollhouse serve``, on SQLite and PostgreSQL: with
``TOLLHOUSE_FAIR_USE_INTERVAL`` short, a regeneration loop made over HTTP is recorded as
a flag by the server's own background pass — nobody calls ``run_pass``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.fairuse.test_signals_server import policy_file
from tests.faults.support import wait_until
from tollhouse.errors import ConfigError
from tollhouse.fairuse.run import DEFAULT_INTERVAL
from tollhouse.http.app import Tollhouse
from tollhouse.settings import load_settings


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    env = {"TOLLHOUSE_DATABASE_URL": database_url, "TOLLHOUSE_FAIR_USE_INTERVAL": "0.2"}
    running = start_server(tmp_path, policy_file(tmp_path), env=env)
    try:
        yield running
    finally:
        stop_server(running)


def test_the_server_s_background_pass_records_the_flag(server: Server) -> None:
    secret = server.key("acme", env="test")["key"]
    headers = {"Authorization": f"Bearer {secret}", "X-Tenant-Id": "acme"}
    t0 = time.time() - 1

    def regeneration_loops() -> dict[str, Any]:
        # Only the pass writes what this catalogue metric reads (fair_use_flags).
        params = {"time_start": str(t0), "time_end": str(time.time() + 1)}
        resp = httpx.get(
            f"{server.url}/v1/analytics/regeneration_loops", headers=headers, params=params
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def live() -> dict[str, Any]:
        resp = httpx.get(
            f"{server.url}/v1/analytics/fair-use", headers=headers, params={"timeRange": "24h"}
        )
        assert resp.status_code == 200, resp.text
        return {s["signal"]: s for s in resp.json()["signals"]}["regeneration_loop"]

    body = {"jobId": "job_loop", "title": "Backend Engineer", "description": "Python."}
    for _ in range(4):  # the built-in 5 per second: never refused here
        resp = httpx.post(f"{server.url}/v1/criteria/generate", headers=headers, json=body)
        assert resp.status_code == 200, resp.text

    wait_until(lambda: regeneration_loops()["type"] == "simple", "the background pass's flag")
    assert regeneration_loops()["value"]["value"] == 1
    found = live()
    assert (found["value"], found["status"]) == (4, "flagged")
    assert found["involved"] == [{"id": "job_loop", "count": 4}]


def test_the_interval_setting(tmp_path: Path) -> None:
    assert load_settings(environ={}).fair_use_interval == DEFAULT_INTERVAL == 300.0
    settings = load_settings(
        environ={
            "TOLLHOUSE_FAIR_USE_INTERVAL": " 2.5 ",
            "TOLLHOUSE_DATABASE_URL": f"sqlite:///{tmp_path}/interval.db",
        }
    )
    assert settings.fair_use_interval == 2.5
    app = Tollhouse(settings=settings)
    try:
        assert app.fair_use.interval == 2.5
    finally:
        asyncio.run(app.shutdown())
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(ConfigError, match="TOLLHOUSE_FAIR_USE_INTERVAL"):
            load_settings(environ={"TOLLHOUSE_FAIR_USE_INTERVAL": bad})
