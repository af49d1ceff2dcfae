"""Bulk scoring with both SDKs: 3,000 candidates against a real `tollhouse serve` at the
built-in policy's limits, outcomes learned 100 jobs per status read.

    .venv/bin/python benchmarks/bulk_scoring.py [--candidates 3000] [--processing 0.05]
                                                [--no-python] [--no-typescript] [--baseline N]

Starts `tollhouse serve` (built-in policy, SQLite, the bundled example upstream taking
``--processing`` seconds per candidate through ``TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS``)
in a temporary folder, then, each with a key of its own org (so each has the whole
1,000-per-minute ``scoring`` bucket):

* Python: ``Client.score_many(candidates)`` (batches of 100, status reads of up to 100
  jobs on ``GET /v1/score?ids=``);
* TypeScript: ``clients/typescript/examples/bulk-scoring.mjs`` via node (``score.many``,
  the same endpoints). Before the server starts, the script builds the SDK from this
  checkout (``npm ci`` when ``node_modules`` is missing, then ``npm run build``), so it
  never times a stale ``dist``; skipped without node and npm;
* with ``--baseline N``: N candidates submitted the same way and then polled one
  ``GET /v1/score/{id}`` per unfinished job per round, as ``score_many`` did before.

For each: submission time (first request to the last candidate accepted), time until
every outcome is known, batch requests, status reads, units of the ``scoring`` bucket
spent (batches + reads: both count one per request), 429s answered, outcomes known. The
target: submission within 3.3 minutes, no 429, every outcome known. Under the built-in
policy a batch of 100 costs one unit, so 3,000 candidates take 30 of the minute's 1,000
and the run is bound by the server's queue, not by the bucket; what outcomes cost is the
status reads' count next to the baseline's one unit per job per round.

Not part of the test suite (it runs for about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tollhouse.client import Client, ScoreRequest

REPO = Path(__file__).resolve().parent.parent
TS_DIR = REPO / "clients" / "typescript"
TITLE = "Backend Engineer"
DESCRIPTION = "Python, PostgreSQL and Redis; 5 years building APIs."
RESUME = "Built Python APIs on PostgreSQL and Redis for 6 years."
#: The target: 3,000 candidates at 1,000 per minute within 3.3 minutes of submission.
TARGET_SECONDS = 3.3 * 60


@dataclass
class Figures:
    sdk: str
    candidates: int
    submission_seconds: float
    total_seconds: float
    batches: int
    status_reads: int
    refused_429: int
    known: int

    @property
    def units(self) -> int:
        return self.batches + self.status_reads


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    folder: Path, processing: float
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLHOUSE_")}
    env["TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS"] = str(processing)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    port = free_port()
    log = (folder / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollhouse", "serve", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, env
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("tollhouse serve did not start:\n" + (folder / "serve.log").read_text())


def make_key(folder: Path, env: dict[str, str], org: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tollhouse", "keys", "create", "--org", org, "--json"],
        cwd=folder,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    key: str = json.loads(out.stdout)["key"]
    return key


def candidates(n: int) -> list[ScoreRequest]:
    return [
        ScoreRequest(f"app_{i}", "job_1", {"name": f"Candidate {i}", "resume": RESUME})
        for i in range(n)
    ]


class Counting:
    """An httpx response hook: batches, status reads and 429s."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = self.reads = self.refused = 0

    def __call__(self, response: httpx.Response) -> None:
        path = response.request.url.path
        with self.lock:
            if response.status_code == 429:
                self.refused += 1
            if path == "/v1/score/batch":
                self.batches += 1
            elif response.request.method == "GET" and path.startswith("/v1/score"):
                self.reads += 1


def run_python(url: str, key: str, n: int) -> Figures:
    seen = Counting()
    http = httpx.Client(event_hooks={"response": [seen]})
    submitted: list[float] = []
    with http, Client(key, url, tenant_id="acme", http_client=http) as c:
        c.criteria.generate("job_1", TITLE, DESCRIPTION)
        start = time.perf_counter()

        def progress(p: Any) -> None:
            if not submitted and p.accepted + p.rejected == n:
                submitted.append(time.perf_counter())

        known = sum(1 for o in c.score_many(candidates(n), on_progress=progress) if o.status)
        end = time.perf_counter()
    return Figures(
        "python",
        n,
        (submitted[0] if submitted else end) - start,
        end - start,
        seen.batches,
        seen.reads,
        seen.refused,
        known,
    )


def run_baseline(url: str, key: str, n: int) -> Figures:
    """Submit with ``score_many(webhook=True)``, then one poll per unfinished job per
    round, as ``score_many`` polled before ``GET /v1/score?ids=``."""
    seen = Counting()
    http = httpx.Client(event_hooks={"response": [seen]})
    with http, Client(key, url, tenant_id="acme", http_client=http) as c:
        c.criteria.generate("job_1", TITLE, DESCRIPTION)
        start = time.perf_counter()
        pending = {o.scoring_job_id for o in c.score_many(candidates(n), webhook=True)}
        submitted = time.perf_counter()
        known = n - len(pending)
        while pending:
            for job_id in list(pending):
                if c.get_score(str(job_id)).done:
                    pending.discard(job_id)
                    known += 1
            time.sleep(1.0)
        end = time.perf_counter()
    return Figures(
        "python, one poll per job", n, submitted - start, end - start, seen.batches,
        seen.reads, seen.refused, known,
    )  # fmt: skip


def build_typescript() -> bool:
    """Build ``clients/typescript`` from its sources (installing its dev dependencies
    first when ``node_modules`` is missing); False when node or npm is missing."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        print("typescript: skipped (needs node and npm)")
        return False
    steps = [[npm, "run", "build"]]
    if not (TS_DIR / "node_modules").is_dir():
        steps.insert(0, [npm, "ci", "--no-audit", "--no-fund"])
    for step in steps:
        done = subprocess.run(step, cwd=TS_DIR, capture_output=True, text=True)
        if done.returncode != 0:
            command = " ".join(step[1:])
            sys.exit(f"typescript: `npm {command}` failed in {TS_DIR}:\n{done.stdout}{done.stderr}")
    return True


def run_typescript(url: str, key: str, n: int) -> Figures:
    with Client(key, url, tenant_id="acme") as c:
        c.criteria.generate("job_1", TITLE, DESCRIPTION)
    env = {**os.environ, "TOLLHOUSE_URL": url, "TOLLHOUSE_API_KEY": key, "CANDIDATES": str(n)}
    out = subprocess.run(
        ["node", "examples/bulk-scoring.mjs"],
        cwd=TS_DIR,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return Figures(
        "typescript",
        r["candidates"],
        r["submissionSeconds"],
        r["totalSeconds"],
        r["batches"],
        r["statusReads"],
        r["refused429"],
        r["known"],
    )


def report(f: Figures) -> None:
    met = f.submission_seconds <= TARGET_SECONDS and f.refused_429 == 0 and f.known == f.candidates
    print(
        f"{f.sdk:<26} {f.candidates:>6} {f.submission_seconds:>9.1f} s {f.total_seconds:>8.1f} s"
        f" {f.batches:>8} {f.status_reads:>6} {f.units:>6} {f.status_reads / f.candidates:>9.3f}"
        f" {f.refused_429:>5} {f.known:>6}  {'met' if met else 'NOT MET'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=3000)
    parser.add_argument("--processing", type=float, default=0.05)
    parser.add_argument("--no-typescript", action="store_true")
    parser.add_argument("--no-python", action="store_true")
    parser.add_argument("--baseline", type=int, default=0, metavar="N")
    args = parser.parse_args()
    # Built before the server starts: the run times the code of this checkout.
    typescript = not args.no_typescript and build_typescript()
    folder = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    proc, url, env = start_server(folder, args.processing)
    try:
        runs: list[Figures] = []
        if not args.no_python:
            runs.append(run_python(url, make_key(folder, env, "bench-python"), args.candidates))
        if typescript:
            runs.append(run_typescript(url, make_key(folder, env, "bench-ts"), args.candidates))
        if args.baseline:
            runs.append(run_baseline(url, make_key(folder, env, "bench-base"), args.baseline))
        print(
            f"built-in policy (scoring: 1,000 per minute), example processing "
            f"{args.processing} s; target: submission <= {TARGET_SECONDS:.0f} s, 0 x 429, "
            "every outcome known"
        )
        print(
            f"{'sdk':<26} {'cands':>6} {'submission':>11} {'all known':>10} {'batches':>8}"
            f" {'reads':>6} {'units':>6} {'reads/job':>9} {'429s':>5} {'known':>6}"
        )
        for f in runs:
            report(f)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
