"""What every command shares: settings options, error exit, async runner."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from tollhouse.errors import TollhouseError
from tollhouse.settings import Settings, load_settings

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Policy file (TOML). Env: TOLLHOUSE_CONFIG."),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL. Env: TOLLHOUSE_DATABASE_URL."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print an error to stderr and exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def settings_from(config: str | None, database_url: str | None = None, **kw: Any) -> Settings:
    """Load settings or exit with the loader's message."""
    try:
        return load_settings(config, database_url=database_url, **kw)
    except TollhouseError as exc:
        fail(str(exc), 2)


def run(factory: Callable[[], Coroutine[Any, Any, T]] | Awaitable[T]) -> T:
    """Run a coroutine to completion, turning tollhouse errors into a clean exit."""
    try:
        if callable(factory):
            return asyncio.run(factory())
        return asyncio.run(factory)  # type: ignore[arg-type]
    except TollhouseError as exc:
        fail(str(exc))


def write_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    import orjson

    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
