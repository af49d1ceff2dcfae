"""`GET /readyz` against real stores: PostgreSQL stopped and started, Redis killed and
brought back. `/healthz` (liveness) answers throughout."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import services
from tests.conftest import serve_in_thread
from tests.ops.support import samples, value, wait_for
from tollhouse import Tollhouse
from tollhouse.keys.store import KeyStore
from tollhouse.schema import create_schema
from tollhouse.settings import load_settings
from tollhouse.storage.engine import make_engine


def _ready(url: str) -> tuple[int, dict[str, Any]]:
    r = httpx.get(url + "/readyz", timeout=10)
    return r.status_code, r.json()


@pytest.mark.postgres
def test_readiness_follows_postgres(postgres_service: services.PostgresServer) -> None:
    db = postgres_service.create_database("ready_" + uuid.uuid4().hex[:8])
    app = Tollhouse(settings=load_settings(environ={"TOLLHOUSE_DATABASE_URL": db}))
    with serve_in_thread(app) as url:
        assert _ready(url) == (
            200,
            {"status": "ready", "checks": {"database": "ok", "limits": "ok"}},
        )
        postgres_service.stop()
        try:
            status, body = _ready(url)
            assert status == 503
            assert body == {
                "status": "unavailable",
                "checks": {"database": "unavailable", "limits": "ok"},
            }
            assert httpx.get(url + "/healthz").status_code == 200  # alive, not ready
        finally:
            postgres_service.start()
        wait_for(lambda: True if _ready(url)[0] == 200 else None, "ready again")
        assert _ready(url)[1]["checks"] == {"database": "ok", "limits": "ok"}


@pytest.mark.redis
def test_readiness_reports_degraded_limits_while_redis_is_away(tmp_path: Path) -> None:
    config = tmp_path / "tollhouse.toml"
    config.write_text(
        f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/t.db"\n'
        '[[buckets]]\nname = "reads"\nlimit = 100000\nwindow = "1m"\n'
        'routes = ["GET /v1/rate-limit/status"]\n'
    )

    async def key() -> str:
        engine = make_engine(f"sqlite:///{tmp_path}/t.db")
        await create_schema(engine)
        _, secret = await KeyStore(engine).create("ready", "test", "root")
        await engine.dispose()
        return secret

    auth = {"Authorization": f"Bearer {asyncio.run(key())}"}
    with services.redis_server() as redis:
        settings = load_settings(config, redis_url=redis.url)
        with serve_in_thread(Tollhouse(settings=settings)) as url:

            def limits_are(state: str) -> bool | None:
                # Requests drive the store: a failing round trip opens the breaker.
                httpx.get(url + "/v1/rate-limit/status", headers=auth)
                status, body = _ready(url)
                return True if status == 200 and body["checks"]["limits"] == state else None

            assert limits_are("ok")
            redis.kill()
            wait_for(lambda: limits_are("degraded"), "limits degraded after Redis died")
            assert _ready(url) == (
                200,
                {"status": "ready", "checks": {"database": "ok", "limits": "degraded"}},
            )
            found = samples(httpx.get(url + "/metrics").text)
            assert value(found, "tollhouse_limits_degraded") == 1
            redis.start()
            wait_for(lambda: limits_are("ok"), "limits back on Redis", timeout=30)
            found = samples(httpx.get(url + "/metrics").text)
            assert value(found, "tollhouse_limits_degraded") == 0
