"""The gateway hands one CallRecord per answered call of an authenticated key to the meter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tollhouse.http.gateway import Gateway
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.store import KeyStore
from tollhouse.limits import MemoryStore
from tollhouse.metering.record import CallRecord
from tollhouse.policy.load import parse_policy
from tollhouse.storage.engine import make_engine
from tollhouse.storage.schema import create_schema

POLICY = """
[[buckets]]
name = "small"
limit = 2
window = "3650d"
routes = ["GET /v1/dbs/{dbId}/items"]

[[endpoint_groups]]
key = "ITEMS"
description = "read items"
routes = ["GET /v1/dbs/{dbId}/items"]

[[labels]]
name = "db"
source = "path"
key = "dbId"
routes = ["GET /v1/dbs/{dbId}/items"]

[[labels]]
name = "scenario"
source = "header"
key = "X-Scenario"
routes = ["GET /v1/dbs/*"]

[[labels]]
name = "reco_type"
source = "query"
key = "type"
routes = ["GET /v1/dbs/*"]
"""


class ListMeter:
    """A meter that keeps what it is given (the protocol's simplest real implementation)."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    def record(self, call: CallRecord) -> None:
        self.calls.append(call)


async def items(request: Request) -> JSONResponse:
    return JSONResponse({"db": request.path_params["db"]})


def test_records_carry_identity_route_group_status_and_labels(tmp_path: Path) -> None:
    async def go() -> list[CallRecord]:
        engine = make_engine(f"sqlite:///{tmp_path}/m.db")
        await create_schema(engine)
        store = KeyStore(engine)
        _, secret = await store.create("acme", "live", "backend")
        meter = ListMeter()
        inner = Starlette(routes=[Route("/v1/dbs/{db}/items", items)])
        gateway = Gateway(
            inner,
            policy=parse_policy(POLICY, "t"),
            limits=MemoryStore(),
            keys=KeyCache(store),
            meter=meter,
        )
        transport = httpx.ASGITransport(app=gateway)  # type: ignore[arg-type]
        headers: dict[str, Any] = {"X-API-Key": secret, "X-Scenario": "homepage"}
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(3):
                await client.get("/v1/dbs/db_7/items?type=items", headers=headers)
            await client.get("/v1/dbs/db_7/items")  # no key: not metered
            await client.get("/healthz")  # not metered
        await engine.dispose()
        return meter.calls

    calls = asyncio.run(go())
    assert [c.status for c in calls] == [200, 200, 429]
    first = calls[0]
    assert (first.org, first.environment, first.method) == ("acme", "PRODUCTION", "GET")
    assert first.route == "/v1/dbs/{dbId}/items"
    assert first.endpoint_group == "ITEMS"
    assert first.labels == {"db": "db_7", "scenario": "homepage", "reco_type": "items"}
    assert first.duration_ms >= 0
    assert first.key_id.startswith("key_")
