"""The gateway hands one CallRecord per answered call of an authenticated key to the meter."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import serve_in_thread, sqlite_key
from tollhouse import Tollhouse
from tollhouse.http.gateway import Gateway
from tollhouse.keys.cache import KeyCache
from tollhouse.keys.store import KeyStore
from tollhouse.limits import MemoryStore
from tollhouse.metering.record import CallRecord
from tollhouse.policy.load import parse_policy
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine

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


def test_label_values_follow_their_rule_at_the_door(tmp_path: Path) -> None:
    """A label value longer than its rule (``usage_dims.db`` and the others hold 200
    characters) is a 400 naming the label, from a path, a header or a query alike; the
    refused call is metered without it, so the database never meets it."""
    db = tmp_path / "m.db"
    config = tmp_path / "tollhouse.toml"
    config.write_text(
        f'[storage]\ndatabase_url = "sqlite:///{db}"\n' + POLICY.replace("limit = 2", "limit = 100")
    )
    secret = sqlite_key(db, env="live", role="backend")
    inner = Starlette(routes=[Route("/v1/dbs/{db}/items", items)])
    long = "x" * 201
    with serve_in_thread(Tollhouse(inner, config=config)) as url, httpx.Client(base_url=url) as c:
        key = {"X-API-Key": secret}
        for path, headers, label in (
            (f"/v1/dbs/{long}/items", key, "db"),
            ("/v1/dbs/d/items", {**key, "X-Scenario": long}, "scenario"),
            (f"/v1/dbs/d/items?type={long}", key, "reco_type"),
            ("/v1/dbs/d/items?type=a%00b", key, "reco_type"),
        ):
            r = c.get(path, headers=headers)
            assert r.status_code == 400, r.text
            assert f'label "{label}"' in r.json()["error"]["message"]
        ok = c.get(f"/v1/dbs/{'x' * 200}/items", headers=key)
        assert ok.status_code == 200, ok.text
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT db, scenario, reco_type FROM usage_dims").fetchall()
        letters = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
    assert letters == 0
    assert ("x" * 200, "", "") in stored
    assert all(long not in row and "\x00" not in "".join(row) for row in stored), stored
