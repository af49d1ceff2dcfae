"""Scoring a candidate against a job's criteria (pure functions).

Each criterion is scored 0-100 from its name and description alone, so criteria added or
edited by hand score the same way as generated ones:

* A **years** criterion ("5+ years of experience") compares the years the resume states
  ("7 years", or the span of ranges such as "2016 - present") with the years asked for.
* Any other criterion's **name** is split into concepts ("Python and Django" → two). A concept
  that names a vocabulary skill matches any of its aliases ("Kubernetes" ↔ "k8s"); otherwise
  it matches its own words. A concept found as a whole phrase earns full credit; a
  multi-word concept whose words all appear but apart earns half.
* The **description**'s content words (minus the name's and the generic ones) add coverage.
* Repeated mentions add depth, up to three.

``score = 65% name coverage + 20% description coverage + 15% depth``; the candidate's score is
the weighted mean over criteria (weights need not sum to 1: hand edits may leave them off).
Evidence lists the resume's own words that matched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tollhouse.example.text import Token, TokenIndex, is_content, skill_named, tokenize

_NAME_SHARE = 0.65
_DESCRIPTION_SHARE = 0.20
_DEPTH_SHARE = 0.15
_PARTIAL_CREDIT = 0.5
_FULL_DEPTH_MENTIONS = 3
_MAX_DESCRIPTION_TERMS = 12
_MAX_EVIDENCE = 5
_MAX_EVIDENCE_CHARS = 80

_YEARS_NAME = re.compile(r"^\s*(\d{1,2})\s*\+?\s*(?:years?|yrs?)\b", re.IGNORECASE)
_YEARS_STATED = re.compile(
    r"\b(\d{1,2})\s*\+?\s*(?:-\s*\d{1,2}\s*)?(?:years?|yrs?)\b", re.IGNORECASE
)
_YEAR_RANGE = re.compile(
    r"\b((?:19|20)\d{2})\s*(?:-|\u2013|\u2014|to|until)\s*((?:19|20)\d{2}|present|current|now|today)\b",
    re.IGNORECASE,
)
_MAX_CAREER_YEARS = 60
_CONCEPT_SPLIT = re.compile(r",|/|&|:|;|\band\b|\bor\b", re.IGNORECASE)

# Candidate fields that identify the person rather than describe them; a candidate called
# "Ruby" should not match a Ruby criterion.
_IDENTITY_FIELDS = frozenset({"name", "firstname", "lastname", "fullname", "email", "phone", "id"})
_MAX_DOCUMENT_CHARS = 400_000
_MAX_FIELD_DEPTH = 4


class CriterionLike(Protocol):
    """What scoring needs of a criterion (the store's criteria have it)."""

    @property
    def id(self) -> str:
        """The criterion's id, echoed in the breakdown."""
        ...

    @property
    def name(self) -> str:
        """Short name; the main thing matched."""
        ...

    @property
    def description(self) -> str:
        """Longer text; its content words add coverage."""
        ...

    @property
    def weight(self) -> float:
        """Relative weight in the candidate's score."""
        ...


@dataclass(frozen=True, slots=True)
class CriterionScore:
    """How a candidate did on one criterion."""

    criterion_id: str
    name: str
    weight: float
    score: float
    """0-100, one decimal."""
    evidence: tuple[str, ...]
    """The resume's own words that matched, first mention first."""


@dataclass(frozen=True, slots=True)
class CandidateScore:
    """A candidate's score against all of a job's criteria."""

    score: float
    """Weighted mean of the criteria's scores, 0-100, one decimal."""
    breakdown: tuple[CriterionScore, ...]
    """One entry per criterion, in the criteria's order."""


def candidate_document(candidate: Mapping[str, Any]) -> str:
    """The text a candidate is scored on: the resume, then every other descriptive string.

    Strings nested in lists and objects (``"skills": ["Go", "SQL"]``) count; fields that
    identify the person (name, email, phone, ids, URLs) do not.

    Args:
        candidate: the request's ``candidate`` object.

    Returns:
        One text, parts separated by blank lines, at most 400,000 characters.
    """
    parts: list[str] = []
    resume = candidate.get("resume")
    if isinstance(resume, str):
        parts.append(resume)
    for key, value in candidate.items():
        if key != "resume" and not _is_identity(key):
            _collect_strings(value, parts, 1)
    return "\n\n".join(parts)[:_MAX_DOCUMENT_CHARS]


def _is_identity(key: str) -> bool:
    folded = key.casefold().replace("_", "")
    return folded in _IDENTITY_FIELDS or folded.endswith("url") or key.endswith(("Id", "_id", "ID"))


def _collect_strings(value: object, parts: list[str], depth: int) -> None:
    if isinstance(value, str):
        parts.append(value)
    elif depth >= _MAX_FIELD_DEPTH:
        return
    elif isinstance(value, list):
        for item in value:
            _collect_strings(item, parts, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and not _is_identity(key):
                _collect_strings(item, parts, depth + 1)


def score_candidate(
    criteria: Sequence[CriterionLike], document: str, *, current_year: int
) -> CandidateScore:
    """Score a candidate's text against a job's criteria.

    Args:
        criteria: the job's criteria (at least one for a meaningful score).
        document: the candidate's text (:func:`candidate_document`).
        current_year: the year that "present" in "2019 - present" stands for.

    Returns:
        The overall score and one breakdown entry per criterion.
    """
    resume = _Resume(document)
    concepts = [_concepts(criterion.name) for criterion in criteria]
    # A description often quotes a sentence that names other criteria too ("PostgreSQL, Redis
    # and Kubernetes"); those words are scored by their own criteria, not again here.
    named = {s for found in concepts for phrases in found for phrase in phrases for s in phrase}
    breakdown: list[CriterionScore] = []
    weighted = 0.0
    total_weight = 0.0
    for criterion, criterion_concepts in zip(criteria, concepts, strict=True):
        years = _YEARS_NAME.match(criterion.name)
        if years:
            value, evidence = _score_years(int(years.group(1)), resume, current_year)
        else:
            value, evidence = _score_terms(criterion_concepts, criterion.description, named, resume)
        weight = max(float(criterion.weight), 0.0)
        weighted += weight * value
        total_weight += weight
        breakdown.append(
            CriterionScore(
                criterion.id, criterion.name, criterion.weight, round(value, 1), evidence
            )
        )
    overall = weighted / total_weight if total_weight > 0 else 0.0
    return CandidateScore(round(min(max(overall, 0.0), 100.0), 1), tuple(breakdown))


class _Resume:
    """A candidate's text, tokenized and indexed once for all criteria."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = TokenIndex(self.tokens)

    def surface(self, start: int, length: int) -> str:
        """The text of ``length`` tokens from ``start``, as the candidate wrote it."""
        first: Token = self.tokens[start]
        last: Token = self.tokens[start + length - 1]
        return _clip(self.text[first.start : last.end])


class _Evidence:
    """Matched phrases, unique and in the order found, at most five."""

    def __init__(self) -> None:
        self._items: dict[str, str] = {}

    def add(self, phrase: str) -> None:
        if len(self._items) < _MAX_EVIDENCE:
            self._items.setdefault(phrase.casefold(), phrase)

    def as_tuple(self) -> tuple[str, ...]:
        return tuple(self._items.values())


def _concepts(name: str) -> list[tuple[tuple[str, ...], ...]]:
    """The things a criterion's name asks for, each as alternative phrases (stems)."""
    whole = skill_named(name)
    if whole is not None:
        return [whole.phrases]
    concepts: list[tuple[tuple[str, ...], ...]] = []
    for part in _CONCEPT_SPLIT.split(name):
        skill = skill_named(part) if part.strip() else None
        if skill is not None:
            concepts.append(skill.phrases)
            continue
        stems = tuple(token.stem for token in tokenize(part) if is_content(token.stem))
        if stems:
            concepts.append((stems,))
    return concepts


def _score_terms(
    concepts: Sequence[tuple[tuple[str, ...], ...]],
    description: str,
    named: set[str],
    resume: _Resume,
) -> tuple[float, tuple[str, ...]]:
    evidence = _Evidence()
    credits: list[float] = []
    depths: list[float] = []
    for alternatives in concepts:
        credit, mentions = 0.0, 0
        for phrase in alternatives:
            hits = resume.index.find(phrase)
            if hits:
                if not mentions:
                    evidence.add(resume.surface(hits[0], len(phrase)))
                credit = 1.0
                mentions += len(hits)
        if not credit:
            # Words of a multi-word concept present but apart: "Backend" here, "engineer"
            # there is weaker than "backend engineer", stronger than nothing.
            for phrase in alternatives:
                if len(phrase) < 2:
                    continue
                present = [s for s in phrase if resume.index.contains(s)]
                credit = max(credit, _PARTIAL_CREDIT * len(present) / len(phrase))
                for stem_ in present:
                    at = resume.index.first(stem_)
                    if at is not None:
                        evidence.add(resume.surface(at, 1))
        credits.append(credit)
        depths.append(min(mentions / _FULL_DEPTH_MENTIONS, 1.0))

    terms = list(
        dict.fromkeys(
            token.stem
            for token in tokenize(description)
            if is_content(token.stem) and token.stem not in named
        )
    )[:_MAX_DESCRIPTION_TERMS]
    matched = [s for s in terms if resume.index.contains(s)]
    for stem_ in matched:
        at = resume.index.first(stem_)
        if at is not None:
            evidence.add(resume.surface(at, 1))

    if not concepts:
        # A name of generic words only ("Experience"): the description is all there is.
        value = 100.0 * len(matched) / len(terms) if terms else 0.0
        return value, evidence.as_tuple()
    name_coverage = sum(credits) / len(credits)
    description_coverage = len(matched) / len(terms) if terms else name_coverage
    depth = sum(depths) / len(depths)
    value = 100.0 * (
        _NAME_SHARE * name_coverage
        + _DESCRIPTION_SHARE * description_coverage
        + _DEPTH_SHARE * depth
    )
    return value, evidence.as_tuple()


def _score_years(
    required: int, resume: _Resume, current_year: int
) -> tuple[float, tuple[str, ...]]:
    evidence = _Evidence()
    stated = 0
    for match in _YEARS_STATED.finditer(resume.text):
        years = int(match.group(1))
        if years > stated:
            stated = years
            evidence.add(_clip(match.group()))
    starts: list[int] = []
    ends: list[int] = []
    for match in _YEAR_RANGE.finditer(resume.text):
        start = int(match.group(1))
        end_text = match.group(2)
        end = int(end_text) if end_text.isdigit() else current_year
        end = min(end, current_year)
        if start <= end:
            starts.append(start)
            ends.append(end)
            evidence.add(_clip(match.group()))
    # The span from the first start to the last end; gaps between jobs are not subtracted,
    # which is the generous reading a recruiter's first pass makes too.
    span = min(max(ends) - min(starts), _MAX_CAREER_YEARS) if starts else 0
    found = max(stated, span)
    value = 100.0 if required <= 0 else 100.0 * min(found / required, 1.0)
    return value, evidence.as_tuple()


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= _MAX_EVIDENCE_CHARS:
        return text
    return text[: _MAX_EVIDENCE_CHARS - 1].rstrip() + "\u2026"
