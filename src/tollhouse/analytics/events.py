"""Product events (``POST /v1/events``): the known types, validation and ingest.

The types and their fields are tollhouse's own (docs/analytics.md, docs/api-shapes.md);
the metrics catalogue and the CHAT and LLM call counts read them.

An event is ``{"id", "type", "time", "data": {…}}``. ``id`` is the caller's; a second
event with the same id in the same org and environment is ignored (idempotent retries),
on every engine, through ``INSERT … ON CONFLICT (org, environment, event_id) DO NOTHING``.
The same id in the org's other environment is another event: sandbox and production
never touch each other's events.

The fields the metric catalogue reads (:data:`FIELDS`) are validated per type
(:data:`EVENT_TYPES`) and copied into typed columns of ``product_events``; ``data`` keeps
the whole object, unknown fields included. Numbers that are summed are stored as integers
(durations in µs, costs in micro-dollars) so sums are exact and the same on every engine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncEngine

from tollhouse.errors import DataRejected, ValidationFailed
from tollhouse.identifiers import EVENT_ID, EVENT_TYPE, event_field
from tollhouse.identifiers import Rule as IdRule
from tollhouse.metering.deadletters import DeadLetter, set_aside
from tollhouse.metering.schema import product_events
from tollhouse.ops.logs import request_id_var
from tollhouse.storage import dialect
from tollhouse.storage.dialect import DATA_PYTHON_ERRORS, DATABASE_ERRORS, data_reason
from tollhouse.storage.transactions import storage_error

logger = logging.getLogger(__name__)

#: Events accepted in one request.
MAX_EVENTS = 1000
#: Longest id accepted (its rule: :data:`tollhouse.identifiers.EVENT_ID`).
MAX_STRING = EVENT_ID.max_length
#: How far in the future an event's time may be (clock skew).
MAX_FUTURE = timedelta(days=1)
#: Largest number stored for a numeric field (after scaling): far above any real value,
#: low enough that sums of thousands of them stay within a 64-bit integer.
MAX_STORED = 10**15
#: PostgreSQL text and JSONB cannot hold NUL (U+0000); every engine refuses it alike.
NUL_PROBLEM = "must not contain NUL (\\u0000) characters"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Kind = Literal["str", "bool", "int", "number"]


@dataclass(frozen=True, slots=True)
class Field:
    """A data field the catalogue reads, and how it is stored."""

    name: str
    """Its name in the event's ``data``."""
    column: str
    """The ``product_events`` column holding it."""
    kind: Kind
    """What JSON value it takes."""
    scale: int = 1
    """Stored as ``round(value × scale)`` (numbers kept as exact integers)."""
    unit_scale: int = 1
    """Divide a stored aggregate by this to report it in the field's own unit."""
    decimals: int | None = None
    """Rounding of reported values (None: integers stay integers)."""
    max_length: int = 200
    """A string field's longest value: its column's width (``product_events``)."""

    @property
    def rule(self) -> IdRule:
        """A string field's identifier rule (:func:`tollhouse.identifiers.event_field`)."""
        return _FIELD_RULES[self.name]


#: Every field the catalogue can read, by its name in ``data``.
FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("run_id", "run_id", "str"),
        Field("status", "status", "str", max_length=32),
        Field("source", "source", "str", max_length=32),
        Field("user", "user_id", "str"),
        Field("workflow", "workflow", "str"),
        Field("node", "node", "str"),
        Field("tool", "tool", "str", max_length=64),
        Field("model", "model", "str"),
        Field("conversation_id", "conversation_id", "str"),
        Field("trigger_id", "trigger_id", "str"),
        Field("enabled", "enabled", "bool"),
        Field("role", "role", "str", max_length=32),
        Field("kb", "kb", "str"),
        Field("document_id", "document_id", "str"),
        Field("file_type", "file_type", "str", max_length=64),
        Field("cached", "cached", "bool"),
        Field("duration_ms", "duration_us", "number", 1000, 1000, 1),
        Field("tokens_in", "tokens_in", "int"),
        Field("tokens_out", "tokens_out", "int"),
        Field("cost", "cost_micros", "number", 1_000_000, 1_000_000, 6),
    )
}


_FIELD_RULES: dict[str, IdRule] = {
    f.name: event_field(f.name, f.max_length) for f in FIELDS.values() if f.kind == "str"
}


@dataclass(frozen=True, slots=True)
class Rule:
    """A field of an event type: required or not, and its allowed values."""

    required: bool = False
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class EventType:
    """A known event type and its fields (others in ``data`` are kept, not checked)."""

    name: str
    fields: Mapping[str, Rule]


_ID = Rule(required=True)
_OPT = Rule()

#: The known types (docs/analytics.md#post-v1events). Other types (e.g. jobs' own) are stored
#: unchecked.
EVENT_TYPES: dict[str, EventType] = {
    t.name: t
    for t in (
        EventType(
            "flow_run",
            {
                "run_id": _ID,
                "status": Rule(True, ("running", "succeeded", "failed")),
                "source": Rule(False, ("manual", "trigger", "agent")),
                "user": _OPT,
                "workflow": _OPT,
                "duration_ms": _OPT,
            },
        ),
        EventType("trigger", {"trigger_id": _ID, "enabled": Rule(required=True)}),
        EventType(
            "llm_call",
            {
                "model": _ID,
                "tokens_in": _OPT,
                "tokens_out": _OPT,
                "cached": _OPT,
                "cost": _OPT,
                "user": _OPT,
                "workflow": _OPT,
                "node": _OPT,
                "tool": _OPT,
                "conversation_id": _OPT,
            },
        ),
        EventType("conversation_started", {"conversation_id": _ID, "user": _OPT}),
        EventType("message_sent", {"conversation_id": _ID, "user": _OPT, "role": _OPT}),
        EventType(
            "kb_document",
            {
                "kb": _ID,
                "document_id": _ID,
                "user": _OPT,
                "file_type": _OPT,
                "status": Rule(False, ("processed", "failed")),
            },
        ),
    )
}


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """A validated event, ready to insert."""

    id: str
    type: str
    time_us: int
    data: dict[str, Any]
    columns: dict[str, Any]
    """Typed copies of the catalogue's fields, by column name."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one ``POST /v1/events`` did."""

    received: int
    inserted: int

    @property
    def duplicates(self) -> int:
        """Events ignored because their id was already stored (or repeated in the batch)."""
        return self.received - self.inserted


def _invalid(where: str, problem: str) -> ValidationFailed:
    return ValidationFailed(f"{where}: {problem}")


def parse_time(value: Any, where: str) -> datetime:
    """An ISO 8601 time with a timezone offset (or epoch seconds) as an aware UTC datetime.

    Raises:
        ValidationFailed: naming ``where``.
    """
    if isinstance(value, bool):
        raise _invalid(where, "must be an ISO 8601 time with a timezone offset")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _invalid(where, "must be a finite number of seconds since the epoch")
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise _invalid(where, "is out of range") from None
    if not isinstance(value, str):
        raise _invalid(where, "must be an ISO 8601 time with a timezone offset")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(
            where, f"{value!r} is not an ISO 8601 time (e.g. 2026-01-15T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise _invalid(where, f"{value!r} has no timezone offset: add Z or +HH:MM")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise _invalid(where, f"{value!r} is out of range") from None


def epoch_us(moment: datetime) -> int:
    """An aware datetime as whole microseconds since the epoch (exact)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _field_value(field: Field, value: Any, where: str) -> Any:
    if field.kind == "str":
        if not isinstance(value, str) or not value:
            raise _invalid(where, "must be a non-empty string")
        problem = field.rule.problem(value)
        if problem is not None:
            raise _invalid(where, problem)
        return value
    if field.kind == "bool":
        if not isinstance(value, bool):
            raise _invalid(where, "must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(where, "must be a number")
    if not math.isfinite(value) or value < 0:
        raise _invalid(where, "must be a finite number >= 0")
    if value * field.scale > MAX_STORED:
        # Stored as a 64-bit integer and summed: refuse what cannot be stored or summed.
        raise _invalid(where, f"must be at most {MAX_STORED // field.scale}")
    if field.kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise _invalid(where, "must be a whole number")
        return int(value)
    return round(value * field.scale)


def _holds_nul(value: Any) -> bool:
    """True when a NUL character is in any string or key of a parsed JSON value."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def parse_event(raw: Any, index: int, now: datetime) -> ParsedEvent:
    """Validate one event of a request body.

    Raises:
        ValidationFailed: naming the event's index and the offending field.
    """
    at = f"events[{index}]"
    if not isinstance(raw, dict):
        raise _invalid(at, 'must be an object {"id", "type", "time", "data"}')
    event_id = raw.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise _invalid(f"{at}.id", "is required: a non-empty string unique per event")
    problem = EVENT_ID.problem(event_id)
    if problem is not None:
        raise _invalid(f"{at}.id", problem)
    kind = raw.get("type")
    if not isinstance(kind, str) or not EVENT_TYPE.admits(kind):
        raise _invalid(
            f"{at}.type",
            "is required: lower-case letters, digits, _ or . (e.g. flow_run, llm_call)",
        )
    if "time" not in raw:
        raise _invalid(f"{at}.time", "is required: an ISO 8601 time with a timezone offset")
    moment = parse_time(raw["time"], f"{at}.time")
    if moment > now + MAX_FUTURE:
        raise _invalid(f"{at}.time", "is more than a day in the future")
    data = raw.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _invalid(f"{at}.data", "must be an object")
    columns: dict[str, Any] = {}
    known = EVENT_TYPES.get(kind)
    if known is not None:
        for name, rule in known.fields.items():
            where = f"{at}.data.{name}"
            value = data.get(name)
            if value is None:
                if rule.required:
                    raise _invalid(where, "is required")
                continue
            field = FIELDS[name]
            stored = _field_value(field, value, where)
            if rule.choices is not None and stored not in rule.choices:
                raise _invalid(where, f"must be one of {', '.join(rule.choices)}")
            columns[field.column] = stored
    if _holds_nul(data):
        raise _invalid(f"{at}.data", NUL_PROBLEM)
    return ParsedEvent(event_id, kind, epoch_us(moment), data, columns)


def parse_body(body: Any, now: datetime) -> list[ParsedEvent]:
    """A request body (a JSON array, or ``{"events": [...]}``) as validated events.

    Raises:
        ValidationFailed: the body's shape, or the first bad event's index and field.
    """
    events = body.get("events") if isinstance(body, dict) else body
    if not isinstance(events, list):
        raise ValidationFailed(
            'The body must be a JSON array of events or {"events": [...]}, each '
            '{"id", "type", "time", "data"}.'
        )
    if len(events) > MAX_EVENTS:
        raise ValidationFailed(
            f"events: {len(events)} events in one request; send at most {MAX_EVENTS}."
        )
    return [parse_event(raw, i, now) for i, raw in enumerate(events)]


def _row(org: str, environment: str, event: ParsedEvent, received_us: int) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(_FIELD_COLUMNS)
    row.update(event.columns)
    row.update(
        org=org,
        environment=environment,
        event_id=event.id,
        type=event.type,
        time_us=event.time_us,
        received_us=received_us,
        data=event.data,
    )
    return row


_FIELD_COLUMNS = tuple(f.column for f in FIELDS.values())


async def ingest(
    engine: AsyncEngine,
    org: str,
    environment: str,
    events: Sequence[ParsedEvent],
    now: datetime,
    *,
    request_id: str | None = None,
) -> IngestResult:
    """Store events for ``org`` in ``environment``, ignoring ids it already has there
    (batched, one transaction).

    When the database refuses a value of the batch (a data error, not an outage), the
    batch is bisected, each part in its own transaction: every event the database takes
    is stored, each refused one is set aside as a dead letter
    (:mod:`tollhouse.metering.deadletters`) with ``request_id`` (by default the request
    being answered, from :data:`tollhouse.ops.logs.request_id_var`), and
    :class:`~tollhouse.errors.DataRejected` (400) names the refused events.

    Raises:
        DataRejected: events the database refused (the others are stored).
        StorageError: the database failed; nothing of the batch was stored.
    """
    seen: set[str] = set()
    unique: list[tuple[int, ParsedEvent]] = []
    for index, e in enumerate(events):
        if e.id not in seen:
            seen.add(e.id)
            unique.append((index, e))
    if not unique:
        return IngestResult(len(events), 0)
    received = epoch_us(now)
    rows = [(index, _row(org, environment, e, received)) for index, e in unique]
    try:
        inserted = await _insert(engine, [row for _, row in rows])
    except DataRejected as rejected:
        refused: list[tuple[int, dict[str, Any], str]] = []
        inserted = await _bisect(engine, rows, rejected, refused)
        await _set_aside(engine, refused, request_id or request_id_var.get() or None)
        where = ", ".join(f"events[{i}]" for i, _, _ in refused[:10])
        more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
        raise DataRejected(
            f"{where}{more}: cannot be stored ({refused[0][2]}); the other "
            f"{len(events) - len(refused)} events were stored (send them again safely: "
            "ids already stored are ignored)."
        ) from rejected
    return IngestResult(len(events), inserted)


async def _insert(engine: AsyncEngine, rows: Sequence[dict[str, Any]]) -> int:
    """Insert ``rows`` in one transaction; returns how many were new.

    Raises:
        DataRejected: the database refused a value; nothing was stored.
        StorageError: the database failed; nothing was stored.
    """
    inserted = 0
    try:
        async with engine.begin() as conn:
            stmt = (
                dialect.insert(conn.dialect.name, product_events)
                .on_conflict_do_nothing(
                    index_elements=[
                        product_events.c.org,
                        product_events.c.environment,
                        product_events.c.event_id,
                    ]
                )
                .returning(product_events.c.event_id)
            )
            for start in range(0, len(rows), 500):
                result = await conn.execute(stmt, list(rows[start : start + 500]))
                inserted += len(result.all())
    except (*DATABASE_ERRORS, *DATA_PYTHON_ERRORS) as exc:
        raise storage_error("could not store events", exc) from exc
    return inserted


async def _bisect(
    engine: AsyncEngine,
    rows: list[tuple[int, dict[str, Any]]],
    rejected: DataRejected,
    refused: list[tuple[int, dict[str, Any], str]],
) -> int:
    """Store the rows of a refused batch half by half; append the refused ones (index,
    row, the database's reason) to ``refused``; returns the rows inserted."""
    if len(rows) == 1:
        index, row = rows[0]
        refused.append((index, row, data_reason(rejected)))
        return 0
    inserted = 0
    mid = len(rows) // 2
    for half in (rows[:mid], rows[mid:]):
        try:
            inserted += await _insert(engine, [row for _, row in half])
        except DataRejected as again:
            inserted += await _bisect(engine, half, again, refused)
    return inserted


async def _set_aside(
    engine: AsyncEngine, refused: list[tuple[int, dict[str, Any], str]], request_id: str | None
) -> None:
    letters = [
        DeadLetter(
            kind="event",
            org=row["org"],
            error=error,
            rows=1,
            request_id=request_id,
            payload={
                "index": index,
                "environment": row["environment"],
                "id": row["event_id"],
                "type": row["type"],
                "timeUs": row["time_us"],
                "receivedUs": row["received_us"],
                "data": row["data"],
            },
        )
        for index, row, error in refused
    ]
    await set_aside(engine, letters)
