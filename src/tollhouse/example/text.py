"""Words of a job posting or a resume: tokens with their places, stems, and a skills vocabulary.

Both sides of the example upstream read text the same way: criteria derivation
(:mod:`tollhouse.example.criteria`) finds skills and requirement phrases in a posting, and
scoring (:mod:`tollhouse.example.scoring`) looks for the same stems in a resume. Keeping the
tokenizer, the stemmer and the vocabulary in one module is what makes a criterion derived from
"Kubernetes" match a resume that says "k8s".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# Letters and digits, keeping the symbols that are part of skill names (C++, C#) and inner
# dots or apostrophes (node.js, asp.net, bachelor's). Hyphens split on purpose, so that
# "problem-solving" and "problem solving" give the same stems.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9+#]*(?:['\u2019.][A-Za-z0-9+#]+)*")


def words(text: str) -> frozenset[str]:
    """The blank-separated words of ``text``, for word lists written as prose blocks."""
    return frozenset(text.split())


#: Words that carry no meaning of their own in a posting or a resume.
STOPWORDS: frozenset[str] = words(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each either etc
    e.g few for from further had has have having he her here hers herself him himself his how
    i i.e if in into is it its itself just me more most my myself no nor not of off on once
    only or other our ours ourselves out over own per same she should so some such than that
    the their theirs them themselves then there these they this those through to too under
    until up upon us very via was we were what when where which while who whom why will with
    within without would you your yours yourself yourselves who's what's let let's get gets
    """
)

#: Words common to every posting and resume ("strong experience", "required"): they say how
#: much of something is wanted, not what. Scoring ignores them so that a resume is not
#: rewarded for saying "experience" often.
GENERIC: frozenset[str] = words(
    """
    experience experienced year yr strong excellent good great solid proven deep ability able
    skill knowledge understanding familiarity familiar proficiency proficient expertise expert
    hand demonstrated demonstrable track record required requirement preferred plus
    bonus nice work working role candidate team job position company posting say fit relevant
    related field equivalent environment including like using use used new modern large scale
    high level based least minimum must should ideally well comfortable background responsible
    responsibility looking join ideal opportunity day week month one two three four five
    several many various other etc professional practical previous prior similar area across
    need needed want wanted degree bachelor master qualification
    """
)


@functools.lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """Reduce a word to the form both sides compare on.

    A deliberately light stemmer: lower case, no possessive, no plural. Words with digits or
    symbols (``k8s``, ``c++``, ``node.js``) are kept whole because they are names.

    Args:
        word: one token's text.

    Returns:
        The stem, e.g. ``"apis"`` → ``"api"``, ``"Bachelor's"`` → ``"bachelor"``.
    """
    w = word.lower().replace("\u2019", "'")
    if w.endswith("'s"):
        w = w[:-2]
    if not w.isalpha():
        return w
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


@dataclass(frozen=True, slots=True)
class Token:
    """One word of a text, with where it stands."""

    text: str
    """The word as written."""
    stem: str
    """What it is compared on (:func:`stem`)."""
    start: int
    """Offset of its first character in the text."""
    end: int
    """Offset just after its last character."""
    gap: str
    """The non-blank characters between the previous token and this one (``","``, ``"."``);
    tells where a list item or a clause ends."""


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens.

    Args:
        text: any text.

    Returns:
        The tokens in order.
    """
    tokens: list[Token] = []
    previous_end = 0
    for match in _TOKEN.finditer(text):
        start, end = match.span()
        between = text[previous_end:start]
        # Most gaps are one space; skip the split for them (this loop dominates scoring).
        gap = "" if between == " " else "".join(between.split())
        word = match.group()
        tokens.append(Token(word, stem(word), start, end, gap))
        previous_end = end
    return tokens


def is_content(token_stem: str) -> bool:
    """Whether a stem says something: not a stop word, not generic, not a bare number."""
    return (
        token_stem not in STOPWORDS
        and token_stem not in GENERIC
        and not token_stem.replace(".", "").isdigit()
    )


def phrase_of(text: str) -> tuple[str, ...]:
    """The stems of ``text`` in order, e.g. ``"REST APIs"`` → ``("rest", "api")``."""
    return tuple(token.stem for token in tokenize(text))


class TokenIndex:
    """Where each stem occurs in a token list, to find phrases without rescanning.

    Args:
        tokens: the tokens of a text.
        segments: for each token, the segment (sentence, bullet) it belongs to; a phrase never
            spans two segments. ``None`` treats the whole text as one segment.
    """

    def __init__(self, tokens: Sequence[Token], segments: Sequence[int] | None = None) -> None:
        self.tokens = tokens
        self.segments = segments
        self._positions: dict[str, list[int]] = {}
        for i, token in enumerate(tokens):
            self._positions.setdefault(token.stem, []).append(i)

    def contains(self, token_stem: str) -> bool:
        """Whether the stem occurs anywhere."""
        return token_stem in self._positions

    def first(self, token_stem: str) -> int | None:
        """Index of the first token with this stem, or None."""
        positions = self._positions.get(token_stem)
        return positions[0] if positions else None

    def find(self, phrase: Sequence[str]) -> list[int]:
        """Start indices of every occurrence of ``phrase`` (a sequence of stems)."""
        if not phrase:
            return []
        n = len(phrase)
        found: list[int] = []
        for i in self._positions.get(phrase[0], ()):
            end = i + n
            if end > len(self.tokens):
                break
            if all(self.tokens[i + k].stem == phrase[k] for k in range(1, n)) and (
                self.segments is None or self.segments[i] == self.segments[end - 1]
            ):
                found.append(i)
        return found


SkillKind = Literal["skill", "soft"]


@dataclass(frozen=True, slots=True)
class Skill:
    """A skill the vocabulary knows, with the ways a posting or a resume may write it."""

    name: str
    """Display name, e.g. ``"Kubernetes"``."""
    kind: SkillKind
    """``skill`` (a tool, language, field) or ``soft`` (communication, leadership)."""
    phrases: tuple[tuple[str, ...], ...]
    """Stemmed alternatives, e.g. ``(("kubernete",), ("k8s",))``."""


# (display name, kind, ways of writing it). Aliases that are also everyday words ("go",
# "rest", "lead", "node") are left out on purpose: a false match costs more than a miss,
# and the requirement-phrase extractor still picks such words up from "experience with Go".
_VOCABULARY: tuple[tuple[str, SkillKind, tuple[str, ...]], ...] = (
    ("Python", "skill", ("python",)),
    ("Java", "skill", ("java",)),
    ("JavaScript", "skill", ("javascript", "js", "ecmascript")),
    ("TypeScript", "skill", ("typescript",)),
    ("Go", "skill", ("golang",)),
    ("Rust", "skill", ("rust",)),
    ("C++", "skill", ("c++", "cpp")),
    ("C#", "skill", ("c#", "csharp")),
    (".NET", "skill", ("dotnet", "asp.net", ".net core")),
    ("Ruby", "skill", ("ruby", "rails", "ruby on rails")),
    ("PHP", "skill", ("php", "laravel")),
    ("Kotlin", "skill", ("kotlin",)),
    ("Swift", "skill", ("swift", "swiftui")),
    ("Scala", "skill", ("scala",)),
    ("SQL", "skill", ("sql",)),
    ("PostgreSQL", "skill", ("postgresql", "postgres")),
    ("MySQL", "skill", ("mysql",)),
    ("MongoDB", "skill", ("mongodb", "mongo")),
    ("Redis", "skill", ("redis",)),
    ("Elasticsearch", "skill", ("elasticsearch", "opensearch")),
    ("Kafka", "skill", ("kafka",)),
    ("Spark", "skill", ("spark", "pyspark")),
    ("Airflow", "skill", ("airflow",)),
    ("Snowflake", "skill", ("snowflake",)),
    ("Docker", "skill", ("docker", "containerization")),
    ("Kubernetes", "skill", ("kubernetes", "k8s")),
    ("Terraform", "skill", ("terraform", "infrastructure as code")),
    ("AWS", "skill", ("aws", "amazon web services")),
    ("GCP", "skill", ("gcp", "google cloud", "bigquery")),
    ("Azure", "skill", ("azure",)),
    ("Linux", "skill", ("linux", "unix")),
    ("Git", "skill", ("git", "github", "gitlab")),
    (
        "CI/CD",
        "skill",
        ("ci/cd", "continuous integration", "continuous delivery", "continuous deployment"),
    ),
    ("React", "skill", ("react", "react.js", "reactjs", "next.js")),
    ("Vue", "skill", ("vue", "vue.js", "vuejs")),
    ("Angular", "skill", ("angular",)),
    ("Node.js", "skill", ("node.js", "nodejs")),
    ("HTML/CSS", "skill", ("html", "css")),
    ("Django", "skill", ("django",)),
    ("Flask", "skill", ("flask",)),
    ("FastAPI", "skill", ("fastapi",)),
    ("Spring", "skill", ("spring boot", "spring framework")),
    ("REST APIs", "skill", ("restful", "rest api", "api design", "http api")),
    ("GraphQL", "skill", ("graphql",)),
    ("gRPC", "skill", ("grpc",)),
    ("Microservices", "skill", ("microservices", "microservice architecture")),
    ("Distributed systems", "skill", ("distributed systems",)),
    ("System design", "skill", ("system design", "software architecture")),
    ("Algorithms", "skill", ("algorithms", "data structures")),
    ("Machine learning", "skill", ("machine learning", "ml", "artificial intelligence", "ai")),
    ("Deep learning", "skill", ("deep learning", "neural networks")),
    ("PyTorch", "skill", ("pytorch",)),
    ("TensorFlow", "skill", ("tensorflow", "keras")),
    ("NLP", "skill", ("nlp", "natural language processing")),
    ("LLMs", "skill", ("llms", "large language models", "generative ai", "prompt engineering")),
    ("Computer vision", "skill", ("computer vision",)),
    ("Statistics", "skill", ("statistics", "statistical")),
    ("A/B testing", "skill", ("a/b testing", "a/b tests", "experimentation")),
    ("Data analysis", "skill", ("data analysis", "data analytics", "analytics")),
    ("Data engineering", "skill", ("data engineering", "etl", "data pipelines")),
    ("Excel", "skill", ("excel", "spreadsheets")),
    ("BI tools", "skill", ("tableau", "power bi", "looker")),
    (
        "Testing",
        "skill",
        ("testing", "test automation", "unit tests", "integration tests", "tdd", "qa"),
    ),
    ("Security", "skill", ("security", "cybersecurity", "owasp")),
    ("Observability", "skill", ("observability", "monitoring", "prometheus", "grafana")),
    ("Mobile development", "skill", ("ios", "android", "mobile development")),
    ("Figma", "skill", ("figma",)),
    ("UX design", "skill", ("ux", "user experience", "user research", "interaction design")),
    ("Product management", "skill", ("product management", "product roadmap", "roadmaps")),
    ("Project management", "skill", ("project management", "pmp")),
    ("Agile", "skill", ("agile", "scrum", "kanban")),
    ("SEO", "skill", ("seo", "search engine optimization")),
    ("Marketing", "skill", ("marketing", "campaigns")),
    ("Sales", "skill", ("sales", "business development")),
    ("Negotiation", "skill", ("negotiation", "negotiating")),
    ("Accounting", "skill", ("accounting", "gaap", "ifrs", "bookkeeping")),
    ("Financial analysis", "skill", ("financial analysis", "financial modeling", "forecasting")),
    ("Recruiting", "skill", ("recruiting", "recruitment", "talent acquisition", "sourcing")),
    ("Customer service", "skill", ("customer service", "customer support", "customer success")),
    ("Technical writing", "skill", ("technical writing", "copywriting", "documentation")),
    ("Patient care", "skill", ("patient care", "nursing", "clinical")),
    ("Communication", "soft", ("communication", "communicate", "communicator", "presentation")),
    (
        "Leadership",
        "soft",
        ("leadership", "mentoring", "mentor", "mentorship", "people management"),
    ),
    (
        "Collaboration",
        "soft",
        ("collaboration", "collaborate", "collaborative", "teamwork", "cross-functional"),
    ),
    (
        "Problem solving",
        "soft",
        ("problem solving", "problem solver", "troubleshooting", "analytical"),
    ),
    ("Ownership", "soft", ("ownership", "self-starter", "autonomy", "autonomous", "proactive")),
    ("Attention to detail", "soft", ("attention to detail", "detail-oriented", "meticulous")),
    ("Time management", "soft", ("time management", "prioritization", "prioritize")),
)

#: Every skill the vocabulary knows, in a stable order.
SKILLS: tuple[Skill, ...] = tuple(
    Skill(name, kind, tuple(dict.fromkeys(phrase_of(alias) for alias in aliases)))
    for name, kind, aliases in _VOCABULARY
)

#: First stem of a phrase → (phrase, skill), longest phrases first so "machine learning" wins
#: over a shorter alias that starts the same way.
PHRASE_INDEX: dict[str, list[tuple[tuple[str, ...], Skill]]] = {}
for _skill in SKILLS:
    for _phrase in _skill.phrases:
        PHRASE_INDEX.setdefault(_phrase[0], []).append((_phrase, _skill))
for _entries in PHRASE_INDEX.values():
    _entries.sort(key=lambda entry: -len(entry[0]))

_BY_NAME: dict[str, Skill] = {skill.name.casefold(): skill for skill in SKILLS}
_BY_PHRASE: dict[tuple[str, ...], Skill] = {
    phrase: skill for skill in SKILLS for phrase in skill.phrases
}


def skill_named(name: str) -> Skill | None:
    """The vocabulary's skill that ``name`` denotes, by display name or by any of its phrases.

    Args:
        name: a criterion name, e.g. ``"kubernetes"`` or ``"K8s"``.

    Returns:
        The skill, or None when the name is not a known skill.
    """
    return _BY_NAME.get(name.strip().casefold()) or _BY_PHRASE.get(phrase_of(name))


@dataclass(frozen=True, slots=True)
class SkillMatch:
    """One place where a vocabulary skill occurs in a token list."""

    skill: Skill
    start: int
    """Index of the first token."""
    end: int
    """Index just after the last token."""


def find_skills(tokens: Sequence[Token]) -> Iterable[SkillMatch]:
    """Every occurrence of a vocabulary skill in ``tokens``, left to right, not overlapping.

    Args:
        tokens: one segment's tokens (a phrase is matched only inside the list it is given).

    Yields:
        The matches.
    """
    i = 0
    while i < len(tokens):
        for phrase, skill in PHRASE_INDEX.get(tokens[i].stem, ()):
            end = i + len(phrase)
            if end <= len(tokens) and all(
                tokens[i + k].stem == phrase[k] for k in range(1, len(phrase))
            ):
                yield SkillMatch(skill, i, end)
                i = end
                break
        else:
            i += 1
