"""The demo key `tollhouse serve` prints on the embedded default, so a first run has a key.

Its secret is kept in ``demo-key`` beside the SQLite file (mode 0600): only for the
embedded default, where the database is a local development file anyway. Revoke it and
the next start makes a new one.
"""

from __future__ import annotations

import os
from pathlib import Path

from tollhouse.keys.store import KeyStore

DEMO_ORG = "demo"
DEMO_FILE = "demo-key"


async def ensure_demo_key(store: KeyStore, folder: Path) -> str:
    """The demo org's root test key: the one saved in ``folder``, or a new one."""
    path = folder / DEMO_FILE
    secret = _read(path)
    if secret and await store.by_hash_secret(secret) is not None:
        return secret
    _, secret = await store.create(DEMO_ORG, "test", "root", "demo key (tollhouse serve)")
    _save(path, secret)
    return secret


def _read(path: Path) -> str | None:
    try:
        return path.read_text("utf-8").strip()
    except FileNotFoundError:
        return None


def _save(path: Path, secret: str) -> None:
    # Runs once at start, before the server serves: blocking file I/O is fine here.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secret + "\n")
