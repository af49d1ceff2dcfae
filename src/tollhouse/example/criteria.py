"""Deriving scoring criteria and interview questions from a job posting (pure functions).

The example upstream has no model behind it, so "generate" is plain text work, done the same
way every time:

1. The description is cut into segments: lines, bullets, then sentences. A short line ending
   in ``:`` (or a short line with no sentence punctuation) is a section header; a header such
   as "Nice to have" lowers the weight of the bullets below it, "Requirements" raises it.
2. Each segment is read for candidates: skills from the vocabulary
   (:data:`tollhouse.example.text.SKILLS`), requirement phrases ("experience with X, Y and Z",
   "X experience"), and the years asked for ("5+ years").
3. Each candidate earns points per mention: earlier segments count more, a sentence that says
   "must" or "required" counts more, one that says "a plus" or "nice to have" counts less, and
   a mention in the title counts most. The title itself gives a "Role fit" candidate.
4. The best eight (at least three, padded with general criteria) become the criteria; their
   weights are their points, shared out in hundredths that sum to exactly 1.00.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tollhouse.example.text import (
    GENERIC,
    STOPWORDS,
    Token,
    TokenIndex,
    find_skills,
    is_content,
    skill_named,
    tokenize,
    words,
)

#: Fewest and most criteria that generate returns.
MIN_CRITERIA = 3
MAX_CRITERIA = 8

CriterionKind = Literal["skill", "soft", "phrase", "years", "role", "general"]

# How much a mention counts, by where it is and what the sentence around it says.
_TITLE_POINTS = 3.0
_REQUIRED_FACTOR = 1.5
_PREFERRED_FACTOR = 0.6
_REQUIREMENTS_SECTION = 1.2
_ROLE_POINTS = 1.5
_YEARS_POINTS = 1.5
_FILLER_POINTS = 0.5

_REQUIRED_CUES = frozenset(
    {"must", "required", "require", "essential", "mandatory", "need", "strong", "expert", "deep"}
)
_PREFERRED_CUES = frozenset(
    {"preferred", "nice", "bonus", "plus", "ideally", "optional", "desirable", "advantage"}
)
_REQUIREMENT_HEADERS = frozenset(
    {"requirement", "required", "qualification", "must", "need", "skill", "expect", "looking"}
)

# "experience with X", "knowledge of X": the word before the connector says a requirement
# follows; the connector says where it starts.
_CUE_BEFORE = frozenset(
    {
        "experience",
        "expertise",
        "proficiency",
        "proficient",
        "fluency",
        "fluent",
        "familiarity",
        "familiar",
        "knowledge",
        "background",
        "skilled",
        "competence",
        "competency",
        "comfortable",
        "understanding",
        "degree",
        "expert",
    }
)
_CONNECTORS = frozenset({"with", "in", "of", "using"})
# "Terraform experience", "communication skills": the requirement comes before the cue.
_CUE_AFTER = frozenset({"experience", "skill", "expertise", "background", "knowledge"})
_LIST_WORDS = frozenset({"and", "or"})
_CLAUSE_BREAK = re.compile(r"[.;:()!?\[\]]")
_LIST_BREAK = re.compile(r"[,/&]")
_MAX_PHRASE_TOKENS = 3
_MAX_LIST_SCAN = 16

_YEARS = re.compile(r"\b(\d{1,2})\s*\+?\s*(?:-\s*\d{1,2}\s*)?(?:years?|yrs?)\b", re.IGNORECASE)
_MAX_YEARS = 40

_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u00b7\u25aa\u2023\u25e6]|\d{1,2}[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
_HEADER_MAX_TOKENS = 5

# Title words that say how senior or how employed, not what the job is.
_TITLE_NOISE = words(
    """
    senior sr junior jr lead staff principal head chief intern internship i ii iii iv v mid
    level entry associate remote hybrid onsite site contract contractor full part time
    temporary freelance m f d x w
    """
)

# Padding when a posting yields fewer than three criteria; vocabulary names, so scoring
# expands their aliases like any other skill.
_FILLERS = ("Communication", "Problem solving", "Collaboration")

# One-word vocabulary names that are ordinary words, not product names: lower case
# mid-sentence ("experience with statistics", but "experience with Python").
_COMMON_NOUNS = words(
    """
    Statistics Testing Security Marketing Sales Negotiation Accounting Recruiting
    Observability Algorithms Microservices Communication Leadership Collaboration Ownership
    """
)

_SNIPPET_CHARS = 140
_MAX_NAME_CHARS = 60

_DESCRIPTIONS: dict[str, str] = {
    "Communication": "Explains work clearly in writing and in conversation.",
    "Problem solving": "Breaks down unfamiliar problems and works them through to a fix.",
    "Collaboration": "Works well with others, across teams and disciplines.",
    "Leadership": "Leads, mentors and grows the people around them.",
    "Ownership": "Takes responsibility for outcomes without being asked.",
    "Attention to detail": "Gets the details right and catches mistakes early.",
    "Time management": "Prioritises well and meets commitments.",
}

_QUESTIONS: dict[str, str] = {
    "Communication": (
        "Describe a time you explained something complex to someone without your background. "
        "How did you check that they understood?"
    ),
    "Problem solving": (
        "Walk us through a hard problem you solved recently: how you broke it down, what you "
        "tried first, and what finally worked."
    ),
    "Collaboration": (
        "Tell us about a project where you worked closely with another team. How did you "
        "handle a disagreement along the way?"
    ),
    "Leadership": (
        "Tell us about a time you led people through a difficult stretch. What did you do, and "
        "what changed because of it?"
    ),
    "Ownership": (
        "Describe something you took on that nobody asked you to. Why, and how did it turn out?"
    ),
    "Attention to detail": (
        "Tell us about a mistake you caught before it shipped. How did you notice it?"
    ),
    "Time management": (
        "Describe a week when you had more to do than time to do it. What did you drop, and why?"
    ),
    "Customer service": (
        "Tell us about a difficult customer conversation. What happened, and how did you bring "
        "it to a good end?"
    ),
}


@dataclass(frozen=True, slots=True)
class DerivedCriterion:
    """One criterion derived from a posting (no id: ids depend on the org and the job)."""

    name: str
    """Short name, e.g. ``"Kubernetes"`` or ``"5+ years of experience"``."""
    description: str
    """What the criterion asks for, quoting the posting where it came from."""
    weight: float
    """Share of the total score, in hundredths; all weights of a posting sum to 1.00."""
    kind: CriterionKind
    """Where the criterion came from; picks the interview question's template."""


@dataclass(frozen=True, slots=True)
class DerivedQuestion:
    """One interview question, derived from one criterion."""

    name: str
    """Short label: the criterion's name."""
    text: str
    """The question to ask."""
    weight: float
    """The criterion's weight."""


@dataclass(frozen=True, slots=True)
class _Segment:
    text: str
    tokens: list[Token]
    factor: float
    """How much a mention here counts: position x emphasis."""
    emphasis: float
    """What the section and the sentence say: above 1 required, below 1 nice to have."""


@dataclass(slots=True)
class _Candidate:
    name: str
    kind: CriterionKind
    order: tuple[int, int]
    """(segment, token) of the first mention; the title is segment -1. Breaks ties."""
    points: float = 0.0
    snippet: str = ""
    strongest: float = 0.0
    """Highest emphasis of any mention; says whether the posting requires it."""
    phrases: list[tuple[str, ...]] = field(default_factory=list)

    def mention(self, points: float, snippet: str, emphasis: float = 1.0) -> None:
        self.points += points
        self.strongest = max(self.strongest, emphasis)
        if not self.snippet:
            self.snippet = snippet


def derive_criteria(title: str, description: str) -> list[DerivedCriterion]:
    """Derive 3 to 8 weighted criteria from a job posting; same input, same output.

    Args:
        title: the job title, e.g. ``"Senior Backend Engineer"``.
        description: the posting's text; lines, bullets and sentences are all understood.

    Returns:
        The criteria, heaviest first; weights are multiples of 0.01 summing to 1.00.
    """
    segments = _segments(description)
    title_tokens = tokenize(title)
    candidates: dict[str, _Candidate] = {}

    def candidate(key: str, name: str, kind: CriterionKind, order: tuple[int, int]) -> _Candidate:
        found = candidates.get(key)
        if found is None:
            found = candidates[key] = _Candidate(name, kind, order)
        return found

    # Vocabulary skills, counted where they occur.
    covered: list[set[int]] = []
    for s, segment in enumerate(segments):
        taken: set[int] = set()
        for match in find_skills(segment.tokens):
            key = "skill:" + match.skill.name
            kind: CriterionKind = "soft" if match.skill.kind == "soft" else "skill"
            candidate(key, match.skill.name, kind, (s, match.start)).mention(
                segment.factor, segment.text, segment.emphasis
            )
            taken.update(range(match.start, match.end))
        covered.append(taken)

    # Requirement phrases: found where a cue introduces them, then counted everywhere.
    for s, segment in enumerate(segments):
        for start, end in _requirement_phrases(segment.tokens):
            if covered[s].intersection(range(start, end)):
                continue  # a vocabulary skill already stands for it
            span = segment.tokens[start:end]
            phrase = tuple(token.stem for token in span)
            name = _clip(segment.text[span[0].start : span[-1].end])
            known = skill_named(name)
            if known is not None:
                continue
            key = "phrase:" + " ".join(phrase)
            if key not in candidates:
                found = candidate(key, name[:1].upper() + name[1:], "phrase", (s, start))
                found.phrases.append(phrase)
    _count_phrases(candidates, segments)

    # Years of experience: one criterion, at the most the posting asks for.
    # Counted once, at its strongest mention: "3+ years of X. 2+ years of Y." is one ask
    # about seniority, not two.
    years_asked, years_factor, years_at = 0, 0.0, (0, 0)
    for s, segment in enumerate(segments):
        for stated in _YEARS.finditer(segment.text):
            years = int(stated.group(1))
            if 0 < years <= _MAX_YEARS:
                if not years_asked:
                    years_at = (s, 0)
                years_asked = max(years_asked, years)
                years_factor = max(years_factor, segment.factor)
    if years_asked:
        found = candidate("years", f"{years_asked}+ years of experience", "years", years_at)
        found.mention(_YEARS_POINTS * years_factor, "")

    # The title: what it names counts most, and the role itself is a criterion.
    for match in find_skills(title_tokens):
        kind = "soft" if match.skill.kind == "soft" else "skill"
        found = candidate("skill:" + match.skill.name, match.skill.name, kind, (-1, match.start))
        found.order = min(found.order, (-1, match.start))
        found.mention(_TITLE_POINTS, "")
    title_index = TokenIndex(title_tokens)
    for found in candidates.values():
        if found.kind == "phrase" and any(title_index.find(p) for p in found.phrases):
            found.order = (-1, 0)
            found.mention(_TITLE_POINTS, "")
    role = _role_name(title_tokens, title)
    if role:
        candidate("role", f"Role fit: {role}", "role", (-1, 0)).mention(_ROLE_POINTS, "")

    if len(candidates) < MIN_CRITERIA:
        _add_frequent_words(candidates, segments)
    for filler in _FILLERS:
        if len(candidates) >= MIN_CRITERIA:
            break
        candidate("skill:" + filler, filler, "soft", (1 << 30, 0)).mention(_FILLER_POINTS, "")

    ranked = sorted(
        candidates.values(), key=lambda c: (-round(c.points, 6), c.order, c.name.casefold())
    )
    chosen = _unique_names(ranked)[:MAX_CRITERIA]
    hundredths = _share_hundredths([c.points for c in chosen])
    return [
        DerivedCriterion(c.name, _describe(c, title), h / 100, c.kind)
        for c, h in zip(chosen, hundredths, strict=True)
    ]


def derive_questions(title: str, criteria: Sequence[DerivedCriterion]) -> list[DerivedQuestion]:
    """One interview question per criterion, in the criteria's order.

    Args:
        title: the job title, used by the role-fit question.
        criteria: what :func:`derive_criteria` returned for the posting.

    Returns:
        The questions; each carries its criterion's name and weight.
    """
    questions: list[DerivedQuestion] = []
    for criterion in criteria:
        text = _QUESTIONS.get(criterion.name)
        if text is None:
            text = _question_for(criterion, title.strip())
        questions.append(DerivedQuestion(criterion.name, text, criterion.weight))
    return questions


def _question_for(criterion: DerivedCriterion, title: str) -> str:
    if criterion.kind == "years":
        years = criterion.name.split("+", 1)[0]
        return (
            f"This role asks for {years}+ years of experience. Which roles make up yours, and "
            "what did you own in each?"
        )
    if criterion.kind == "role":
        return (
            f"What in your background prepares you for the {title} role, and what would you "
            "need to learn first?"
        )
    if criterion.kind == "general":
        return f"What have you done that involved {criterion.name.lower()}, and what came of it?"
    return (
        f"Tell us about a recent project where you used {_in_sentence(criterion.name)}. What "
        "was your part, what went wrong, and what would you do differently?"
    )


def _in_sentence(name: str) -> str:
    """A name as it reads mid-sentence: "Distributed systems" → "distributed systems", but
    "Python" and "PostgreSQL" keep their capitals (names, not sentence starts)."""
    if (" " in name or name in _COMMON_NOUNS) and name[1:] == name[1:].lower():
        return name[:1].lower() + name[1:]
    return name


def _segments(description: str) -> list[_Segment]:
    """Cut a description into sentences and bullets, each with how much a mention counts."""
    pieces: list[tuple[str, list[Token], float]] = []
    section = 1.0
    for line in description.splitlines():
        bullet = _BULLET.match(line)
        text = line[bullet.end() :] if bullet else line
        text = text.strip()
        if not text:
            continue
        line_tokens = tokenize(text)
        if not line_tokens:
            continue
        stems = {token.stem for token in line_tokens}
        header = not bullet and (
            text.endswith(":")
            or (len(line_tokens) <= _HEADER_MAX_TOKENS and not re.search(r"[.!?]$", text))
        )
        if header:
            if stems & _PREFERRED_CUES:
                section = _PREFERRED_FACTOR
            elif stems & _REQUIREMENT_HEADERS:
                section = _REQUIREMENTS_SECTION
            else:
                section = 1.0
        for sentence in _SENTENCE_END.split(text):
            tokens = tokenize(sentence)
            if not tokens:
                continue
            said = {token.stem for token in tokens}
            cue = 1.0
            # "Python is a plus" hedges even a "strong" in the same sentence.
            if said & _PREFERRED_CUES:
                cue = _PREFERRED_FACTOR
            elif said & _REQUIRED_CUES:
                cue = _REQUIRED_FACTOR
            pieces.append((sentence.strip(), tokens, section * cue))
    last = max(len(pieces) - 1, 1)
    # Postings lead with what matters most; the first segment counts 1.5x the last.
    return [
        _Segment(text, tokens, emphasis * (1.0 + 0.5 * (1 - i / last)), emphasis)
        for i, (text, tokens, emphasis) in enumerate(pieces)
    ]


def _requirement_phrases(tokens: Sequence[Token]) -> list[tuple[int, int]]:
    """Token ranges of the requirement phrases in one segment."""
    found: list[tuple[int, int]] = []
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if (
            token.stem in _CUE_BEFORE
            and following is not None
            and following.stem in _CONNECTORS
            and not _CLAUSE_BREAK.search(following.gap)
        ):
            found.extend(_list_items(tokens, i + 2))
        elif token.stem in _CUE_AFTER and i > 0 and not _CLAUSE_BREAK.search(token.gap):
            start = i
            while (
                start > 0
                and i - start < _MAX_PHRASE_TOKENS
                and is_content(tokens[start - 1].stem)
                and not _CLAUSE_BREAK.search(tokens[start].gap)
                and not _LIST_BREAK.search(tokens[start].gap)
            ):
                start -= 1
            if start < i:
                found.append((start, i))
    return found


def _list_items(tokens: Sequence[Token], start: int) -> list[tuple[int, int]]:
    """The items of the list starting at ``start``: "Python, Go and Kubernetes" → three."""
    items: list[tuple[int, int]] = []
    item: list[int] = []
    stop = min(len(tokens), start + _MAX_LIST_SCAN)
    for i in range(start, stop):
        token = tokens[i]
        if i > start and _CLAUSE_BREAK.search(token.gap):
            break
        if i > start and _LIST_BREAK.search(token.gap):
            items.append(_trim(tokens, item))
            item = []
        if token.stem in _LIST_WORDS:
            items.append(_trim(tokens, item))
            item = []
            continue
        item.append(i)
    items.append(_trim(tokens, item))
    return [span for span in items if span[0] < span[1]]


def _trim(tokens: Sequence[Token], item: list[int]) -> tuple[int, int]:
    """Cut a list item down to its core: no leading filler, stop at a stop word, 3 words."""
    kept: list[int] = []
    for i in item:
        stem = tokens[i].stem
        if not kept and (stem in STOPWORDS or stem in GENERIC or not is_content(stem)):
            continue
        if stem in STOPWORDS or len(kept) == _MAX_PHRASE_TOKENS:
            break
        kept.append(i)
    while kept and not is_content(tokens[kept[-1]].stem):
        kept.pop()
    return (kept[0], kept[-1] + 1) if kept else (0, 0)


def _count_phrases(candidates: dict[str, _Candidate], segments: Sequence[_Segment]) -> None:
    """Count every requirement phrase's mentions in every segment."""
    phrased = [c for c in candidates.values() if c.kind == "phrase"]
    if not phrased:
        return
    tokens: list[Token] = []
    owner: list[int] = []
    for s, segment in enumerate(segments):
        tokens.extend(segment.tokens)
        owner.extend([s] * len(segment.tokens))
    index = TokenIndex(tokens, owner)
    for found in phrased:
        for phrase in found.phrases:
            for i in index.find(phrase):
                segment = segments[owner[i]]
                found.mention(segment.factor, segment.text, segment.emphasis)


def _add_frequent_words(candidates: dict[str, _Candidate], segments: Sequence[_Segment]) -> None:
    """For postings with few cues: the content words said more than once become criteria."""
    words: dict[str, _Candidate] = {}
    mentions: dict[str, int] = {}
    for s, segment in enumerate(segments):
        for t, token in enumerate(segment.tokens):
            if not (is_content(token.stem) and token.stem.isalpha() and len(token.stem) >= 4):
                continue
            found = words.get(token.stem)
            if found is None:
                name = token.text.lower().capitalize()
                found = words[token.stem] = _Candidate(name, "general", (s, t))
            # Below a phrase or a skill: a bare word is weaker evidence of a requirement.
            found.mention(segment.factor * 0.8, segment.text, segment.emphasis)
            mentions[token.stem] = mentions.get(token.stem, 0) + 1
    taken = {c.name.casefold() for c in candidates.values()}
    for word, found in words.items():
        if mentions[word] >= 2 and found.name.casefold() not in taken:
            candidates["word:" + word] = found


def _role_name(title_tokens: Sequence[Token], title: str) -> str:
    """The title without seniority or contract words: "Senior Backend Engineer" → "Backend
    Engineer"."""
    kept = [
        token
        for token in title_tokens
        if token.stem not in STOPWORDS and token.stem not in _TITLE_NOISE
    ][:4]
    if not kept:
        return ""
    return _clip(" ".join(token.text for token in kept))


def _unique_names(ranked: Sequence[_Candidate]) -> list[_Candidate]:
    """Drop later candidates whose name repeats an earlier one's (ids derive from names)."""
    seen: set[str] = set()
    unique: list[_Candidate] = []
    for c in ranked:
        key = c.name.casefold()
        if c.name and key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _share_hundredths(points: Sequence[float]) -> list[int]:
    """Share 100 hundredths in proportion to ``points``: at least one each, exact total.

    A flat +1 to every share keeps a criterion mentioned once from rounding to nothing next to
    one mentioned ten times.
    """
    n = len(points)
    raw = [1.0 + max(p, 0.0) for p in points]
    total = sum(raw)
    spare = 100 - n
    exact = [r / total * spare for r in raw]
    shares = [int(e) for e in exact]
    left = spare - sum(shares)
    # Largest remainder first; the earlier (heavier) criterion wins a tie.
    for i in sorted(range(n), key=lambda i: (-(exact[i] - shares[i]), i))[:left]:
        shares[i] += 1
    return [s + 1 for s in shares]


def _describe(c: _Candidate, title: str) -> str:
    if c.kind == "years":
        years = c.name.split("+", 1)[0]
        return f"At least {years} years of relevant professional experience."
    if c.kind == "role":
        return (
            f"A background that matches the {_clip(title.strip())} role: comparable titles, "
            "scope and responsibilities."
        )
    if c.name in _DESCRIPTIONS and not c.snippet:
        return _DESCRIPTIONS[c.name]
    if c.strongest >= _REQUIREMENTS_SECTION:
        importance = " (required)"
    elif c.strongest < 1.0:
        importance = " (nice to have)"
    else:
        importance = ""
    if c.kind == "general":
        lead = f"Experience with {c.name.lower()}"
    else:
        lead = f"Hands-on experience with {_in_sentence(c.name)}"
        lead = _DESCRIPTIONS.get(c.name, lead).rstrip(".")
    if not c.snippet:
        return f"{lead}{importance}."
    return f'{lead}{importance}. The posting says: "{_clip(c.snippet, _SNIPPET_CHARS)}"'


def _clip(text: str, limit: int = _MAX_NAME_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"
