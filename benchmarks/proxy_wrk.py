"""The front door under load: `tollhouse serve` as a reverse proxy vs direct, nginx and /healthz.

One run starts a minimal raw-asyncio upstream (``benchmarks/raw_upstream.py``), `tollhouse
serve` in front of it (``[upstream] url``, a key, one bucket with a limit nothing reaches,
metering on: the product's real path), and nginx in front of it when ``/usr/sbin/nginx``
exists (one worker, upstream keep-alive). `wrk` loads each at 1, 32 and 128 connections,
and tollhouse's own ``/healthz`` (the server half of a proxy hop, no upstream call). Rounds
alternate the contenders; each one's best round is kept.

Cores: the proxy (tollhouse or nginx) runs on core 0; wrk and the upstream share core 1,
so the proxy under test has a core to itself and the others are the same for everyone.

Targets: proxied ≥ 0.5 × /healthz at 32 and at 128 connections (the client half of the
hop costs no more than the server half); 128 ≥ 0.8 × 32 (no collapse); the p50 that
tollhouse adds over direct at one connection ≤ 0.2 ms.

Requests/s on a shared machine follow the CPU share the server gets, so each run also
prints, per connection count, the server's CPU per request and what its event-loop
thread did over the run (from ``/proc``): running, ready but waiting for a CPU (other
work on the core), or idle (waiting for callers or the upstream). A server whose
requests/s drops while its CPU per request holds and its idle share stays near zero was
given less CPU, not slowed by the connection count.

    .venv/bin/python benchmarks/proxy_wrk.py [--seconds 6] [--rounds 2] [--before DIR]

``--before DIR`` also serves the proxy from another copy of the package (a directory
holding ``tollhouse/``, e.g. ``cp -r src /tmp/before`` taken before a change) on the same
core, as the row ``before``: a change compared with the code before it in one run.

Needs `wrk` (installed with apt-get when run as root); nginx is optional.
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
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
CONNECTIONS = (1, 32, 128)
PATH = "/v1/things/42"

POLICY = """
[upstream]
url = "http://127.0.0.1:{upstream}"
max_connections = 256

[storage]
database_url = "sqlite:///{db}"

[[buckets]]
name = "reads"
limit = 1000000000
window = "1s"
routes = ["GET /v1/things/{{id}}"]

[[endpoint_groups]]
key = "THINGS"
description = "things"
routes = ["GET /v1/things*"]
"""

NGINX = """
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream raw {{
        server 127.0.0.1:{upstream};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://raw;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""

_TASKSET = shutil.which("taskset")
_MULTI = (os.cpu_count() or 1) > 1
PIN_PROXY = [_TASKSET, "-c", "0"] if _TASKSET and _MULTI else []
PIN_OTHERS = [_TASKSET, "-c", "1"] if _TASKSET and _MULTI else []


@dataclass
class Result:
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    user_us: float = 0.0
    """The server's CPU per request in user space, µs (its process and its children)."""
    sys_us: float = 0.0
    """... and in the kernel (system calls, loopback TCP), µs."""
    running: float = 0.0
    """Share of the run the server's main thread (its event loop) was on a CPU ..."""
    ready: float = 0.0
    """... runnable but waiting for one (other work on its core) ..."""
    idle: float = 0.0
    """... and asleep (nothing to do: waiting for callers or the upstream)."""


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and its direct children (nginx's worker),
    from ``/proc``; zeros where ``/proc`` is not there."""
    user = system = 0.0
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry) == pid or int(fields[1]) == pid:
                user += int(fields[11]) / _TICK
                system += int(fields[12]) / _TICK
    except OSError:
        pass
    return user, system


def proc_sched(pid: int) -> tuple[float, float]:
    """Seconds the main thread of ``pid`` ran and waited to run (``/proc/PID/schedstat``);
    zeros where it is not there."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            ran, waited = f.read().split()[:2]
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(ran) / 1e9, int(waited) / 1e9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if not found and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: apt-get install wrk")
    return found


def wait_http(
    url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server for {url} exited with {proc.returncode}")
        try:
            response = httpx.get(url, headers=headers, timeout=1)
            if response.status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"{url} did not answer 200")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    wrk: str, url: str, seconds: int, connections: int, key: str | None, server: int
) -> Result:
    """``wrk`` against ``url``; ``server`` is the pid whose CPU per request is measured."""
    args = [*PIN_OTHERS, wrk, "-t", "1", "-c", str(connections), "-d", f"{seconds}s"]
    args += ["--latency", url]
    if key:
        args[-1:-1] = ["-H", f"Authorization: Bearer {key}"]
    cpu0, sched0, t0 = proc_cpu(server), proc_sched(server), time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    cpu1, sched1, wall = proc_cpu(server), proc_sched(server), time.monotonic() - t0
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"wrk saw {errors.group(1)} error responses from {url}:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and count):
        sys.exit(f"cannot read wrk output:\n{out}")
    n = max(1, int(count.group(1)))
    running = (sched1[0] - sched0[0]) / wall
    ready = (sched1[1] - sched0[1]) / wall
    return Result(
        float(rps.group(1)),
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        (cpu1[0] - cpu0[0]) / n * 1e6,
        (cpu1[1] - cpu0[1]) / n * 1e6,
        running,
        ready,
        max(0.0, 1.0 - running - ready),
    )


async def make_key(db: Path) -> str:
    from tollhouse.keys.store import KeyStore
    from tollhouse.schema import create_schema
    from tollhouse.storage.engine import make_engine

    engine = make_engine(f"sqlite:///{db}")
    await create_schema(engine)
    _, secret = await KeyStore(engine).create("bench", "test", "root", "benchmark")
    await engine.dispose()
    return secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--before", metavar="DIR", help="also serve the proxy from the package in DIR"
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    nginx = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        db = workdir / "bench.db"
        key = asyncio.run(make_key(db))
        up_port, th_port, ngx_port = free_port(), free_port(), free_port()
        try:
            upstream = subprocess.Popen(
                [*PIN_OTHERS, sys.executable, str(HERE / "raw_upstream.py"), "--port", str(up_port)]
            )
            procs.append(upstream)
            wait_http(f"http://127.0.0.1:{up_port}/", upstream)

            (workdir / "policy.toml").write_text(POLICY.format(upstream=up_port, db=db))
            serve = subprocess.Popen(
                [
                    *PIN_PROXY,
                    str(Path(sys.executable).with_name("tollhouse")),
                    "serve",
                    "--config",
                    str(workdir / "policy.toml"),
                    "--port",
                    str(th_port),
                    "--log-level",
                    "warning",
                ],
                cwd=workdir,
                stdout=subprocess.DEVNULL,
            )
            procs.append(serve)
            auth = {"Authorization": f"Bearer {key}"}
            wait_http(f"http://127.0.0.1:{th_port}{PATH}", serve, auth)
            before: subprocess.Popen[bytes] | None = None
            if args.before:
                before_port = free_port()
                before = subprocess.Popen(
                    [
                        *PIN_PROXY,
                        sys.executable,
                        "-m",
                        "tollhouse",
                        "serve",
                        "--config",
                        str(workdir / "policy.toml"),
                        "--port",
                        str(before_port),
                        "--log-level",
                        "warning",
                    ],
                    cwd=workdir,
                    stdout=subprocess.DEVNULL,
                    env={**os.environ, "PYTHONPATH": str(Path(args.before).resolve())},
                )
                procs.append(before)
                wait_http(f"http://127.0.0.1:{before_port}{PATH}", before, auth)
            check = httpx.get(f"http://127.0.0.1:{th_port}{PATH}", headers=auth)
            assert "x-ratelimit-limit" in check.headers, check.headers
            assert check.json()["service"] == "raw-upstream", check.text

            contenders: dict[str, tuple[str, str | None, int]] = {
                "direct": (f"http://127.0.0.1:{up_port}{PATH}", None, upstream.pid),
                "tollhouse": (f"http://127.0.0.1:{th_port}{PATH}", key, serve.pid),
                "healthz": (f"http://127.0.0.1:{th_port}/healthz", None, serve.pid),
            }
            if before is not None:
                url = f"http://127.0.0.1:{before_port}{PATH}"
                contenders["before"] = (url, key, before.pid)
            if nginx:
                for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                    (workdir / sub).mkdir()
                conf = workdir / "nginx.conf"
                conf.write_text(NGINX.format(workdir=workdir, upstream=up_port, port=ngx_port))
                proc = subprocess.Popen([*PIN_PROXY, nginx, "-c", str(conf)])
                procs.append(proc)
                wait_http(f"http://127.0.0.1:{ngx_port}{PATH}", proc)
                contenders["nginx"] = (f"http://127.0.0.1:{ngx_port}{PATH}", None, proc.pid)
            else:
                print("nginx not found (/usr/sbin/nginx): apt-get install nginx-light to compare")

            best: dict[tuple[str, int], Result] = {}
            for _ in range(args.rounds):
                for conns in CONNECTIONS:
                    for name, (url, auth_key, pid) in contenders.items():
                        result = run_wrk(wrk, url, args.seconds, conns, auth_key, pid)
                        old = best.get((name, conns))
                        if old is None or result.rps > old.rps:
                            best[(name, conns)] = result
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    names = list(contenders)
    print(f"\n{'':<10}" + "".join(f"{f'{c} conn':>30}" for c in CONNECTIONS))
    print(f"{'':<10}" + "".join(f"{'req/s    p50 ms   p99 ms':>30}" for _ in CONNECTIONS))
    for name in names:
        cells = [best[(name, c)] for c in CONNECTIONS]
        row = "".join(f"{r.rps:>12,.0f} {r.p50_ms:>8.3f} {r.p99_ms:>8.2f}" for r in cells)
        print(f"{name:<10}{row}")
    print()
    th = {c: best[("tollhouse", c)] for c in CONNECTIONS}
    hz = {c: best[("healthz", c)] for c in CONNECTIONS}
    direct = {c: best[("direct", c)] for c in CONNECTIONS}
    for c in CONNECTIONS:
        line = (
            f"{c:>3} conn: proxied / healthz {th[c].rps / hz[c].rps:5.2f}"
            f"   / direct {th[c].rps / direct[c].rps:5.2f}"
        )
        if nginx:
            line += f"   / nginx {th[c].rps / best[('nginx', c)].rps:5.2f}"
        if args.before:
            line += f"   / before {th[c].rps / best[('before', c)].rps:5.2f}"
        print(line)
    print(
        f"targets: proxied/healthz at 32 = {th[32].rps / hz[32].rps:.2f} and at 128 = "
        f"{th[128].rps / hz[128].rps:.2f} (≥ 0.50); 128/32 = {th[128].rps / th[32].rps:.2f} "
        f"(≥ 0.80); added p50 at 1 conn = {th[1].p50_ms - direct[1].p50_ms:.3f} ms (≤ 0.2)"
    )
    print(
        "\nserver CPU per request at 32 conn, µs user + system (steadier than req/s on a "
        "shared machine):"
    )
    for name in names:
        r = best[(name, 32)]
        print(f"  {name:<10}{r.user_us:7.1f} + {r.sys_us:6.1f} = {r.user_us + r.sys_us:7.1f}")
    print(
        "\nper connection count: server CPU per request (µs, user + system) | its main "
        "thread running / ready, waiting for a CPU / idle (nginx: its master, idle)"
    )
    for name in names:
        cells = []
        for c in CONNECTIONS:
            r = best[(name, c)]
            cells.append(
                f"{c:>4} conn {r.user_us + r.sys_us:6.1f} | "
                f"{r.running:4.0%} {r.ready:4.0%} {r.idle:4.0%}"
            )
        print(f"  {name:<10}" + "   ".join(cells))


if __name__ == "__main__":
    main()
