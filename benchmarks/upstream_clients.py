"""Upstream HTTP clients side by side: what one proxied request costs the client half.

Starts ``benchmarks/raw_upstream.py`` in its own process, then, in this process on uvloop,
sends the same GET through each candidate client — tollhouse's own
(:mod:`tollhouse.upstream`), httpx, and aiohttp when it is installed — one connection at a
time and with 32 and 128 requests in flight. Each client streams the body, pools
keep-alive connections, and is used the way the proxy uses it. Prints requests/s and
microseconds of this process's CPU per request, and each client's ratio to tollhouse's.

    .venv/bin/python benchmarks/upstream_clients.py [--requests 20000] [--rounds 3]

(``pip install aiohttp`` to include it.) The proxy and the job handler use the client
that comes out fastest here; docs/gateway.md records the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tollhouse.upstream import UpstreamPool, parse_origin

HERE = Path(__file__).resolve().parent
Fetch = Callable[[], Awaitable[int]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"the upstream did not start on port {port}")


async def tollhouse_client(url: str, conns: int) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    origin = parse_origin(url)
    pool = UpstreamPool(origin, max_connections=conns)
    headers = [(b"host", origin.authority), (b"accept", b"*/*")]

    async def fetch() -> int:
        response = await pool.request(b"GET", b"/v1/thing", headers)
        async for _ in response.iter_body():
            pass
        return response.status

    return fetch, pool.aclose


async def httpx_client(url: str, conns: int) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(
        base_url=url,
        limits=httpx.Limits(max_connections=conns, max_keepalive_connections=conns),
        trust_env=False,
    )

    async def fetch() -> int:
        request = client.build_request("GET", "/v1/thing", headers={"accept": "*/*"})
        response = await client.send(request, stream=True)
        try:
            async for _ in response.aiter_raw():
                pass
        finally:
            await response.aclose()
        return response.status_code

    return fetch, client.aclose


async def aiohttp_client(url: str, conns: int) -> tuple[Fetch, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(limit=conns),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )

    async def fetch() -> int:
        async with session.get("/v1/thing", headers={"accept": "*/*"}) as response:
            async for _ in response.content.iter_any():
                pass
            return response.status

    return fetch, session.close


async def run(fetch: Fetch, total: int, concurrency: int) -> tuple[float, float]:
    """(requests/s, CPU µs per request) for ``total`` requests, ``concurrency`` at once."""
    remaining = total

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await fetch()
            assert status == 200, status

    for _ in range(min(200, total)):  # warm the pool
        await fetch()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return total / wall, cpu / total * 1e6


async def main_async(args: argparse.Namespace, url: str) -> None:
    makers: dict[str, Callable[[str, int], Awaitable[tuple[Fetch, Callable[[], Awaitable[None]]]]]]
    makers = {"tollhouse": tollhouse_client, "httpx": httpx_client}
    try:
        import aiohttp  # noqa: F401

        makers["aiohttp"] = aiohttp_client
    except ImportError:
        print("aiohttp is not installed: `pip install aiohttp` to compare it too")
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(args.rounds):
        for concurrency in (1, 32, 128):
            for name, make in makers.items():
                fetch, close = await make(url, max(concurrency, 1))
                total = args.requests if concurrency > 1 else args.requests // 4
                rate, cpu = await run(fetch, total, concurrency)
                await close()
                key = (name, concurrency)
                if key not in best or rate > best[key][0]:
                    best[key] = (rate, cpu)
    print(f"\n{'client':<10} {'in flight':>9} {'req/s':>9} {'CPU µs/req':>11} {'vs tollhouse':>13}")
    for concurrency in (1, 32, 128):
        base = best[("tollhouse", concurrency)][0]
        for name in makers:
            rate, cpu = best[(name, concurrency)]
            print(f"{name:<10} {concurrency:>9} {rate:>9,.0f} {cpu:>11.1f} {rate / base:>12.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "raw_upstream.py"), "--port", str(port)]
    )
    try:
        wait_port(port)
        import uvloop

        uvloop.run(main_async(args, f"http://127.0.0.1:{port}"))
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
