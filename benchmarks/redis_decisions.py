"""Decisions per second on Redis: tollhouse's RedisStore vs the `limits` library and vs
`redis-benchmark`, in the same run, against a redis-server this script starts itself.

1. Throughput. One process, 64 concurrent asyncio tasks, each decision one fixed-window
   bucket (1,000,000,000 per minute, so every call is admitted and counted) for one of
   1,000 callers:
   * tollhouse: ``await RedisStore.decide`` — one EVALSHA of decide.lua per decision,
     concurrent decisions pipelined together;
   * `limits`: ``limits.aio.storage.RedisStorage`` (redis-py asyncio) with
     ``limits.aio.strategies.FixedWindowRateLimiter.hit`` (target: tollhouse ≥ 5×);
   * `redis-benchmark` running the same EVALSHA with the same arguments over 64
     connections, one command in flight per connection (``-P 1``) and 16 (``-P 16``)
     (target: tollhouse ≥ 50 % of ``-P 16``, what Redis does with this script when the
     client costs nearly nothing).
   Each is run ``--rounds`` times, interleaved; the best round of each counts.
   * tollhouse on a Redis Cluster of six `redis-server` processes on this machine (three
     masters, a replica each; ``redis+cluster://``): the same decisions, routed by slot
     (the 1,000 callers' hash tags spread over the three masters), one write per master
     per round trip, each write confirmed by a replica (``WAIT 1``) before its decisions
     count. Reported with its ratio to the single Redis above. On one machine a cluster
     is not faster: the same two cores run four times the servers, a round trip waits
     for the slowest of three masters and for a replica's acknowledgement. A cluster
     buys room (memory, and cores on separate hosts), not speed on one host.
2. Added latency per decision, p50 and p99, calling as the gateway does
   (``decide_nowait``, else ``await decide``): one caller at a time, and each call of the
   64-task load; with Redis up, then with Redis killed (degraded: decided locally).

    .venv/bin/python benchmarks/redis_decisions.py [--calls 100000] [--rounds 5] [--no-cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter

from limits import RateLimitItemPerMinute
from tollhouse.limits import BucketCheck
from tollhouse.limits.cluster import ClusterStore
from tollhouse.limits.redis import DECIDE, RedisStore

TASKS = 64
CALLERS = 1000
LIMIT = 1_000_000_000
WINDOW = 60.0


class Server:
    """A redis-server on a free loopback port, in a temporary directory."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise SystemExit("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Cluster:
    """Six cluster-enabled redis-servers made one Redis Cluster (three masters, three
    replicas) by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = []
        for i in range(6):
            node_dir = workdir / f"node{i}"
            node_dir.mkdir()
            self.nodes.append(Server(node_dir))
        # The cluster bus listens on port + 10000.
        for node in self.nodes:
            while node.port > 55535:
                node.port = Server(node.workdir).port

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise SystemExit("redis-cli is not installed (apt-get install redis-server)")
        for node in self.nodes:
            node.extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(n.port), "CLUSTER", "INFO"], capture_output=True, text=True
                ).stdout
                for n in self.nodes
            ]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise SystemExit("the Redis Cluster did not become ok")

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def checks() -> list[tuple[BucketCheck, ...]]:
    return [
        (BucketCheck(f"{{org{i}:SANDBOX}}:b:scoring", "scoring", LIMIT, WINDOW, "fixed_window", 1),)
        for i in range(CALLERS)
    ]


async def concurrently(calls: int, one: Callable[[int], Awaitable[object]]) -> float:
    """``calls`` calls of ``one(n)`` from TASKS tasks; calls per second."""
    per_task = calls // TASKS

    async def task(t: int) -> None:
        for n in range(t * per_task, (t + 1) * per_task):
            await one(n)

    t0 = time.perf_counter()
    await asyncio.gather(*(task(t) for t in range(TASKS)))
    return per_task * TASKS / (time.perf_counter() - t0)


async def bench_tollhouse(url: str, calls: int) -> float | None:
    """Decisions per second; None when some were made locally (a round trip timed out
    on this busy machine and the breaker opened): that round measured no Redis."""
    store = ClusterStore(url) if url.startswith("redis+cluster://") else RedisStore(url)
    all_checks = checks()

    async def one(n: int) -> object:
        return await store.decide(all_checks[n % CALLERS], (), 0.0)

    try:
        await concurrently(TASKS * 20, one)  # connect, load scripts
        rate = await concurrently(calls, one)
        return None if store.local_decisions else rate
    finally:
        await store.aclose()


async def bench_limits(url: str, calls: int) -> float:
    storage = RedisStorage(url.replace("redis://", "async+redis://"), implementation="redispy")
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(LIMIT)
    ids = [f"org{i}" for i in range(CALLERS)]

    async def one(n: int) -> object:
        return await limiter.hit(item, ids[n % CALLERS])

    await concurrently(TASKS * 20, one)
    return await concurrently(calls, one)


def bench_redis_benchmark(port: int, calls: int, pipeline: int) -> float | None:
    """redis-benchmark's requests per second for the same EVALSHA (None if missing)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    # The arguments RedisStore sends for one fixed-window bucket on the server clock;
    # __rand_int__ spreads the calls over CALLERS keys as the other runs do.
    command = ["EVALSHA", DECIDE.sha.decode(), "1", "{org__rand_int__:SANDBOX}:b:scoring"]
    command += ["", "1", "0", "1000", "1", str(LIMIT), repr(WINDOW), "f", "1"]
    out = subprocess.run(
        [
            binary,
            "-p",
            str(port),
            "-c",
            str(TASKS),
            "-n",
            str(calls),
            "-r",
            str(CALLERS),
            "-P",
            str(pipeline),
            "--csv",
            *command,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1].split(",")[1].strip('"'))


async def latencies(url: str, server: Server, calls: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 in µs of one decision as the gateway makes it."""
    store = RedisStore(url)
    all_checks = checks()
    out: dict[str, tuple[float, float]] = {}

    async def timed(n: int, into: list[float]) -> None:
        c = all_checks[n % CALLERS]
        t0 = time.perf_counter()
        now = time.time()
        if store.decide_nowait(c, (), now) is None:
            await store.decide(c, (), now)
        into.append(time.perf_counter() - t0)

    async def measure(label: str) -> None:
        alone: list[float] = []
        for n in range(min(calls, 5000)):
            await timed(n, alone)
            await asyncio.sleep(0)  # one caller at a time, but let the loop breathe
        loaded: list[float] = []

        async def one(n: int) -> None:
            await timed(n, loaded)

        await concurrently(calls, one)
        for kind, samples in (("one caller", alone), ("64 tasks", loaded)):
            samples.sort()
            p50 = samples[len(samples) // 2] * 1e6
            p99 = samples[int(len(samples) * 0.99)] * 1e6
            out[f"Redis {label}, {kind}"] = (p50, p99)

    try:
        await concurrently(TASKS * 20, lambda n: store.decide(all_checks[n % CALLERS], (), 0.0))
        await measure("up")
        await asyncio.to_thread(server.kill)
        while not store.degraded:  # the first calls after the kill trip the breaker
            await store.decide(all_checks[0], (), time.time())
        await measure("down (degraded)")
    finally:
        await store.aclose()
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="  [log] %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-cluster", action="store_true", help="skip the Redis Cluster row")
    args = parser.parse_args()

    clustered: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        server.start()
        cluster = None
        if not args.no_cluster:
            (Path(tmp) / "cluster").mkdir()
            cluster = Cluster(Path(tmp) / "cluster")
            cluster.start()
        try:
            ours: list[float] = []
            theirs: list[float] = []
            bench_p1: list[float] = []
            bench_p16: list[float] = []
            for _ in range(args.rounds):
                rate = asyncio.run(bench_tollhouse(server.url, args.calls))
                if rate is None:
                    print("(a tollhouse round fell back to local limits: not counted)")
                else:
                    ours.append(rate)
                if cluster is not None:
                    rate = asyncio.run(bench_tollhouse(cluster.url, args.calls))
                    if rate is None:
                        print("(a cluster round fell back to local limits: not counted)")
                    else:
                        clustered.append(rate)
                theirs.append(asyncio.run(bench_limits(server.url, args.calls // 4)))
                for pipeline, into in ((1, bench_p1), (16, bench_p16)):
                    rps = bench_redis_benchmark(server.port, args.calls, pipeline)
                    if rps is not None:
                        into.append(rps)
            lat = asyncio.run(latencies(server.url, server, args.calls // 4))
        finally:
            server.kill()
            if cluster is not None:
                cluster.kill()

    if not ours:
        raise SystemExit("every tollhouse round fell back to local limits: machine too busy")
    best = max(ours)
    print(f"decisions/s, one process, {TASKS} concurrent tasks (best of {args.rounds})")
    print(f"  tollhouse RedisStore.decide        {best:>10,.0f}")
    print(f"  limits RedisStorage + FixedWindow  {max(theirs):>10,.0f}")
    print(f"  ratio                              {best / max(theirs):>10.1f}×   (target ≥ 5×)")
    if clustered:
        print(f"  tollhouse on a Redis Cluster       {max(clustered):>10,.0f}")
        print(
            f"  cluster / one Redis                {max(clustered) / best:>10.0%}"
            "   (3 masters + 3 replicas on this one machine: not faster)"
        )
    elif not args.no_cluster:
        print("  every cluster round fell back to local limits: machine too busy")
    if bench_p16:
        print(f"  redis-benchmark same EVALSHA -P 1  {max(bench_p1):>10,.0f}")
        print(f"  redis-benchmark same EVALSHA -P 16 {max(bench_p16):>10,.0f}")
        print(
            f"  tollhouse / redis-benchmark -P 1   {best / max(bench_p1):>10.0%}\n"
            f"  tollhouse / redis-benchmark -P 16  {best / max(bench_p16):>10.0%}"
            "   (target ≥ 50 %)"
        )
    else:
        print("  redis-benchmark not installed: comparison skipped")
    print("added latency per decision (decide_nowait, else await decide), µs")
    for label, (p50, p99) in lat.items():
        print(f"  {label:<38} p50 {p50:>8.1f}   p99 {p99:>8.1f}")


if __name__ == "__main__":
    main()
