"""Keys for the tests against the real server: one org per label, unique per run."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

import pytest

from tests.conftest import Server
from tollhouse.cli.keys import key_json
from tollhouse.keys.store import KeyStore
from tollhouse.policy.model import DEFAULT_DATABASE_URL
from tollhouse.storage.engine import make_engine, sqlite_path

KeyMaker = Callable[[Sequence[tuple[str, str]]], dict[tuple[str, str], dict[str, str]]]


@pytest.fixture(scope="module")
def make_keys(default_server: Server) -> KeyMaker:
    """``make_keys([(label, role), …])`` → ``{(label, role): key JSON}``.

    Each label is its own org (unique per run). The keys go straight into the running
    server's database through the same :class:`KeyStore` `tollhouse keys create` uses,
    in one process: a CLI start per key costs seconds on a busy machine. One after the
    other, because two first keys of a new org created at once race on the org's row.
    """
    run = uuid.uuid4().hex[:8]
    relative = sqlite_path(DEFAULT_DATABASE_URL)
    assert relative is not None
    url = f"sqlite:///{default_server.cwd / relative}"

    def make(specs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
        async def go() -> dict[tuple[str, str], dict[str, str]]:
            engine = make_engine(url)
            try:
                store = KeyStore(engine)
                made = {}
                for label, role in specs:
                    record, secret = await store.create(f"{label}-{run}", "test", role)
                    made[(label, role)] = key_json(record, secret)
                return made
            finally:
                await engine.dispose()

        return asyncio.run(go())

    return make
