"""``TOLLHOUSE_JOB_LEASE_SECONDS``: how soon a crashed process's running jobs run again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tollhouse.errors import ConfigError
from tollhouse.http.app import Tollhouse
from tollhouse.settings import load_settings


def test_default_and_override(tmp_path: Path) -> None:
    assert load_settings(environ={}).job_lease_seconds == 30.0
    settings = load_settings(
        environ={
            "TOLLHOUSE_JOB_LEASE_SECONDS": " 2.5 ",
            "TOLLHOUSE_DATABASE_URL": f"sqlite:///{tmp_path}/lease.db",
        }
    )
    assert settings.job_lease_seconds == 2.5
    # The server's queue takes it (heartbeats then renew every third of it).
    app = Tollhouse(settings=settings)
    try:
        assert app.queue.settings.lease_seconds == 2.5
    finally:
        asyncio.run(app.shutdown())


@pytest.mark.parametrize("bad", ["0", "-1", "soon", "nan", "inf"])
def test_bad_values_are_refused_with_the_variable_named(bad: str) -> None:
    with pytest.raises(ConfigError, match="TOLLHOUSE_JOB_LEASE_SECONDS"):
        load_settings(environ={"TOLLHOUSE_JOB_LEASE_SECONDS": bad})
