"""schemathesis over tollhouse's own OpenAPI document, against a real `tollhouse serve`.

Every operation of the document is called with generated requests (valid and invalid,
derandomized: the same cases on every run) carrying a root key — or, for the provider
API (``/v1/admin/*``), the server's admin token; each answer must not be a 5xx, and its
status, content type, headers and body must be the ones the document gives.
"""

from __future__ import annotations

import os

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import ADMIN_TOKEN, FUZZ_POLICY, Caller
from tests.fuzz.document import document_for

pytestmark = pytest.mark.integration

#: Examples per operation and generation phase: ~20 operations stay within ~2 min on 2 cores.
MAX_EXAMPLES = int(os.environ.get("TOLLHOUSE_FUZZ_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

schema = schemathesis.openapi.from_dict(document_for(FUZZ_POLICY))


def _auth(case: schemathesis.Case, caller: Caller) -> dict[str, str]:
    if case.path.startswith("/v1/admin/"):
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    return {"Authorization": caller.headers["Authorization"]}


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_operation_conforms(case: schemathesis.Case, fuzz_caller: Caller) -> None:
    auth = _auth(case, fuzz_caller)
    response = case.call(base_url=fuzz_caller.url, headers=auth, timeout=20)
    case.validate_response(response, checks=CHECKS)


#: The operations that write or look up caller-given text in the database.
pg_schema = schema.include(
    path_regex=(
        r"^/(v1/events|v1/score|v1/webhooks|v1/queue|call-counts/historical/SCENARIOS|v1/admin)"
    )
)


@pytest.mark.postgres
@pg_schema.parametrize()
@hypothesis.settings(
    max_examples=max(1, MAX_EXAMPLES // 3),
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_operation_conforms_on_postgresql(case: schemathesis.Case, pg_fuzz_caller: Caller) -> None:
    auth = _auth(case, pg_fuzz_caller)
    response = case.call(base_url=pg_fuzz_caller.url, headers=auth, timeout=20)
    case.validate_response(response, checks=CHECKS)
