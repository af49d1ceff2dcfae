"""``tollhouse example serve`` — the bundled example upstream on its own, under uvicorn.

Several tollhouse instances can then share it as their ``[upstream] url``; its state lives
in the database (``--database-url``, else ``TOLLHOUSE_DATABASE_URL``, else tollhouse's
default SQLite file), so any number of these processes, and the example that ``tollhouse
serve`` mounts in-process, see the same criteria and results.
"""

from __future__ import annotations

from typing import Annotated

import typer
import uvicorn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tollhouse.cli.common import DatabaseOpt, console, fail
from tollhouse.errors import TollhouseError

#: Default port: beside ``tollhouse serve`` (8000), so both run on one machine as they are.
DEFAULT_PORT = 8001

app = typer.Typer(
    help="The bundled example upstream (a small candidate-scoring API).",
    no_args_is_help=True,
)


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = DEFAULT_PORT,
    database_url: DatabaseOpt = None,
    log_level: Annotated[
        str,
        typer.Option("--log-level", help="critical, error, warning, info or debug."),
    ] = "info",
) -> None:
    """Run the example scoring API on its own: the shared upstream url of tollhouse instances.

    Env: TOLLHOUSE_EXAMPLE_PROCESSING_SECONDS (seconds a scoring takes, 0-3600),
    TOLLHOUSE_EXAMPLE_MAX_JOBS, TOLLHOUSE_EXAMPLE_MAX_RESULTS (kept per org).
    """
    # Imported here: the other commands need none of the example's modules.
    from tollhouse.example.app import create_app_from_env, database_url_from_env

    level = log_level.strip().lower()
    if level not in ("critical", "error", "warning", "info", "debug"):
        fail(f"--log-level {log_level!r}: use critical, error, warning, info or debug", 2)
    url = (database_url or "").strip() or database_url_from_env()
    try:
        example = create_app_from_env(database=url)
    except TollhouseError as exc:
        fail(str(exc), 2)
    console.print(
        f"[bold]tollhouse example[/] listening on [bold cyan]http://{host}:{port}[/]",
        highlight=False,
    )
    console.print(f"  database: {_shown(url)}", highlight=False)
    uvicorn.run(
        example,
        host=host,
        port=port,
        # As `tollhouse serve`: uvloop's event loop and httptools' parser.
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level=level,
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


def _shown(url: str) -> str:
    """The database URL without its password, for the banner."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url
