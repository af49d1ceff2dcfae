"""Requests/s of a bare Starlette route vs the same route wrapped by `Tollhouse`, same run.

Both are served by uvicorn, one worker, httptools + uvloop, access log off; `wrk` loads
each from a second process on loopback. The wrapped app authenticates a key and checks
two buckets (a per-second and a per-minute one, limits high enough that nothing is
denied), adds the rate-limit headers, and passes the request to the same route.
A third contender, the bare route plus the same six headers as constants, separates what
the server pays to write the headers from the gateway's own work. Rounds alternate the
contenders; each one's best round is kept. Target: wrapped ≥ 85 % of bare.

Requests/s swing with whatever else runs on the machine; the server's CPU time per
request (user + system from ``/proc/PID/stat`` around each wrk run, divided by the
requests served) hardly does, so it is printed too, per round and at the end.

    .venv/bin/python benchmarks/gateway_wrk.py [--seconds 10] [--rounds 3] [--connections 64]
        [--meter-variants] [--against SRC]

``--against SRC`` adds a contender: the wrapped app imported from another source tree
(``PYTHONPATH=SRC``, e.g. a checkout before a change), in the same rounds, for an A/B of
one change on a machine whose load moves between runs.

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


# --meter-variants: the same gateway without the raw call log (TOLLHOUSE_RAW_CALL_LOG=off:
# rollups exact, no row per call), and with no meter at all (records are made and
# dropped), to tell the meter's share from the rest. Each contender is its own process.
def wrapped_no_log():
    import os

    os.environ["TOLLHOUSE_RAW_CALL_LOG"] = "off"
    return wrapped()


class _NoMeter:
    def record(self, call):
        pass


def wrapped_no_meter():
    app = wrapped()
    app.gateway.meter = _NoMeter()
    return app
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


def start(workdir: Path, target: str, port: int, src: str | None = None) -> subprocess.Popen[bytes]:
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
    if target.rpartition(":")[2].startswith("wrapped"):
        args.append("--factory")
    # Server on core 0, load generator on core 1: neither steals the other's CPU.
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.Popen([*PIN_SERVER, *args], cwd=workdir, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    sys.exit(f"{target} did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux ``/proc/PID/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of the file (utime, stime), counted after the "(comm)" field.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    wrk: str, url: str, seconds: int, connections: int, key: str | None, pid: int
) -> tuple[float, float]:
    """Load ``url``; its requests/s and the server's CPU µs per request (user + system,
    read from ``/proc``: unlike requests/s, hardly moved by other work on the machine)."""
    args = [*PIN_CLIENT, wrk, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", url]
    if key:
        args[-1:-1] = ["-H", f"Authorization: Bearer {key}"]
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu1 = cpu_seconds(pid)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        sys.exit(f"wrk saw {non2xx.group(1)} error responses:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not match or not total:
        sys.exit(f"cannot read wrk output:\n{out}")
    return float(match.group(1)), (cpu1 - cpu0) * 1e6 / max(1, int(total.group(1)))


async def make_key(workdir: Path) -> str:
    from tollhouse.keys.store import KeyStore
    from tollhouse.schema import create_schema
    from tollhouse.storage.engine import make_engine

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
    parser.add_argument(
        "--meter-variants",
        action="store_true",
        help="also the gateway without the raw call log, and without the meter",
    )
    parser.add_argument(
        "--against",
        metavar="SRC",
        help="also the wrapped app imported from this source tree (an A/B of a change)",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bench_app.py").write_text(APP_MODULE)
        (workdir / "policy.toml").write_text(POLICY)
        key = asyncio.run(make_key(workdir))
        targets = {"bare": "bare", "headers": "headers_only", "wrapped": "wrapped"}
        if args.meter_variants:
            targets |= {"no log": "wrapped_no_log", "no meter": "wrapped_no_meter"}
        if args.against:
            targets["against"] = "wrapped"
        servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        try:
            for name, target in targets.items():
                port = free_port()
                src = args.against if name == "against" else None
                servers[name] = (port, start(workdir, f"bench_app:{target}", port, src))
            path = "/v1/score/sj_123"
            check = httpx.get(
                f"http://127.0.0.1:{servers['wrapped'][0]}{path}",
                headers={"Authorization": f"Bearer {key}"},
            )
            assert check.status_code == 200, check.text
            assert "x-ratelimit-limit" in check.headers
            best = dict.fromkeys(servers, 0.0)
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (port, proc) in servers.items():
                    url = f"http://127.0.0.1:{port}{path}"
                    auth = None if targets[name] in ("bare", "headers_only") else key
                    rps, us = run_wrk(wrk, url, args.seconds, args.connections, auth, proc.pid)
                    best[name] = max(best[name], rps)
                    cpu[name].append(us)
                    print(f"  {name:<8} {rps:>10,.0f} req/s  {us:6.1f} µs CPU/request", flush=True)
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait()
    b, h, w = best["bare"], best["headers"], best["wrapped"]
    print(f"bare Starlette route                 : {b:>10,.0f} req/s")
    print(f"bare + the 6 headers as constants    : {h:>10,.0f} req/s  ({h / b:.1%} of bare)")
    print(f"Tollhouse(auth + 2 buckets + headers): {w:>10,.0f} req/s")
    print(f"ratio wrapped / bare                 : {w / b:.1%}  (target >= 85%)")
    print(f"ratio wrapped / bare + headers       : {w / h:.1%}  (the gateway's own work)")
    for name in ("no log", "no meter", "against"):
        if name in best:
            print(f"ratio wrapped, {name:<8} / bare      : {best[name] / b:.1%}")
    for name, samples in cpu.items():
        print(f"server CPU per request, {name:<8}     : {min(samples):6.1f} µs (least of rounds)")
    # A server pinned to one core serves at most 1 / (CPU per request): the same ratios
    # from CPU time, steadier than requests/s on a machine other work shares.
    least = {name: min(samples) for name, samples in cpu.items()}
    for name in least:
        if name != "bare":
            print(f"ratio by CPU, bare / {name:<8}        : {least['bare'] / least[name]:.1%}")


if __name__ == "__main__":
    main()
