"""Redis paused (SIGSTOP … SIGCONT) 8 × 300 ms under two limiter instances (two processes,
one RedisStore each, ``instances=2``) driven above the limit: no window admits more than
its limit.

Each admitted request is counted under the window its decision named (the bucket's
``reset_at``: Redis's window when Redis decided, the share's window when the instance did),
so the count per window is exact whatever the machine's speed; nothing here is timed.

    .venv/bin/pytest tests/faults/test_redis_pause.py -q -s   # prints the figures
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import time
from collections import Counter
from typing import Any

import pytest

from tests.services import redis_server
from tollhouse.limits import BucketCheck
from tollhouse.limits.redis import RedisStore

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.timeout(120)]

#: Requests per 1 s window the fleet may admit.
LIMIT = 50
BUCKET = (
    BucketCheck("{acme:PRODUCTION}:b:per_second", "per_second", LIMIT, 1.0, "fixed_window", 1),
)
#: Concurrent callers per instance, and the pause between two of a caller's requests:
#: about 2 × 4 × 40 = 320 attempts a second against a limit of 50.
CALLERS = 4
PACE = 0.025
PAUSES = 8
PAUSE = 0.3


def drive(
    url: str,
    ready: multiprocessing.synchronize.Event,
    stop: multiprocessing.synchronize.Event,
    out: Any,
) -> None:
    """One instance: CALLERS tasks decide as the gateway does until told to stop; report
    admissions per window and how many decisions were made without Redis."""

    async def main() -> tuple[dict[float, int], int]:
        store = RedisStore(url, instances=2)
        admitted: Counter[float] = Counter()

        async def caller() -> None:
            while not stop.is_set():
                now = time.time()
                verdict = store.decide_nowait(BUCKET, (), now)
                if verdict is None:
                    verdict = await store.decide(BUCKET, (), now)
                if verdict.allowed:
                    admitted[verdict.outcomes[0].reset_at] += 1
                await asyncio.sleep(PACE)

        try:
            await store.peek(BUCKET, (), time.time())  # connected, scripts loaded
            ready.set()
            await asyncio.gather(*(caller() for _ in range(CALLERS)))
            return dict(admitted), store.local_decisions
        finally:
            await store.aclose()

    out.put(asyncio.run(main()))


def test_paused_redis_never_lets_a_window_admit_more_than_its_limit() -> None:
    ctx = multiprocessing.get_context("forkserver")
    with redis_server() as redis:
        assert redis.proc is not None
        pid = redis.proc.pid
        out = ctx.Queue()
        stop = ctx.Event()
        readies = [ctx.Event() for _ in range(2)]
        procs = [ctx.Process(target=drive, args=(redis.url, ready, stop, out)) for ready in readies]
        for p in procs:
            p.start()
        try:
            for ready in readies:
                assert ready.wait(60), "an instance did not start"
            time.sleep(1.0)  # both at the limit on Redis before the first pause
            for _ in range(PAUSES):
                os.kill(pid, signal.SIGSTOP)
                try:
                    time.sleep(PAUSE)
                finally:
                    os.kill(pid, signal.SIGCONT)
                time.sleep(0.5)
            time.sleep(1.0)  # and after the last one
        finally:
            stop.set()
            results = [out.get(timeout=60) for _ in procs]
            for p in procs:
                p.join(30)
    windows: Counter[float] = Counter()
    local = 0
    for admitted, decided_locally in results:
        windows.update(admitted)
        local += decided_locally
    worst = max(windows.values())
    print(
        f"redis paused {PAUSES} × {PAUSE * 1000:.0f} ms, two instances, limit {LIMIT}/s: "
        f"{len(windows)} windows, most admitted in one {worst}, "
        f"at the limit in {sum(1 for n in windows.values() if n == LIMIT)}, "
        f"{local} decisions made without Redis; per window: "
        + " ".join(str(windows[w]) for w in sorted(windows))
    )
    # The pauses were felt: decisions were made without Redis.
    assert local > 0
    over = {w: n for w, n in windows.items() if n > LIMIT}
    assert not over, f"windows over the limit of {LIMIT}: {over}"
