"""The upstream of the real-server retry-advice tests: ``GET /hold/{ms}`` answers after
``ms`` milliseconds and ``GET /entered/{ms}`` says how many ``/hold/{ms}`` requests
have begun (so a test knows a slot is held without guessing a delay)."""

from __future__ import annotations

import asyncio
from collections import Counter

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_entered: Counter[str] = Counter()


async def hold(request: Request) -> JSONResponse:
    ms = request.path_params["ms"]
    _entered[ms] += 1
    await asyncio.sleep(int(ms) / 1000)
    return JSONResponse({"held_ms": int(ms)})


async def entered(request: Request) -> JSONResponse:
    return JSONResponse({"entered": _entered[request.path_params["ms"]]})


async def thing(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["thing_id"]})


app = Starlette(
    routes=[
        Route("/hold/{ms}", hold, methods=["GET"]),
        Route("/entered/{ms}", entered, methods=["GET"]),
        Route("/v1/things/{thing_id}", thing, methods=["GET"]),
    ]
)
