"""Forward-auth under load: nginx alone, nginx + tollhouse ``auth_request``, tollhouse's proxy.

One run starts the raw-asyncio upstream (``benchmarks/raw_upstream.py``), `tollhouse serve`
(a key, one bucket with a limit nothing reaches, metering on, the access-log listener on)
and nginx (one worker, keep-alive to both) with two servers: one proxying the upstream
alone, one asking tollhouse's ``/v1/platform/authorize`` first (``auth_request``, as
docs/forward-auth.md configures it, JSON access log to tollhouse over syslog). `wrk` loads
each at 32 connections, and tollhouse's own reverse proxy in front of the same upstream.
Rounds alternate the contenders; each one's best round is kept.

Cores: nginx and tollhouse run on core 0; wrk and the upstream on core 1.

Target: nginx + tollhouse ≥ 0.5 × nginx alone. Server CPU per request (nginx's workers
plus tollhouse, µs) is printed too: steadier than req/s on a shared machine.

    .venv/bin/python benchmarks/forward_auth_wrk.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy_wrk import (
    PIN_OTHERS,
    PIN_PROXY,
    Result,
    _ms,
    ensure_wrk,
    free_port,
    make_key,
    proc_cpu,
    wait_http,
)

HERE = Path(__file__).resolve().parent
PATH = "/v1/things/42"
CONNECTIONS = 32

POLICY = """
[upstream]
url = "http://127.0.0.1:{upstream}"
max_connections = 256

[proxy]
trusted_proxies = ["127.0.0.1/32"]

[forward_auth]
access_log_listen = "udp://127.0.0.1:{log_port}"

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
    log_format tollhouse escape=json
        '{{"request_id":"$th_request_id","status":$status,"request_time":$request_time}}';
    upstream api {{ server 127.0.0.1:{upstream}; keepalive 256; }}
    upstream tollhouse {{ server 127.0.0.1:{tollhouse}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{alone};
        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{authed};
        access_log syslog:server=127.0.0.1:{log_port},nohostname,tag=nginx tollhouse;
        location / {{
            auth_request /_tollhouse/authorize;
            auth_request_set $th_request_id $upstream_http_x_request_id;
            auth_request_set $th_org $upstream_http_x_tollhouse_org;
            auth_request_set $th_limit $upstream_http_x_ratelimit_limit;
            auth_request_set $th_remaining $upstream_http_x_ratelimit_remaining;
            auth_request_set $th_reset $upstream_http_x_ratelimit_reset;
            auth_request_set $th_ratelimit $upstream_http_ratelimit;
            auth_request_set $th_ratelimit_policy $upstream_http_ratelimit_policy;
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header X-Request-Id $th_request_id;
            proxy_set_header X-Tollhouse-Org $th_org;
            add_header X-Request-Id $th_request_id always;
            add_header X-RateLimit-Limit $th_limit always;
            add_header X-RateLimit-Remaining $th_remaining always;
            add_header X-RateLimit-Reset $th_reset always;
            add_header RateLimit $th_ratelimit always;
            add_header RateLimit-Policy $th_ratelimit_policy always;
        }}
        location = /_tollhouse/authorize {{
            internal;
            proxy_pass http://tollhouse/v1/platform/authorize;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Forwarded-Method "";
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    wrk = ensure_wrk()
    nginx = "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        sys.exit("nginx is needed: apt-get install nginx-light")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        db = workdir / "bench.db"
        key = asyncio.run(make_key(db))
        up, th, alone, authed, log_port = (free_port() for _ in range(5))
        try:
            upstream = subprocess.Popen(
                [*PIN_OTHERS, sys.executable, str(HERE / "raw_upstream.py"), "--port", str(up)]
            )
            procs.append(upstream)
            wait_http(f"http://127.0.0.1:{up}/", upstream)
            (workdir / "policy.toml").write_text(
                POLICY.format(upstream=up, db=db, log_port=log_port)
            )
            serve = subprocess.Popen(
                [
                    *PIN_PROXY,
                    str(Path(sys.executable).with_name("tollhouse")),
                    "serve",
                    "--config",
                    str(workdir / "policy.toml"),
                    "--port",
                    str(th),
                    "--log-level",
                    "warning",
                ],
                cwd=workdir,
                stdout=subprocess.DEVNULL,
            )
            procs.append(serve)
            auth = {"Authorization": f"Bearer {key}"}
            wait_http(f"http://127.0.0.1:{th}{PATH}", serve, auth)
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                (workdir / sub).mkdir()
            conf = workdir / "nginx.conf"
            conf.write_text(
                NGINX.format(
                    workdir=workdir,
                    upstream=up,
                    tollhouse=th,
                    alone=alone,
                    authed=authed,
                    log_port=log_port,
                )
            )
            proc = subprocess.Popen([*PIN_PROXY, nginx, "-c", str(conf)])
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{alone}{PATH}", proc)
            wait_http(f"http://127.0.0.1:{authed}{PATH}", proc, auth)
            check = httpx.get(f"http://127.0.0.1:{authed}{PATH}", headers=auth)
            assert "x-ratelimit-limit" in check.headers, check.headers
            assert check.json()["service"] == "raw-upstream", check.text
            denied = httpx.get(f"http://127.0.0.1:{authed}{PATH}")
            assert denied.status_code == 401, denied.status_code

            # (url, key, pids whose CPU is the server's)
            contenders: dict[str, tuple[str, str | None, tuple[int, ...]]] = {
                "nginx alone": (f"http://127.0.0.1:{alone}{PATH}", None, (proc.pid,)),
                "nginx + tollhouse": (
                    f"http://127.0.0.1:{authed}{PATH}",
                    key,
                    (proc.pid, serve.pid),
                ),
                "tollhouse proxy": (f"http://127.0.0.1:{th}{PATH}", key, (serve.pid,)),
            }
            best: dict[str, Result] = {}
            for _ in range(args.rounds):
                for name, (url, auth_key, pids) in contenders.items():
                    result = _measure(wrk, url, args.seconds, auth_key, pids)
                    old = best.get(name)
                    if old is None or result.rps > old.rps:
                        best[name] = result
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    print(f"\n{CONNECTIONS} connections, best of {args.rounds} rounds of {args.seconds} s")
    print(f"{'':<20}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU µs/req':>20}")
    for name, r in best.items():
        cpu = f"{r.user_us:.1f} + {r.sys_us:.1f}"
        print(f"{name:<20}{r.rps:>10,.0f}{r.p50_ms:>9.3f}{r.p99_ms:>9.2f}{cpu:>20}")
    alone_r, authed_r = best["nginx alone"], best["nginx + tollhouse"]
    own = best["tollhouse proxy"]
    print(
        f"\nnginx + tollhouse / nginx alone = {authed_r.rps / alone_r.rps:.2f} (target ≥ 0.50)"
        f"; tollhouse proxy / nginx alone = {own.rps / alone_r.rps:.2f}"
        f"; nginx + tollhouse / tollhouse proxy = {authed_r.rps / own.rps:.2f}"
    )


def _measure(wrk: str, url: str, seconds: int, key: str | None, pids: tuple[int, ...]) -> Result:
    """One ``wrk`` run against ``url``; the server CPU is that of every process in
    ``pids`` (and their children: nginx's worker)."""
    args = [*PIN_OTHERS, wrk, "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s"]
    args += ["--latency", url]
    if key:
        args[-1:-1] = ["-H", f"Authorization: Bearer {key}"]
    before = [proc_cpu(pid) for pid in pids]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    after = [proc_cpu(pid) for pid in pids]
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
    user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return Result(
        float(rps.group(1)),
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        user / n * 1e6,
        system / n * 1e6,
    )


if __name__ == "__main__":
    main()
