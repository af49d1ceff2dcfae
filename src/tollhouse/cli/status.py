"""``tollhouse status`` — a key's rate-limit status, read from a running server.

Like ``tollhouse usage`` and ``tollhouse score``, this goes through the HTTP API with the
SDK, exactly as an integrator would: ``GET /v1/rate-limit/status``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.table import Table

from tollhouse.cli.common import JsonOpt, console, err_console, fail, write_json
from tollhouse.client import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    Client,
    ClientError,
    RateLimitStatus,
    RetryPolicy,
)

# Options of the commands that call a running server (``tollhouse score`` uses them too).
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=ENV_API_KEY,
        help="The key to ask with (sk_test_…/sk_live_…).",
        show_default=False,
    ),
]
UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar=ENV_BASE_URL, help="The server's base URL."),
]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def demo_key_path() -> Path:
    """Where `tollhouse serve` keeps its demo key on the embedded default (relative)."""
    # Imported here: the policy model and the key store are not needed for a given key.
    from tollhouse.keys.demo import DEMO_FILE
    from tollhouse.policy.model import DEFAULT_DATABASE_URL
    from tollhouse.storage.engine import sqlite_path

    database = sqlite_path(DEFAULT_DATABASE_URL)
    assert database is not None
    return database.parent / DEMO_FILE


def resolve_api_key(api_key: str | None, url: str) -> str:
    """The key to send: ``--api-key``/``TOLLHOUSE_API_KEY``, else — for a server on this
    machine — the demo key `tollhouse serve` saved in this folder; else exit 2.

    The demo key is never sent to another host: it belongs to the local server.
    """
    if api_key:
        return api_key
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        fail(f"--url {url!r} is not a URL", 2)
    if host in _LOOPBACK:
        path = demo_key_path()
        try:
            secret = path.read_text("utf-8").strip()
        except OSError:
            secret = ""
        if secret:
            err_console.print(f"using the demo key of {path}", highlight=False, style="dim")
            return secret
    fail(
        f"no API key: pass --api-key or set {ENV_API_KEY} "
        "(`tollhouse keys create --org ORG --role manager` makes one)",
        2,
    )


def status(
    api_key: ApiKeyOpt = None,
    url: UrlOpt = DEFAULT_BASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Show the rate-limit buckets, in-flight pools and degraded flag of a key's org."""
    key = resolve_api_key(api_key, url)
    try:
        # A short Retry-After (the status bucket's window is 1 s) is worth waiting for; a
        # long one is reported at once.
        retry = RetryPolicy(max_retries=2, max_retry_after=5)
        with Client(key, url, retry=retry, throttle=False, timeout=10) as client:
            found = client.rate_limit_status()
    except ClientError as exc:
        fail(str(exc))
    if as_json:
        write_json(dict(found.raw))
        return
    render(found, time.time())


def render(found: RateLimitStatus, now: float) -> None:
    """Print the status as rich tables."""
    console.print(
        f"[bold]{found.partner_id}[/] ({found.environment}) at "
        f"{found.generated_at.strftime('%Y-%m-%d %H:%M:%SZ')}",
        highlight=False,
    )
    if found.degraded:
        console.print(
            "[bold yellow]degraded:[/] the limit store is unreachable; limits are enforced "
            "per process and these figures are estimates."
        )
    categories = {c.category: c for c in found.categories}
    table = Table(title="buckets")
    table.add_column("bucket", no_wrap=True)
    for heading in ("limit", "used", "remaining", "window", "resets"):
        table.add_column(heading, justify="right")
    for name, bucket in found.buckets.items():
        category = categories.get(name)
        used = bucket.limit - bucket.remaining if category is None else category.used
        window = f"{category.window_seconds}s" if category is not None else ""
        resets = max(0, bucket.reset_at - int(now)) if bucket.remaining < bucket.limit else None
        style = "red" if bucket.remaining == 0 else ("yellow" if used else "")
        table.add_row(
            name,
            str(bucket.limit),
            str(used),
            f"[{style}]{bucket.remaining}[/]" if style else str(bucket.remaining),
            window,
            f"in {resets}s" if resets is not None else "-",
        )
    console.print(table)
    if found.pools:
        pools = Table(title="in-flight pools")
        pools.add_column("pool", no_wrap=True)
        for heading in ("limit", "active", "retry after"):
            pools.add_column(heading, justify="right")
        for name, pool in found.pools.items():
            pools.add_row(name, str(pool.limit), str(pool.active), f"{pool.retry_after_seconds}s")
        console.print(pools)
