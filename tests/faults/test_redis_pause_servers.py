"""Redis paused (SIGSTOP … SIGCONT) 8 × 300 ms under two `tollhouse serve` processes
(`TOLLHOUSE_INSTANCES=2`, one `redis-server`, one SQLite file) that a client drives above
the limit over HTTP: no window admits more than its limit, and requests are admitted
while Redis is stopped.

Two buckets on two routes of the fault tests' upstream: 40 per 1 s window on
``GET /v1/things/{id}`` and 100 per 5 s window on ``GET /v1/other/{id}`` (the upstream
answers 404 there: passed by the limiter all the same). Every answer that is not a 429
was admitted, and is counted under the window its ``X-RateLimit-Reset`` names (the end
of its bucket's window, as the instance that decided saw it), so the count per window is
exact whatever the machine's speed. Half the pauses begin 50 ms before a 1 s boundary
(the next window begins with Redis stopped: no answer of Redis covers it), half in the
middle of a window. A 200 for a request sent after Redis was seen stopped and answered
before it was let go was admitted without Redis. Nothing here is timed.

    .venv/bin/pytest tests/faults/test_redis_pause_servers.py -q -s   # prints the figures
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, sqlite_key, start_server, stop_server
from tests.faults.support import wait_until
from tests.services import redis_server

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.timeout(120)]

PER_SECOND = 40
PER_FIVE_SECONDS = 100
POLICY = f"""\
[upstream]
app = "tests.faults.upstream:app"

[[buckets]]
name = "per_second"
limit = {PER_SECOND}
window = "1s"
routes = ["GET /v1/things/{{thingId}}"]

[[buckets]]
name = "per_five_seconds"
limit = {PER_FIVE_SECONDS}
window = "5s"
routes = ["GET /v1/other/{{otherId}}"]
"""
#: route → its bucket's limit
ROUTES = {"things": PER_SECOND, "other": PER_FIVE_SECONDS}
#: Callers per instance and route (each paced by PACE): about 300 attempts a second
#: against 40 a second, and about 150 against 20 a second.
CALLERS = {"things": 2, "other": 1}
PACE = 0.01
PAUSES = 8
PAUSE = 0.3
#: Where in a second each pause begins: across a window boundary, then mid-window.
PHASES = (0.95, 0.3)
#: Seconds a Redis round trip may take (the default is 0.1: with it the breaker opens at
#: the end of a 300 ms pause, if at all, and a pause is mostly answered 429 while the
#: instances still wait on Redis).
REDIS_TIMEOUT = 0.05


class Answers:
    """Every answer: (route, sent, answered, status, X-RateLimit-Reset)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[str, float, float, int, int | None]] = []
        self.stop = threading.Event()

    def drive(self, url: str, key: str, route: str) -> None:
        n = 0
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as client:
            while not self.stop.is_set():
                n += 1
                sent = time.time()
                r = client.get(f"/v1/{route}/{n}")
                answered = time.time()
                reset = r.headers.get("x-ratelimit-reset")
                with self.lock:
                    self.rows.append(
                        (route, sent, answered, r.status_code, int(reset) if reset else None)
                    )
                time.sleep(PACE)


def _stopped(pid: int) -> bool:
    # The third field of /proc/PID/stat is the state: T once SIGSTOP has taken effect.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _until_phase(phase: float) -> None:
    """Sleep until ``phase`` into a second at least half a second from now."""
    now = time.time()
    start = int(now) + phase
    while start < now + 0.5:
        start += 1
    time.sleep(start - now)


def test_paused_redis_under_two_servers_never_lets_a_window_admit_more_than_its_limit(
    tmp_path: Path,
) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    db = tmp_path / "shared.db"
    key = sqlite_key(db, org="acme")
    answers = Answers()
    pauses: list[tuple[float, float]] = []
    with redis_server() as redis:
        assert redis.proc is not None
        pid = redis.proc.pid
        env = {
            "TOLLHOUSE_DATABASE_URL": f"sqlite:///{db}",
            "TOLLHOUSE_INSTANCES": "2",
            # Three failed round trips (the breaker's default) fit in a pause: each
            # instance stops asking Redis during it and decides from its share.
            "TOLLHOUSE_REDIS_TIMEOUT": str(REDIS_TIMEOUT),
        }
        servers: list[Server] = []
        threads: list[threading.Thread] = []
        try:
            for _ in range(2):
                servers.append(start_server(tmp_path, config, "--redis-url", redis.url, env=env))
            for server in servers:
                for route, count in CALLERS.items():
                    for _ in range(count):
                        t = threading.Thread(
                            target=answers.drive, args=(server.url, key, route), daemon=True
                        )
                        t.start()
                        threads.append(t)
            time.sleep(1.0)  # both at the limit on Redis before the first pause
            for i in range(PAUSES):
                _until_phase(PHASES[i % len(PHASES)])
                os.kill(pid, signal.SIGSTOP)
                try:
                    wait_until(lambda: _stopped(pid), "redis-server stopping")
                    stopped = time.time()
                    time.sleep(PAUSE)
                    resumed = time.time()
                finally:
                    os.kill(pid, signal.SIGCONT)
                pauses.append((stopped, resumed))
            time.sleep(1.0)  # and after the last one
        finally:
            answers.stop.set()
            for t in threads:
                t.join(30)
            for server in servers:
                stop_server(server)
    assert not any(t.is_alive() for t in threads), "a caller hangs"

    statuses = Counter((route, status) for route, _, _, status, _ in answers.rows)
    assert all(status in (200, 404, 429) for _, status in statuses), statuses
    windows: dict[str, Counter[int]] = {route: Counter() for route in ROUTES}
    during = 0
    for route, sent, answered, status, reset in answers.rows:
        if status == 429:
            continue
        assert reset is not None, (route, status)
        windows[route][reset] += 1
        if any(stopped < sent and answered < resumed for stopped, resumed in pauses):
            during += 1
    figures = []
    for route, limit in ROUTES.items():
        counts = windows[route]
        figures.append(
            f"{route} (limit {limit}): {len(counts)} windows, most admitted in one "
            f"{max(counts.values())}, at the limit in "
            f"{sum(1 for n in counts.values() if n == limit)}; per window: "
            + " ".join(str(counts[w]) for w in sorted(counts))
        )
    print(
        f"redis paused {PAUSES} × {PAUSE * 1000:.0f} ms under two servers; "
        f"{len(answers.rows)} answers, {statuses}; {during} admitted while Redis was "
        "stopped; " + "; ".join(figures)
    )
    # The client drove both routes above their limits ...
    assert statuses[("things", 429)] and statuses[("other", 429)], statuses
    assert max(windows["things"].values()) == PER_SECOND, windows["things"]
    # ... the pauses were felt: requests were admitted while Redis could not answer ...
    assert during > 0
    # ... and no window admitted more than its limit.
    for route, limit in ROUTES.items():
        over = {w: n for w, n in windows[route].items() if n > limit}
        assert not over, f"{route}: windows over the limit of {limit}: {over}"
