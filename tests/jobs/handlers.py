"""Job handlers named by test policies (``handler = "tests.jobs.handlers:…"``)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """Returns the payload."""
    return {"echo": payload}


async def sleepy(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps ~50 ms, logging start and end (pid, org, job, monotonic-free wall time) to
    the file named by the payload, so the chaos test can check the cap independently."""
    log = payload["log"]
    n = payload["n"]
    _append(log, f"start {os.getpid()} {payload['org']} {n} {time.time():.6f}\n")
    try:
        await asyncio.sleep(payload.get("sleep", 0.05))
    finally:
        # Also when cancelled (lease lost, graceful stop): every execution that was not
        # SIGKILLed has an end.
        _append(log, f"end {os.getpid()} {payload['org']} {n} {time.time():.6f}\n")
    return {"n": n}


def _append(path: str, line: str) -> None:
    # O_APPEND: lines from several processes never interleave within a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def not_async(payload: dict[str, Any]) -> dict[str, Any]:
    """A plain function: refused as a handler."""
    return payload


async def explode(payload: dict[str, Any]) -> dict[str, Any]:
    """Raises an exception whose text names internals and echoes the caller's data (what a
    job's error must never carry)."""
    raise RuntimeError(f"boom in /srv/internal/scorer.py for {payload.get('applicationId')}")
