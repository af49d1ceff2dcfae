"""`tollhouse serve --workers 2` on one Redis: two processes, one set of limits."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import TESTS, start_server, stop_server
from tests.services import RedisServer

pytestmark = pytest.mark.redis


def test_two_workers_share_limits_exactly(tmp_path: Path, redis_service: RedisServer) -> None:
    server = start_server(
        tmp_path, TESTS / "data" / "tight.toml", "--workers", "2", "--redis-url", redis_service.url
    )
    try:
        key = server.key("workers-" + uuid.uuid4().hex[:8])
        headers = {"Authorization": f"Bearer {key['key']}", "X-Tenant-Id": "t"}
        url = server.url + "/v1/score/sj_missing"  # bucket "tiny": 5 per window, org scope

        async def fire() -> list[int]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                rs = await asyncio.gather(*(client.get(url, headers=headers) for _ in range(200)))
            return [r.status_code for r in rs]

        codes = asyncio.run(fire())
        assert codes.count(429) == 195
        assert len(codes) - codes.count(429) == 5
        status = httpx.get(server.url + "/v1/rate-limit/status", headers=headers).json()
        assert status["degraded"] is False
        assert status["buckets"]["tiny"]["remaining"] == 0
    finally:
        stop_server(server)
