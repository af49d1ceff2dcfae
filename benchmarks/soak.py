"""Soak: mixed traffic against `tollhouse serve` on the embedded default for minutes,
watching latency, errors and the server's memory.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 150] [--concurrency 16]
                                        [--orgs 10] [--example-results 200]
                                        [--json report.json]

Starts `tollhouse serve` (built-in policy, SQLite, bundled example upstream) in a
temporary folder, creates one root key per org, registers a local webhook receiver for
every org, generates criteria for each org's job, then runs — paced at ``--rate``
requests/s in total — a weighted mix of:

  criteria   POST /v1/criteria/generate           (product call, in-flight pool)
  score      POST /v1/score                        (job → webhook)
  poll       GET  /v1/score/{scoringJobId}
  status     GET  /v1/rate-limit/status
  volume     GET  /v1/analytics/scoring-volume?timeRange=1h
  counts     GET  /call-counts/historical/

and prints throughput, p50/p99 per kind, answers by status (429s apart from errors),
webhooks received, the server's RSS (``/proc/PID/status`` VmRSS) at start, middle and
end, and a verdict on memory growth: flat when RSS rose by at most 1 MB/min over the
second half (least squares over samples every 5 s). Limits are per org and small in the
built-in policy, so some 429s are expected; errors are 5xx answers and transport
failures.

The bundled example upstream keeps the scoring results it computes in the server's
database, bounded per org and environment (10,000 by default). The soak lowers the bound
to ``--example-results`` (200 by default, through ``TOLLHOUSE_EXAMPLE_MAX_RESULTS``) so
the example's tables stay small and reach their plateau in the first minutes, as its
in-memory store did before; ``--example-results 0`` keeps the server's default.

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

KINDS: dict[str, int] = {  # kind → weight in the mix
    "criteria": 2,
    "score": 6,
    "poll": 10,
    "status": 2,
    "volume": 3,
    "counts": 3,
}
RSS_EVERY = 5.0
#: Second-half RSS slope at or below which memory counts as flat.
FLAT_MB_PER_MIN = 1.0


@dataclass
class Tally:
    """Everything measured by the traffic tasks."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    transport_errors: Counter[str] = field(default_factory=Counter)
    jobs: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    webhooks: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--rate", type=float, default=150.0, help="requests/s in total (paced)")
    p.add_argument("--concurrency", type=int, default=16, help="client tasks")
    p.add_argument("--orgs", type=int, default=10, help="orgs (one key each)")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument(
        "--example-results",
        type=int,
        default=200,
        help="scoring results the example upstream keeps per org (0: the server's default)",
    )
    p.add_argument(
        "--without",
        action="append",
        choices=list(KINDS),
        default=[],
        help="leave a kind out of the mix (repeatable), e.g. --without score --without poll",
    )
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.concurrency < 1 or args.orgs < 1:
        p.error("--minutes and --rate must be positive, --concurrency and --orgs at least 1")
    if args.example_results < 0:
        p.error("--example-results must be 0 (the server's default) or more")
    if set(args.without) >= set(KINDS):
        p.error("--without leaves nothing to send")
    return args


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tollhouse(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tollhouse", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"tollhouse {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_receiver(tally: Tally) -> tuple[str, uvicorn.Server]:
    """A webhook receiver on loopback (uvicorn in a thread) counting deliveries."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        tally.webhooks += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/hook", server


async def traffic(
    base: str, secrets: list[str], tally: Tally, args: argparse.Namespace, stop_at: float
) -> None:
    kinds = [k for k in KINDS if k not in args.without]
    weights = [KINDS[k] for k in kinds]
    interval = args.concurrency / args.rate
    # Idle connections are dropped before the server's 5 s keep-alive closes them, as the
    # SDK does: reusing one the server is closing at that instant fails the request.
    limits = httpx.Limits(
        max_connections=args.concurrency,
        max_keepalive_connections=args.concurrency,
        keepalive_expiry=4.0,
    )
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(worker: int) -> None:
            rng = random.Random(worker)
            seq = 0
            next_at = time.monotonic() + rng.random() * interval
            while True:
                now = time.monotonic()
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                if time.monotonic() >= stop_at:
                    return
                # Slots missed while the server was slow are skipped, not burst.
                next_at = max(next_at + interval, time.monotonic())
                seq += 1
                org = rng.randrange(len(secrets))
                kind = rng.choices(kinds, weights)[0]
                if kind == "poll" and not tally.jobs[str(org)]:
                    if "score" in args.without:
                        continue
                    kind = "score"
                headers = {"Authorization": f"Bearer {secrets[org]}", "X-Tenant-Id": "soak"}
                started = time.perf_counter()
                try:
                    r = await request(client, kind, org, worker, seq, headers, tally, rng)
                except httpx.HTTPError as exc:
                    tally.transport_errors[f"{kind}: {type(exc).__name__}"] += 1
                    continue
                tally.latencies[kind].append((time.perf_counter() - started) * 1000)
                tally.statuses[kind][r.status_code] += 1
                if kind == "score" and r.status_code == 202:
                    jobs = tally.jobs[str(org)]
                    jobs.append(r.json()["scoringJobId"])
                    del jobs[:-50]

        await asyncio.gather(*(one(i) for i in range(args.concurrency)))


async def request(
    client: httpx.AsyncClient,
    kind: str,
    org: int,
    worker: int,
    seq: int,
    headers: dict[str, str],
    tally: Tally,
    rng: random.Random,
) -> httpx.Response:
    job = f"job_soak_{org}"
    if kind == "criteria":
        return await client.post(
            "/v1/criteria/generate",
            headers=headers,
            json={"jobId": job, "title": "Backend Engineer", "description": "Python and SQL."},
        )
    if kind == "score":
        return await client.post(
            "/v1/score",
            headers=headers,
            json={
                "applicationId": f"app_{worker}_{seq}",
                "jobId": job,
                "candidate": {"name": "Ada", "resume": "Python, PostgreSQL and Redis, 6 years."},
            },
        )
    if kind == "poll":
        return await client.get(f"/v1/score/{rng.choice(tally.jobs[str(org)])}", headers=headers)
    if kind == "status":
        return await client.get("/v1/rate-limit/status", headers=headers)
    if kind == "volume":
        return await client.get("/v1/analytics/scoring-volume?timeRange=1h", headers=headers)
    return await client.get("/call-counts/historical/", headers=headers)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (MB per second) of ``(seconds, MB)`` samples."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mm = sum(m for _, m in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (m - mm) for t, m in points) / var if var else 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def sample_rss(pid: int, samples: list[tuple[float, float]], stop_at: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - t0, rss_mb(pid)))
        await asyncio.sleep(RSS_EVERY)
    samples.append((time.monotonic() - t0, rss_mb(pid)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="tollhouse-soak-") as tmp:
        cwd = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}
        env["TOLLHOUSE_ALLOW_PRIVATE_TARGETS"] = "1"  # the webhook receiver is on loopback
        if args.example_results:
            env["TOLLHOUSE_EXAMPLE_MAX_RESULTS"] = str(args.example_results)
        secrets = [
            json.loads(
                tollhouse(
                    cwd, env, "keys", "create", "--org", f"soak{i}", "--role", "root", "--json"
                )
            )["key"]
            for i in range(args.orgs)
        ]
        hook_url, receiver = start_receiver(tally)
        for i in range(args.orgs):
            # The keys are sandbox keys (sk_test_): their jobs' events go to sandbox endpoints.
            tollhouse(
                cwd,
                env,
                "webhooks",
                "add",
                "--org",
                f"soak{i}",
                "--url",
                hook_url,
                "--environment",
                "SANDBOX",
            )
        port = free_port()
        log = (cwd / "serve.log").open("wb")
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tollhouse",
                "serve",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                time.sleep(0.05)
            else:
                raise SystemExit(
                    "tollhouse serve did not start:\n" + (cwd / "serve.log").read_text()
                )
            for i, secret in enumerate(secrets):
                r = httpx.post(
                    base + "/v1/criteria/generate",
                    headers={"Authorization": f"Bearer {secret}", "X-Tenant-Id": "soak"},
                    json={"jobId": f"job_soak_{i}", "title": "Engineer", "description": "Python."},
                    timeout=30,
                )
                r.raise_for_status()
            print(
                f"soak: {args.minutes:g} min, {args.rate:g} req/s target, {args.concurrency} "
                f"tasks, {args.orgs} orgs; server pid {server.pid} on {base}",
                flush=True,
            )
            rss: list[tuple[float, float]] = []
            started = time.monotonic()
            stop_at = started + args.minutes * 60

            async def run() -> None:
                await asyncio.gather(
                    traffic(base, secrets, tally, args, stop_at),
                    sample_rss(server.pid, rss, stop_at),
                )

            asyncio.run(run())
            elapsed = time.monotonic() - started
            time.sleep(3)  # let the last jobs and webhooks go out
            metrics = httpx.get(base + "/metrics", timeout=10).text
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
            receiver.should_exit = True
        report(args, tally, rss, elapsed, metrics)


def report(
    args: argparse.Namespace,
    tally: Tally,
    rss: list[tuple[float, float]],
    elapsed: float,
    metrics: str,
) -> None:
    total = sum(len(v) for v in tally.latencies.values())
    errors = sum(tally.transport_errors.values())
    rows: dict[str, Any] = {}
    print(f"\n{total} answers in {elapsed:.0f} s: {total / elapsed:.1f} req/s")
    print(f"{'kind':<9} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for kind in KINDS:
        lat = tally.latencies.get(kind, [])
        statuses = tally.statuses.get(kind, Counter())
        errors += sum(n for s, n in statuses.items() if s >= 500)
        p50, p99 = pct(lat, 0.50), pct(lat, 0.99)
        shown = " ".join(f"{s}×{n}" for s, n in sorted(statuses.items()))
        print(f"{kind:<9} {len(lat):>7} {p50:>8.1f} {p99:>8.1f}  {shown}")
        rows[kind] = {"count": len(lat), "p50_ms": p50, "p99_ms": p99, "statuses": dict(statuses)}
    limited = sum(c.get(429, 0) for c in tally.statuses.values())
    print(f"429 (rate limited, not errors): {limited}")
    print(f"errors (5xx + transport): {errors} {dict(tally.transport_errors) or ''}")
    print(f"webhooks received: {tally.webhooks}")
    start = next((mb for t, mb in rss if t >= min(30.0, elapsed * 0.1)), rss[0][1])
    middle = next((mb for t, mb in rss if t >= elapsed / 2), rss[-1][1])
    end = rss[-1][1]
    grew = end - middle
    half = [(t, mb) for t, mb in rss if t >= elapsed / 2]
    slope = _slope(half) * 60  # MB per minute over the second half
    flat = slope <= FLAT_MB_PER_MIN
    print(
        f"server RSS: start {start:.1f} MB, middle {middle:.1f} MB, end {end:.1f} MB "
        f"(first sample {rss[0][1]:.1f} MB)"
    )
    verdict = (
        f"memory {'FLAT' if flat else 'GROWING'}: second half {grew:+.1f} MB, "
        f"{slope:+.2f} MB/min (flat: at most {FLAT_MB_PER_MIN} MB/min)"
    )
    print(verdict)
    for line in metrics.splitlines():
        if line.startswith(
            ("tollhouse_meter_", "tollhouse_queue_jobs", "tollhouse_webhook_attempts")
        ):
            print("  " + line)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "seconds": elapsed,
                    "throughput": total / elapsed,
                    "kinds": rows,
                    "rate_limited": limited,
                    "errors": errors,
                    "webhooks": tally.webhooks,
                    "rss_mb": {"start": start, "middle": middle, "end": end, "samples": rss},
                    "verdict": verdict,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
