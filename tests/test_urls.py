"""Connection URLs are shown without their password: the ``serve`` banner, the limit
store's and the policy loader's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port, start_server, stop_server
from tollhouse.errors import ConfigError
from tollhouse.limits import open_store
from tollhouse.urls import shown_url

SECRET = "hunter2-xyzzy"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            f"rediss://app:{SECRET}@cache:6380/1?ssl_ca_certs=/ca.pem",
            "rediss://app:***@cache:6380/1?ssl_ca_certs=/ca.pem",
        ),
        (f"redis+cluster://u:{SECRET}@h1:7000,h2:7001", "redis+cluster://u:***@h1:7000,h2:7001"),
        (
            f"postgresql+asyncpg://app:{SECRET}@db:5432/tollhouse",
            "postgresql+asyncpg://app:***@db:5432/tollhouse",
        ),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://user@cache:6379/0", "redis://user@cache:6379/0"),
        ("sqlite:///./.tollhouse/tollhouse.db", "sqlite:///./.tollhouse/tollhouse.db"),
        ("memory://", "memory://"),
    ],
)
def test_a_password_in_the_user_info_is_masked(url: str, shown: str) -> None:
    assert shown_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"redis+cluster://:{SECRET}@127.0.0.1:7000/3",
        f"redis+cluster://:{SECRET}@nohostport",
        f"rediss://:{SECRET}@127.0.0.1:6390/0?ssl_nonsense=1",
        f"mysql://:{SECRET}@127.0.0.1/0",
    ],
)
def test_a_limit_store_error_does_not_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        open_store(url)
    assert SECRET not in str(refused.value)
    assert "***" in str(refused.value)


def test_the_serve_banner_does_not_show_the_password(tmp_path: Path) -> None:
    # Nothing listens there: the server starts with limits decided locally until it does.
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    server = start_server(tmp_path, env={"TOLLHOUSE_REDIS_URL": url})
    try:
        assert server.proc.poll() is None
    finally:
        stop_server(server)
    out = server.log.read_text()
    assert "limits:   redis://:***@127.0.0.1:" in out
    assert SECRET not in out
