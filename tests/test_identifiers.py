"""The identifier rules (:mod:`tollhouse.identifiers`) are one definition: the database
columns holding each identifier are exactly as wide as its rule, the OpenAPI document
says what the rule says, and docs/security.md lists the rules as they are."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import Column, String

from tests.conftest import DEFAULT_POLICY, REPO
from tests.fuzz.document import document_for
from tollhouse.analytics.events import FIELDS
from tollhouse.example.schema import example_jobs, example_results
from tollhouse.identifiers import (
    APPLICATION_ID,
    CURSOR,
    EVENT_ID,
    EVENT_TYPE,
    IDEMPOTENCY_KEY,
    LABEL_VALUE,
    POSTING_ID,
    RULES,
    SCORING_JOB_ID,
    TENANT,
    Rule,
    rules_table,
)
from tollhouse.jobs.schema import jobs, webhook_deliveries
from tollhouse.metering.schema import product_events, usage_calls, usage_dims

#: Every column holding an identifier a caller sends, with its rule.
COLUMNS: list[tuple[Column[Any], Rule]] = [
    (jobs.c.tenant, TENANT),
    (usage_dims.c.tenant, TENANT),
    (usage_calls.c.tenant, TENANT),
    (jobs.c.application_id, APPLICATION_ID),
    (example_results.c.application_id, APPLICATION_ID),
    (example_jobs.c.job_id, POSTING_ID),
    (example_results.c.job_id, POSTING_ID),
    (jobs.c.id, SCORING_JOB_ID),
    (webhook_deliveries.c.job_id, SCORING_JOB_ID),
    (product_events.c.event_id, EVENT_ID),
    (product_events.c.type, EVENT_TYPE),
    (usage_dims.c.db, LABEL_VALUE),
    (usage_dims.c.scenario, LABEL_VALUE),
    (usage_dims.c.reco_type, LABEL_VALUE),
    *(
        (product_events.c[f.column], f.rule)
        for f in sorted(FIELDS.values(), key=lambda f: f.name)
        if f.kind == "str"
    ),
]


@pytest.mark.parametrize(("column", "rule"), COLUMNS, ids=lambda v: str(getattr(v, "name", v)))
def test_each_column_holds_exactly_what_its_rule_admits(column: Column[Any], rule: Rule) -> None:
    assert isinstance(column.type, String)
    assert column.type.length == rule.max_length, (str(column), rule)


def test_an_idempotency_key_fits_with_its_batch_suffix() -> None:
    """A batch stores ``key#index`` (index < 100) in the same column."""
    width = jobs.c.idempotency_key.type.length
    assert width is not None and width >= IDEMPOTENCY_KEY.max_length + len("#99")


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_the_pattern_is_what_the_code_checks(rule: Rule) -> None:
    """The JSON Schema pattern (read as Python reads it) and :meth:`Rule.problem` agree
    on values at and around each rule's edges."""
    samples = ["a", "A-1_b", "ü", "tenant one", " ", "a\x00", "a\x7f", "a\n", "é" * 3, "x.y:z"]
    samples += ["a" * rule.max_length, "a" * (rule.max_length + 1)]
    # ECMA-262's $ is the end of the string; Python's also matches before a final "\n".
    assert rule.pattern.startswith("^") and rule.pattern.endswith("$")
    pattern = re.compile(rule.pattern[1:-1])
    for value in samples:
        by_schema = pattern.fullmatch(value) is not None and len(value) <= rule.max_length
        assert rule.admits(value) == by_schema, (rule.name, value)


def test_rules_refuse_what_would_crash_or_mislead() -> None:
    assert TENANT.admits("acme-corp_1") and not TENANT.admits("ünï")
    assert TENANT.problem("t" * 201) == "must be at most 200 characters"
    assert not TENANT.admits("a b") and not TENANT.admits("")
    assert APPLICATION_ID.admits("Bewerbung ü 1") and not APPLICATION_ID.admits("a\x00")
    assert APPLICATION_ID.problem("   ") == "must not be empty"
    assert not SCORING_JOB_ID.admits("sj_%00") and SCORING_JOB_ID.admits("sj_0123abc")
    assert CURSOR.admits("1767225600000000_c2pfMQ") and CURSOR.admits("0_")
    assert not CURSOR.admits("a=b") and not CURSOR.admits("0") and not CURSOR.admits("0_a")


def test_the_openapi_document_uses_the_rules() -> None:
    doc = document_for(DEFAULT_POLICY)
    score = doc["paths"]["/v1/score"]["post"]
    params = {p["name"]: p["schema"] for p in score["parameters"]}
    assert params["X-Tenant-Id"] == TENANT.schema()
    assert params["Idempotency-Key"] == IDEMPOTENCY_KEY.schema()
    request = doc["components"]["schemas"]["ScoreRequest"]["properties"]
    assert request["applicationId"] == APPLICATION_ID.schema()
    assert request["jobId"] == POSTING_ID.schema()
    poll = doc["paths"]["/v1/score/{scoringJobId}"]["get"]["parameters"]
    assert {p["name"]: p["schema"] for p in poll}["scoringJobId"] == SCORING_JOB_ID.schema()
    event = doc["components"]["schemas"]["Event"]
    assert event["properties"]["id"] == EVENT_ID.schema()
    assert event["properties"]["type"] == EVENT_TYPE.schema()
    [llm] = [
        t["then"] for t in event["allOf"] if t["if"]["properties"]["type"]["const"] == "llm_call"
    ]
    tool = llm["properties"]["data"]["properties"]["tool"]
    assert tool == {"anyOf": [FIELDS["tool"].rule.schema(), {"type": "null"}]}
    assert FIELDS["tool"].max_length == 64


def test_path_parameters_hold_one_segment() -> None:
    """Whatever its rule, no path parameter of the document admits what the gateway
    refuses in a path: "/", "\\", "." or ".." (400 before any route)."""
    doc = document_for(DEFAULT_POLICY)
    seen = 0
    for item in doc["paths"].values():
        for op in item.values():
            for p in op.get("parameters", ()) if isinstance(op, dict) else ():
                schema = p["schema"]
                if p["in"] != "path" or "enum" in schema:
                    continue
                seen += 1
                pattern = re.compile(schema["pattern"][1:-1])
                for value in ("a/b", "a\\b", "/", "\\"):
                    assert pattern.fullmatch(value) is None, (p["name"], value)
                refused = schema.get("not", {}).get("enum", [])
                for dots in (".", ".."):
                    assert pattern.fullmatch(dots) is None or dots in refused, p["name"]
                assert pattern.fullmatch("a.b") is not None or p["name"] in (
                    "keyId",
                    "scoringJobId",
                )
    assert seen > 10


def test_docs_list_the_rules_as_they_are() -> None:
    """docs/security.md's input rules table is :func:`rules_table`, row for row."""
    page = (REPO / "docs" / "security.md").read_text()
    fields = [f.rule for _, f in sorted(FIELDS.items()) if f.kind == "str"]
    assert "\n".join(rules_table(fields)) in page, "\n".join(rules_table(fields))
