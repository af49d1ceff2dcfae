"""An upstream whose requests stay in flight until the test lets them go: ``GET
/gate/{gate}/wait`` answers once ``POST /gate/{gate}/open`` was called, and ``GET
/gate/{gate}/entered`` says how many waiters have begun (so a test knows how many pool
slots are held without guessing a delay)."""

from __future__ import annotations

import asyncio
from collections import Counter

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_entered: Counter[str] = Counter()
#: One event per gate, made on the server's loop by its first request.
_gates: dict[str, asyncio.Event] = {}


def _gate(request: Request) -> asyncio.Event:
    return _gates.setdefault(request.path_params["gate"], asyncio.Event())


async def wait(request: Request) -> JSONResponse:
    _entered[request.path_params["gate"]] += 1
    await _gate(request).wait()
    return JSONResponse({"passed": True})


async def entered(request: Request) -> JSONResponse:
    return JSONResponse({"entered": _entered[request.path_params["gate"]]})


async def open_gate(request: Request) -> JSONResponse:
    _gate(request).set()
    return JSONResponse({"open": True})


app = Starlette(
    routes=[
        Route("/gate/{gate}/wait", wait, methods=["GET"]),
        Route("/gate/{gate}/entered", entered, methods=["GET"]),
        Route("/gate/{gate}/open", open_gate, methods=["POST"]),
    ]
)
