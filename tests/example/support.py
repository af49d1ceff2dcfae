"""`tollhouse example serve` as a real process, for the tests that need the standalone
example upstream (this folder's and tests/ops/test_instances.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import cli_env, free_port


@dataclass
class ExampleProcess:
    """A running `tollhouse example serve`; its output goes to ``log``."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL after 15 s); return what it printed."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def start_example(
    cwd: Path, env: dict[str, str] | None = None, *args: str, name: str = "example"
) -> ExampleProcess:
    """Start `tollhouse example serve ARGS` (``env`` added to a clean environment) and wait
    until it answers HTTP (any answer: the example has no health route of its own)."""
    port = free_port()
    log = cwd / f"{name}-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tollhouse", "example", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=cli_env(env),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    example = ExampleProcess(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tollhouse example serve exited:\n{log.read_text()}")
        try:
            httpx.get(example.url + "/v1/criteria/ping", timeout=1)
            return example
        except httpx.TransportError:
            time.sleep(0.05)
    output = example.stop()
    raise AssertionError(f"tollhouse example serve did not answer within 60 s:\n{output}")
