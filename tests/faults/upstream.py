"""The upstream and job handler the fault tests put behind `tollhouse serve`.

``GET /v1/things/{id}`` answers at once, ``GET /slow`` after about a second (so requests
are in flight when the server is told to stop); ``task`` is the job handler of
``POST /v1/tasks``, logging each execution's start and end to the file its payload names.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

#: How long ``GET /slow`` holds its request.
SLOW_SECONDS = 1.0


async def thing(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["thing_id"], "pid": os.getpid()})


async def slow(request: Request) -> JSONResponse:
    log = request.query_params.get("log")
    if log:
        append(log, f"arrived {request.query_params.get('n', '')}\n")
    await asyncio.sleep(SLOW_SECONDS)
    return JSONResponse({"slept": SLOW_SECONDS})


app = Starlette(
    routes=[
        Route("/v1/things/{thing_id}", thing, methods=["GET"]),
        Route("/slow", slow, methods=["GET"]),
    ]
)


async def task(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps ``payload["sleep"]`` seconds; logs ``start``/``end`` lines with pid and ``n``."""
    log = str(payload["log"])
    n = payload["n"]
    append(log, f"start {os.getpid()} {n} {time.time():.6f}\n")
    await asyncio.sleep(float(payload.get("sleep", 0.1)))
    append(log, f"end {os.getpid()} {n} {time.time():.6f}\n")
    return {"n": n}


def append(path: str, line: str) -> None:
    # O_APPEND: lines from concurrent writers never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
