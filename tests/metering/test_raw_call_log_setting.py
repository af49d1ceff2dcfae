"""``TOLLHOUSE_RAW_CALL_LOG``: with the raw call log off, a Tollhouse app writes no row per
call (``api_calls_log`` stays empty) while its rollups count every call exactly; on (the
default), one row per call — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tollhouse import Tollhouse, load_settings
from tollhouse.keys.store import KeyStore
from tollhouse.metering.schema import ROLLUPS, usage_calls

POLICY = """
[[buckets]]
name = "reads"
limit = 1000
window = "60s"
routes = ["GET /v1/items/{itemId}"]
"""

CALLS = 7


async def item(request: Request) -> JSONResponse:
    status = 404 if request.path_params["item"] == "missing" else 200
    return JSONResponse({"item": request.path_params["item"]}, status_code=status)


@pytest.mark.parametrize("raw_log", ["on", "off", None], ids=["on", "off", "default"])
def test_raw_call_log_off_keeps_the_rollups_exact(
    database_url: str, tmp_path: Path, raw_log: str | None
) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    environ = {"TOLLHOUSE_DATABASE_URL": database_url}
    if raw_log is not None:
        environ["TOLLHOUSE_RAW_CALL_LOG"] = raw_log
    settings = load_settings(config, environ=environ)
    assert settings.raw_call_log is (raw_log != "off")

    async def go() -> tuple[list[int], int, int]:
        inner = Starlette(routes=[Route("/v1/items/{item}", item)])
        app = Tollhouse(inner, settings=settings)
        await app.startup()
        try:
            _, secret = await KeyStore(app.engine).create("acme", "live", "backend")
            auth = {"Authorization": f"Bearer {secret}"}
            transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for i in range(CALLS):
                    name = "missing" if i == 0 else f"i{i}"
                    r = await client.get(f"/v1/items/{name}", headers=auth)
                    assert r.status_code == (404 if i == 0 else 200)
            await app.meter.flush()
            async with app.engine.connect() as conn:
                counts = [
                    int((await conn.execute(select(func.sum(t.c.count)))).scalar() or 0)
                    for t in ROLLUPS
                ]
                errors = (await conn.execute(select(func.sum(ROLLUPS[0].c.client_errors)))).scalar()
                rows = (await conn.execute(select(func.count()).select_from(usage_calls))).scalar()
            return counts, int(errors or 0), int(rows or 0)
        finally:
            await app.shutdown()

    counts, client_errors, log_rows = asyncio.run(go())
    assert counts == [CALLS, CALLS, CALLS]  # 1 m, 1 h and 1 d rollups: every call
    assert client_errors == 1
    assert log_rows == (0 if raw_log == "off" else CALLS)
