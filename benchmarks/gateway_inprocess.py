"""The gateway's own cost per request, without a server or network: a bare Starlette
route vs the same route wrapped by `Tollhouse` (auth + two buckets + headers), both
called directly as ASGI apps in one event loop, same run.

    .venv/bin/python benchmarks/gateway_inprocess.py [--calls 20000] [--rounds 5]

Prints µs per request for each and the difference: what tollhouse adds to every call.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tollhouse import Tollhouse

POLICY = """
[storage]
database_url = "sqlite:///{db}"

[[buckets]]
name = "read_and_ops"
limit = 1000000000
window = "1s"
routes = ["GET /v1/score/{{scoringJobId}}"]

[[buckets]]
name = "scoring"
limit = 1000000000
window = "60s"
routes = ["GET /v1/score/{{scoringJobId}}"]
"""


async def score(request: Request) -> JSONResponse:
    return JSONResponse({"scoringJobId": request.path_params["job"], "status": "completed"})


async def run(calls: int, rounds: int) -> None:
    bare = Starlette(routes=[Route("/v1/score/{job}", score)])
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "policy.toml"
        config.write_text(POLICY.format(db=Path(tmp) / "bench.db"))
        app = Tollhouse(bare, config=config)
        await app.startup()
        _, secret = await app.key_store.create("bench", "test", "root")
        headers = [
            (b"host", b"127.0.0.1"),
            (b"user-agent", b"bench"),
            (b"authorization", b"Bearer " + secret.encode()),
        ]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        def scope() -> dict[str, Any]:
            return {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/v1/score/sj_1",
                "raw_path": b"/v1/score/sj_1",
                "query_string": b"",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
            }

        best = {"bare": float("inf"), "wrapped": float("inf")}
        for _ in range(rounds):
            for name, target in (("bare", bare), ("wrapped", app)):
                t0 = time.perf_counter()
                for _ in range(calls):
                    await target(scope(), receive, send)  # type: ignore[arg-type]
                best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
        await app.shutdown()
    b, w = best["bare"], best["wrapped"]
    print(f"bare Starlette route        : {b:6.2f} µs/request")
    print(f"Tollhouse(auth + 2 buckets) : {w:6.2f} µs/request")
    print(f"added by tollhouse          : {w - b:6.2f} µs/request ({b / w:.1%} of bare speed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.rounds))


if __name__ == "__main__":
    main()
