"""Policy loading: the built-in policy reproduces the API shapes' limits (docs/api-shapes.md);
bad files name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollhouse.errors import PolicyError
from tollhouse.policy.load import load_policy, parse_duration, parse_policy
from tollhouse.policy.model import Routing

CATEGORY_ENDPOINTS = {
    "scoring": [
        "POST /v1/score",
        "POST /v1/score/batch",
        "GET /v1/score/{scoringJobId}",
        "GET /v1/score/application/{applicationId}",
    ],
    "criteria_generation": ["POST /v1/criteria/generate", "POST /v1/criteria/questions"],
    "criteria_operations": [
        "GET /v1/criteria/{jobId}",
        "POST /v1/criteria/{jobId}",
        "PATCH /v1/criteria/{jobId}/{criterionId}",
        "DELETE /v1/criteria/{jobId}",
        "DELETE /v1/criteria/{jobId}/{criterionId}",
    ],
}


def test_builtin_policy_has_the_partner_status_buckets() -> None:
    policy = load_policy()
    rps = {
        "criteria_ai",
        "criteria_current_reads",
        "scoring_intake_batch",
        "scoring_intake_single",
        "read_and_ops",
        "rate_limit_status",
        "analytics",
    }
    by_name = {b.name: b for b in policy.buckets}
    assert rps <= set(by_name)
    assert all(by_name[n].window == 1.0 for n in rps)
    assert by_name["rate_limit_status"].limit == 2
    assert by_name["analytics"].limit == 20
    pool = {p.name: p for p in policy.pools}["criteria_ai_inflight"]
    assert pool.limit == 4


def test_builtin_policy_has_the_scoring_api_categories() -> None:
    by_name = {b.name: b for b in load_policy().buckets}
    assert (by_name["scoring"].limit, by_name["scoring"].window) == (1000, 60.0)
    assert (by_name["criteria_generation"].limit, by_name["criteria_generation"].window) == (60, 60)
    assert by_name["criteria_operations"].limit == 100
    assert by_name["scoring"].display_name == "Scoring"
    assert by_name["criteria_generation"].display_name == "Criteria Generation"
    assert by_name["criteria_operations"].display_name == "Criteria Operations"
    for name, endpoints in CATEGORY_ENDPOINTS.items():
        assert list(by_name[name].endpoints) == endpoints


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("[[buckets]]\nname='a'\nwindow='1s'\nroutes=['GET /x']", "buckets[0].limit", "required"),
        (
            "[[buckets]]\nname='a'\nlimit=1\nwindow='soon'\nroutes=['GET /x']",
            "buckets[0].window",
            "not a duration",
        ),
        (
            "[[buckets]]\nname='a'\nlimit=0\nwindow='1s'\nroutes=['GET /x']",
            "buckets[0].limit",
            "at least 1",
        ),
        (
            "[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['FETCH /x']",
            "buckets[0].routes[0]",
            "unknown method",
        ),
        (
            "[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['GET x']",
            "buckets[0].routes[0]",
            "must start with",
        ),
        (
            "[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['GET /x']\nscope='planet'",
            "buckets[0].scope",
            "one of",
        ),
        (
            "[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['GET /x']\n"
            "[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['GET /y']",
            "buckets[1].name",
            "used twice",
        ),
        (
            "[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['GET /x']\n"
            "[[pools]]\nname='a'\nlimit=1\nroutes=['GET /y']",
            "pools[0].name",
            "'a' is used twice (by buckets[0].name too); names must be unique across buckets "
            "and pools",
        ),
        ("[[buckets]]\nname='a'\nlimt=1", "buckets[0].limt", "unknown field"),
        ("[upstream]\nurl='ftp://x'", "upstream.url", "http"),
        ("[storage]\ndatabase_url='mysql://x'", "storage.database_url", "sqlite"),
        ("[storage]\nredis_url='valkey://x:6379'", "storage.redis_url", "rediss+cluster://"),
        ("[storage]\nredis_url='redis+clusters://x:1'", "storage.redis_url", "rediss://"),
        ("[[pools]]\nname='p'\nlimit=true\nroutes=['GET /x']", "pools[0].limit", "must be int"),
        ("[[access]]\nroutes=['GET /x']\nroles=['admin']", "access[0].roles[0]", "must be one of"),
        ("[wat]\n", "wat", "unknown field"),
        ("buckets = 3", "buckets", "array of tables"),
        ("[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['GET /a/*/b']", "routes[0]", "*"),
    ],
)
def test_bad_policy_names_the_field(text: str, field: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "my.toml")
    assert info.value.source == "my.toml"
    assert field in info.value.field
    assert problem in info.value.problem
    assert str(info.value).startswith("my.toml: ")


@pytest.mark.parametrize(
    "url",
    [
        "redis://r:6379/0",
        "rediss://r:6380/0?ssl_ca_certs=/etc/ca.pem",
        "redis+cluster://a:7000,b:7000",
        "rediss+cluster://a:7000,b:7000?ssl_ca_certs=/etc/ca.pem",
    ],
)
def test_every_redis_url_form_loads(url: str) -> None:
    assert parse_policy(f"[storage]\nredis_url='{url}'", "my.toml").storage.redis_url == url


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[buckets]\n")
    with pytest.raises(PolicyError, match=r"bad\.toml: not valid TOML"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="file not found"):
        load_policy(tmp_path / "nope.toml")


def test_policy_objects_are_frozen() -> None:
    policy = load_policy()
    with pytest.raises(AttributeError):
        policy.buckets[0].limit = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("60s", 60), ("1m", 60), ("1h", 3600), ("1d", 86400), ("250ms", 0.25), (5, 5)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_endpoints_default_to_routes() -> None:
    p = parse_policy("[[buckets]]\nname='a'\nlimit=1\nwindow='1s'\nroutes=['GET /x']", "t")
    assert p.buckets[0].endpoints == ("GET /x",)
    assert p.buckets[0].display_name == "a"


def test_routing_defaults_and_values() -> None:
    assert load_policy().routing == Routing(trailing_slash="ignore", case_sensitive=False)
    assert parse_policy("", "t").routing == Routing()
    routing = parse_policy('[routing]\ntrailing_slash = "strict"\ncase_sensitive = true', "t")
    assert routing.routing == Routing(trailing_slash="strict", case_sensitive=True)


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ('[routing]\ntrailing_slash = "optional"', "routing.trailing_slash", "strict or ignore"),
        ("[routing]\ntrailing_slash = true", "routing.trailing_slash", "must be str"),
        ('[routing]\ncase_sensitive = "no"', "routing.case_sensitive", "must be bool"),
        ("[routing]\ncase = false", "routing.case", "unknown field"),
        ("routing = 1", "routing", "must be a table"),
    ],
)
def test_bad_routing_names_the_field(text: str, field: str, problem: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "my.toml")
    assert info.value.field == field
    assert problem in info.value.problem
