"""The SQLite database holds key hashes, webhook secrets and job payloads: its folder is
created ``0700`` and its file ``0600`` (SQLite gives the ``-wal`` and ``-shm`` files the
database file's mode), whatever the process's umask."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import run_cli
from tollhouse.schema import create_schema
from tollhouse.storage.engine import make_engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: what is created gets exactly the mode asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_folder_file_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "new" / "nested" / "state.db"

    async def go() -> None:
        engine = make_engine(f"sqlite:///{db}")
        try:
            await create_schema(engine)
            async with engine.connect() as conn:  # WAL: -wal and -shm exist while open
                await conn.execute(text("SELECT count(*) FROM api_keys"))
                modes = [mode(Path(f"{db}-{end}")) for end in ("wal", "shm")]
                assert modes == [0o600, 0o600]
        finally:
            await engine.dispose()

    asyncio.run(go())
    assert mode(db) == 0o600
    assert mode(db.parent) == mode(db.parent.parent) == 0o700


@pytest.mark.usefixtures("open_umask")
def test_an_existing_file_keeps_its_mode_and_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "old.db"
    db.touch(0o644)
    os.chmod(db, 0o644)
    engine = make_engine(f"sqlite:///{db}")
    asyncio.run(engine.dispose())
    assert mode(db) == 0o644
    assert "readable by other users" in caplog.text


def test_the_cli_creates_the_default_database_owner_only(tmp_path: Path) -> None:
    """A real process with its usual umask: ``./.tollhouse/tollhouse.db``."""
    run_cli("keys", "create", "--org", "acme", "--json", cwd=tmp_path)
    folder = tmp_path / ".tollhouse"
    assert mode(folder) == 0o700
    assert mode(folder / "tollhouse.db") == 0o600
