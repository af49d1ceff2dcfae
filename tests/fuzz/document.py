"""The OpenAPI document of a policy, built in-process exactly as the server builds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tollhouse.http.platform import create_platform_app
from tollhouse.openapi import build_document
from tollhouse.policy.load import load_policy
from tollhouse.storage.engine import make_engine


def document_for(policy_file: Path | None, *, example_upstream: bool = True) -> dict[str, Any]:
    """The document `tollhouse serve` serves for ``policy_file`` (None: built-in)."""
    policy = load_policy(policy_file)
    # The engine is never connected: the document needs only the app's routes.
    platform = create_platform_app(engine=make_engine("sqlite:///:memory:"), policy=policy)
    return build_document(platform.openapi(), policy, example_upstream=example_upstream)
