"""Helpers for the operations tests: `tollhouse serve` processes with their own
environment and separate stdout/stderr files, a failing upstream, metrics parsing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import cli_env, free_port

T = TypeVar("T")


@dataclass
class Process:
    """A `tollhouse serve` process; its output goes to files (read after :meth:`stop`)."""

    url: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_serve(cwd: Path, env: dict[str, str], *args: str, name: str = "serve") -> Process:
    """Start `tollhouse serve ARGS` with ``env`` added to a clean environment (not waiting
    for it: see :func:`wait_healthy`)."""
    port = free_port()
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tollhouse", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=cli_env(env),
            stdout=o,
            stderr=e,
        )
    return Process(f"http://127.0.0.1:{port}", proc, out, err)


def wait_healthy(server: Process) -> Process:
    """Wait until the server's /healthz answers (fails if it exits or takes over 60 s)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(
                f"tollhouse serve exited:\n{server.stdout.read_text()}\n{server.stderr.read_text()}"
            )
        try:
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.05)
    server.stop()
    raise AssertionError("tollhouse serve did not become healthy within 60 s")


def start_serve(cwd: Path, env: dict[str, str], *args: str, name: str = "serve") -> Process:
    """:func:`spawn_serve` and :func:`wait_healthy`."""
    return wait_healthy(spawn_serve(cwd, env, *args, name=name))


def cli(cwd: Path, env: dict[str, str], *args: str) -> str:
    """Run `tollhouse ARGS`; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "tollhouse", *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"tollhouse {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll ``probe`` until it returns something other than None (fails after
    ``timeout``: a deadline for a state to be reached, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text → ``{(sample name, sorted labels): value}``."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: Any
) -> float:
    """One sample's value (0 when absent)."""
    return found.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)
