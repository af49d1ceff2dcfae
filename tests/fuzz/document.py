"""The OpenAPI document of a policy, built in-process exactly as the server builds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tollhouse.openapi import build_document
from tollhouse.policy.load import load_policy


def document_for(policy_file: Path | None, *, example_upstream: bool = True) -> dict[str, Any]:
    """The document `tollhouse serve` serves for ``policy_file`` (None: built-in)."""
    return build_document(load_policy(policy_file), example_upstream=example_upstream)
