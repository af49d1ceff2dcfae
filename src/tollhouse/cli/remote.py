"""The commands' ``--url`` mode: the provider API instead of the database.

``tollhouse keys|orgs|limits|audit … --url URL`` sends the command to a running server
with the admin token of ``TOLLHOUSE_ADMIN_TOKEN`` (or ``--admin-token``), so an operator
needs no access to the database; without ``--url`` the commands open the database as
before. Both ways print the same tables and the same ``--json``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer

from tollhouse.cli.common import fail
from tollhouse.settings import ADMIN_TOKEN

T = TypeVar("T")

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="A running server: go through its provider API (/v1/admin/*) with the admin "
        f"token of {ADMIN_TOKEN.env} instead of opening the database.",
    ),
]
AdminTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar=ADMIN_TOKEN.env,
        show_envvar=False,
        help=f"The admin token for --url. Env: {ADMIN_TOKEN.env}.",
    ),
]


@contextmanager
def admin_client(url: str, token: str | None) -> Iterator[Any]:
    """An :class:`~tollhouse.client.AdminClient` for ``url``; exits with the server's (or
    the client's) message on an error."""
    from tollhouse.client import AdminClient, ClientError

    try:
        with AdminClient(admin_token=token or None, base_url=url, max_retries=2) as client:
            yield client
    except ClientError as exc:
        fail(str(exc))


def call(url: str, token: str | None, fn: Callable[[Any], T]) -> T:
    """Run ``fn(admin client)`` against ``url``."""
    with admin_client(url, token) as client:
        return fn(client)
    raise AssertionError("unreachable")  # pragma: no cover - fail() exits


def iso(value: datetime | None) -> str | None:
    """A time as the commands print it."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None
