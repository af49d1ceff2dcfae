"""``tollhouse`` — serve, keys."""

from __future__ import annotations

import typer

from tollhouse.cli import keys, limits, serve

app = typer.Typer(
    name="tollhouse",
    help="The platform layer for any HTTP API: keys, rate limits, in-flight caps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.add_typer(keys.app, name="keys")
app.add_typer(limits.app, name="limits")


def main() -> None:
    """Console-script entry point."""
    app()
