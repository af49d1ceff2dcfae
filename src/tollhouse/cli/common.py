"""What every command shares: settings options, error exit, async runner."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from tollhouse.errors import TollhouseError
from tollhouse.settings import CONFIG_PATH, DATABASE_URL, Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

#: Columns a table may take when printed to a pipe or a file: rich would assume 80 and cut
#: cells (ids, URLs) with an ellipsis, which a script reading the output cannot undo.
PIPE_WIDTH = 240


def _console(stderr: bool = False) -> Console:
    """Rich's console: the terminal's width on a terminal (or ``COLUMNS`` when set),
    else :data:`PIPE_WIDTH`."""
    stream = sys.stderr if stderr else sys.stdout
    on_terminal = stream.isatty() or "COLUMNS" in os.environ
    return Console(stderr=stderr, width=None if on_terminal else PIPE_WIDTH)


console = _console()
err_console = _console(stderr=True)

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help=f"Policy file (TOML). Env: {CONFIG_PATH.env}."),
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option("--database-url", help=f"Database URL. Env: {DATABASE_URL.env}."),
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


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it comes with ``uvicorn[standard]``, and
    ``tollhouse serve`` runs on it), else None for asyncio's own. Long-running processes
    (``tollhouse worker``) use it: its I/O and cross-thread wakeups (SQLite's driver
    thread) cost about half as much CPU."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return None
    return uvloop.new_event_loop


def run(
    factory: Callable[[], Coroutine[Any, Any, T]] | Awaitable[T], *, service: bool = False
) -> T:
    """Run a coroutine to completion, turning tollhouse errors into a clean exit.
    ``service``: a long-running process, run on :func:`event_loop_factory`'s loop."""
    try:
        with asyncio.Runner(loop_factory=event_loop_factory() if service else None) as runner:
            return runner.run(factory() if callable(factory) else factory)  # type: ignore[arg-type]
    except TollhouseError as exc:
        fail(str(exc))


def with_database(
    settings: Settings,
    fn: Callable[[AsyncEngine], Awaitable[T]],
    *,
    prepare: Callable[[AsyncEngine], Awaitable[None]] | None = None,
) -> T:
    """Open the configured database, bring its schema up to date, run ``fn``, close it.

    Args:
        settings: where the database is.
        fn: what to do with the engine.
        prepare: the schema step to run first (default: the migrations).
    """
    # Imported here: `tollhouse status` and `score` talk HTTP and need no SQL driver.
    from tollhouse.schema import create_schema
    from tollhouse.storage.engine import make_engine

    async def go() -> T:
        engine = make_engine(settings.database_url)
        try:
            await (prepare or create_schema)(engine)
            return await fn(engine)
        finally:
            await engine.dispose()

    return run(go)


def write_json(data: Any) -> None:
    """Machine-readable output on stdout."""
    import orjson

    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


#: ``--environment`` values (any case) → the environment stored.
ENVIRONMENT_NAMES: dict[str, str] = {
    "production": "PRODUCTION",
    "live": "PRODUCTION",
    "sandbox": "SANDBOX",
    "test": "SANDBOX",
}


def environment_option(value: str) -> str:
    """The environment an ``--environment`` value names; fails with usage (exit 2) else."""
    found = ENVIRONMENT_NAMES.get(value.strip().lower())
    if found is None:
        fail(f"--environment {value!r}: use PRODUCTION or SANDBOX (or live, test)", 2)
    return found
