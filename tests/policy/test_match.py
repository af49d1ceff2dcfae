"""Route matching: params, prefixes, methods, and the most specific exact pattern winning."""

from __future__ import annotations

from tollhouse.policy.load import load_policy, parse_policy
from tollhouse.policy.match import Router


def names(router: Router, method: str, path: str) -> list[str]:
    return [b.name for b in router.match(method, path).buckets]


def test_default_policy_routes() -> None:
    r = Router(load_policy())
    assert names(r, "POST", "/v1/score") == ["scoring_intake_single", "scoring"]
    assert names(r, "POST", "/v1/score/batch") == ["scoring_intake_batch", "scoring"]
    assert names(r, "GET", "/v1/score/sj_1") == ["read_and_ops", "scoring"]
    assert names(r, "GET", "/v1/score/application/app_1") == ["read_and_ops", "scoring"]
    # A literal beats a parameter: generate is not also a criteria operation on job "generate".
    assert names(r, "POST", "/v1/criteria/generate") == ["criteria_ai", "criteria_generation"]
    assert names(r, "POST", "/v1/criteria/job_9") == ["read_and_ops", "criteria_operations"]
    assert names(r, "GET", "/v1/jobs/j/criteria") == [
        "criteria_current_reads",
        "criteria_operations",
    ]
    assert names(r, "PATCH", "/v1/jobs/j/criteria") == ["read_and_ops", "criteria_operations"]
    assert names(r, "GET", "/v1/rate-limit/status") == ["rate_limit_status"]
    assert names(r, "GET", "/v1/analytics/flow_runs") == ["analytics"]
    assert names(r, "GET", "/call-counts/historical/") == ["analytics"]
    assert names(r, "GET", "/nothing/here") == []
    gen = r.match("POST", "/v1/criteria/generate")
    assert [p.name for p in gen.pools] == ["criteria_ai_inflight"]
    assert gen.endpoint_group is not None and gen.endpoint_group.key == "CRITERIA_AI"
    assert gen.tenant_required
    assert not r.match("GET", "/v1/rate-limit/status").tenant_required


def test_templates_and_methods() -> None:
    r = Router(load_policy())
    assert r.match("GET", "/v1/score/abc").template == "/v1/score/{scoringJobId}"
    assert r.match("HEAD", "/v1/score/abc").template == "/v1/score/{scoringJobId}"
    assert names(r, "DELETE", "/v1/score/abc") == []
    assert r.match("GET", "/unknown").template is None


def test_prefix_patterns() -> None:
    p = parse_policy(
        """
        [[buckets]]
        name = "star"
        limit = 1
        window = "1s"
        routes = ["POST /v1/score*"]
        [[buckets]]
        name = "slash"
        limit = 1
        window = "1s"
        routes = ["* /v1/score/*"]
        """,
        "t",
    )
    r = Router(p)
    assert names(r, "POST", "/v1/score") == ["star"]
    assert names(r, "POST", "/v1/score/batch") == ["star", "slash"]
    assert names(r, "GET", "/v1/score/x/y") == ["slash"]
    assert names(r, "GET", "/v1/scores") == []


def test_roles_intersect_and_cache_is_bounded() -> None:
    p = parse_policy(
        """
        [[access]]
        routes = ["* /admin/*"]
        roles = ["root", "manager"]
        [[access]]
        routes = ["DELETE /admin/*"]
        roles = ["root"]
        """,
        "t",
    )
    r = Router(p)
    assert r.match("GET", "/admin/x").roles == frozenset({"root", "manager"})
    assert r.match("DELETE", "/admin/x").roles == frozenset({"root"})
    for i in range(20000):
        r.match("GET", f"/admin/{i}")
    assert len(r._cache) <= 8192


def test_error_format_follows_the_most_specific_rule() -> None:
    r = Router(load_policy())
    assert r.match("GET", "/v1/analytics/flow_runs").error_format == "detail"
    assert r.match("GET", "/v1/analytics/scoring-volume").error_format == "envelope"
    assert r.match("POST", "/v1/score").error_format == "envelope"


ROUTING_POLICY = """
[[buckets]]
name = "exact"
limit = 1
window = "1s"
routes = ["GET /v1/Items/{itemId}", "GET /v1/list/", "GET /v1//double"]
[[buckets]]
name = "under"
limit = 1
window = "1s"
routes = ["GET /v1/items/*"]
"""


def routed(routing: str) -> Router:
    return Router(parse_policy(routing + ROUTING_POLICY, "t"))


def test_case_insensitive_by_default_with_the_patterns_spelling() -> None:
    r = routed("")
    match = r.match("GET", "/V1/ITEMS/AbC")
    assert [b.name for b in match.buckets] == ["exact", "under"]
    assert match.template == "/v1/Items/{itemId}"
    assert match.respelled == "/v1/Items/AbC"  # the id keeps the caller's case
    assert match.path_labels == {}
    assert r.match("GET", "/v1/Items/AbC").respelled is None  # already canonical
    assert r.match("GET", "/V1/Nothing").respelled is None  # no pattern: left as it is


def test_case_sensitive_matches_as_written() -> None:
    r = routed("[routing]\ncase_sensitive = true\n")
    assert names(r, "GET", "/v1/Items/AbC") == ["exact"]
    assert names(r, "GET", "/v1/items/AbC") == ["under"]
    assert names(r, "GET", "/V1/ITEMS/AbC") == []
    assert r.match("GET", "/V1/ITEMS/AbC").respelled is None


def test_patterns_are_read_like_canonical_paths() -> None:
    ignore = routed("")
    assert not ignore.strict_slash
    assert names(ignore, "GET", "/v1/list") == ["exact"]  # "/v1/list/" is "/v1/list"
    assert names(ignore, "GET", "/v1/double") == ["exact"]  # empty segments dropped
    assert names(ignore, "GET", "/v1/items") == []  # "/x/*" stays "under /x"
    strict = routed('[routing]\ntrailing_slash = "strict"\n')
    assert strict.strict_slash
    assert names(strict, "GET", "/v1/list/") == ["exact"]
    assert names(strict, "GET", "/v1/list") == []
    assert names(strict, "GET", "/v1/double") == ["exact"]
