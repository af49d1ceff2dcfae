"""A bad-key flood next to a good client: its latency with failed authentications
limited per address (``[limits] failed_auth``, the default) and without (``limit = 0``).

One run starts `tollhouse serve` twice on SQLite (one policy each; the client address
comes from ``X-Forwarded-For`` of a trusted loopback peer, as behind a load balancer).
Against each, a good client sends ``--requests`` sequential calls with a valid key,
first alone, then while a flood process sends random well-formed keys from another
address on ``--flood`` connections at ``--rate`` requests a second (or as fast as they
are answered, if slower: without the limit a bad key costs a lookup). Printed: the good
client's p50 and p99, alone and under the flood, and the flood's answers per second.

    .venv/bin/python benchmarks/failed_auth_flood.py [--requests 1500] [--flood 16] [--rate 800]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.synchronize
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

POLICY = """
[proxy]
trusted_proxies = ["127.0.0.1"]

[limits]
failed_auth = {failed_auth}

[[buckets]]
name = "status"
limit = 1000000
window = "1s"
routes = ["GET /v1/rate-limit/status"]
"""

TOLLHOUSE = (sys.executable, "-m", "tollhouse")
PATH = "/v1/rate-limit/status"
GOOD_ADDRESS = "198.18.0.10"
FLOOD_ADDRESS = "198.18.0.66"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}


def start(cwd: Path, failed_auth: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """`tollhouse serve` with the policy; its URL and a valid key."""
    config = cwd / "policy.toml"
    config.write_text(POLICY.format(failed_auth=failed_auth))
    made = subprocess.run(
        [*TOLLHOUSE, "keys", "create", "--org", "bench", "--json", "--config", str(config)],
        cwd=cwd,
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    key = json.loads(made.stdout)["key"]
    port = free_port()
    proc = subprocess.Popen(
        [
            *TOLLHOUSE,
            "serve",
            "--port",
            str(port),
            "--config",
            str(config),
            "--log-level",
            "warning",
        ],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, key
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("tollhouse serve did not start")


def flood(
    url: str, connections: int, rate: float, stop: multiprocessing.synchronize.Event, out: Any
) -> None:
    """Random well-formed keys from FLOOD_ADDRESS at ``rate`` requests a second (or as
    fast as answered, when the server is slower) until told to stop, on raw keep-alive
    connections (an HTTP client library would spend more CPU than the server); report
    the statuses."""
    host, port = url.removeprefix("http://").split(":")
    interval = connections / rate

    async def connection(statuses: Counter[int]) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while not stop.is_set():
                due += interval
                if (ahead := due - loop.time()) > 0:
                    await asyncio.sleep(ahead)
                bad = "sk_test_" + secrets.token_hex(16)
                writer.write(
                    f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bad}\r\n"
                    f"X-Forwarded-For: {FLOOD_ADDRESS}\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                statuses[int(head.split(b" ", 2)[1])] += 1
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
        finally:
            writer.close()

    async def main() -> Counter[int]:
        statuses: Counter[int] = Counter()
        await asyncio.gather(*(connection(statuses) for _ in range(connections)))
        return statuses

    started = time.monotonic()
    statuses = asyncio.run(main())
    out.put((dict(statuses), time.monotonic() - started))


def good_client(url: str, key: str, requests: int) -> list[float]:
    """Latencies (ms) of ``requests`` sequential calls with a valid key."""
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": GOOD_ADDRESS}
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        for _ in range(50):  # warm: connection, key cache
            assert c.get(PATH).status_code == 200
        for _ in range(requests):
            t = time.perf_counter()
            r = c.get(PATH)
            out.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
    return out


def quantiles(ms: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(ms, n=100)
    return cuts[49], cuts[98]


def measure(label: str, failed_auth: str, args: argparse.Namespace) -> None:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as cwd:
        proc, url, key = start(Path(cwd), failed_auth)
        try:
            alone = quantiles(good_client(url, key, args.requests))
            stop, out = ctx.Event(), ctx.Queue()
            flooder = ctx.Process(target=flood, args=(url, args.flood, args.rate, stop, out))
            flooder.start()
            time.sleep(1.0)  # the flood under way (and over its address's limit)
            try:
                loaded = quantiles(good_client(url, key, args.requests))
            finally:
                stop.set()
                statuses, seconds = out.get(timeout=60)
                flooder.join(30)
        finally:
            proc.terminate()
            proc.wait(30)
    total = sum(statuses.values())
    print(
        f"{label:<34} good p50/p99 alone {alone[0]:.1f}/{alone[1]:.1f} ms, "
        f"under flood {loaded[0]:.1f}/{loaded[1]:.1f} ms (p99 ×{loaded[1] / alone[1]:.1f}); "
        f"flood {total / seconds:.0f} answers/s {dict(sorted(statuses.items()))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--flood", type=int, default=16, help="flood connections")
    parser.add_argument("--rate", type=float, default=800, help="flood requests a second")
    args = parser.parse_args()
    measure("failed_auth off (limit = 0)", "{ limit = 0, window = '1m' }", args)
    measure("failed_auth 20/min (default)", "{ limit = 20, window = '1m' }", args)


if __name__ == "__main__":
    main()
