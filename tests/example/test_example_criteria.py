"""Criteria and question derivation (pure functions, no HTTP)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tollhouse.example.criteria import (
    MAX_CRITERIA,
    MIN_CRITERIA,
    derive_criteria,
    derive_questions,
)

TITLE = "Senior Backend Engineer"
POSTING = """We are looking for a backend engineer to build our scoring platform.

Requirements:
- 5+ years of experience building backend services in Python
- Strong experience with PostgreSQL, Redis and Kubernetes
- Experience with distributed systems and event-driven architecture

Nice to have:
- Familiarity with Terraform
"""


def _hundredths(weights: list[float]) -> list[int]:
    return [round(w * 100) for w in weights]


def test_finds_the_skills_years_and_role_of_a_posting() -> None:
    names = [c.name for c in derive_criteria(TITLE, POSTING)]
    for expected in ("Python", "PostgreSQL", "Kubernetes", "5+ years of experience"):
        assert expected in names
    assert "Role fit: Backend Engineer" in names
    assert "Event-driven architecture" in names  # a phrase the vocabulary does not know


def test_same_input_gives_same_output() -> None:
    assert derive_criteria(TITLE, POSTING) == derive_criteria(TITLE, POSTING)


def test_weights_are_hundredths_that_sum_to_one_heaviest_first() -> None:
    criteria = derive_criteria(TITLE, POSTING)
    weights = [c.weight for c in criteria]
    assert MIN_CRITERIA <= len(criteria) <= MAX_CRITERIA
    assert sum(_hundredths(weights)) == 100
    assert abs(sum(weights) - 1.0) < 1e-9
    assert weights == sorted(weights, reverse=True)


def test_required_skills_outweigh_nice_to_haves() -> None:
    posting = (
        "Requirements:\n- You must have strong Python.\n- Kubernetes is required.\n"
        "Nice to have:\n- Terraform\n- Kafka\n- Figma\n- Airflow\n- Snowflake\n- Django\n"
    )
    weight = {c.name: c.weight for c in derive_criteria("Platform Engineer", posting)}
    assert weight["Python"] > weight.get("Terraform", 0.0)
    assert weight["Kubernetes"] > weight.get("Kafka", 0.0)


def test_a_skill_in_the_title_weighs_more() -> None:
    posting = "Experience with Python. Experience with Rust. Experience with SQL."
    plain = {c.name: c.weight for c in derive_criteria("Engineer", posting)}
    titled = {c.name: c.weight for c in derive_criteria("Rust Engineer", posting)}
    assert titled["Rust"] > plain["Rust"]


def test_descriptions_quote_the_posting_and_say_how_much_it_is_wanted() -> None:
    by_name = {c.name: c for c in derive_criteria(TITLE, POSTING)}
    assert "(required)" in by_name["Kubernetes"].description
    assert "PostgreSQL, Redis and Kubernetes" in by_name["Kubernetes"].description


def test_a_posting_without_cues_is_padded_to_three() -> None:
    criteria = derive_criteria("Barista", "Make coffee.")
    assert len(criteria) == MIN_CRITERIA
    assert sum(_hundredths([c.weight for c in criteria])) == 100


def test_questions_follow_the_criteria() -> None:
    criteria = derive_criteria(TITLE, POSTING)
    questions = derive_questions(TITLE, criteria)
    assert [q.name for q in questions] == [c.name for c in criteria]
    assert [q.weight for q in questions] == [c.weight for c in criteria]
    assert all(q.text.endswith("?") for q in questions)
    role = next(q for q in questions if q.name.startswith("Role fit"))
    assert TITLE in role.text


@settings(max_examples=60, deadline=None)
@given(title=st.text(max_size=80), description=st.text(max_size=600))
def test_any_text_gives_three_to_eight_weighted_unique_criteria(
    title: str, description: str
) -> None:
    criteria = derive_criteria(title, description)
    assert MIN_CRITERIA <= len(criteria) <= MAX_CRITERIA
    hundredths = _hundredths([c.weight for c in criteria])
    assert sum(hundredths) == 100
    assert min(hundredths) >= 1
    assert len({c.name.casefold() for c in criteria}) == len(criteria)
    assert all(c.name for c in criteria)
    assert derive_criteria(title, description) == criteria


_POSTING_WORDS = (
    "Python Kubernetes experience with and or required, plus. Nice to have: 5+ years - "
    "Strong knowledge of distributed systems\n React SQL communication skills"
)
_WORDS = st.sampled_from(_POSTING_WORDS.split(" "))


@settings(max_examples=60, deadline=None)
@given(words=st.lists(_WORDS, max_size=60))
def test_posting_like_text_keeps_the_invariants(words: list[str]) -> None:
    criteria = derive_criteria("Engineer", " ".join(words))
    assert MIN_CRITERIA <= len(criteria) <= MAX_CRITERIA
    assert sum(_hundredths([c.weight for c in criteria])) == 100
