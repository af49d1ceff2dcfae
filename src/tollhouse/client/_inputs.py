"""What callers send: score requests and product events, as dataclasses or plain dicts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """One application to score (the body of ``POST /v1/score``).

    Attributes:
        application_id: your application's id (``applicationId``).
        job_id: the job posting whose criteria score it (``jobId``).
        candidate: at least ``name`` and ``resume``; other fields are passed on.
        extra: more top-level fields, passed on as they are.
    """

    application_id: str
    job_id: str
    candidate: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The request body."""
        return {
            **self.extra,
            "applicationId": self.application_id,
            "jobId": self.job_id,
            "candidate": dict(self.candidate),
        }


ScoreInput = ScoreRequest | Mapping[str, Any]
"""A score request: a :class:`ScoreRequest` or its JSON body as a mapping."""


def score_body(item: ScoreInput, default_job_id: str | None = None) -> dict[str, Any]:
    """The JSON body of a score request; ``default_job_id`` fills a missing ``jobId``."""
    if isinstance(item, ScoreRequest):
        return item.to_json()
    if not isinstance(item, Mapping):
        raise TypeError(f"a score request must be a ScoreRequest or a mapping, not {type(item)}")
    body = dict(item)
    if default_job_id is not None and body.get("jobId") is None:
        body["jobId"] = default_job_id
    return body


def body_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 of a body's canonical JSON (sorted keys): equal bodies, equal hashes."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Event:
    """A product event for ``POST /v1/events`` (the analytics catalogue's metrics are computed
    from them).

    Attributes:
        id: unique per org; sending an id again is ignored (ingestion is idempotent).
        type: ``flow_run``, ``trigger``, ``llm_call``, ``conversation_started``,
            ``message_sent``, ``kb_document``, or your own.
        time: when it happened: an aware datetime, Unix seconds, or ISO 8601 with offset.
        data: the type's fields (see docs/analytics.md).
    """

    id: str
    type: str
    time: datetime | float | str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as the API takes it."""
        return {"id": self.id, "type": self.type, "time": wire_time(self.time), "data": self.data}


EventInput = Event | Mapping[str, Any]
"""An event: an :class:`Event` or its JSON object as a mapping."""


def event_body(item: EventInput) -> dict[str, Any]:
    """The JSON object of one event."""
    if isinstance(item, Event):
        return item.to_json()
    body = dict(item)
    if "time" in body and isinstance(body["time"], datetime):
        body["time"] = wire_time(body["time"])
    return body


def wire_time(value: datetime | float | str) -> str | float:
    """A time as the API takes it: ISO 8601 with ``Z`` for datetimes, others unchanged.

    Raises:
        ValueError: a naive datetime (the API needs an offset; say which one you mean).
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{value!r} has no timezone; pass an aware datetime (e.g. tzinfo=UTC)")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return value


def epoch(value: datetime | float | None) -> float | None:
    """Unix seconds of a time (call counts take floats)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{value!r} has no timezone; pass an aware datetime (e.g. tzinfo=UTC)")
        return value.timestamp()
    return value
