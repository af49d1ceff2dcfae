"""Request bodies of the example upstream, checked and turned into plain values.

Bodies are read by :mod:`tollhouse.json_reader` (400: not JSON, too deep, not an object);
every check here raises :class:`~tollhouse.errors.ValidationFailed` (422) with a message
that names the field by its path, e.g. ``field "candidate.resume" is required``, or, for
an id in the path, :class:`~tollhouse.errors.BadRequest` (400) naming the parameter.
Identifiers follow their rules in :mod:`tollhouse.identifiers`. Unknown fields are ignored. ``null``
counts as missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tollhouse.errors import BadRequest, ValidationFailed
from tollhouse.identifiers import (
    APPLICATION_ID,
    CRITERION_ID,
    POSTING_ID,
    SCORING_JOB_ID,
    Rule,
    blank,
)
from tollhouse.json_reader import json_type as _json_type

#: Longest accepted texts, in characters; far above real postings and resumes, low enough
#: that one request cannot hold the process's memory or CPU for long. Ids follow their
#: rules (:mod:`tollhouse.identifiers`) and are stored in ``VARCHAR(MAX_ID_CHARS)``
#: columns (:mod:`tollhouse.example.schema`).
MAX_ID_CHARS = POSTING_ID.max_length
MAX_TITLE_CHARS = 500
MAX_DESCRIPTION_CHARS = 100_000
MAX_RESUME_CHARS = 200_000
MAX_NAME_CHARS = 200
MAX_CRITERION_DESCRIPTION_CHARS = 5_000
#: Items a batch may hold.
MAX_BATCH_ITEMS = 100
#: Criteria changed by one PATCH.
MAX_PATCH_ITEMS = 100
#: Default weight of a criterion added by hand.
DEFAULT_WEIGHT = 0.1

_MISSING = object()


@dataclass(frozen=True, slots=True)
class JobPosting:
    """Body of ``POST /v1/criteria/generate`` and ``/questions``."""

    job_id: str
    title: str
    description: str


def job_posting(body: dict[str, Any]) -> JobPosting:
    """Check a generate/questions body: ``jobId``, ``title``, ``description``."""
    return JobPosting(
        job_id=id_field(body, "jobId", "jobId", POSTING_ID),
        title=text_field(body, "title", "title", MAX_TITLE_CHARS),
        description=text_field(body, "description", "description", MAX_DESCRIPTION_CHARS),
    )


@dataclass(frozen=True, slots=True)
class NewCriterion:
    """Body of ``POST /v1/jobs/{jobId}/criteria``."""

    name: str
    description: str
    weight: float


def new_criterion(body: dict[str, Any]) -> NewCriterion:
    """Check a new criterion: ``name`` required; ``description`` and ``weight`` optional."""
    name = text_field(body, "name", "name", MAX_NAME_CHARS)
    description = optional_text(body, "description", "description", MAX_CRITERION_DESCRIPTION_CHARS)
    weight = _weight(body, "weight", "weight")
    return NewCriterion(
        name=name,
        description=description if description is not None else "",
        weight=weight if weight is not None else DEFAULT_WEIGHT,
    )


@dataclass(frozen=True, slots=True)
class CriterionChanges:
    """Fields a PATCH changes; None leaves a field as it is."""

    name: str | None = None
    description: str | None = None
    weight: float | None = None


def criterion_changes(body: dict[str, Any], prefix: str = "") -> CriterionChanges:
    """Check the changeable fields of a criterion (``name``, ``description``, ``weight``).

    Args:
        body: the object holding the fields.
        prefix: path of that object in the request, e.g. ``"criteria[2]."``.
    """
    name = optional_text(body, "name", prefix + "name", MAX_NAME_CHARS)
    if name is not None and blank(name):
        raise ValidationFailed(f'field "{prefix}name" must not be empty')
    return CriterionChanges(
        name=name,
        description=optional_text(
            body, "description", prefix + "description", MAX_CRITERION_DESCRIPTION_CHARS
        ),
        weight=_weight(body, "weight", prefix + "weight"),
    )


def criteria_patch(body: dict[str, Any]) -> list[tuple[str, CriterionChanges]]:
    """Check ``{"criteria": [{"id", ...changes}]}``; every item is checked before any applies."""
    items = body.get("criteria")
    if items is None:
        raise ValidationFailed('field "criteria" is required')
    if not isinstance(items, list):
        raise ValidationFailed(f'field "criteria" must be an array, not {_json_type(items)}')
    if len(items) > MAX_PATCH_ITEMS:
        raise ValidationFailed(f'field "criteria" must hold at most {MAX_PATCH_ITEMS} items')
    changes: list[tuple[str, CriterionChanges]] = []
    for i, item in enumerate(items):
        prefix = f"criteria[{i}]."
        if not isinstance(item, dict):
            raise ValidationFailed(
                f'field "criteria[{i}]" must be an object, not {_json_type(item)}'
            )
        criterion_id = id_field(item, "id", prefix + "id", CRITERION_ID)
        changes.append((criterion_id, criterion_changes(item, prefix)))
    return changes


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Body of ``POST /v1/score`` (and each item of a batch)."""

    application_id: str
    job_id: str
    candidate: dict[str, Any]
    """The candidate object as sent; ``name`` and ``resume`` are checked strings."""


def score_request(body: dict[str, Any]) -> ScoreRequest:
    """Check a score body: ``applicationId``, ``jobId``, ``candidate.{name,resume}``."""
    application_id = id_field(body, "applicationId", "applicationId", APPLICATION_ID)
    job_id = id_field(body, "jobId", "jobId", POSTING_ID)
    candidate = body.get("candidate")
    if candidate is None:
        raise ValidationFailed('field "candidate" is required')
    if not isinstance(candidate, dict):
        raise ValidationFailed(f'field "candidate" must be an object, not {_json_type(candidate)}')
    text_field(candidate, "name", "candidate.name", MAX_NAME_CHARS)
    text_field(candidate, "resume", "candidate.resume", MAX_RESUME_CHARS)
    return ScoreRequest(application_id, job_id, candidate)


def batch_items(body: dict[str, Any]) -> list[Any]:
    """Check a batch body's ``items``: an array of 1 to 100 entries (each checked later)."""
    items = body.get("items")
    if items is None:
        raise ValidationFailed('field "items" is required')
    if not isinstance(items, list):
        raise ValidationFailed(f'field "items" must be an array, not {_json_type(items)}')
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ValidationFailed(
            f'field "items" must hold 1 to {MAX_BATCH_ITEMS} score requests, not {len(items)}'
        )
    return items


#: The rule of each path parameter the example reads.
PATH_RULES: dict[str, Rule] = {
    "jobId": POSTING_ID,
    "criterionId": CRITERION_ID,
    "applicationId": APPLICATION_ID,
    "scoringJobId": SCORING_JOB_ID,
}


def path_id(value: str, name: str) -> str:
    """Check an id taken from the URL path against its rule (:data:`PATH_RULES`).

    Raises:
        BadRequest: naming the path parameter (400, as every identifier outside a body).
    """
    problem = PATH_RULES[name].problem(value)
    if problem is not None:
        # A percent-encoded NUL (%00) arrives decoded: refused here like any control.
        raise BadRequest(f'path parameter "{name}" {problem}')
    return value


def id_field(body: dict[str, Any], key: str, path: str, rule: Rule) -> str:
    """A required identifier field, checked against its rule.

    Raises:
        ValidationFailed: missing, null, not a string, or against the rule (naming ``path``).
    """
    value = body.get(key)
    if value is None:
        raise ValidationFailed(f'field "{path}" is required')
    if not isinstance(value, str):
        raise ValidationFailed(f'field "{path}" must be a string, not {_json_type(value)}')
    problem = rule.problem(value)
    if problem is not None:
        raise ValidationFailed(f'field "{path}" {problem}')
    return value


def text_field(body: dict[str, Any], key: str, path: str, max_chars: int) -> str:
    """A required, non-blank string field.

    Args:
        body: the object holding the field.
        key: the field's key in ``body``.
        path: the field's path in the request, for the message (``candidate.resume``).
        max_chars: longest accepted value.

    Raises:
        ValidationFailed: missing, null, not a string, blank, or too long.
    """
    value = optional_text(body, key, path, max_chars)
    if value is None:
        raise ValidationFailed(f'field "{path}" is required')
    if blank(value):
        raise ValidationFailed(f'field "{path}" must not be empty')
    return value


def optional_text(body: dict[str, Any], key: str, path: str, max_chars: int) -> str | None:
    """An optional string field: None when missing or null.

    Raises:
        ValidationFailed: present but not a string, too long, or holding a NUL character.
    """
    value = body.get(key, _MISSING)
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f'field "{path}" must be a string, not {_json_type(value)}')
    if len(value) > max_chars:
        raise ValidationFailed(f'field "{path}" must be at most {max_chars} characters')
    if "\x00" in value:
        # PostgreSQL text cannot hold NUL: refuse it here rather than fail at the store.
        raise ValidationFailed(f'field "{path}" must not contain NUL (\\u0000) characters')
    return value


def _weight(body: dict[str, Any], key: str, path: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python, but `true` is no weight.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationFailed(f'field "{path}" must be a number, not {_json_type(value)}')
    weight = float(value)
    if not (math.isfinite(weight) and 0 < weight <= 1):
        raise ValidationFailed(f'field "{path}" must be greater than 0 and at most 1')
    return weight
