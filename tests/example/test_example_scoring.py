"""Scoring a candidate's text against criteria (pure functions, no HTTP)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.example.criteria import derive_criteria
from tollhouse.example.scoring import candidate_document, score_candidate

YEAR = 2025


@dataclass(frozen=True)
class Crit:
    id: str
    name: str
    description: str = ""
    weight: float = 0.5


def _score(criteria: list[Crit], resume: str) -> float:
    return score_candidate(criteria, resume, current_year=YEAR).score


def test_a_matching_resume_scores_higher_than_an_unrelated_one() -> None:
    criteria = [
        Crit(f"c{i}", d.name, d.description, d.weight)
        for i, d in enumerate(
            derive_criteria(
                "Backend Engineer",
                "Experience with Python, PostgreSQL and Kubernetes. 5+ years required.",
            )
        )
    ]
    good = "Backend engineer since 2017: Python services on PostgreSQL, run on Kubernetes."
    bad = "Pastry chef. Croissants, sourdough and wedding cakes."
    assert _score(criteria, good) > _score(criteria, bad)
    assert _score(criteria, bad) < 20


def test_aliases_match_the_vocabulary_skill() -> None:
    result = score_candidate([Crit("k", "Kubernetes")], "Ran k8s clusters.", current_year=YEAR)
    assert result.breakdown[0].score > 50
    assert result.breakdown[0].evidence == ("k8s",)


def test_more_mentions_score_higher_up_to_three() -> None:
    once = _score([Crit("p", "Python")], "Python.")
    thrice = _score([Crit("p", "Python")], "Python. Python. Python.")
    more = _score([Crit("p", "Python")], "Python. " * 10)
    assert once < thrice == more == 100.0


def test_a_multi_word_criterion_gets_half_credit_for_scattered_words() -> None:
    criteria = [Crit("r", "Backend engineer")]
    together = _score(criteria, "Backend engineer at Acme.")
    apart = _score(criteria, "Engineer at Acme, mostly backend.")
    assert together > apart > 0


def test_years_come_from_statements_or_date_ranges() -> None:
    criteria = [Crit("y", "5+ years of experience")]
    assert _score(criteria, "I have 7 years of experience.") == 100.0
    assert _score(criteria, "Acme 2022 - present") == 60.0  # 3 of 5 years
    result = score_candidate(
        criteria, "Acme, 2015 \u2013 2019. Initech 2019-present.", current_year=YEAR
    )
    assert result.score == 100.0
    assert "2015 \u2013 2019" in result.breakdown[0].evidence


def test_overall_is_the_weighted_mean() -> None:
    criteria = [Crit("a", "Python", weight=0.75), Crit("b", "Haskell", weight=0.25)]
    result = score_candidate(criteria, "Python Python Python", current_year=YEAR)
    assert [b.score for b in result.breakdown] == [100.0, 0.0]
    assert result.score == 75.0


def test_description_words_add_coverage_but_other_criteria_names_do_not() -> None:
    criteria = [
        Crit("a", "Python", 'The posting says: "Python services with Redis"'),
        Crit("b", "Redis"),
    ]
    result = score_candidate(criteria, "Python. Redis.", current_year=YEAR)
    python = result.breakdown[0]
    assert "Redis" not in python.evidence  # scored by its own criterion
    with_services = score_candidate(criteria, "Python services.", current_year=YEAR)
    assert with_services.breakdown[0].score > python.score


def test_the_candidates_name_and_contact_details_are_not_scored() -> None:
    document = candidate_document(
        {
            "name": "Ruby Go",
            "email": "ruby@example.com",
            "linkedinUrl": "https://example.com/ruby",
            "resume": "Accountant.",
            "skills": ["Excel", {"tool": "SQL", "id": "ruby"}],
        }
    )
    assert "Ruby" not in document
    assert "ruby" not in document
    assert "Excel" in document
    assert "SQL" in document
    assert document.startswith("Accountant.")


def test_no_criteria_scores_zero() -> None:
    assert score_candidate([], "anything", current_year=YEAR).score == 0.0


@settings(max_examples=60, deadline=None)
@given(resume=st.text(max_size=800), names=st.lists(st.text(max_size=30), max_size=6))
def test_scores_stay_between_0_and_100(resume: str, names: list[str]) -> None:
    criteria = [Crit(str(i), name, name, 0.1 + i / 10) for i, name in enumerate(names)]
    result = score_candidate(criteria, resume, current_year=YEAR)
    assert 0.0 <= result.score <= 100.0
    assert all(0.0 <= b.score <= 100.0 for b in result.breakdown)
    assert len(result.breakdown) == len(criteria)
