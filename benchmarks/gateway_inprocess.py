"""The gateway's own cost per request, without a server or network: a bare Starlette
route vs the same route wrapped by `Tollhouse` (auth + two buckets + headers + metering),
and the same wrapped route with metering switched off, all called directly as ASGI apps
in one event loop, same run.

    .venv/bin/python benchmarks/gateway_inprocess.py [--calls 20000] [--rounds 5]

Prints µs per request for each and the difference: what tollhouse adds to every call —
by wall time, and by the event loop thread's CPU time (``time.thread_time``), which other
work on a shared machine hardly moves (the meter's flush to SQLite, on the driver's own
thread, is in neither).
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

        meter = app.gateway.meter
        contenders = (("bare", bare, None), ("wrapped", app, meter), ("unmetered", app, None))
        best = {name: float("inf") for name, _, _ in contenders}
        cpu = dict(best)
        for _ in range(rounds):
            for name, target, use_meter in contenders:
                # The same app with metering switched off: what metering costs per call.
                app.gateway.meter = use_meter
                t0, c0 = time.perf_counter(), time.thread_time()
                for _ in range(calls):
                    await target(scope(), receive, send)  # type: ignore[arg-type]
                best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
                cpu[name] = min(cpu[name], (time.thread_time() - c0) / calls * 1e6)
        app.gateway.meter = meter
        await app.shutdown()
    b, w, u = best["bare"], best["wrapped"], best["unmetered"]
    print(f"bare Starlette route        : {b:6.2f} µs/request")
    print(f"Tollhouse(auth + 2 buckets) : {w:6.2f} µs/request (metering on)")
    print(f"  same, metering off        : {u:6.2f} µs/request")
    print(f"added by tollhouse          : {w - b:6.2f} µs/request ({b / w:.1%} of bare speed)")
    print(f"of which metering           : {w - u:6.2f} µs/request")
    b, w, u = cpu["bare"], cpu["wrapped"], cpu["unmetered"]
    print(f"by CPU time: bare {b:.2f}, wrapped {w:.2f}, unmetered {u:.2f} µs/request;")
    print(f"  added by tollhouse {w - b:.2f} µs/request, of which metering {w - u:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.rounds))


if __name__ == "__main__":
    main()
