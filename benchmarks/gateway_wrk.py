"""Requests/s of a bare Starlette route vs the same route wrapped by `Tollhouse`, same run.

Both are served by uvicorn, one worker, httptools + uvloop, access log off; `wrk` loads
each from a second process on loopback. The wrapped app authenticates a key and checks
two buckets (a per-second and a per-minute one, limits high enough that nothing is
denied), adds the rate-limit headers, and passes the request to the same route.
A third contender, the bare route plus the same six headers as constants, separates what
the server pays to write the headers from the gateway's own work. Rounds alternate the
contenders; each one's best round is kept. Target: wrapped ≥ 85 % of bare.

    .venv/bin/python benchmarks/gateway_wrk.py [--seconds 10] [--rounds 3] [--connections 64]

Needs `wrk` (Debian package `wrk`; installed here with apt-get when run as root).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

APP_MODULE = """
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def score(request):
    return JSONResponse({"scoringJobId": request.path_params["job"], "status": "completed"})


bare = Starlette(routes=[Route("/v1/score/{job}", score)])

# The bytes a gateway must add (same names and sizes as tollhouse's), as constants: what
# the server pays to write six more headers, with none of the gateway's work.
HEADERS = [
    (b"x-ratelimit-limit", b"1000000000"),
    (b"x-ratelimit-remaining", b"999999999"),
    (b"x-ratelimit-reset", b"1795306263"),
    (b"ratelimit-policy", b'"read_and_ops";q=1000000000;w=1, "scoring";q=1000000000;w=60'),
    (b"ratelimit", b'"read_and_ops";r=999999999;t=1, "scoring";r=999999999;t=58'),
    (b"x-request-id", b"req_0123456789abcdef"),
]


async def headers_only(scope, receive, send):
    if scope["type"] != "http":
        return await bare(scope, receive, send)

    async def send_with_headers(message):
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *HEADERS]
        await send(message)

    await bare(scope, receive, send_with_headers)


def wrapped():
    from tollhouse import Tollhouse

    return Tollhouse(bare, config="policy.toml")
"""

POLICY = """
[storage]
database_url = "sqlite:///bench.db"

[[buckets]]
name = "read_and_ops"
limit = 1000000000
window = "1s"
routes = ["GET /v1/score/{scoringJobId}"]

[[buckets]]
name = "scoring"
limit = 1000000000
window = "60s"
routes = ["GET /v1/score/{scoringJobId}"]
"""


_TASKSET = shutil.which("taskset")
_CORES = os.cpu_count() or 1
PIN_SERVER = [_TASKSET, "-c", "0"] if _TASKSET and _CORES > 1 else []
PIN_CLIENT = [_TASKSET, "-c", "1"] if _TASKSET and _CORES > 1 else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: apt-get install wrk")
    return found


def start(workdir: Path, target: str, port: int) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if target.endswith("wrapped"):
        args.append("--factory")
    # Server on core 0, load generator on core 1: neither steals the other's CPU.
    proc = subprocess.Popen([*PIN_SERVER, *args], cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"{target} did not start")


def run_wrk(wrk: str, url: str, seconds: int, connections: int, key: str | None) -> float:
    args = [*PIN_CLIENT, wrk, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", url]
    if key:
        args[-1:-1] = ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        sys.exit(f"wrk saw {non2xx.group(1)} error responses:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        sys.exit(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


async def make_key(workdir: Path) -> str:
    from tollhouse.keys.store import KeyStore
    from tollhouse.storage.engine import make_engine
    from tollhouse.storage.schema import create_schema

    engine = make_engine(f"sqlite:///{workdir}/bench.db")
    await create_schema(engine)
    _, secret = await KeyStore(engine).create("bench", "test", "root", "benchmark")
    await engine.dispose()
    return secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_app.py").write_text(APP_MODULE)
        (workdir / "policy.toml").write_text(POLICY)
        key = asyncio.run(make_key(workdir))
        bare_port, headers_port, wrapped_port = free_port(), free_port(), free_port()
        bare = start(workdir, "bench_app:bare", bare_port)
        headers_only = start(workdir, "bench_app:headers_only", headers_port)
        wrapped = start(workdir, "bench_app:wrapped", wrapped_port)
        try:
            path = "/v1/score/sj_123"
            check = httpx.get(
                f"http://127.0.0.1:{wrapped_port}{path}",
                headers={"Authorization": f"Bearer {key}"},
            )
            assert check.status_code == 200, check.text
            assert "x-ratelimit-limit" in check.headers
            contenders = {
                "bare": (bare_port, None),
                "headers": (headers_port, None),
                "wrapped": (wrapped_port, key),
            }
            best = dict.fromkeys(contenders, 0.0)
            for _ in range(args.rounds):
                for name, (port, auth) in contenders.items():
                    url = f"http://127.0.0.1:{port}{path}"
                    rps = run_wrk(wrk, url, args.seconds, args.connections, auth)
                    best[name] = max(best[name], rps)
        finally:
            for proc in (bare, headers_only, wrapped):
                proc.terminate()
                proc.wait()
    b, h, w = best["bare"], best["headers"], best["wrapped"]
    print(f"bare Starlette route                 : {b:>10,.0f} req/s")
    print(f"bare + the 6 headers as constants    : {h:>10,.0f} req/s  ({h / b:.1%} of bare)")
    print(f"Tollhouse(auth + 2 buckets + headers): {w:>10,.0f} req/s")
    print(f"ratio wrapped / bare                 : {w / b:.1%}  (target >= 85%)")
    print(f"ratio wrapped / bare + headers       : {w / h:.1%}  (the gateway's own work)")


if __name__ == "__main__":
    main()
