"""The identifiers callers send, each with its one rule: how long, which characters.

A :class:`Rule` is written once here and used everywhere the identifier is read — the
gateway (``X-Tenant-Id``), the jobs routes (``Idempotency-Key``, ``applicationId``,
``scoringJobId``, cursors), the bundled example (``jobId``, criterion ids), product
events (ids, types, string fields) and call counts (label values) — and by the OpenAPI
document, whose ``pattern`` and ``maxLength`` are the rule's own (:meth:`Rule.schema`).
docs/security.md's input rules table lists :data:`RULES`, and a test holds the database
columns to them: every column holding an identifier is exactly as wide as its rule's
``max_length`` (PostgreSQL enforces the width; SQLite does not, so the code's check is
what keeps both engines alike).

Three character sets:

* ``visible ASCII`` (``\\x21``–``\\x7e``: letters, digits, punctuation; no spaces, no
  controls, nothing beyond ASCII) for identifiers sent in headers: HTTP gives header
  values as bytes with no agreed text encoding, so anything else would be read one way
  here and another way by an upstream, a log reader or a client generated from the
  OpenAPI document. Refused at the door, a non-ASCII tenant never reaches a job.
* ``text`` (any Unicode but control characters — NUL included, which PostgreSQL text
  cannot hold — with at least one character that is not a space) for identifiers in JSON
  bodies and paths: JSON and percent-encoded paths carry UTF-8 unambiguously, and it is
  stored and answered as sent.
* ``segment`` (``text`` without ``/`` and ``\\``, and neither ``.`` nor ``..``) for the ids
  sent in bodies that are also sent as a path segment (``applicationId``, ``jobId``,
  ``criterionId``): an id a body may carry is always one its path routes can reach.
* ``token`` (``A``–``Z``, ``a``–``z``, ``0``–``9``, ``_``, ``-``) for identifiers
  tollhouse itself makes (scoring job ids): anything else cannot be one.
* ``cursor`` for page cursors (:mod:`tollhouse.cursors`): every string of the pattern
  decodes to a place in a listing, so the pattern is exactly what is accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = [
    "APPLICATION_ID",
    "CRITERION_ID",
    "CURSOR",
    "EVENT_ID",
    "EVENT_TYPE",
    "IDEMPOTENCY_KEY",
    "LABEL_VALUE",
    "POSTING_ID",
    "RULES",
    "SCORING_JOB_ID",
    "TENANT",
    "Charset",
    "Rule",
    "blank",
    "event_field",
    "free_text",
    "path_segment",
    "rules_table",
]

Charset = Literal["visible ASCII", "text", "segment", "token", "event type", "cursor"]

#: The path segments the gateway refuses (tollhouse.policy.paths): never an id sent in a path.
_DOT_SEGMENTS: Final = (".", "..")

#: Each character set as a JSON Schema (ECMA-262) pattern that Python's ``re`` reads alike.
_PATTERNS: Final[dict[Charset, str]] = {
    "visible ASCII": r"^[\x21-\x7e]+$",
    "text": r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$",
    "segment": r"^[^\x00-\x1f\x7f/\\]*[^\x00-\x20\x7f/\\][^\x00-\x1f\x7f/\\]*$",
    "token": r"^[A-Za-z0-9_-]+$",
    "event type": r"^[a-z][a-z0-9_.]*$",
    # A number, "_", then unpadded base64url (a length that is not 1 more than a multiple
    # of 4): every such string decodes (tollhouse.cursors).
    "cursor": r"^[0-9]{1,20}_(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$",
}
#: What each set's refusal says (after "must be 1 to N …").
_WORDS: Final[dict[Charset, str]] = {
    "visible ASCII": "visible ASCII characters (letters, digits, punctuation; no spaces)",
    "text": "characters, not all spaces, without NUL (\\u0000) or other control characters",
    "segment": "characters, not all spaces, without / or \\, NUL (\\u0000) or other control "
    'characters, and neither "." nor ".."',
    "token": "letters, digits, _ or -",
    "event type": "lower-case letters, digits, _ or . starting with a letter (e.g. flow_run)",
    "cursor": "characters of a nextCursor (digits, _, then base64url)",
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One identifier's rule.

    Args:
        name: how the caller spells it (``X-Tenant-Id``, ``applicationId``).
        max_length: most characters (Unicode code points, as PostgreSQL's
            ``varchar(n)`` and JSON Schema's ``maxLength`` count them).
        charset: which characters (see the module's notes).
        sent_in: where callers send it, for docs/security.md.
    """

    name: str
    max_length: int
    charset: Charset
    sent_in: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(_PATTERNS[self.charset]))

    @property
    def pattern(self) -> str:
        """The rule's characters as a JSON Schema pattern."""
        return _PATTERNS[self.charset]

    @property
    def words(self) -> str:
        """The rule in words: ``1 to 200 visible ASCII characters (…)``."""
        return f"1 to {self.max_length} {_WORDS[self.charset]}"

    def schema(self) -> dict[str, Any]:
        """The rule as a JSON Schema for the OpenAPI document."""
        schema: dict[str, Any] = {
            "type": "string",
            "minLength": 1,
            "maxLength": self.max_length,
            "pattern": self.pattern,
        }
        if self.charset == "segment":
            schema["not"] = {"enum": list(_DOT_SEGMENTS)}
        return schema

    def problem(self, value: str) -> str | None:
        """What is wrong with ``value`` (``must be at most 200 characters``), or None."""
        if not value:
            return "must not be empty"
        if len(value) > self.max_length:
            return f"must be at most {self.max_length} characters"
        if self._regex.fullmatch(value) is None:
            if self.charset in ("text", "segment") and not value.strip(" "):
                return "must not be empty"
            return f"must be {self.words}"
        if self.charset == "segment" and value in _DOT_SEGMENTS:
            return f"must be {self.words}"
        return None

    def admits(self, value: str) -> bool:
        """True when ``value`` follows the rule."""
        return self.problem(value) is None


TENANT: Final = Rule("X-Tenant-Id", 200, "visible ASCII", "header")
IDEMPOTENCY_KEY: Final = Rule("Idempotency-Key", 255, "visible ASCII", "header")
APPLICATION_ID: Final = Rule("applicationId", 256, "segment", "body, path")
#: The scoring API shape's ``jobId``: the job posting a score or criteria belong to.
POSTING_ID: Final = Rule("jobId", 256, "segment", "body, path")
CRITERION_ID: Final = Rule("criterionId", 256, "segment", "body (criteria[].id), path")
SCORING_JOB_ID: Final = Rule("scoringJobId", 40, "token", "path, query (jobId)")
#: A page cursor (``nextCursor``, call counts' ``next_cursor``): long enough for a
#: 256-character id in UTF-8 (tollhouse.cursors).
CURSOR: Final = Rule("cursor", 1400, "cursor", "query")
EVENT_ID: Final = Rule("id", 200, "text", "body (`events[].id`)")
EVENT_TYPE: Final = Rule("type", 64, "event type", "body (`events[].type`)")
#: A call-count label value (``db``, ``scenario``, ``reco_type``) taken from a path,
#: header or query parameter, and the call-count scenario routes' path parameters.
LABEL_VALUE: Final = Rule("label value", 200, "text", "path, header, query (labels)")


#: What counts as blank in free text: ASCII spaces, tabs and line breaks.
_BLANK: Final = " \t\n\r"


def blank(value: str) -> bool:
    """True when free text holds nothing but :data:`_BLANK` characters."""
    return not value.strip(_BLANK)


def free_text(max_length: int, *, required: bool) -> dict[str, Any]:
    """Free text in a JSON body (a title, a description, a résumé) as a JSON Schema: any
    characters but NUL (which PostgreSQL text cannot hold), at most ``max_length``; a
    required one must not be :func:`blank`, an optional one may also be null (absent)."""
    if required:
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": max_length,
            "pattern": r"^[^\x00]*[^\x00\t\n\r ][^\x00]*$",
        }
    return {"type": ["string", "null"], "maxLength": max_length, "pattern": r"^[^\x00]*$"}


#: What no path parameter can hold, whatever its rule: the gateway refuses a path holding
#: an encoded ``/``, a ``\\`` or a ``.`` / ``..`` segment (:mod:`tollhouse.policy.paths`).
_PATH_REFUSED: Final = "/\\"


def path_segment(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (a path parameter's) narrowed to what the gateway lets through as one
    path segment: without ``/`` or ``\\``, and neither ``.`` nor ``..``.

    A rule's pattern gets the two characters taken out of its character classes; a
    string without a pattern gets one that excludes them. Enums are left as they are.
    """
    if "enum" in schema or schema.get("type") != "string":
        return schema
    narrowed = dict(schema)
    pattern = schema.get("pattern")
    if pattern is None:
        narrowed["pattern"] = r"^[^/\\]+$"
    elif pattern == _PATTERNS["text"]:
        narrowed["pattern"] = _PATTERNS["segment"]
    elif pattern == _PATTERNS["visible ASCII"]:
        narrowed["pattern"] = r"^[\x21-\x2e\x30-\x5b\x5d-\x7e]+$"
    regex = re.compile(narrowed["pattern"])
    if any(regex.search(c) for c in _PATH_REFUSED):
        raise ValueError(f"path parameter pattern {pattern!r} admits / or \\")
    dots = [d for d in _DOT_SEGMENTS if regex.search(d)]
    if dots:
        narrowed["not"] = {"enum": dots}
    return narrowed


def event_field(name: str, max_length: int) -> Rule:
    """The rule of a string field of an event's ``data`` (``data.model``)."""
    return Rule(f"data.{name}", max_length, "text", "body (events)")


#: Every identifier rule but the events' data fields (those are in
#: :data:`tollhouse.analytics.events.FIELDS`), in the order docs/security.md lists them.
RULES: Final[tuple[Rule, ...]] = (
    TENANT,
    IDEMPOTENCY_KEY,
    APPLICATION_ID,
    POSTING_ID,
    CRITERION_ID,
    SCORING_JOB_ID,
    CURSOR,
    EVENT_ID,
    EVENT_TYPE,
    LABEL_VALUE,
)


def rules_table(extra: Iterable[Rule] = ()) -> list[str]:
    """:data:`RULES` and ``extra`` (the events' data fields) as the rows of
    docs/security.md's input rules table (a test holds the page to them)."""
    rows = [
        "| identifier | sent in | length | characters |",
        "| --- | --- | --- | --- |",
    ]
    for rule in (*RULES, *extra):
        rows.append(
            f"| `{rule.name}` | {rule.sent_in} | 1–{rule.max_length} | "
            f"{rule.charset}: `{rule.pattern}` |"
        )
    return rows
