"""The canonical request path: examples, refusals, and properties against a lenient router."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollhouse.policy.load import parse_policy
from tollhouse.policy.match import RouteMatch, Router
from tollhouse.policy.paths import (
    PathRefused,
    canonical,
    encode_path,
    needs_canonical,
    respell,
)


def decoded(raw: bytes) -> str:
    """``scope["path"]`` as uvicorn derives it from ``raw_path``."""
    return unquote(raw.decode("ascii"))


def canon(raw: bytes, strict: bool = False) -> bytes:
    path, new_raw = canonical(decoded(raw), raw, strict)
    assert path == decoded(new_raw)
    return new_raw


@pytest.mark.parametrize(
    ("raw", "ignore", "strict"),
    [
        (b"/v1/expensive", b"/v1/expensive", b"/v1/expensive"),
        (b"/v1/expensive/", b"/v1/expensive", b"/v1/expensive/"),
        (b"//v1/expensive", b"/v1/expensive", b"/v1/expensive"),
        (b"/v1//expensive", b"/v1/expensive", b"/v1/expensive"),
        (b"/v1/expensive//", b"/v1/expensive", b"/v1/expensive/"),
        (b"///v1///expensive///", b"/v1/expensive", b"/v1/expensive/"),
        (b"/", b"/", b"/"),
        (b"//", b"/", b"/"),
        (b"/v1/%65xpensive", b"/v1/expensive", b"/v1/expensive"),
        (b"/%7euser/%2D%5f", b"/~user/-_", b"/~user/-_"),
        (b"/caf%c3%a9/", b"/caf%C3%A9", b"/caf%C3%A9/"),
        (b"/a%20b/%25/%3a", b"/a%20b/%25/%3A", b"/a%20b/%25/%3A"),
        (b"/bad%zz", b"/bad%zz", b"/bad%zz"),
        (b"/.well-known/x", b"/.well-known/x", b"/.well-known/x"),
        (b"/v1/a..b/.x/...", b"/v1/a..b/.x/...", b"/v1/a..b/.x/..."),
        (b"/V1/Expensive", b"/V1/Expensive", b"/V1/Expensive"),  # case: the router's part
    ],
)
def test_canonical_examples(raw: bytes, ignore: bytes, strict: bytes) -> None:
    assert canon(raw) == ignore
    assert canon(raw, strict=True) == strict


@pytest.mark.parametrize(
    "raw",
    [
        b"/v1%2Fexpensive",
        b"/v1%2fexpensive",
        b"/v1/a%2Fb/c",
        b"/v1\\expensive",
        b"/v1%5cexpensive",
        b"/v1%5Cexpensive",
        b"/v1/./expensive",
        b"/v1/x/../expensive",
        b"/v1/expensive/.",
        b"/v1/expensive/..",
        b"/./v1",
        b"/../v1",
        b"/v1/%2e/expensive",
        b"/v1/%2E%2e/expensive",
        b"/v1/.%2E/expensive",
        b"/v1/%2e./expensive",
        b"/v1//./expensive",
    ],
)
def test_ambiguous_paths_are_refused(raw: bytes) -> None:
    for strict in (False, True):
        with pytest.raises(PathRefused) as info:
            canonical(decoded(raw), raw, strict)
        assert info.value.status == 400
        assert needs_canonical(raw, strict)


def test_a_canonical_path_is_returned_as_it_is() -> None:
    path, raw = "/v1/score/abc", b"/v1/score/abc"
    assert not needs_canonical(raw, strict=False)
    got = canonical(path, raw, False)
    assert got[0] is path and got[1] == raw
    assert not needs_canonical(b"/v1/x/", strict=True)
    assert needs_canonical(b"/v1/x/", strict=False)
    assert not needs_canonical(b"/", strict=False)


def test_not_origin_form_is_left_alone() -> None:
    assert canonical("*", b"*", False) == ("*", b"*")


def test_respell_and_encode() -> None:
    assert respell(b"/V1/Score/SJ_AbC", ((0, "v1", True), (1, "score", True))) == (
        b"/v1/score/SJ_AbC"
    )
    assert respell(b"/v1/SCOREbatch/x", ((1, "score", False),)) == b"/v1/scorebatch/x"
    assert respell(b"/v1/ITEMS%3Abatch", ((1, "items:batch", True),)) == b"/v1/items:batch"
    assert respell(b"/v1/x", ((1, "y", True), (5, "z", True))) == b"/v1/y"
    assert encode_path("/v1/caf\u00e9 x/%") == b"/v1/caf%C3%A9%20x/%25"


# ---- properties ---------------------------------------------------------------------------

#: Segments: words of the policy below, ids whose case matters, odd characters, escapes.
SEGMENTS = st.sampled_from(
    [
        "v1",
        "expensive",
        "admin",
        "purge",
        "score",
        "scorebatch",
        "SJ_AbC",
        "caf%C3%A9",
        "caf%c3%a9",
        "a%20b",
        "%41",
        "x:y",
        "~",
        "",
        ".",
        "..",
        "%2e",
        "%2F",
        "%5c",
        ".well-known",
    ]
)


@st.composite
def raw_paths(draw: st.DrawFn) -> bytes:
    segments = draw(st.lists(SEGMENTS, max_size=6))
    tail = draw(st.sampled_from(["", "/"]))
    return ("/" + "/".join(segments) + tail).encode("ascii")


def outcome(raw: bytes, strict: bool) -> tuple[str, bytes] | None:
    try:
        return canonical(decoded(raw), raw, strict)
    except PathRefused:
        return None


@given(raw_paths(), st.booleans())
def test_canonical_is_idempotent_and_consistent(raw: bytes, strict: bool) -> None:
    got = outcome(raw, strict)
    if got is None:
        # Refused: some segment is a dot segment, or an escaped "/" or "\" is present.
        parts = [decoded(s.encode()) for s in raw.decode().split("/")]
        assert any(p in (".", "..") for p in parts) or b"%2F" in raw or b"%5c" in raw.lower(), raw
        return
    path, new_raw = got
    assert canonical(path, new_raw, strict) == (path, new_raw)
    assert path == decoded(new_raw)  # the raw path still decodes to the path matched
    assert b"//" not in new_raw
    if not strict:
        assert new_raw == b"/" or not new_raw.endswith(b"/")
    if not needs_canonical(raw, strict):  # the hot path's check never skips work
        assert new_raw == raw and path == decoded(raw)


POLICY = parse_policy(
    """
    [[buckets]]
    name = "expensive"
    limit = 2
    window = "3650d"
    routes = ["GET /v1/expensive"]

    [[buckets]]
    name = "score"
    limit = 10
    window = "1s"
    routes = ["GET /v1/score/{scoringJobId}", "GET /v1/Score*"]

    [[buckets]]
    name = "everything"
    limit = 100
    window = "1s"
    routes = ["* /v1/*"]

    [[access]]
    routes = ["* /v1/admin/*"]
    roles = ["root"]
    """,
    "t",
)


def lenient(raw: bytes) -> str:
    """The resource a lenient upstream resolves: escapes decoded, ``//`` collapsed,
    trailing slash dropped, case ignored."""
    return "/" + "/".join(s for s in decoded(raw).split("/") if s).lower()


def forward(router: Router, raw: bytes) -> tuple[RouteMatch, str, bytes]:
    """What the gateway does: canonical path, match, respell; the match and what the
    upstream receives."""
    path, raw = canonical(decoded(raw), raw, router.strict_slash)
    match = router.match("GET", path)
    if match.respelled is not None:
        path, raw = match.respelled, respell(raw, match.spellings)
    return match, path, raw


def decision(match: RouteMatch) -> tuple[list[str], frozenset[str] | None]:
    return sorted(b.name for b in match.buckets), match.roles


BASES = st.lists(
    st.sampled_from(["v1", "expensive", "admin", "purge", "score", "scorebatch", "SJ_AbC"]),
    min_size=1,
    max_size=4,
).map(lambda segments: "/" + "/".join(segments))


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, bytes]:
    """A canonical path and one way of writing it a lenient router reads the same."""
    base = draw(BASES)
    out = []
    for ch in base:
        if ch == "/":
            out.append("/" * draw(st.integers(1, 3)))
            continue
        if ch.isalpha() and draw(st.booleans()):
            ch = ch.swapcase()
        if draw(st.integers(0, 4)) == 0:
            ch = draw(st.sampled_from(["%{:02X}", "%{:02x}"])).format(ord(ch))
        out.append(ch)
    out.append(draw(st.sampled_from(["", "/", "//"])))
    return base, "".join(out).encode("ascii")


@given(spellings())
def test_no_lenient_spelling_changes_the_decision(case: tuple[str, bytes]) -> None:
    """Every spelling a lenient router reads as ``base`` gets ``base``'s buckets and rules,
    and what is forwarded is still ``base`` to that router."""
    base, spelled = case
    router = Router(POLICY)
    base_match, _, base_raw = forward(router, base.encode())
    match, path, raw = forward(router, spelled)
    assert decision(match) == decision(base_match)
    assert lenient(raw) == lenient(base.encode())
    assert decoded(raw) == path
    # The forwarded path is a fixed point: matching it again changes nothing.
    again, path2, raw2 = forward(router, raw)
    assert (path2, raw2) == (path, raw) and again.respelled is None
    assert decision(again) == decision(base_match)
    # Literal segments are spelled as the pattern writes them, the others as sent.
    assert raw.lower() == base_raw.lower()
    if match.template == "/v1/expensive":
        assert raw == base_raw == b"/v1/expensive"


@given(spellings(), st.sampled_from(["/.", "/..", "/%2e", "/%2E%2e", "/.%2E"]))
def test_dot_segments_in_any_spelling_are_refused(case: tuple[str, bytes], dots: str) -> None:
    _, spelled = case
    index = spelled.index(b"/", 1) if b"/" in spelled[1:] else len(spelled)
    raw = spelled[:index] + dots.encode() + spelled[index:]
    with pytest.raises(PathRefused):
        canonical(decoded(raw), raw, False)


def test_case_insensitive_matching_keeps_parameters_and_unmatched_paths() -> None:
    router = Router(POLICY)
    match, path, raw = forward(router, b"/V1/SCORE/SJ_AbC/")
    assert decision(match) == (["everything", "score"], None)
    assert (path, raw) == ("/v1/score/SJ_AbC", b"/v1/score/SJ_AbC")
    # A prefix pattern's partial segment takes the pattern's spelling; the rest is kept.
    match, path, raw = forward(router, b"/v1/SCOREBatch/X")
    assert decision(match) == (["everything", "score"], None)
    assert raw == b"/v1/ScoreBatch/X"
    match, path, raw = forward(router, b"/V1/Admin/Purge")
    assert match.roles == frozenset({"root"})
    assert raw == b"/v1/admin/Purge"  # only the pattern's literals are respelled
    match, path, raw = forward(router, b"/Other/Thing/")
    assert decision(match) == ([], None) and raw == b"/Other/Thing"
