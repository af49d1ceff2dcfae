"""``tollhouse`` — serve, keys."""

from __future__ import annotations

import typer

from tollhouse.cli import (
    admin_tokens,
    audit,
    deadletters,
    example,
    keys,
    limits,
    orgs,
    routes,
    score,
    serve,
    status,
    usage,
    webhooks,
    worker,
)

app = typer.Typer(
    name="tollhouse",
    help="The platform layer for any HTTP API: keys, rate limits, in-flight caps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.add_typer(keys.app, name="keys")
app.add_typer(orgs.app, name="orgs")
app.add_typer(admin_tokens.app, name="admin-tokens")
app.add_typer(limits.app, name="limits")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(usage.app, name="usage")
app.command("worker")(worker.worker)
app.command("status")(status.status)
app.command("score")(score.score)
app.command("audit")(audit.audit)
app.command("dead-letters")(deadletters.dead_letters)
app.command("routes")(routes.routes)
app.add_typer(example.app, name="example")


def main() -> None:
    """Console-script entry point."""
    app()
