"""Keys for the tests against the real server: one org per test, created in parallel."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Server

KeyMaker = Callable[[Sequence[tuple[str, str]]], dict[tuple[str, str], dict[str, str]]]


@pytest.fixture(scope="module")
def make_keys(default_server: Server) -> KeyMaker:
    """``make_keys([(label, role), …])`` → ``{(label, role): key JSON}``.

    Each label is its own org (unique per run). Keys are made by ``tollhouse keys create``
    (about a second per CLI start), orgs in parallel; the keys of one org one after the
    other, because two first keys of a new org created at once race on the org's row
    (``KeyStore.create`` reads, then inserts it).
    """
    run = uuid.uuid4().hex[:8]

    def make(specs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
        by_org: dict[str, list[str]] = {}
        for label, role in specs:
            by_org.setdefault(label, []).append(role)

        def org_keys(label: str) -> list[tuple[tuple[str, str], dict[str, str]]]:
            org = f"{label}-{run}"
            return [((label, role), default_server.key(org, role=role)) for role in by_org[label]]

        with ThreadPoolExecutor(max_workers=4) as pool:
            return {spec: key for made in pool.map(org_keys, by_org) for spec, key in made}

    return make
