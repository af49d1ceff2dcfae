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
