"""The server and the OpenAPI document it serves agree on the points where they once
differed (besides the schemathesis run of ``tests/fuzz``): event field types, the queue's
cursor, the time range's order, NUL characters and reused ``Idempotency-Key``s. Each case
reads the rule from the served document and checks a real ``tollhouse serve`` (SQLite and
PostgreSQL) answers as it says: what the document forbids is refused with a status it
declares, naming the field; what it allows is served."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tollhouse.analytics.events import EVENT_TYPES

pytestmark = pytest.mark.integration

SCORE = {
    "applicationId": "app-1",
    "jobId": "posting-1",
    "candidate": {"name": "Ada", "resume": "Python and PostgreSQL for six years."},
}


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    with _client(server) as c:
        served: dict[str, Any] = c.get("/v1/platform/openapi.json").json()
    return served


def _client(server: Server) -> httpx.Client:
    secret = server.key(f"agree-{secrets.token_hex(4)}")["key"]
    headers = {"Authorization": f"Bearer {secret}", "X-Tenant-Id": "tenant-1"}
    return httpx.Client(base_url=server.url, headers=headers, timeout=15)


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].split("/")[1:]:
            target = target[part]
        node = target
    return node


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = document["paths"][path][method]
    return op


def _parameter(document: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    for p in _operation(document, method, path).get("parameters", []):
        p = _resolve(document, p)
        if p["name"] == name:
            return p
    raise AssertionError(f"{method} {path} documents no parameter {name}")


def _refused(r: httpx.Response, declared: dict[str, Any], field: str) -> dict[str, Any]:
    assert str(r.status_code) in declared["responses"], (r.status_code, list(declared))
    assert r.status_code in (400, 422), r.text
    body: dict[str, Any] = r.json()
    message = body["error"]["message"] if "error" in body else str(body["detail"])
    assert field in message, body
    return body


#: A value of the wrong JSON type, and one of the right type, for each kind of field.
WRONG_TYPE: dict[str, Any] = {"integer": "10", "number": "1.5", "boolean": "yes", "string": 5}
RIGHT_TYPE: dict[str, Any] = {"integer": 10, "number": 1.5, "boolean": True, "string": "v"}


def _valid_data(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The required fields of event type ``kind``, each with a value its rule admits."""
    data: dict[str, Any] = {}
    for name, rule in EVENT_TYPES[kind].fields.items():
        if rule.required:
            data[name] = rule.choices[0] if rule.choices else RIGHT_TYPE[fields[name]["type"]]
    return data


def _post_events(c: httpx.Client, body: list[dict[str, Any]]) -> httpx.Response:
    """``POST /v1/events``, waiting out the route's bucket (10 a second) as a client does."""
    while (r := c.post("/v1/events", json=body)).status_code == 429:
        time.sleep(int(r.headers["retry-after"]))
    return r


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """The branch of a nullable schema (``anyOf: [schema, null]``) that is not null."""
    if "anyOf" in schema:
        found: dict[str, Any] = next(s for s in schema["anyOf"] if s.get("type") != "null")
        return found
    return schema


def _typed_fields(document: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Event type → its typed ``data`` fields → each field's schema, as the document's
    ``Event`` states them (one ``if type == … then data …`` per known type)."""
    event = _resolve(document, document["components"]["schemas"]["Event"])
    kinds: dict[str, dict[str, dict[str, Any]]] = {}
    for rule in event["allOf"]:
        kind = rule["if"]["properties"]["type"]["const"]
        data = _present(rule["then"]["properties"]["data"])
        kinds[kind] = {
            name: _present(_resolve(document, schema))
            for name, schema in data["properties"].items()
        }
    return kinds


def test_event_fields_of_the_wrong_type_are_refused(
    server: Server, document: dict[str, Any]
) -> None:
    """Every typed field of every known event type in the document's ``Event``, in an
    event of that type: the wrong JSON type is a 422 naming the field, the right one is
    stored."""
    kinds = _typed_fields(document)
    assert set(kinds) == set(EVENT_TYPES)
    declared = _operation(document, "post", "/v1/events")
    with _client(server) as c:
        for kind, fields in sorted(kinds.items()):
            for name, schema in sorted(fields.items()):
                if "enum" in schema:
                    good, wrong = schema["enum"][0], 5
                else:
                    good, wrong = RIGHT_TYPE[schema["type"]], WRONG_TYPE[schema["type"]]
                data = _valid_data(kind, fields)
                event_id = f"e-{kind}-{name}-{secrets.token_hex(3)}"
                body = [
                    {"id": event_id, "type": kind, "time": "2026-01-01T00:00:00Z", "data": data}
                ]
                data[name] = wrong
                _refused(_post_events(c, body), declared, f"events[0].data.{name}")
                data[name] = good
                stored = _post_events(c, body)
                assert stored.status_code == 200, (kind, name, stored.text)
                assert stored.json()["inserted"] == 1


def test_the_queue_cursor_the_server_gives_is_one_the_document_allows(
    server: Server, document: dict[str, Any]
) -> None:
    cursor = _parameter(document, "get", "/v1/queue", "cursor")["schema"]
    pattern = re.compile(cursor["pattern"])
    declared = _operation(document, "get", "/v1/queue")
    with _client(server) as c:
        for i in range(3):
            accepted = c.post("/v1/score", json={**SCORE, "applicationId": f"app-{i}"})
            assert accepted.status_code == 202, accepted.text
        first = c.get("/v1/queue", params={"limit": "1"}).json()
        given = first["nextCursor"]
        assert pattern.fullmatch(given) and len(given) <= cursor["maxLength"], given
        second = c.get("/v1/queue", params={"limit": "1", "cursor": given})
        assert second.status_code == 200, second.text
        assert second.json()["data"] != first["data"]
        for bad in ("not a cursor", "x" * (cursor["maxLength"] + 1), "a/b=="):
            assert not (pattern.fullmatch(bad) and len(bad) <= cursor["maxLength"])
            _refused(c.get("/v1/queue", params={"cursor": bad}), declared, "cursor")


def test_a_time_range_out_of_order_is_a_declared_400(
    server: Server, document: dict[str, Any]
) -> None:
    path = "/v1/analytics/{metric}"
    start = _parameter(document, "get", path, "time_start")
    assert "before time_end" in start["description"]
    declared = _operation(document, "get", path)
    with _client(server) as c:
        reversed_range = {"time_start": "2026-01-02T00:00:00Z", "time_end": "2026-01-01T00:00:00Z"}
        r = c.get("/v1/analytics/flow_runs", params=reversed_range)
        assert r.status_code == 400
        _refused(r, declared, "time_start")
        ordered = {"time_start": "2026-01-01T00:00:00Z", "time_end": "2026-01-02T00:00:00Z"}
        assert c.get("/v1/analytics/flow_runs", params=ordered).status_code == 200


def test_nul_in_an_id_is_refused_as_the_document_says(
    server: Server, document: dict[str, Any]
) -> None:
    score = _resolve(document, document["components"]["schemas"]["ScoreRequest"])
    pattern = re.compile(score["properties"]["applicationId"]["pattern"])
    assert not pattern.fullmatch("a\x00b") and pattern.fullmatch("a b")
    declared = _operation(document, "post", "/v1/score")
    with _client(server) as c:
        r = c.post("/v1/score", json={**SCORE, "applicationId": "a\x00b"})
        _refused(r, declared, "applicationId")
        assert c.post("/v1/score", json={**SCORE, "applicationId": "a b"}).status_code == 202


def test_a_reused_idempotency_key_is_a_declared_422(
    server: Server, document: dict[str, Any]
) -> None:
    declared = _operation(document, "post", "/v1/score")
    key = {"Idempotency-Key": f"k-{secrets.token_hex(4)}"}
    with _client(server) as c:
        first = c.post("/v1/score", json=SCORE, headers=key)
        assert first.status_code == 202, first.text
        again = c.post("/v1/score", json=SCORE, headers=key)
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json()["scoringJobId"] == first.json()["scoringJobId"]
        other = c.post("/v1/score", json={**SCORE, "applicationId": "app-2"}, headers=key)
        body = _refused(other, declared, "Idempotency-Key")
        assert other.status_code == 422
        assert body["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
