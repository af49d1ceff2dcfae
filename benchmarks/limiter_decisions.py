"""Decisions per second: tollhouse's memory limiter vs the `limits` library, same run.

1. One bucket: both make the same decision — one fixed-window bucket, 1,000,000 per
   minute so every call is admitted and counted — across 1,000 distinct callers, in one
   thread, for the same number of calls (target ≥ 4×). ``decide_nowait`` is what the
   gateway calls on its event loop (a memory store never waits); ``await decide`` is the
   protocol's async form; ``decide_sync`` adds a lock for threads.
2. A request hitting two buckets (the built-in policy's usual case: a per-second and a
   per-minute bucket), all-or-nothing: tollhouse decides both in one ``decide_nowait``;
   with `limits` the same guarantee takes ``test`` on each bucket, then ``hit`` on each.

    .venv/bin/python benchmarks/limiter_decisions.py [--calls 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from tollhouse.limits import BucketCheck, MemoryStore

CALLERS = 1000
LIMIT = 1_000_000


def bench_tollhouse(calls: int) -> float:
    store = MemoryStore()
    checks = [
        (BucketCheck(f"{{org{i}:SANDBOX}}:b:scoring", "scoring", LIMIT, 60.0, "fixed_window", 1),)
        for i in range(CALLERS)
    ]
    decide = store.decide_sync
    clock = time.time
    t0 = time.perf_counter()
    for n in range(calls):
        decide(checks[n % CALLERS], (), clock())
    return calls / (time.perf_counter() - t0)


def bench_tollhouse_nowait(calls: int) -> float:
    store = MemoryStore()
    checks = [
        (BucketCheck(f"{{org{i}:SANDBOX}}:b:scoring", "scoring", LIMIT, 60.0, "fixed_window", 1),)
        for i in range(CALLERS)
    ]
    decide = store.decide_nowait
    clock = time.time
    t0 = time.perf_counter()
    for n in range(calls):
        decide(checks[n % CALLERS], (), clock())
    return calls / (time.perf_counter() - t0)


def bench_tollhouse_async(calls: int) -> float:
    store = MemoryStore()
    checks = [
        (BucketCheck(f"{{org{i}:SANDBOX}}:b:scoring", "scoring", LIMIT, 60.0, "fixed_window", 1),)
        for i in range(CALLERS)
    ]

    async def run() -> float:
        clock = time.time
        t0 = time.perf_counter()
        for n in range(calls):
            await store.decide(checks[n % CALLERS], (), clock())
        return calls / (time.perf_counter() - t0)

    return asyncio.run(run())


def bench_limits(calls: int) -> float:
    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerMinute(LIMIT)
    ids = [f"org{i}" for i in range(CALLERS)]
    hit = limiter.hit
    t0 = time.perf_counter()
    for n in range(calls):
        hit(item, ids[n % CALLERS])
    return calls / (time.perf_counter() - t0)


def bench_two_tollhouse(calls: int) -> float:
    store = MemoryStore()
    checks = [
        (
            BucketCheck(f"{{org{i}:SANDBOX}}:b:single", "single", LIMIT, 1.0, "fixed_window", 1),
            BucketCheck(f"{{org{i}:SANDBOX}}:b:scoring", "scoring", LIMIT, 60.0, "fixed_window", 1),
        )
        for i in range(CALLERS)
    ]

    async def run() -> float:
        clock = time.time
        t0 = time.perf_counter()
        for n in range(calls):
            store.decide_nowait(checks[n % CALLERS], (), clock())
        return calls / (time.perf_counter() - t0)

    return asyncio.run(run())


def bench_two_limits(calls: int) -> float:
    limiter = FixedWindowRateLimiter(MemoryStorage())
    per_second = RateLimitItemPerSecond(LIMIT)
    per_minute = RateLimitItemPerMinute(LIMIT)
    ids = [f"org{i}" for i in range(CALLERS)]
    test, hit = limiter.test, limiter.hit
    t0 = time.perf_counter()
    for n in range(calls):
        who = ids[n % CALLERS]
        if test(per_second, who) and test(per_minute, who):
            hit(per_second, who)
            hit(per_minute, who)
    return calls / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    calls = args.calls
    benches = {
        "ours": bench_tollhouse,
        "ours_async": bench_tollhouse_async,
        "ours_nowait": bench_tollhouse_nowait,
        "theirs": bench_limits,
        "two_ours": bench_two_tollhouse,
        "two_theirs": bench_two_limits,
    }
    # Rounds interleave the contenders and keep each one's best, so a noisy neighbour
    # on the machine slows a round, not one side of the comparison.
    best = dict.fromkeys(benches, 0.0)
    for _ in range(args.rounds):
        for name, fn in benches.items():
            best[name] = max(best[name], fn(calls))
    ours, ours_async, theirs = best["ours"], best["ours_async"], best["theirs"]
    nowait = best["ours_nowait"]
    two_ours, two_theirs = best["two_ours"], best["two_theirs"]
    print("one bucket")
    print(f"  limits MemoryStorage fixed window : {theirs:>12,.0f} decisions/s")
    print(f"  tollhouse decide_nowait (gateway) : {nowait:>12,.0f} decisions/s")
    print(f"  tollhouse await decide            : {ours_async:>12,.0f} decisions/s")
    print(f"  tollhouse decide_sync (locked)    : {ours:>12,.0f} decisions/s")
    print(f"  ratio decide_nowait / limits      : {nowait / theirs:.2f}x  (target >= 4x)")
    print(f"  ratio await decide / limits       : {ours_async / theirs:.2f}x")
    print(f"  ratio decide_sync / limits        : {ours / theirs:.2f}x")
    print("request hitting two buckets, all-or-nothing")
    print(f"  limits test+test+hit+hit          : {two_theirs:>12,.0f} decisions/s")
    print(f"  tollhouse decide                  : {two_ours:>12,.0f} decisions/s")
    print(f"  ratio                             : {two_ours / two_theirs:.2f}x")


if __name__ == "__main__":
    main()
